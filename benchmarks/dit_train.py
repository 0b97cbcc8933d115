"""DiT training step: mmdiff's DiT against diffusers' DiTTransformer2DModel at identical
configuration, and how far each step is from this machine's matmul ceiling.

    BENCH_THREADS=1 python benchmarks/dit_train.py --clock cpu   # full run (~40 min), rewrites
                                                                 # the dit-train and machine-limit sections
    python benchmarks/dit_train.py --quick      # depth-6 only, no compile, prints only

Identical configuration: same width, depth, heads and patch, 32x32x4 latents, 1000 classes plus
the null class (label dropout 0.1), learned sigma (8 output channels), LayerNorm eps 1e-6, tanh
GELU, random init. tests/test_dit.py maps diffusers' weights onto ours and gets the same output to
1e-5, once diffusers' per-block copies of the timestep/label embedder are made equal and its
frequency shift is set to the paper's (neither changes its cost). diffusers keeps its own
architecture here: one embedder per block, separate q/k/v projections.

A step is forward, MSE loss, backward and AdamW (``fused=True`` for both: the fastest AdamW on the
CPU, 22 ms instead of 107 ms at DiT-S/2). bf16 is CPU autocast over float32 weights.

Timing: the two models alternate step by step (the order flips every round) so that load from
other processes on the shared cores hits both alike; a ratio is the median of the per-round
ratios. Memory: ``torch.distributed._tools.mem_tracker.MemTracker`` over one step after warm-up:
the peak of live tensor bytes (parameters, gradients, optimizer state, activations, temporaries),
like ``torch.cuda.max_memory_allocated`` and unaffected by the allocator's caching.

FLOPs: ``FlopCounterMode`` over one step (matmuls and attention; the CPU flash-attention kernels
are not in its registry, so they are counted here as 2 and 4 batched matmuls, the model FLOPs of
attention without the backward's recomputation), cross-checked against the analytic count. The
ceiling is the GFLOP/s of the step's own matmul shapes (every mm/addmm/bmm, attention as its
batched matmuls) replayed as plain ``torch.mm``/``torch.bmm`` calls in the step's dtype,
measured in the same rounds as the steps.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from torch._functorch import config as functorch_config
from torch._inductor import config as inductor_config
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import mmdiff.core.dit as dit
from common import (CLOCKS, add_clock_option, chosen_clock, machine, paired_times, pin_threads, table,
                    update_section)

aten = torch.ops.aten
LATENT, CHANNELS, CLASSES, OUT_CHANNELS = 32, 4, 1000, 8
PRECISIONS = ("fp32", "bf16")


@dataclass
class Case:
    name: str
    preset: str
    batch: int  # chosen so that a step takes ~0.5-3 s on 2 cores
    depth: int | None = None
    compile: bool = False


CASES = [Case("DiT-S/2", "DiT-S/2", 4, compile=True), Case("DiT-B/2", "DiT-B/2", 2),
         Case("DiT-S/2, depth 6", "DiT-S/2", 8, depth=6)]


# ------------------------------------------------------------------------------------ models

def build_ours(case: Case) -> dit.DiT:
    extra = {} if case.depth is None else {"depth": case.depth}
    return dit.DiT.from_preset(case.preset, in_channels=CHANNELS, input_size=LATENT, num_classes=CLASSES,
                               out_channels=OUT_CHANNELS, **extra)


def build_diffusers(case: Case) -> DiTTransformer2DModel:
    preset = dit.PRESETS[case.preset]
    heads = preset["num_heads"]
    return DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=preset["hidden_size"] // heads,
                                 in_channels=CHANNELS, out_channels=OUT_CHANNELS,
                                 num_layers=case.depth or preset["depth"], sample_size=LATENT,
                                 patch_size=preset["patch"], num_embeds_ada_norm=CLASSES, norm_eps=1e-6)


def forward_fn(model):
    if isinstance(model, DiTTransformer2DModel) or isinstance(getattr(model, "_orig_mod", None),
                                                               DiTTransformer2DModel):
        return lambda x, t, y: model(x, t, y, return_dict=False)[0]
    return lambda x, t, y: model(x, t, y)


class Trainer:
    """One training step of ``model`` on a fixed random batch."""

    def __init__(self, model, case: Case, precision: str, compiled: bool = False):
        g = torch.Generator().manual_seed(0)
        b = case.batch
        self.x = torch.randn(b, CHANNELS, LATENT, LATENT, generator=g)
        self.t = torch.randint(0, 1000, (b,), generator=g)
        self.y = torch.randint(0, CLASSES, (b,), generator=g)
        self.target = torch.randn(b, OUT_CHANNELS, LATENT, LATENT, generator=g)
        self.model = model.train()
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        self.forward = forward_fn(torch.compile(model) if compiled else model)
        self.autocast = precision == "bf16"

    def __call__(self):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            out = self.forward(self.x, self.t, self.y)
        F.mse_loss(out.float(), self.target).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


clock = CLOCKS["wall"]



def paired_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den))


def peak_memory(step) -> dict[str, float]:
    """MiB of live tensors at the peak of one step, and that peak above the resting state
    (weights and AdamW state, which every step starts and ends with)."""
    step()
    tracker = MemTracker()
    tracker.track_external(step.model, step.opt)
    with tracker:
        step()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    resting = [p for p in step.model.parameters()]
    resting += [t for state in step.opt.state.values() for t in state.values() if torch.is_tensor(t)]
    rest = sum(t.numel() * t.element_size() for t in resting)
    return {"total": peak / 2**20, "above_rest": (peak - rest) / 2**20}


# ------------------------------------------------------------------------------------- FLOPs

def _attention_flops(q, k, v, *args, **kwargs) -> int:
    """Forward attention: scores and the probability-value product, 2 * 2*B*H*N*M*d."""
    b, h, n, d = q
    return 4 * b * h * n * k[-2] * d


def _attention_backward_flops(grad, q, k, v, *args, **kwargs) -> int:
    """Model FLOPs of the backward: dV, dP, dQ, dK (the kernel's recomputed scores not counted)."""
    return 2 * _attention_flops(q, k, v)


FLOP_FORMULAS = {aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
                 aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward_flops}


def counted_flops(step) -> int:
    with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
        step()
    return counter.get_total_flops()


def analytic_flops(model: dit.DiT, batch: int) -> int:
    """DiT's count: forward 2 * (weights applied to every token) * tokens + attention 4 * N^2 * D
    per block, backward twice the forward."""
    c = model.config
    tokens = (LATENT // c.patch.patch) ** 2
    per_token = ("x_embedder.", ".attn.", ".mlp.", "final_layer.linear.")
    weights = sum(p.numel() for n, p in model.named_parameters()
                  if n.endswith("weight") and any(k in n for k in per_token))
    forward = 2 * weights * tokens + 4 * tokens**2 * c.hidden_size * c.depth
    return 3 * forward * batch


# ----------------------------------------------------------------------------------- ceiling

class MatmulShapes(TorchDispatchMode):
    """Records every matmul a step runs: (batch or None, m, k, n, dtype); attention as its bmms."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in (aten.mm, aten.addmm):
            a, b = args[-2:] if packet is aten.addmm else args[:2]
            self.shapes.append((None, a.shape[0], a.shape[1], b.shape[1], a.dtype))
        elif packet is aten.bmm:
            a, b = args[:2]
            self.shapes.append((a.shape[0], a.shape[1], a.shape[2], b.shape[2], a.dtype))
        elif func in FLOP_FORMULAS:
            q, k = (args[0], args[1]) if func is aten._scaled_dot_product_flash_attention_for_cpu else args[1:3]
            (b, h, n, d), m = q.shape, k.shape[-2]
            products = 2 if func is aten._scaled_dot_product_flash_attention_for_cpu else 4
            self.shapes += [(b * h, n, d, m, q.dtype)] * products
        return func(*args, **(kwargs or {}))


class MatmulReplay:
    """The recorded shapes as plain torch.mm / torch.bmm calls on random ``dtype`` operands (the
    step's precision, whatever dtype the model chose for a product)."""

    def __init__(self, shapes, dtype: torch.dtype):
        self.operands, self.flops = [], 0
        for batch, m, k, n, _ in shapes:
            lead = () if batch is None else (batch,)
            self.operands.append((torch.randn(*lead, m, k).to(dtype), torch.randn(*lead, k, n).to(dtype)))
            self.flops += 2 * (batch or 1) * m * k * n

    def __call__(self):
        for a, b in self.operands:
            torch.matmul(a, b)


def record_matmuls(step, dtype: torch.dtype) -> MatmulReplay:
    with MatmulShapes() as rec:
        step()
    return MatmulReplay(rec.shapes, dtype)


# ------------------------------------------------------------------------------------- runs

def run_case(case: Case, precision: str, rounds: int) -> dict:
    ours_model, theirs_model = build_ours(case), build_diffusers(case)
    ours, theirs = Trainer(ours_model, case, precision), Trainer(theirs_model, case, precision)
    replay = record_matmuls(ours, torch.bfloat16 if precision == "bf16" else torch.float32)
    times = paired_times({"ours": ours, "diffusers": theirs, "ceiling": replay}, rounds, warmup=2, clock=clock)
    flops = {"ours": counted_flops(ours), "diffusers": counted_flops(theirs),
             "analytic": analytic_flops(ours_model, case.batch)}
    memory = {"ours": peak_memory(ours), "diffusers": peak_memory(theirs)}
    row = dict(case=case, precision=precision, times=times, flops=flops, memory=memory,
               ceiling=replay.flops / statistics.median(times["ceiling"]),
               speedup=paired_ratio(times["diffusers"], times["ours"]))
    print(summary(row), flush=True)
    return row


def run_attention_ablation(case: Case, rounds: int) -> float:
    """bf16 step with our explicit CPU attention against the same model calling SDPA (flash)."""
    step = Trainer(build_ours(case), case, "bf16")
    explicit = dit.attend

    def sdpa(q, k, v, mask=None, causal=False):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)

    def with_attention(fn):
        def run():
            dit.attend = fn
            try:
                step()
            finally:
                dit.attend = explicit
        return run

    fns = {"explicit": with_attention(explicit), "sdpa": with_attention(sdpa)}
    times = paired_times(fns, rounds, warmup=2, clock=clock)
    return paired_ratio(times["sdpa"], times["explicit"])


def run_compiled(case: Case, precision: str, rounds: int) -> dict:
    steps, compile_s = {}, {}
    torch._dynamo.reset()
    for name, build in (("ours", build_ours), ("diffusers", build_diffusers)):
        steps[name] = Trainer(build(case), case, precision, compiled=True)
        start = time.perf_counter()
        try:  # cold compile: no graphs from earlier runs on disk
            with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
                steps[name]()
                steps[name]()  # the second step may recompile (optimizer state, grad mode)
        except Exception as e:  # report, do not hide, a compiler that does not work here
            return dict(case=case, precision=precision, error=f"{type(e).__name__}: {str(e)[:200]}")
        compile_s[name] = time.perf_counter() - start
    times = paired_times(steps, rounds, warmup=1, clock=clock)
    row = dict(case=case, precision=precision, times=times, compile_s=compile_s,
               speedup=paired_ratio(times["diffusers"], times["ours"]))
    print(f"compiled {case.name} {precision}: ours {med(times['ours']):.3f} s, diffusers "
          f"{med(times['diffusers']):.3f} s, x{row['speedup']:.2f}", flush=True)
    return row


def med(v):
    return statistics.median(v)


def summary(r) -> str:
    t, m = r["times"], r["memory"]
    return (f"{r['case'].name} {r['precision']}: ours {med(t['ours']):.3f} s, diffusers {med(t['diffusers']):.3f} s, "
            f"x{r['speedup']:.2f}; memory {m['ours']['total']:.0f}/{m['diffusers']['total']:.0f} MiB; "
            f"{gflops(r, 'ours'):.0f} GFLOP/s of a {r['ceiling'] / 1e9:.0f} GFLOP/s ceiling")


def gflops(r, who: str) -> float:
    return r["flops"]["ours"] / med(r["times"][who]) / 1e9  # the same model FLOPs for both


# ------------------------------------------------------------------------------------ report

def run_header(command: str, clock_name: str, rounds: int, load: float) -> str:
    text = (f"Machine: {machine()}; load average {load:.1f} when the run started.\n\n"
            f"Command: `{command}` ({rounds} paired rounds per row).\n\n")
    if clock_name == "cpu":
        text += ("Times are CPU time of one thread: the two cores were shared with other jobs, which "
                 "made 2-thread wall times swing up to 10x between rounds. CPU time is not inflated "
                 "by time slices lost to other processes (cache and memory-bandwidth contention still "
                 "count). On a quiet machine: `BENCH_THREADS=2 ... --clock wall`.\n\n")
    return text


def write_sections(rows, compiled, ablation, header, eager_vs_sdpa_case):
    train = table(
        ["model", "batch", "precision", "ours s/step", "diffusers s/step", "throughput ours/diffusers",
         "peak MiB ours", "peak MiB diffusers", "memory ours/diffusers", "above rest ours/diffusers"],
        [[r["case"].name, r["case"].batch, r["precision"], med(r["times"]["ours"]), med(r["times"]["diffusers"]),
          f"**{r['speedup']:.2f}x**", round(r["memory"]["ours"]["total"]), round(r["memory"]["diffusers"]["total"]),
          r["memory"]["ours"]["total"] / r["memory"]["diffusers"]["total"],
          r["memory"]["ours"]["above_rest"] / r["memory"]["diffusers"]["above_rest"]] for r in rows])
    comp_rows = []
    for r in compiled:
        if "error" in r:
            comp_rows.append([r["case"].name, r["precision"], "failed", r["error"], "", "", ""])
            continue
        comp_rows.append([r["case"].name, r["precision"], med(r["times"]["ours"]), med(r["times"]["diffusers"]),
                          f"{r['speedup']:.2f}x", round(r["compile_s"]["ours"]), round(r["compile_s"]["diffusers"])])
    comp = table(["model", "precision", "ours s/step", "diffusers s/step", "throughput ours/diffusers",
                  "ours compile s (cold, wall)", "diffusers compile s (cold, wall)"], comp_rows)
    update_section("dit-train", header + train + "\n\n"
                   "Step = forward, MSE, backward, fused AdamW; random init; the two models alternate step by "
                   "step and each ratio is the median of per-round ratios. Peak memory: live tensor bytes at "
                   "the step's peak (MemTracker; parameters, gradients, AdamW state, activations), which "
                   "counts diffusers' twelve extra per-block timestep/label embedders (and their AdamW "
                   "state); the last column compares the peak above the resting weights + AdamW state "
                   "(activations, gradients, temporaries).\n\n"
                   f"**torch.compile** (default mode, compile time excluded from the step time):\n\n{comp}\n\n"
                   f"Ablation, {eager_vs_sdpa_case}, bf16: our step with the CPU explicit attention "
                   f"(`dit.ScoresAttention`) against the same model calling SDPA (flash): "
                   f"**{ablation:.2f}x** throughput.")
    limit = table(
        ["model", "precision", "GFLOP/step ours (counted)", "diffusers (counted)", "analytic", "ceiling GFLOP/s",
         "ours GFLOP/s", "ours % of ceiling", "diffusers GFLOP/s", "diffusers % of ceiling"],
        [[r["case"].name, r["precision"], r["flops"]["ours"] / 1e9, r["flops"]["diffusers"] / 1e9,
          r["flops"]["analytic"] / 1e9,
          r["ceiling"] / 1e9, gflops(r, "ours"), f"**{100 * gflops(r, 'ours') * 1e9 / r['ceiling']:.0f}%**",
          gflops(r, "diffusers"), f"{100 * gflops(r, 'diffusers') * 1e9 / r['ceiling']:.0f}%"] for r in rows])
    update_section("machine-limit", header + limit + "\n\n"
                   "Model FLOPs per step from `FlopCounterMode` (CPU flash attention counted as its "
                   "batched matmuls, without the backward's recomputation; diffusers' extra embedders act "
                   "per sample and add almost nothing) and from DiT's formula (3 x (2 x "
                   "per-token weights x tokens + 4 N^2 D x depth) x batch). Both models are credited the "
                   "same model FLOPs. Ceiling: every matmul shape of our step, attention as batched "
                   "matmuls, replayed as plain `torch.matmul` calls in the step's precision (bf16 rows: "
                   "all in bf16, although our attention scores are float32), timed in the same rounds "
                   "as the steps.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="depth-6 only, no compile, prints only")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true")
    add_clock_option(parser)
    args = parser.parse_args()
    threads, load = pin_threads(), os.getloadavg()[0]
    global clock
    clock = chosen_clock(parser, args, threads)
    torch.manual_seed(0)
    cases = [c for c in CASES if c.depth] if args.quick else CASES
    rows = [run_case(case, p, args.rounds) for case in cases for p in PRECISIONS]
    ablation = run_attention_ablation(cases[0], args.rounds)
    print(f"explicit attention vs SDPA, {cases[0].name} bf16: x{ablation:.2f}")
    compiled = [] if args.quick or args.no_compile else [
        run_compiled(c, p, args.rounds) for c in cases if c.compile for p in PRECISIONS]
    if not args.quick:
        command = (f"BENCH_THREADS={threads} python benchmarks/dit_train.py --clock {args.clock}"
                   + (" --no-compile" if args.no_compile else ""))
        write_sections(rows, compiled, ablation, run_header(command, args.clock, args.rounds, load), cases[0].name)


if __name__ == "__main__":
    main()
