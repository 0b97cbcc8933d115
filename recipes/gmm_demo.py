"""Sample a 2-D Gaussian mixture with the exact denoiser and every sampler; write a scatter grid.

    python recipes/gmm_demo.py --steps 10 --output_dir outputs/gmm

No network is trained: the denoiser is closed form, so the picture shows what each sampler and
step count does to the distribution by itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from transformers import HfArgumentParser

from mmdiff.core.analytic import ring_mixture
from mmdiff.core.samplers import SAMPLERS, sample
from mmdiff.core.schedules import get_schedule


@dataclass
class Args:
    output_dir: str = "outputs/gmm"
    steps: int = 10
    num_samples: int = 2000
    schedule: str = "edm"
    spacing: str = "karras"
    seed: int = 0


def scatter(points: torch.Tensor, title: str, size: int = 256, extent: float = 3.2) -> Image.Image:
    img = Image.new("RGB", (size, size + 16), "white")
    draw = ImageDraw.Draw(img)
    xy = ((points.clamp(-extent, extent) + extent) / (2 * extent) * (size - 1)).tolist()
    for x, y in xy:
        draw.point((x, size - 1 - y), fill=(30, 60, 160))
    draw.text((4, size + 2), title, fill="black")
    return img


def main(args: Args) -> Path:
    gmm = ring_mixture()
    schedule = get_schedule(args.schedule)
    sigmas = schedule.sigmas(args.steps, args.spacing, dtype=torch.float64)
    noise = torch.randn(args.num_samples, 2, generator=torch.Generator().manual_seed(args.seed),
                        dtype=torch.float64)
    panels = [scatter(gmm.sample(args.num_samples, torch.Generator().manual_seed(1)), "exact samples")]
    for name in SAMPLERS:
        out = sample(gmm, noise * sigmas[0], sigmas, name, generator=args.seed, progress=False,
                     **schedule.sampler_options(name))
        panels.append(scatter(out, f"{name}, {args.steps} steps"))
    cols = 5
    rows = -(-len(panels) // cols)
    grid = Image.new("RGB", (cols * panels[0].width, rows * panels[0].height), "white")
    for i, p in enumerate(panels):
        grid.paste(p, ((i % cols) * p.width, (i // cols) * p.height))
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gmm_{args.schedule}_{args.spacing}_{args.steps}steps.png"
    grid.save(path)
    print(f"scatter plots of {len(SAMPLERS)} samplers: {path.resolve()}")
    return path


if __name__ == "__main__":
    main(HfArgumentParser(Args).parse_args_into_dataclasses()[0])
