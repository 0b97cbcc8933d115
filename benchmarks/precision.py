"""fp32 vs bf16 autocast training step of each recipe's CPU default (the evidence for
``--mixed_precision auto``). CPU time of the one torch thread, so other jobs on the machine do
not inflate it; median of rounds, the two precisions alternating.

    python benchmarks/precision.py          # writes the "precision" section of docs/benchmarks.md
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, table, update_section  # noqa: E402
from mmdiff.modalities.image import ImageArgs, ImageTask  # noqa: E402
from mmdiff.training import TrainConfig, parse_config  # noqa: E402
from recipes.image_train import DEFAULT_CONFIG  # noqa: E402


def digits_step():
    train, args = parse_config([TrainConfig, ImageArgs], [], default_config=DEFAULT_CONFIG)
    task = ImageTask(args)
    task.setup()
    model, data = task.model, task.dataset
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = {k: torch.stack([data[i][k] for i in range(train.batch_size)]) for k in ("image", "label")}

    def step(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = task.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step, f"image digits default (batch {train.batch_size})"


def cpu_time_per_step(step, bf16: bool, steps: int = 10) -> float:
    for _ in range(3):
        step(bf16)
    start = time.thread_time()
    for _ in range(steps):
        step(bf16)
    return (time.thread_time() - start) / steps


def main(rounds: int = 5):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    step, name = digits_step()
    times = {False: [], True: []}
    for _ in range(rounds):
        for bf16 in (False, True):
            times[bf16].append(cpu_time_per_step(step, bf16))
    fp32, bf16 = (sorted(times[k])[rounds // 2] for k in (False, True))
    md = (f"Machine: {machine()}; bf16 natively: {torch.cpu._is_avx512_bf16_supported()}.\n\n"
          f"Command: `python benchmarks/precision.py` (CPU time of one thread per step, median of {rounds} "
          f"alternating rounds of 10 steps).\n\n"
          + table(["model", "fp32 s/step", "bf16 autocast s/step", "speed-up"],
                  [[name, fp32, bf16, f"**{fp32 / bf16:.2f}x**"]]))
    update_section("precision", "## Training precision on the CPU\n\n" + md)
    print(md)


if __name__ == "__main__":
    main()
