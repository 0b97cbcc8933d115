"""Sampling images: class-conditional, prompted or unconditional; SDEdit and inpainting through
the core's one given-content path."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ...data.images import pil_to_tensor
from ...media import save_image_grid, to_pil
from ...registry import register_pipeline
from ..latent_pipeline import LatentPipeline
from ...pipelines import Given, Start


@register_pipeline("image")
class ImagePipeline(LatentPipeline):
    """Class-conditional (or unconditional) image generation, SDEdit and inpainting."""

    default_model = "image-digits"

    def latent_shape(self) -> tuple[int, ...]:
        pc = self.model.config.patch
        return (pc.channels, *pc.size)

    @torch.no_grad()
    def __call__(self, class_labels=None, *, prompt: str | list[str] | None = None, num_images: int | None = None,
                 image=None, strength: float = 0.6, mask=None, output_type: str = "pil", options=None, **sampling):
        """``class_labels`` (ints or class names), ``prompt`` for a text-conditioned model, or
        ``num_images`` for an unconditional one; ``sampling``: the ``SamplingOptions`` fields
        (``num_inference_steps``, ``sampler``, ``guidance_scale``, ``generator``...) and the
        sampler's own options. ``image`` (+ ``strength``) starts from a given image (SDEdit);
        ``image`` + ``mask`` inpaints where ``mask == 1`` and keeps the rest. Returns PIL images,
        or a (B, C, H, W) tensor in [-1, 1] with ``output_type="pt"``."""
        self.check_output_type(output_type)
        opts = self.options(options, **sampling)
        cond, uncond, batch = self.conditioning(class_labels, prompt, num_images)
        shape = (batch, *self.latent_shape())
        given = start = None
        if image is not None and mask is not None:
            keep = 1 - F.interpolate(torch.as_tensor(mask, dtype=torch.float32).reshape(-1, 1, *torch.as_tensor(
                mask).shape[-2:]), size=shape[-2:], mode="nearest").to(self.device)
            given = Given(self.picture_latents(image, batch), keep.expand(shape), renoise=True)
        elif image is not None:
            start = Start(self.picture_latents(image, batch), strength)
        images = self.decode(self.solve(shape, opts, cond=cond, uncond=uncond, given=given, start=start))
        if output_type == "pt":
            return images
        out = to_pil(images)
        return out if isinstance(out, list) else [out]

    @staticmethod
    def save_grid(images, path, nrow: int | None = None, scale: int | None = None) -> Path:
        """PNG grid of PIL images or a (B, C, H, W) tensor in [-1, 1], enlarged to a viewable size
        unless ``scale`` says (1: the raw size)."""
        if isinstance(images, list):
            images = torch.stack([pil_to_tensor(im) for im in images]).float() / 127.5 - 1
        return save_image_grid(images, path, nrow=nrow, scale=scale)
