"""Score an exported digits pipeline with the reference classifier.

    python recipes/image_eval.py --model runs/image-digits/export
    python recipes/image_eval.py --model runs/image-digits/export --sweep --write_docs

Conditional accuracy (generated class k is read as k) and the Fréchet distance of classifier
features to the held-out digits, next to the real-vs-real floor at the same sample size.
``--sweep`` adds Fréchet distance vs steps (5/10/25/50) for euler, dpmpp_2m and unipc, with and
without guidance, and ``--write_docs`` puts the tables in docs/benchmarks.md.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

import mmdiff
from mmdiff.eval.digits import digits_scores, real_floor
from mmdiff.eval.tables import machine, table, update_section


@dataclass
class EvalArgs:
    model: str | None = field(default=None, metadata={"help": "exported pipeline folder (default: the shipped one)"})
    per_class: int = field(default=100, metadata={"help": "samples per class"})
    steps: int = 25
    sampler: str = "dpmpp_2m"
    guidance_scale: float = 1.0
    seed: int = 0
    sweep: bool = False
    write_docs: bool = False
    batch_size: int = 500


def generate(pipe, per_class: int, seed: int, batch_size: int, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    classes = pipe.model.config.num_classes
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = []
    for start in range(0, len(labels), batch_size):
        chunk = labels[start:start + batch_size]
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(len(chunk))]
        images.append(pipe(class_labels=chunk.tolist(), generator=gens, output_type="pt", progress=False, **kw))
    return torch.cat(images), labels


def score(pipe, args: EvalArgs, **kw) -> dict:
    t0 = time.time()
    images, labels = generate(pipe, args.per_class, args.seed, args.batch_size, **kw)
    result = digits_scores(images, labels)
    result["seconds"] = time.time() - t0
    return result


def main(args: EvalArgs) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = mmdiff.pipeline("image", model=args.model)
    n = args.per_class * pipe.model.config.num_classes
    floor = real_floor(n)
    head = score(pipe, args, num_inference_steps=args.steps, sampler=args.sampler, guidance_scale=args.guidance_scale)
    print(f"{args.sampler} {args.steps} steps, guidance {args.guidance_scale}: accuracy {head['accuracy']:.4f}, "
          f"Fréchet {head['frechet']:.2f} (real-vs-real floor at {n} images: {floor:.2f}, ratio "
          f"{head['frechet'] / floor:.2f}), {head['seconds']:.1f} s")
    rows = []
    if args.sweep:
        for guidance in (1.0, 1.5, 2.0):
            for sampler in ("euler", "dpmpp_2m", "unipc"):
                row = [sampler, guidance]
                for steps in (5, 10, 25, 50):
                    r = score(pipe, args, num_inference_steps=steps, sampler=sampler, guidance_scale=guidance)
                    row.append(f"{r['frechet']:.1f} / {100 * r['accuracy']:.1f}%")
                rows.append(row)
                print(" | ".join(map(str, row)))
    if args.write_docs:
        text = (f"Command: `python recipes/image_eval.py --model {args.model or '<shipped>'} --sweep --write_docs`"
                f"  \nMachine: {machine()}  \n{n} samples ({args.per_class} per class); real-vs-real Fréchet floor "
                f"at that size: **{floor:.2f}**.\n\n"
                f"Headline ({args.sampler}, {args.steps} steps, guidance {args.guidance_scale}): accuracy "
                f"**{100 * head['accuracy']:.1f}%**, Fréchet **{head['frechet']:.2f}** "
                f"(**{head['frechet'] / floor:.2f}×** the floor).\n")
        if rows:
            text += "\nFréchet distance / conditional accuracy vs steps:\n\n" + table(
                ["sampler", "guidance", "5 steps", "10 steps", "25 steps", "50 steps"], rows)
        update_section("image-quality", "## Images: digits quality\n\n" + text)
    return head


if __name__ == "__main__":
    main(HfArgumentParser(EvalArgs).parse_args_into_dataclasses()[0])
