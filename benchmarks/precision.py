"""fp32 vs bf16 on the CPU: the autocast training step of the image recipe's default (the
evidence for ``--mixed_precision auto``), and sampling the shipped image and video pipelines with
float32 against bfloat16 weights, with the samples' scores. CPU time of the one torch thread, so
other jobs on the machine do not inflate it; training: median of rounds, the two precisions
alternating; sampling: one timed pass per precision after a warm-up.

    python benchmarks/precision.py            # the "precision" section of docs/benchmarks.md
    python benchmarks/precision.py sampling   # its "precision-sampling" section
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import mmdiff
from mmdiff.eval.tables import machine, table, update_section
from mmdiff.eval.digits import digits_scores, video_scores
from mmdiff.modalities.image import ImageArgs, ImageTask
from mmdiff.training import TrainConfig, parse_config

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "image_digits.yaml"  # the recipe's


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


def per_class_samples(pipe, per_class: int, batch: int = 100):
    """Class-conditional samples of every class, sample i seeded by i (same noise in both dtypes),
    the labels, and the CPU seconds they took."""
    labels = torch.arange(pipe.model.config.num_classes).repeat_interleave(per_class)
    start, out = time.thread_time(), []
    for i in range(0, len(labels), batch):
        gens = [torch.Generator().manual_seed(j) for j in range(i, min(i + batch, len(labels)))]
        out.append(pipe(class_labels=labels[i:i + batch].tolist(), generator=gens, output_type="pt", progress=False))
    return torch.cat(out), labels, time.thread_time() - start


def sampling(per_class: dict | None = None):
    """The shipped image and video pipelines with float32 and with bfloat16 weights (their defaults
    otherwise): CPU seconds per sample and the digit classifier's scores of the samples."""
    torch.set_num_threads(1)
    per_class = per_class or {"image": 100, "video": 10}
    rows = []
    for task, n in per_class.items():
        found = {}
        for dtype in (torch.float32, torch.bfloat16):
            pipe = mmdiff.pipeline(task, dtype=dtype)
            per_class_samples(pipe, 1)  # warm-up
            samples, labels, seconds = per_class_samples(pipe, n)
            if task == "image":
                scores = digits_scores(samples, labels)
                quality = f"accuracy {scores['accuracy']:.3f}, Fréchet {scores['frechet']:.2f}"
            else:
                scores = video_scores(samples, labels, box=int(pipe.config.extra.get("resolution", 32)) // 2)
                quality = (f"frame accuracy {scores['accuracy']:.3f}, identity consistency "
                           f"{scores['identity_consistency']:.3f}")
            found[dtype] = seconds / len(labels)
            rows.append([f"{task} ({pipe.config.sampler}, {pipe.config.steps} steps)", str(dtype).split(".")[-1],
                         len(labels), found[dtype], quality])
            print(rows[-1], flush=True)
        rows[-1][-1] += f"; **{found[torch.float32] / found[torch.bfloat16]:.2f}x** faster"
    md = (f"Machine: {machine()}; bf16 natively: {torch.cpu._is_avx512_bf16_supported()}.\n\n"
          f"Command: `python benchmarks/precision.py sampling` (the shipped pipelines loaded with "
          f"`dtype=torch.float32` and `torch.bfloat16`, class-conditional samples seeded alike, CPU time of one "
          f"thread; the sampler's state stays float32 in both).\n\n"
          + table(["pipeline", "weights", "samples", "CPU s/sample", "scores"], rows))
    update_section("precision-sampling", "## Sampling precision on the CPU\n\n" + md)
    print(md)


if __name__ == "__main__":
    sampling() if sys.argv[1:] == ["sampling"] else main()
