"""LoRA vs full fine-tuning of one DiT: trainable share, adapter file size, step time and peak memory.

    BENCH_THREADS=1 python benchmarks/lora.py --write_docs     # the "lora" section of docs/benchmarks.md

Every mode trains the same DiT (a class-conditional DiT-B/2 on 32x32x4 latents, as for ImageNet
256) with AdamW. Step time: all modes in one process, alternating within every round (so a change
in the machine's load hits all alike), CPU time of the one thread, median over rounds. Peak
memory: each mode in its own process (model, gradients, optimizer state, activations), so one
mode's peak does not hide another's. The adapter is written with
``mmdiff.components.lora.save_adapter`` (peft's layout).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mmdiff.components.lora import ADAPTER_WEIGHTS, add_adapter, lora_config, save_adapter
from mmdiff.core.dit import DiT
from mmdiff.eval.tables import machine, paired_times, pin_threads, table, update_section

PRESET, LATENT, CHANNELS, CLASSES, BATCH = "DiT-B/2", 32, 4, 1000, 8
MODES = {"full": None, "lora r8": (8, "attention,mlp"), "lora r32": (32, "attention,mlp"),
         "lora r8 + adaLN": (8, "attention,mlp,adaln")}


def build(mode: str):
    torch.manual_seed(0)
    model = DiT.from_preset(PRESET, in_channels=CHANNELS, input_size=LATENT, num_classes=CLASSES)
    if MODES[mode] is not None:
        rank, targets = MODES[mode]
        add_adapter(model, lora_config(rank, None, 0.0, targets))
    return model.train()


def trainer_step(mode: str):
    model = build(mode)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, CHANNELS, LATENT, LATENT, generator=g)
    t, y = torch.rand(BATCH, generator=g) * 1000, torch.randint(0, CLASSES, (BATCH,), generator=g)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (model(x, t, class_labels=y).float() - x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, params, step


def measure(mode: str, steps: int = 3) -> dict:
    """Peak memory and saved size of one mode (run in a fresh process)."""
    model, params, step = trainer_step(mode)
    for _ in range(steps):
        step()
    out = {"mode": mode, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "trainable": sum(p.numel() for p in params), "total": sum(p.numel() for p in model.parameters())}
    with tempfile.TemporaryDirectory() as tmp:
        if MODES[mode] is None:
            from mmdiff.core.checkpoint import save_tensors
            save_tensors(model.state_dict(), Path(tmp) / "model.safetensors")
            out["file_mb"] = (Path(tmp) / "model.safetensors").stat().st_size / 2**20
        else:
            rank, targets = MODES[mode]
            save_adapter(model, Path(tmp) / "adapter", lora_config(rank, None, 0.0, targets), base=None)
            out["file_mb"] = (Path(tmp) / "adapter" / ADAPTER_WEIGHTS).stat().st_size / 2**20
    return out


def step_times(rounds: int) -> dict[str, float]:
    """Median CPU seconds per step of every mode, alternating modes within each round."""
    steps = {mode: trainer_step(mode)[2] for mode in MODES}
    times = paired_times(steps, rounds, warmup=2, clock=time.process_time)
    return {mode: statistics.median(ts) for mode, ts in times.items()}


def run_isolated(mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", mode], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write_docs", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads, load = pin_threads(), os.getloadavg()[0]
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    if threads != 1:
        parser.error("CPU-time step timings need BENCH_THREADS=1 (idle OpenMP threads spin on the CPU)")
    results = [run_isolated(mode) for mode in MODES]
    seconds = step_times(args.rounds)
    for r in results:
        r["seconds"] = seconds[r["mode"]]
    full = results[0]
    rows = [[r["mode"], f"{r['trainable']:,}", f"{100 * r['trainable'] / r['total']:.2f}%", f"{r['file_mb']:.1f}",
             f"{r['seconds']:.3f}", f"{r['seconds'] / full['seconds']:.2f}", f"{r['peak_mb']:.0f}",
             f"{r['peak_mb'] / full['peak_mb']:.2f}"] for r in results]
    text = table(["mode", "trainable parameters", "share", "saved file MB", "s/step", "time vs full",
                  "peak RSS MB", "memory vs full"], rows)
    print(text)
    if args.write_docs:
        update_section("lora", "\n".join([
            "## LoRA vs full fine-tuning",
            "",
            f"Command: `BENCH_THREADS={threads} python benchmarks/lora.py --write_docs`. A class-conditional "
            f"{PRESET} ({full['total']:,} parameters) on {LATENT}x{LATENT}x{CHANNELS} latents, batch {BATCH}, bf16 "
            f"autocast, fused AdamW over what trains. Step time: CPU seconds of the one thread, the modes "
            f"alternating within each of {args.rounds} rounds after 2 warm-up steps, median; peak RSS: each mode "
            f"in a fresh process (model, gradients, optimizer state, activations); saved file: the full model's "
            f"safetensors, or the adapter "
            f"(`adapter_model.safetensors`, float32). Machine: {machine()}; load average {load:.1f} at the start.",
            "",
            text,
        ]))


if __name__ == "__main__":
    main()
