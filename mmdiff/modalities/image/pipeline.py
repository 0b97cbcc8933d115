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
from .bins import binned_size, resize_and_crop
from ...pipelines import Given, Start


IMAGE_OUTPUTS = ("pil", "pt", "latent")


@register_pipeline("image")
class ImagePipeline(LatentPipeline):
    """Class-conditional (or unconditional) image generation, SDEdit and inpainting."""

    default_model = "image-digits"

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """(c, h, w) of the latents of ``height`` x ``width`` pixels (default: the trained size)."""
        pc = self.model.config.patch
        if height is None and width is None:
            return (pc.channels, *pc.size)
        f, step = self.autoencoder.downsample_factor, self.autoencoder.downsample_factor * pc.patch
        size = [pc.size[0] * f if height is None else height, pc.size[1] * f if width is None else width]
        for name, value in zip(("height", "width"), size):
            checks.integer(name, value, low=step)
            if value % step:
                checks.fail(name, f"a multiple of {step} pixels (autoencoder factor {f} x patch {pc.patch})", value,
                            f"use {value // step * step} or {(value // step + 1) * step}")
        return (pc.channels, size[0] // f, size[1] // f)

    @torch.no_grad()
    def __call__(self, class_labels=None, *, prompt: str | list[str] | None = None, negative_prompt=None,
                 num_images: int | None = None, height: int | None = None, width: int | None = None,
                 image=None, strength: float = 0.6, mask=None, prompt_embeds=None, prompt_attention_mask=None,
                 negative_prompt_embeds=None, negative_prompt_attention_mask=None, use_resolution_binning: bool = True,
                 output_type: str = "pil", options=None, **sampling):
        """``class_labels`` (ints or class names), ``prompt`` for a text-conditioned model, or
        ``num_images`` for an unconditional one; ``sampling``: the ``SamplingOptions`` fields
        (``num_inference_steps``, ``sampler``, ``guidance_scale``, ``generator``, ``latents``...)
        and the sampler's own options. ``prompt_embeds``, ``prompt_attention_mask``,
        ``negative_prompt_embeds``, ``negative_prompt_attention_mask``: text-encoder states given
        directly, with diffusers' names and meaning (mask 1 = a token, 0 = padding).
        ``height``/``width`` in pixels (default: the trained size); PixArt models generate at the
        trained bin nearest in aspect ratio and resize back unless ``use_resolution_binning=False``,
        as diffusers. ``image`` (+ ``strength``)
        starts from a given image (SDEdit); ``image`` + ``mask`` inpaints where ``mask == 1`` and
        keeps the rest. Returns PIL images, a (B, C, H, W) tensor in [-1, 1] with
        ``output_type="pt"``, or the final latents with ``"latent"``."""
        self.check_output_type(output_type, IMAGE_OUTPUTS)
        opts = self.options(options, **sampling)
        if mask is not None and image is None:
            raise ValueError("mask needs the image to inpaint: pass image= too")
        embeds = dict(prompt_embeds=prompt_embeds, prompt_attention_mask=prompt_attention_mask,
                      negative_prompt_embeds=negative_prompt_embeds,
                      negative_prompt_attention_mask=negative_prompt_attention_mask)
        cond, uncond, batch = self.conditioning(class_labels, prompt, num_images, negative_prompt=negative_prompt,
                                                embeds=embeds)
        if uncond is None and prompt_embeds is not None and opts.guidance_scale != 1.0:
            raise ValueError("guidance_scale != 1 with prompt_embeds needs negative_prompt_embeds (and "
                             "negative_prompt_attention_mask): this pipeline has no text encoder for the empty prompt; "
                             "or pass guidance_scale=1")
        requested = None
        if use_resolution_binning and self.config.extra.get("resolution_bins") and (height or width):
            requested = self.picture_size() if not (height and width) else (height, width)
            requested = (height or requested[0], width or requested[1])
            height, width = binned_size(*requested, self.config.extra["resolution"])
        shape = (batch, *self.latent_shape(height, width))
        self._add_size_conditions(cond, uncond, shape)
        given = start = None
        if mask is not None:
            given = Given(self.picture_latents(image, batch), self._keep(mask, shape), renoise=True)
        elif image is not None:
            checks.number("strength", strength, low=0, high=1, open_low=True)
            start = Start(self.picture_latents(image, batch), strength)
        latents = self.solve(shape, opts, cond=cond, uncond=uncond, given=given, start=start)
        if output_type == "latent":
            return latents
        if requested is None:
            images = self.decode(latents)
        else:  # resized before clamping, as diffusers
            images = self.autoencoder.decode(latents.to(self.dtype)).float().cpu()
            images = resize_and_crop(images, *requested).clamp(-1, 1)
        if output_type == "pt":
            return images
        out = to_pil(images)
        return out if isinstance(out, list) else [out]

    def _add_size_conditions(self, cond: dict, uncond: dict | None, shape: tuple[int, ...]) -> None:
        """PixArt-alpha 1024's micro-conditions: the picture's [height, width] in pixels and
        height / width, the same for the guided and the unguided half (as diffusers)."""
        if not self.model.config.size_conditioning:
            return
        f = self.autoencoder.downsample_factor
        h, w = shape[-2] * f, shape[-1] * f
        sizes = {"resolution": torch.tensor([[float(h), float(w)]], device=self.device).expand(shape[0], 2),
                 "aspect_ratio": torch.tensor([[h / w]], device=self.device).expand(shape[0], 1)}
        for part in (cond, uncond):
            if part is not None:
                part.update(sizes)

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
