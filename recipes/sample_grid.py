"""Sample a class grid from an exported image pipeline (the last step of `make demo`).

    python recipes/sample_grid.py --model runs/image-digits/export --output outputs/digits_grid.png
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

import mmdiff


@dataclass
class GridArgs:
    model: str | None = field(default=None, metadata={"help": "exported pipeline (default: the shipped one)"})
    output: str = "outputs/digits_grid.png"
    per_class: int = 10
    steps: int = 25
    sampler: str = "dpmpp_2m"
    guidance_scale: float = 1.0
    seed: int = 0


def main(args: GridArgs):
    pipe = mmdiff.pipeline("image", model=args.model)
    classes = pipe.model.config.num_classes
    labels = [c for _ in range(args.per_class) for c in range(classes)]  # one class per column
    gens = [torch.Generator().manual_seed(args.seed * 100_003 + i) for i in range(len(labels))]
    images = pipe(class_labels=labels, num_inference_steps=args.steps, sampler=args.sampler,
                  guidance_scale=args.guidance_scale, generator=gens, output_type="pt")
    path = pipe.save_grid(images, args.output, nrow=classes)
    print(f"{args.per_class}x{classes} class grid: {path.resolve()}")
    return path


if __name__ == "__main__":
    main(HfArgumentParser(GridArgs).parse_args_into_dataclasses()[0])
