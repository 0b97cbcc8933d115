"""DiT training step: mmdiff's DiT against diffusers' DiTTransformer2DModel at identical
configuration, and how far each step is from this machine's matmul ceiling.

    BENCH_THREADS=1 python benchmarks/dit_train.py --clock cpu   # full run (~40 min), rewrites
                                                                 # the dit-train and machine-limit sections
    python benchmarks/dit_train.py --quick      # depth-6 only, no compile, prints only
    python benchmarks/dit_train.py --device cuda  # the GPU table (bf16, DiT-S/2, B/2, XL/2; ~3 min on
                                                  # an H200), rewrites the dit-train-gpu section

Identical configuration: same width, depth, heads and patch, 32x32x4 latents, 1000 classes plus
the null class (label dropout 0.1), learned sigma (8 output channels), LayerNorm eps 1e-6, tanh
GELU, random init. tests/test_dit.py maps diffusers' weights onto ours and gets the same output to
1e-5, once diffusers' per-block copies of the timestep/label embedder are made equal and its
frequency shift is set to the paper's (neither changes its cost). diffusers keeps its own
architecture here: one embedder per block, separate q/k/v projections.

A step is forward, MSE loss, backward and AdamW (``fused=True`` for both: the fastest AdamW on the
CPU, 22 ms instead of 107 ms at DiT-S/2). bf16 is autocast over float32 weights.

Timing: the two models alternate step by step (the order flips every round) so that load from
other processes on the shared cores hits both alike; a ratio is the median of the per-round
ratios. Memory: ``torch.distributed._tools.mem_tracker.MemTracker`` over one step after warm-up:
the peak of live tensor bytes (parameters, gradients, optimizer state, activations, temporaries),
like ``torch.cuda.max_memory_allocated`` (which the GPU run reads) and unaffected by the
allocator's caching.

FLOPs: ``FlopCounterMode`` over one step (matmuls and attention; the CPU flash-attention kernels
are not in its registry, so they are counted here as 2 and 4 batched matmuls, the model FLOPs of
attention without the backward's recomputation), cross-checked against the analytic count. The
ceiling is the GFLOP/s of the step's own matmul shapes (every mm/addmm/bmm, attention as its
batched matmuls) replayed as plain ``torch.mm``/``torch.bmm`` calls in the step's dtype,
measured in the same rounds as the steps. On a GPU the machine's limit is also the GPU's datasheet
dense bf16 rate and a large bf16 matmul measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from torch._functorch import config as functorch_config
from torch._inductor import config as inductor_config
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import mmdiff.core.dit as dit
from mmdiff.eval.tables import (CLOCKS, add_clock_option, chosen_clock, diffusers_dit_options, machine, paired_times,
                                pin_threads, synchronize, table, update_section)

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
# GPU: batches that fill the chip (DiT trained XL/2 at 256 per 8 GPUs, i.e. 32 per GPU)
GPU_CASES = [Case("DiT-S/2", "DiT-S/2", 256), Case("DiT-B/2", "DiT-B/2", 256),
             Case("DiT-XL/2", "DiT-XL/2", 64, compile=True)]
# dense bf16 tensor-core rate from the vendor's datasheets, TFLOP/s
DATASHEET_BF16 = {"H100 PCIe": 756, "H100": 989, "H200": 989, "A100": 312}


# ------------------------------------------------------------------------------------ models

device = torch.device("cpu")  # where models are built (--device)


def build_ours(case: Case) -> dit.DiT:
    extra = {} if case.depth is None else {"depth": case.depth}
    with device:
        return dit.DiT.from_preset(case.preset, in_channels=CHANNELS, input_size=LATENT, num_classes=CLASSES,
                                   out_channels=OUT_CHANNELS, **extra)


def build_diffusers(case: Case) -> DiTTransformer2DModel:
    with device:
        return DiTTransformer2DModel(**diffusers_dit_options(case.preset, out_channels=OUT_CHANNELS, depth=case.depth,
                                                             in_channels=CHANNELS, sample_size=LATENT,
                                                             num_classes=CLASSES))


def forward_fn(model):
    if isinstance(model, DiTTransformer2DModel) or isinstance(getattr(model, "_orig_mod", None),
                                                               DiTTransformer2DModel):
        return lambda x, t, y: model(x, t, y, return_dict=False)[0]
    return lambda x, t, y: model(x, t, y)


class Trainer:
    """One training step of ``model`` on a fixed random batch, on the model's device. On a GPU
    the call waits for the device, so that a host clock times the step."""

    def __init__(self, model, case: Case, precision: str, compiled: bool = False):
        g = torch.Generator().manual_seed(0)
        b = case.batch
        self.device = next(model.parameters()).device
        batch = (torch.randn(b, CHANNELS, LATENT, LATENT, generator=g), torch.randint(0, 1000, (b,), generator=g),
                 torch.randint(0, CLASSES, (b,), generator=g), torch.randn(b, OUT_CHANNELS, LATENT, LATENT, generator=g))
        self.x, self.t, self.y, self.target = (v.to(self.device) for v in batch)
        self.model = model.train()
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        self.forward = forward_fn(torch.compile(model) if compiled else model)
        self.autocast = precision == "bf16"

    def __call__(self):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.forward(self.x, self.t, self.y)
        F.mse_loss(out.float(), self.target).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        synchronize(self.device)


clock = CLOCKS["wall"]



def paired_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den))


def peak_memory(step) -> dict[str, float]:
    """MiB of live tensors at the peak of one step, and that peak above the resting state
    (weights and AdamW state, which every step starts and ends with)."""
    step()
    resting = [p for p in step.model.parameters()]
    resting += [t for state in step.opt.state.values() for t in state.values() if torch.is_tensor(t)]
    rest = sum(t.numel() * t.element_size() for t in resting)
    if step.device.type == "cuda":  # other models may be resident: count what this step adds
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        above = torch.cuda.max_memory_allocated() - before
        return {"total": (rest + above) / 2**20, "above_rest": above / 2**20}
    tracker = MemTracker()
    tracker.track_external(step.model, step.opt)
    with tracker:
        step()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    return {"total": peak / 2**20, "above_rest": (peak - rest) / 2**20}


# ------------------------------------------------------------------------------------- FLOPs

def _attention_flops(q, k, v, *args, **kwargs) -> int:
    """Forward attention: scores and the probability-value product, 2 * 2*B*H*N*M*d."""
    b, h, n, d = q
    return 4 * b * h * n * k[-2] * d


def _attention_backward_flops(grad, q, k, v, *args, **kwargs) -> int:
    """Model FLOPs of the backward: dV, dP, dQ, dK (the kernel's recomputed scores not counted)."""
    return 2 * _attention_flops(q, k, v)


# fused attention kernels (CPU flash; CUDA flash, memory-efficient, cuDNN): forward (q, k, v, ...),
# backward (grad, q, k, v, ...)
ATTENTION_FORWARD = {getattr(aten, n) for n in (
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention") if hasattr(aten, n)}
ATTENTION_BACKWARD = {getattr(aten, n) for n in (
    "_scaled_dot_product_flash_attention_for_cpu_backward", "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_efficient_attention_backward", "_scaled_dot_product_cudnn_attention_backward")
    if hasattr(aten, n)}
FLOP_FORMULAS = {**{op: _attention_flops for op in ATTENTION_FORWARD},
                 **{op: _attention_backward_flops for op in ATTENTION_BACKWARD}}


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
        elif func in ATTENTION_FORWARD or func in ATTENTION_BACKWARD:
            q, k = args[0:2] if func in ATTENTION_FORWARD else args[1:3]
            (b, h, n, d), m = q.shape, k.shape[-2]
            products = 2 if func in ATTENTION_FORWARD else 4
            self.shapes += [(b * h, n, d, m, q.dtype)] * products
        return func(*args, **(kwargs or {}))


class MatmulReplay:
    """The recorded shapes as plain torch.mm / torch.bmm calls on random ``dtype`` operands (the
    step's precision, whatever dtype the model chose for a product). Each distinct shape gets one
    pair of operands, multiplied as often as the step does."""

    def __init__(self, shapes, dtype: torch.dtype, device: torch.device):
        self.operands, self.flops, self.device = [], 0, device
        counts = {}
        for batch, m, k, n, _ in shapes:
            counts[(batch, m, k, n)] = counts.get((batch, m, k, n), 0) + 1
        for (batch, m, k, n), count in counts.items():
            lead = () if batch is None else (batch,)
            a = torch.randn(*lead, m, k, device=device).to(dtype)
            b = torch.randn(*lead, k, n, device=device).to(dtype)
            self.operands.append((a, b, count))
            self.flops += 2 * (batch or 1) * m * k * n * count

    def __call__(self):
        for a, b, count in self.operands:
            for _ in range(count):
                torch.matmul(a, b)
        synchronize(self.device)


def record_matmuls(step, dtype: torch.dtype) -> MatmulReplay:
    with MatmulShapes() as rec:
        step()
    return MatmulReplay(rec.shapes, dtype, step.device)


def peak_matmul(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """FLOP/s of a large square bf16 matmul: the fastest the GPU multiplies through torch."""
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def datasheet_bf16(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in DATASHEET_BF16.items() if key in name), None)


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


def run_ablations(case: Case, rounds: int) -> dict[str, float]:
    """bf16 step of our model against the same model with one CPU fast path of ``dit`` swapped
    for the plain PyTorch op: our throughput over the plain op's."""
    step = Trainer(build_ours(case), case, "bf16")

    def sdpa(q, k, v, mask=None, causal=False):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)

    plain = {"attention": ("attend", sdpa), "gelu": ("gelu_tanh", partial(F.gelu, approximate="tanh"))}

    def swapped(name, fn):
        def run():
            fast = getattr(dit, name)
            setattr(dit, name, fn)
            try:
                step()
            finally:
                setattr(dit, name, fast)
        return run

    fns = {"ours": step} | {key: swapped(*swap) for key, swap in plain.items()}
    times = paired_times(fns, rounds, warmup=2, clock=clock)
    return {key: paired_ratio(times[key], times["ours"]) for key in plain}


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


def gflops(r, who: str, count: str = "ours") -> float:
    return r["flops"][count] / med(r["times"][who]) / 1e9  # the same model FLOPs for both


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
                   f"Ablations, {eager_vs_sdpa_case}, bf16: our step's throughput over the same model "
                   f"with a CPU fast path swapped for the plain PyTorch op: the explicit attention "
                   f"(`dit.ScoresAttention`) over SDPA (flash) **{ablation['attention']:.2f}x**; the erf-GELU "
                   f"standing in for the tanh-GELU in bfloat16 (`dit.gelu_tanh`, within bfloat16's "
                   f"resolution of it) over ATen's bfloat16 tanh-GELU **{ablation['gelu']:.2f}x**.")
    limit = table(
        ["model", "precision", "GFLOP/step ours (counted)", "diffusers (counted)", "analytic", "ceiling GFLOP/s",
         "ours GFLOP/s", "ours % of ceiling", "diffusers GFLOP/s", "diffusers % of ceiling",
         "ceiling / diffusers"],
        [[r["case"].name, r["precision"], r["flops"]["ours"] / 1e9, r["flops"]["diffusers"] / 1e9,
          r["flops"]["analytic"] / 1e9,
          r["ceiling"] / 1e9, gflops(r, "ours"), f"**{100 * gflops(r, 'ours') * 1e9 / r['ceiling']:.0f}%**",
          gflops(r, "diffusers"), f"{100 * gflops(r, 'diffusers') * 1e9 / r['ceiling']:.0f}%",
          f"{r['ceiling'] / 1e9 / gflops(r, 'diffusers'):.2f}x"] for r in rows])
    update_section("machine-limit", header + limit + "\n\n"
                   "Model FLOPs per step from `FlopCounterMode` (CPU flash attention counted as its "
                   "batched matmuls, without the backward's recomputation; diffusers' extra embedders act "
                   "per sample and add almost nothing) and from DiT's formula (3 x (2 x "
                   "per-token weights x tokens + 4 N^2 D x depth) x batch). Both models are credited the "
                   "same model FLOPs. Ceiling: every matmul shape of our step, attention as batched "
                   "matmuls, replayed as plain `torch.matmul` calls in the step's precision (bf16 rows: "
                   "all in bf16, although our attention scores are float32), timed in the same rounds "
                   "as the steps. The last column is the most any implementation of the same model "
                   "could gain over diffusers' throughput by running at the ceiling: in fp32 diffusers "
                   "is already within a few tens of percent of it, which bounds what the 1.2x target "
                   "can reach there.")


def write_gpu_section(rows, compiled, peak: float, command: str, rounds: int) -> None:
    sheet = datasheet_bf16(device)
    train = table(
        ["model", "batch", "ours ms/step", "diffusers ms/step", "throughput ours/diffusers", "peak MiB ours",
         "peak MiB diffusers", "memory ours/diffusers", "model TFLOP/step", "ours TFLOP/s", "diffusers TFLOP/s",
         "ours % of datasheet", "ours % of measured matmul", "ours % of its matmuls replayed",
         "diffusers % of datasheet"],
        [[r["case"].name, r["case"].batch, 1e3 * med(r["times"]["ours"]), 1e3 * med(r["times"]["diffusers"]),
          f"**{r['speedup']:.2f}x**", round(r["memory"]["ours"]["total"]), round(r["memory"]["diffusers"]["total"]),
          r["memory"]["ours"]["total"] / r["memory"]["diffusers"]["total"], r["flops"]["analytic"] / 1e12,
          gflops(r, "ours", "analytic") / 1e3, gflops(r, "diffusers", "analytic") / 1e3,
          f"**{percent(gflops(r, 'ours', 'analytic') * 1e9, sheet)}**", percent(gflops(r, "ours", "analytic") * 1e9, peak),
          percent(gflops(r, "ours") * 1e9, r["ceiling"]), percent(gflops(r, "diffusers", "analytic") * 1e9, sheet)] for r in rows])
    counted = ", ".join(f"{r['case'].name} {r['flops']['ours'] / r['flops']['analytic']:.3f}" for r in rows)
    comp = table(["model", "ours ms/step", "diffusers ms/step", "throughput ours/diffusers", "ours TFLOP/s",
                  "ours % of datasheet", "ours compile s", "diffusers compile s"],
                 [[r["case"].name, "failed", r["error"], "", "", "", "", ""] if "error" in r else
                  [r["case"].name, 1e3 * med(r["times"]["ours"]), 1e3 * med(r["times"]["diffusers"]),
                   f"**{r['speedup']:.2f}x**", r["flops"] / med(r["times"]["ours"]) / 1e12,
                   f"**{percent(r['flops'] / med(r['times']['ours']), sheet)}**", round(r["compile_s"]["ours"]),
                   round(r["compile_s"]["diffusers"])] for r in compiled])
    update_section("dit-train-gpu", f"Machine: {machine()}.\n\nCommand: `{command}` ({rounds} paired rounds per "
                   f"row).\n\n{train}\n\nbf16 autocast over float32 weights, fused AdamW; a step ends with "
                   "`torch.cuda.synchronize`. \"Its matmuls replayed\": the step's own matmul shapes "
                   "(attention as batched matmuls) run as plain bf16 `torch.matmul` calls, counted FLOPs over "
                   "their time. Model FLOPs: DiT's formula (the `analytic` count above); "
                   f"`FlopCounterMode`'s count over the analytic one: {counted}. Datasheet: dense bf16 "
                   f"{sheet / 1e12 if sheet else 'unknown'} TFLOP/s; measured: an 8192^3 bf16 matmul through "
                   f"torch in the same run, {peak / 1e12:.0f} TFLOP/s. Peak memory: "
                   "`torch.cuda.max_memory_allocated` during a step above what was allocated before it, plus "
                   "the model's weights and AdamW state.\n\n"
                   f"**torch.compile** (default mode; cold compile time excluded from the step time):\n\n{comp}")


def percent(rate: float, ceiling: float | None) -> str:
    return f"{100 * rate / ceiling:.0f}%" if ceiling else "n/a"


def main_gpu(args) -> None:
    rounds = args.rounds
    peak = peak_matmul(device)
    print(f"{machine()}; bf16 8192^3 matmul {peak / 1e12:.0f} TFLOP/s", flush=True)
    command = f"python benchmarks/dit_train.py --device cuda --rounds {rounds}" + " --no-compile" * args.no_compile
    rows, compiled = [], []
    for case in GPU_CASES:
        rows.append(run_case(case, "bf16", rounds))
        torch.cuda.empty_cache()
        write_gpu_section(rows, compiled, peak, command, rounds)
    for case in [] if args.no_compile else [c for c in GPU_CASES if c.compile]:
        row = run_compiled(case, "bf16", rounds)
        row["flops"] = next(r["flops"]["analytic"] for r in rows if r["case"] is case)
        compiled.append(row)
        write_gpu_section(rows, compiled, peak, command, rounds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="depth-6 only, no compile, prints only")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--device", default="cpu", help="cuda: the GPU table in bf16 (dit-train-gpu section)")
    add_clock_option(parser)
    args = parser.parse_args()
    threads, load = pin_threads(), os.getloadavg()[0]
    global clock, device
    clock = chosen_clock(parser, args, threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        return main_gpu(args)
    cases = [c for c in CASES if c.depth] if args.quick else CASES
    rows = [run_case(case, p, args.rounds) for case in cases for p in PRECISIONS]
    ablation = run_ablations(cases[0], args.rounds)
    print(f"{cases[0].name} bf16, ours over plain ops: {ablation}")
    compiled = [] if args.quick or args.no_compile else [
        run_compiled(c, p, args.rounds) for c in cases if c.compile for p in PRECISIONS]
    if not args.quick:
        command = (f"BENCH_THREADS={threads} python benchmarks/dit_train.py --clock {args.clock}"
                   + (" --no-compile" if args.no_compile else ""))
        write_sections(rows, compiled, ablation, run_header(command, args.clock, args.rounds, load), cases[0].name)


if __name__ == "__main__":
    main()
