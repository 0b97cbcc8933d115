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

from ..core.likelihood import class_log_likelihoods
from ..core.patch import PatchConfig
from ..data.images import build_image_dataset, pil_to_tensor
from ..media import save_image_grid, to_pil
from ..pipelines import Pipeline, register_component, register_pipeline
from .autoencoders import AutoencoderKL, IdentityAutoencoder, load_autoencoder
from .base import DiffusionArgs, LatentDiffusionTask
from .encoders import TextEncoder

register_component(IdentityAutoencoder)
register_component(AutoencoderKL)
register_component(TextEncoder)
ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass
class ImageArgs(DiffusionArgs):
    resolution: int = field(default=8, metadata={"help": "images are resized/cropped to this size"})
    channels: int | None = field(default=None, metadata={"help": "1 or 3 (default: the data's)"})
    crop: str = field(default="center", metadata={"help": "center | random"})
    random_flip: bool = False
    text_encoder: str | None = field(default=None, metadata={
        "help": "local folder of a transformers text encoder: condition on prompts by cross-attention"})
    prompt_template: str = field(default="{label}", metadata={
        "help": "prompt made from a class name when the data has no captions, e.g. 'a photo of a {label}'"})
    max_prompt_length: int = 77


class ImageTask(LatentDiffusionTask):
    modality = "image"
    data_key = "image"

    def __init__(self, args: ImageArgs):
        super().__init__(args)
        self.pipeline_class = ImagePipeline
        self.text_encoder = None

    def setup(self):
        if self.args.text_encoder:
            self.text_encoder = TextEncoder.from_pretrained(self.args.text_encoder,
                                                            max_length=self.args.max_prompt_length)
        super().setup()

    def count_classes(self):
        return 0 if self.text_encoder is not None else super().count_classes()

    def extra_dit_options(self):
        return {"context_dim": self.text_encoder.hidden_size} if self.text_encoder is not None else {}

    def prompts(self, batch: dict) -> list[str]:
        if "caption" in batch:
            return list(batch["caption"])
        return [self.args.prompt_template.format(label=self.class_names[int(i)]) for i in batch["label"]]

    def conditioning(self, batch):
        if self.text_encoder is None:
            return super().conditioning(batch)
        prompts = self.prompts(batch)
        drop = torch.rand(len(prompts)) < self.args.class_dropout  # "" is the unconditional prompt
        self.text_encoder.to(batch[self.data_key].device)
        context, mask = self.text_encoder(["" if d else p for p, d in zip(prompts, drop.tolist())])
        return {"context": context, "context_mask": mask}

    def pipeline(self, model):
        pipe = super().pipeline(model)
        if self.text_encoder is not None:
            pipe.components["text_encoder"] = self.text_encoder
        return pipe

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
        n = self.num_classes or (len(self.class_names) if self.text_encoder is not None else 0)
        per_class = min(8, max(1, 64 // max(n, 1)))
        labels = [i % n for i in range(n * per_class)] if n else None
        if self.text_encoder is not None and labels is not None:
            prompts = [self.args.prompt_template.format(label=self.class_names[i]) for i in labels]
            images = pipe(prompt=prompts, generator=0, progress=False, output_type="pt")
        else:
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
        if labels is None or self.model.null_class is None:
            return None
        return {"class_labels": torch.full_like(labels, self.model.null_class)}

    def _prompt_conditioning(self, prompt) -> tuple[dict, dict, int]:
        encoder = self.components.get("text_encoder")
        if encoder is None:
            raise ValueError("this model was not trained with a text encoder: pass class_labels, not prompt")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        context, mask = encoder(prompts)
        empty, empty_mask = encoder([""] * len(prompts))
        return ({"context": context, "context_mask": mask}, {"context": empty, "context_mask": empty_mask},
                len(prompts))

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
    def classify(self, images=None, *, latents: torch.Tensor | None = None, levels: int = 12, draws: int = 4,
                 sigma_range: tuple[float, float] = (0.2, 3.0), weighting: str = "elbo", seed: int = 0) -> torch.Tensor:
        """The model's posterior over its classes (B, K) for given images (PIL, a list of them or a
        tensor in [-1, 1]) or their ``latents`` (B, c, h, w), uniform prior: each class's diffusion
        ELBO (``core.likelihood``) on ``levels`` log-spaced noise levels in ``sigma_range`` (times
        ``sigma_data``) with ``draws`` noises per level, the same noises for every class.
        Deterministic for a given ``seed``."""
        if latents is None:
            latents = self._image_latents(images, (self._batch_of(images) or 1, *self.latent_shape()))
        n = self.model.config.num_classes
        if not n:
            raise ValueError("this model is unconditional: it has no classes to score")
        lo, hi = (s * self.config.sigma_data for s in sigma_range)
        scores = class_log_likelihoods(self.denoiser(), self._as_sample(latents), n, sigma_min=lo, sigma_max=hi,
                                       levels=levels, draws=draws, weighting=weighting,
                                       generator=torch.Generator().manual_seed(seed))
        return scores.log_softmax(-1).float()

    def _as_sample(self, latents):
        """Image latents (B, c, h, w) as what the model denoises."""
        return latents

    @staticmethod
    def _batch_of(image) -> int | None:
        if isinstance(image, list):
            return len(image)
        if isinstance(image, torch.Tensor) and image.ndim == 4:
            return len(image)
        return None

    @torch.no_grad()
    def __call__(self, class_labels=None, *, prompt: str | list[str] | None = None, num_images: int | None = None,
                 num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, guidance_rescale: float = 0.0, sampler: str | None = None,
                 spacing: str | None = None, generator=None, image=None, strength: float = 0.6, mask=None,
                 output_type: str = "pil", progress: bool = True, **sampler_options):
        """``class_labels`` (ints or class names), ``prompt`` for a text-conditioned model, or
        ``num_images`` for an unconditional one.
        ``image`` (+ ``strength``) starts from a given image (SDEdit); ``image`` + ``mask`` inpaints
        where ``mask == 1`` and keeps the rest. Returns PIL images, or a (B, C, H, W) tensor in
        [-1, 1] with ``output_type="pt"``."""
        if num_inference_steps is not None and num_inference_steps <= 0:
            raise ValueError(f"num_inference_steps must be positive, got {num_inference_steps}")
        if prompt is not None:
            cond, uncond, batch = self._prompt_conditioning(prompt)
        else:
            labels, batch = self._labels(class_labels, num_images)
            cond = {"class_labels": labels} if labels is not None else {}
            uncond = self._uncond(labels)
        shape = (batch, *self.latent_shape())
        kw = dict(cond=cond, uncond=uncond, guidance_scale=guidance_scale,
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
