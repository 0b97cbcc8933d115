"""Sampling images: class-conditional, prompted or unconditional; SDEdit and inpainting through
the core's one given-content path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...core import checks
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
        if mask is not None and image is None:
            raise ValueError("mask needs the image to inpaint: pass image= too")
        cond, uncond, batch = self.conditioning(class_labels, prompt, num_images)
        shape = (batch, *self.latent_shape())
        given = start = None
        if mask is not None:
            given = Given(self.picture_latents(image, batch), self._keep(mask, shape), renoise=True)
        elif image is not None:
            checks.number("strength", strength, low=0, high=1, open_low=True)
            start = Start(self.picture_latents(image, batch), strength)
        images = self.decode(self.solve(shape, opts, cond=cond, uncond=uncond, given=given, start=start))
        if output_type == "pt":
            return images
        out = to_pil(images)
        return out if isinstance(out, list) else [out]

    def _keep(self, mask, shape: tuple[int, ...]) -> torch.Tensor:
        """The latent-resolution mask of what to keep (1 - ``mask``, the region to repaint)."""
        if mask is not None and not isinstance(mask, torch.Tensor):
            mask = torch.as_tensor(np.asarray(mask, dtype=np.float32))
        if mask.ndim not in (2, 3, 4) or not mask.numel():
            checks.fail("mask", "shaped (H, W), (B, H, W) or (B, 1, H, W)", tuple(mask.shape))
        mask = mask.float()
        if float(mask.min()) < 0 or float(mask.max()) > 1:
            checks.fail("mask", "in [0, 1] (1 = repaint)", f"values in [{float(mask.min())}, {float(mask.max())}]")
        mask = mask.reshape(-1, 1, *mask.shape[-2:])
        if len(mask) not in (1, shape[0]):
            raise ValueError(f"mask holds {len(mask)} masks for a batch of {shape[0]}; pass one or {shape[0]}")
        return 1 - F.interpolate(mask, size=shape[-2:], mode="nearest").to(self.device).expand(shape)

    @staticmethod
    def save_grid(images, path, nrow: int | None = None, scale: int | None = None) -> Path:
        """PNG grid of PIL images or a (B, C, H, W) tensor in [-1, 1], enlarged to a viewable size
        unless ``scale`` says (1: the raw size)."""
        if isinstance(images, list):
            images = torch.stack([pil_to_tensor(im) for im in images]).float() / 127.5 - 1
        return save_image_grid(images, path, nrow=nrow, scale=scale)
