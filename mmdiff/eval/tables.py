"""What benchmarks and evaluation recipes share: pinned threads, warm-up + median and paired
timing, the machine's description, markdown tables, and rewriting one marked section of
docs/benchmarks.md so each benchmark owns its own table."""
from __future__ import annotations

import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from ..core.dit import PRESETS

# the checkout's docs: benchmarks run from a repository checkout, not an installed wheel
DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def pin_threads(n: int | None = None) -> int:
    n = n or int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads{gpu}; "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def median_time(fn, *, warmup: int = 2, repeats: int = 5, sync=None) -> float:
    """Median wall time of ``fn()`` in seconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synchronize(device: torch.device) -> None:
    """Wait for a GPU's queued work, so that a host clock times it (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def diffusers_dit_options(preset: str, *, out_channels: int, depth: int | None = None, in_channels: int = 4,
                          sample_size: int = 32, num_classes: int = 1000) -> dict:
    """Keyword arguments of diffusers' ``DiTTransformer2DModel`` with the shape of our DiT
    ``preset`` (the paper's LayerNorm eps 1e-6); the caller, a benchmark, imports diffusers."""
    shape = PRESETS[preset]
    heads = shape["num_heads"]
    return dict(num_attention_heads=heads, attention_head_dim=shape["hidden_size"] // heads,
                in_channels=in_channels, out_channels=out_channels, num_layers=depth or shape["depth"],
                sample_size=sample_size, patch_size=shape["patch"], num_embeds_ada_norm=num_classes, norm_eps=1e-6)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # cpu: not inflated by other jobs


def add_clock_option(parser) -> None:
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="cpu: process CPU time, which time slices lost to other processes do not "
                             "inflate; needs BENCH_THREADS=1 (idle OpenMP threads spin on the CPU)")


def chosen_clock(parser, args, threads: int):
    if args.clock == "cpu" and threads != 1:
        parser.error("--clock cpu needs BENCH_THREADS=1")
    return CLOCKS[args.clock]


def paired_times(fns: dict, rounds: int, warmup: int = 1, clock=time.perf_counter) -> dict[str, list[float]]:
    """Times of each function, alternating them within every round (order flipped each round), so
    drifts in the machine's load hit every contender alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for r in range(rounds):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            start = clock()
            fns[k]()
            times[k].append(clock() - start)
    return times


def update_section(name: str, markdown: str, doc: Path = DOC) -> None:
    """Replace the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->``."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
