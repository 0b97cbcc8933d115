"""Cost of a video training step vs clip length: factorized (spatial/temporal) vs joint attention.

    python benchmarks/video_cost.py                 # prints the table
    BENCH_THREADS=1 python benchmarks/video_cost.py --write_docs   # and rewrites the video-cost section
                                                                    # of docs/benchmarks.md
    BENCH_THREADS=1 python benchmarks/video_cost.py --latte [--write_docs]  # attention at Latte-1's size

One optimizer step (forward, backward, AdamW) of the video DiT on 4, 8, 16 and 32 frames of
32x32 one-channel latents with patch 4 (64 tokens per frame), the same model for both attentions.
Each measurement runs in a fresh process: on a GPU peak memory is ``max_memory_allocated``; on a
CPU it is the growth of the process's peak resident set over what model, optimizer state and
batch already hold, so it counts activations, gradients and attention buffers.

``--latte``: the same comparison at Latte-1's token count (1024 tokens per frame: 64x64 latents,
patch 2; width 1152, 16 heads), one self-attention layer's forward (projections included) over 1 to
16 frames, factorized (a spatial then a temporal layer, as a Latte layer pair) against one joint
layer, with the attention-score entries each forms.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from mmdiff.eval.tables import machine, median_time, paired_times, pin_threads, table, update_section
from mmdiff.core.attention import Attention
from mmdiff.core.dit import DiT, DiTConfig
from mmdiff.core.patch import PatchConfig

FRAMES = (4, 8, 16, 32)
MODEL = dict(hidden_size=128, depth=4, num_heads=4)  # 2 spatial + 2 temporal blocks when factorized
SIZE, PATCH, BATCH = 32, 4, 2


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(frames: int, attention: str, repeats: int) -> dict:
    """Median step time and peak memory of one configuration, in this process."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    config = DiTConfig(patch=PatchConfig("video", 1, (frames, SIZE, SIZE), PATCH), num_classes=10,
                       attention=attention, given_embedding=True, **MODEL)
    model = DiT(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(BATCH, frames, 1, SIZE, SIZE, device=device)
    t, y = torch.rand(BATCH, device=device) * 1000, torch.randint(0, 10, (BATCH,), device=device)

    def step():
        loss = (model(x, t, class_labels=y) - x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep gradient buffers: the baseline below already holds them

    for p in model.parameters():  # gradients and optimizer state exist before the baseline is read
        p.grad = torch.zeros_like(p)
    opt.step()
    sync = torch.cuda.synchronize if device == "cuda" else None
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = peak_rss_mb()
    seconds = median_time(step, warmup=1, repeats=repeats, sync=sync)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else peak_rss_mb() - base
    return {"frames": frames, "attention": attention, "seconds": seconds, "peak_mb": peak,
            "tokens": frames * (SIZE // PATCH) ** 2}


LATTE_FRAMES, LATTE_TOKENS, LATTE_WIDTH, LATTE_HEADS = (1, 2, 4, 8, 16), 1024, 1152, 16


def latte_attention(repeats: int) -> str:
    """Factorized vs joint self-attention at Latte-1's size, one forward each (no grad)."""
    torch.manual_seed(0)
    layer = Attention(LATTE_WIDTH, LATTE_HEADS, qk_norm=False).eval()
    rows = []
    with torch.no_grad():
        for t in LATTE_FRAMES:
            x = torch.randn(1, t * LATTE_TOKENS, LATTE_WIDTH)
            grid = (t, LATTE_TOKENS)
            times = paired_times({"factorized": lambda: (layer(x, mode="spatial", grid=grid),
                                                         layer(x, mode="temporal", grid=grid)),
                                  "joint": lambda: layer(x, mode="joint", grid=grid)}, repeats, clock=time.process_time)
            fac, joint = (statistics.median(times[k]) for k in ("factorized", "joint"))
            fac_scores = LATTE_HEADS * (t * LATTE_TOKENS**2 + LATTE_TOKENS * t**2)
            joint_scores = LATTE_HEADS * (t * LATTE_TOKENS) ** 2
            rows.append([t, t * LATTE_TOKENS, f"{1000 * fac:.0f}", f"{1000 * joint:.0f}", f"{joint / fac:.2f}",
                         f"{fac_scores / 1e6:.1f}M", f"{joint_scores / 1e6:.0f}M", f"{joint_scores / fac_scores:.1f}"])
            print(rows[-1], flush=True)
    return table(["frames", "tokens", "factorized ms (spatial + temporal)", "joint ms", "joint / factorized time",
                  "factorized score entries", "joint score entries", "ratio"], rows)


def run_isolated(frames: int, attention: str, repeats: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", str(frames), attention, "--repeats", str(repeats)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write_docs", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("FRAMES", "ATTENTION"), help=argparse.SUPPRESS)
    parser.add_argument("--latte", action="store_true", help="attention at Latte-1's token count")
    args = parser.parse_args(argv)
    threads, load = pin_threads(), os.getloadavg()[0]
    if args.latte:
        text = latte_attention(args.repeats)
        print(text)
        if args.write_docs:
            update_section("video-cost-latte", "\n".join([
                "## Video: attention cost at Latte-1's size, to 16 frames (factorized vs joint)",
                "",
                f"Command: `BENCH_THREADS={threads} python benchmarks/video_cost.py --latte --write_docs`. One "
                f"self-attention forward (qkv and output projections included, no grad) of width {LATTE_WIDTH}, "
                f"{LATTE_HEADS} heads over {LATTE_TOKENS} tokens per frame (Latte-1: 64x64 latents, patch 2), "
                "batch 1; factorized = a spatial layer (within frames) plus a temporal one (across frames), as "
                "in one Latte layer pair; joint = one layer over all tokens. CPU time, median of "
                f"{args.repeats} rounds alternating the two after a warm-up. Score entries: heads x query-key "
                "pairs formed. Machine: "
                f"{machine()}; load average {load:.1f} when the run started.",
                "",
                text,
            ]))
        return
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], args.repeats)))
        return
    results = {(f, a): run_isolated(f, a, args.repeats) for f in FRAMES for a in ("factorized", "joint")}
    rows = []
    for f in FRAMES:
        fac, joint = results[f, "factorized"], results[f, "joint"]
        grow = fac["seconds"] / results[FRAMES[0], "factorized"]["seconds"]
        rows.append([f, fac["tokens"], f"{1000 * fac['seconds']:.0f}", f"{grow:.2f}x ({f // FRAMES[0]}x frames)",
                     f"{fac['peak_mb']:.0f}", f"{1000 * joint['seconds']:.0f}", f"{joint['peak_mb']:.0f}",
                     f"{joint['seconds'] / fac['seconds']:.2f}"])
        print(rows[-1], flush=True)
    text = table(["frames", "tokens", "factorized ms/step", "factorized growth", "factorized peak MB",
                  "joint ms/step", "joint peak MB", "joint / factorized time"], rows)
    print(text)
    if args.write_docs:
        update_section("video-cost", "\n".join([
            "## Video: training step cost vs frames (factorized vs joint attention)",
            "",
            f"Command: `BENCH_THREADS={threads} python benchmarks/video_cost.py --write_docs`. "
            "One AdamW step of the video DiT "
            f"(hidden {MODEL['hidden_size']}, depth {MODEL['depth']}, {MODEL['num_heads']} heads; factorized = "
            f"{MODEL['depth'] // 2} spatial + {MODEL['depth'] // 2} temporal blocks) on a batch of {BATCH} clips of "
            f"{SIZE}x{SIZE}x1 latents, patch {PATCH} ({(SIZE // PATCH) ** 2} tokens per frame); median of "
            f"{args.repeats} steps after a warm-up, each configuration in a fresh process. Peak memory: "
            + ("`torch.cuda.max_memory_allocated` above model + optimizer state."
               if torch.cuda.is_available() else
               "growth of the process's peak RSS over model, gradients, optimizer state and batch (CPU).")
            + f" Machine: {machine()}; load average {load:.1f} when the run started.",
            "",
            text,
        ]))


if __name__ == "__main__":
    main()
