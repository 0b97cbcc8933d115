"""Latte-1 at full size (random weights): one denoiser step of mmdiff's converted DiT next to
diffusers' LatteTransformer3DModel, in one process.

    BENCH_THREADS=1 python benchmarks/latte.py --clock cpu             # prints the table
    BENCH_THREADS=1 python benchmarks/latte.py --clock cpu --write_docs  # and the "latte" section

The model is maxin-cn/Latte-1's configuration (28 spatial + 28 temporal blocks, width 1152, T5-XXL
captions of 120 tokens), built by diffusers with its random init and converted (``convert_latte``);
both run the same inputs: a classifier-free-guidance batch of 2, ``--frames`` frames of
``--latent`` x ``--latent`` latents. A step is one forward (no grad), timed alternating the two
(``paired_times``, median of ``--rounds``). Memory: each implementation alone in a fresh process
(its weights random: values do not change cost), the growth of the peak resident set during its
first forward (``/proc/self/clear_refs`` resets the peak first), i.e. activations and workspace.
The full 16-frame 512-px sample (64x64 latents, 50 steps)
is estimated from the measured step with a count of the multiply-adds at both sizes: on this
shared CPU a single full-size step takes minutes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from diffusers import LatteTransformer3DModel

from mmdiff.components.converters import build_dit
from mmdiff.components.latte import LATTE_1, convert_latte, latte_config
from mmdiff.core.dit import DiT
from mmdiff.eval.tables import add_clock_option, chosen_clock, machine, paired_times, pin_threads, table, update_section

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def forward_peak_mb(fn) -> float:
    """Peak resident-set growth (MB) while ``fn`` runs."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = status_kib("VmRSS")
    fn()
    return (status_kib("VmHWM") - before) / 1024


def multiply_adds(frames: int, side: int, caption: int = 120) -> float:
    """Multiply-adds of one Latte-1 forward per video: linear layers per token, plus attention
    (scores and weighted sum) within frames, across frames and to the caption."""
    d, layers, p = 1152, 28, 2
    per_frame = (side // p) ** 2
    tokens = frames * per_frame
    linear = (4 + 2 + 8) * d * d + (4 + 8) * d * d  # spatial (self, cross q/out, MLP) + temporal block
    attention = 2 * d * (frames * per_frame**2 + per_frame * frames**2 + tokens * caption)
    return layers * (tokens * linear + attention)


def inputs(frames: int, latent: int, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, frames, latent, latent, generator=g, dtype=dtype)  # Latte's layout
    return x, torch.tensor([500, 500]), torch.randn(2, 120, 4096, generator=g, dtype=dtype)


def forward_fn(name: str, model, x, t, caption):
    if name == "mmdiff":
        return lambda: model(x.transpose(1, 2), t, context=caption)
    return lambda: model(x, timestep=t, encoder_hidden_states=caption).sample


def one_memory(name: str, frames: int, latent: int, dtype) -> dict:
    """Peak RSS growth (MB) of one forward of implementation ``name``, alone in this process."""
    if name == "mmdiff":
        model = DiT(latte_config(LATTE_1)).eval().to(dtype)
    else:
        model = LatteTransformer3DModel(**{k: v for k, v in LATTE_1.items() if k != "_class_name"}).eval().to(dtype)
    with torch.no_grad():
        peak = forward_peak_mb(forward_fn(name, model, *inputs(frames, latent, dtype)))
    return {"name": name, "peak_mb": peak}


def memory_isolated(name: str, args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", name, "--frames", str(args.frames), "--latent",
                          str(args.latent), "--dtype", args.dtype], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--latent", type=int, default=16, help="latent side (Latte-1 at 512 px: 64)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--write_docs", action="store_true")
    parser.add_argument("--one", choices=("mmdiff", "diffusers"), help=argparse.SUPPRESS)
    add_clock_option(parser)
    args = parser.parse_args(argv)
    threads = pin_threads()
    clock = chosen_clock(parser, args, threads)
    dtype = DTYPES[args.dtype]
    if args.one:
        print(json.dumps(one_memory(args.one, args.frames, args.latent, dtype)))
        return
    torch.manual_seed(0)
    theirs = LatteTransformer3DModel(**{k: v for k, v in LATTE_1.items() if k != "_class_name"}).eval()
    ours = build_dit(*convert_latte(LATTE_1, theirs.state_dict()), dtype=dtype)
    theirs.to(dtype)
    params = sum(p.numel() for p in theirs.parameters())
    fns = {"mmdiff": forward_fn("mmdiff", ours, *inputs(args.frames, args.latent, dtype)),
           "diffusers": forward_fn("diffusers", theirs, *inputs(args.frames, args.latent, dtype))}
    with torch.no_grad():
        diff = (fns["mmdiff"]().transpose(1, 2).float() - fns["diffusers"]()[:, :4].float()).abs().max().item()
        times = {k: statistics.median(v) for k, v in paired_times(fns, args.rounds, warmup=0, clock=clock).items()}
    print(f"s per step: {times}; max abs difference {diff:.3g}", flush=True)
    del ours, theirs, fns  # the memory runs get the machine's memory to themselves
    memory = {k: memory_isolated(k, args)["peak_mb"] for k in times}
    scale = multiply_adds(16, 64) / multiply_adds(args.frames, args.latent)
    rows = [[name, f"{times[name]:.1f}", f"{memory[name]:.0f}", f"{times[name] * scale * 50 / 3600:.1f}"]
            for name in times]
    rows.append(["mmdiff / diffusers", f"{times['mmdiff'] / times['diffusers']:.2f}",
                 f"{memory['mmdiff'] / memory['diffusers']:.2f}", ""])
    text = table(["", f"s per step ({args.dtype}, batch 2)", "forward peak MB", "est. h, 16x512px, 50 steps"], rows)
    print(text, f"\nmax abs difference of the outputs: {diff:.3g}; {params / 1e6:.0f}M parameters")
    if args.write_docs:
        update_section("latte", "\n".join([
            "## Latte-1 (full size, random weights) vs diffusers (CPU)",
            "",
            f"Command: `BENCH_THREADS={threads} python benchmarks/latte.py --clock {args.clock} --frames {args.frames} "
            f"--latent {args.latent} --dtype {args.dtype} --write_docs`. maxin-cn/Latte-1's transformer "
            f"({params / 1e6:.0f}M parameters, diffusers' random init), converted by `mmdiff.components.latte`; one "
            f"denoiser step = one forward of a guidance batch of 2 videos, {args.frames} frames of "
            f"{args.latent}x{args.latent} latents ({args.frames * (args.latent // 2) ** 2} tokens per video), "
            f"120 caption tokens; {args.clock} time, median of {args.rounds} alternating rounds. Forward peak: "
            "growth of the peak RSS during the first forward, each implementation alone in a fresh process "
            "(activations and workspace). The last column scales the "
            f"step by the multiply-adds of the real size (16 frames of 64x64 latents: {scale:.0f}x) for "
            "Latte-1's 50-step sample: an estimate, not run here. "
            f"Max abs difference of the two outputs: {diff:.2g} ({args.dtype}). Machine: {machine()}.",
            "",
            text,
        ]))


if __name__ == "__main__":
    main()
