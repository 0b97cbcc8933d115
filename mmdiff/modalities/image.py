"""The 2-D image modality: images -> latents (an autoencoder) -> patches (the core DiT) and back.

    pipe = mmdiff.pipeline("image")                       # the shipped digits model
    images = pipe(class_labels=[3, 7], num_inference_steps=25, guidance_scale=2.0)
    pipe.save_grid(images, "digits.png")

Image-to-image (SDEdit) and inpainting reuse the core's one partial-denoising path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ..core.patch import PatchConfig
from ..data.images import build_image_dataset, pil_to_tensor
from ..media import save_image_grid, to_pil
from ..pipelines import Pipeline, register_component, register_pipeline
from .autoencoders import AutoencoderKL, IdentityAutoencoder, load_autoencoder
from .base import DiffusionArgs, LatentDiffusionTask

register_component(IdentityAutoencoder)
register_component(AutoencoderKL)
ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass
class ImageArgs(DiffusionArgs):
    resolution: int = field(default=8, metadata={"help": "images are resized/cropped to this size"})
    channels: int | None = field(default=None, metadata={"help": "1 or 3 (default: the data's)"})
    crop: str = field(default="center", metadata={"help": "center | random"})
    random_flip: bool = False


class ImageTask(LatentDiffusionTask):
    modality = "image"
    data_key = "image"

    def __init__(self, args: ImageArgs):
        super().__init__(args)
        self.pipeline_class = ImagePipeline

    def build_dataset(self):
        a = self.args
        kw = {"crop": a.crop, "random_flip": a.random_flip} if a.data != "digits" else {}
        return build_image_dataset(a.data, resolution=a.resolution, channels=a.channels, **kw)

    def build_autoencoder(self):
        return load_autoencoder(self.args.autoencoder if self.args.autoencoder != "identity"
                                else f"identity:{self.dataset.channels}")

    def patch_config(self, latent_shape):
        c, h, w = latent_shape
        return PatchConfig("image", c, (h, w))

    def validation(self, model, step, folder):
        pipe = self.pipeline(model)
        n = self.num_classes
        labels = [i % n for i in range(max(n, 1) * min(8, max(1, 64 // max(n, 1))))] if n else None
        images = pipe(class_labels=labels, num_images=None if n else 64, generator=0, progress=False,
                      output_type="pt")
        path = save_image_grid(images, Path(folder) / f"step-{step:08d}.png", nrow=n or 8)
        return {"samples": Image.open(path)}

    def pipeline_extra(self):
        return {**super().pipeline_extra(), "resolution": self.args.resolution}


@register_pipeline("image")
class ImagePipeline(Pipeline):
    """Class-conditional (or unconditional) image generation, SDEdit and inpainting."""

    @classmethod
    def default(cls, **kwargs):
        path = ASSETS / "image-digits"
        if not (path / "pipeline.json").is_file():
            raise FileNotFoundError(f"the shipped digits model is missing from {path}; reinstall mmdiff or "
                                    f"pass model=PATH")
        return cls.from_pretrained(path, **kwargs)

    @property
    def autoencoder(self):
        return self.components["autoencoder"]

    @property
    def class_names(self) -> list[str]:
        return list(self.config.extra.get("class_names", []))

    def latent_shape(self) -> tuple[int, ...]:
        pc = self.model.config.patch
        return (pc.channels, *pc.size)

    def _labels(self, class_labels, num_images):
        n = self.model.config.num_classes
        if class_labels is None:
            if n:
                raise ValueError(f"this model is class-conditional: pass class_labels (0..{n - 1}"
                                 + (f", e.g. {dict(enumerate(self.class_names))}" if self.class_names else "") + ")")
            return None, num_images or 1
        if not n:
            raise ValueError("this model is unconditional: pass num_images instead of class_labels")
        labels = torch.as_tensor([self.class_names.index(c) if isinstance(c, str) else c for c in class_labels])
        if labels.min() < 0 or labels.max() >= n:
            raise ValueError(f"class label out of range: got {labels.tolist()}, the model knows 0..{n - 1}")
        return labels.to(self.device), len(labels)

    def _uncond(self, labels):
        if labels is None:
            return None
        if self.model.null_class is None:
            return None
        return {"class_labels": torch.full_like(labels, self.model.null_class)}

    def _image_latents(self, image, shape):
        if isinstance(image, Image.Image) or (isinstance(image, list) and isinstance(image[0], Image.Image)):
            images = image if isinstance(image, list) else [image] * shape[0]
            size = self.config.extra.get("resolution")
            x = torch.stack([pil_to_tensor(im.resize((size, size)) if size else im) for im in images]).float() / 127.5 - 1
        else:
            x = torch.as_tensor(image)
        x = x if x.ndim == 4 else x[None].expand(shape[0], *x.shape)
        channels = self.autoencoder.image_channels
        x = x[:, :channels] if x.shape[1] >= channels else x.expand(-1, channels, -1, -1)
        return self.autoencoder.encode(x.to(self.device), sample=False).float()

    @torch.no_grad()
    def __call__(self, class_labels=None, *, num_images: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, guidance_rescale: float = 0.0, sampler: str | None = None,
                 spacing: str | None = None, generator=None, image=None, strength: float = 0.6, mask=None,
                 output_type: str = "pil", progress: bool = True, **sampler_options):
        """``class_labels`` (ints or class names) or ``num_images`` for an unconditional model.
        ``image`` (+ ``strength``) starts from a given image (SDEdit); ``image`` + ``mask`` inpaints
        where ``mask == 1`` and keeps the rest. Returns PIL images, or a (B, C, H, W) tensor in
        [-1, 1] with ``output_type="pt"``."""
        if num_inference_steps is not None and num_inference_steps <= 0:
            raise ValueError(f"num_inference_steps must be positive, got {num_inference_steps}")
        labels, batch = self._labels(class_labels, num_images)
        shape = (batch, *self.latent_shape())
        cond = {"class_labels": labels} if labels is not None else {}
        kw = dict(cond=cond, uncond=self._uncond(labels), guidance_scale=guidance_scale,
                  guidance_rescale=guidance_rescale, num_inference_steps=num_inference_steps, sampler=sampler,
                  spacing=spacing, generator=generator, progress=progress, **sampler_options)
        if image is not None and mask is not None:
            known = self._image_latents(image, shape)
            keep = 1 - F.interpolate(torch.as_tensor(mask, dtype=torch.float32).reshape(-1, 1, *torch.as_tensor(
                mask).shape[-2:]), size=shape[-2:], mode="nearest").to(self.device)
            latents = self.solve(shape, known=known, mask=keep.expand(shape), renoise_known=True, **kw)
        elif image is not None:
            latents = self.solve(shape, init=self._image_latents(image, shape), strength=strength, **kw)
        else:
            latents = self.solve(shape, **kw)
        images = self.autoencoder.decode(latents.to(self.dtype)).float().clamp(-1, 1).cpu()
        if output_type == "pt":
            return images
        if output_type != "pil":
            raise ValueError(f"output_type must be 'pil' or 'pt', got {output_type!r}")
        out = to_pil(images)
        return out if isinstance(out, list) else [out]

    @staticmethod
    def save_grid(images, path, nrow: int | None = None) -> Path:
        """PNG grid of PIL images or a (B, C, H, W) tensor in [-1, 1]."""
        if isinstance(images, list):
            images = torch.stack([pil_to_tensor(im) for im in images]).float() / 127.5 - 1
        return save_image_grid(images, path, nrow=nrow)
