"""What image and video sampling share: latents through an autoencoder, labels or prompts as
conditions, pictures encoded as given content, and the model as a classifier.

``ImagePipeline`` and ``VideoPipeline`` differ only in the latent's shape (one picture or T
frames) and in what their ``__call__`` adds (img2img and inpainting; given frames).
"""
from __future__ import annotations

import torch
from PIL import Image

from ..core.likelihood import class_log_likelihoods
from ..data.images import pil_to_tensor
from ..pipelines import Pipeline

OUTPUT_TYPES = ("pil", "pt")


class LatentPipeline(Pipeline):
    """Conditioning on class labels (``class_labels``, ints or class names) or on prompts (a model
    trained with a text encoder), guided against the null class or the empty prompt."""

    @property
    def autoencoder(self):
        return self.components["autoencoder"]

    @property
    def class_names(self) -> list[str]:
        return list(self.config.extra.get("class_names", []))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> pictures in [-1, 1] (float32, on the host)."""
        return self.autoencoder.decode(latents.to(self.dtype)).float().clamp(-1, 1).cpu()

    @staticmethod
    def check_output_type(output_type: str) -> None:
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be 'pil' or 'pt', got {output_type!r}")

    # -------------------------------------------------------------------------- conditions
    def conditioning(self, class_labels=None, prompt=None, count: int | None = None) -> tuple[dict, dict | None, int]:
        """``(cond, uncond, batch)`` for labels, a prompt (or prompts), or ``count`` unconditional
        samples."""
        if prompt is not None:
            return self._prompt_conditioning(prompt)
        labels, batch = self._labels(class_labels, count)
        cond = {"class_labels": labels} if labels is not None else {}
        return cond, self._uncond(labels), batch

    def _labels(self, class_labels, count):
        n = self.model.config.num_classes
        if class_labels is None:
            if n:
                raise ValueError(f"this model is class-conditional: pass class_labels (0..{n - 1}"
                                 + (f", e.g. {dict(enumerate(self.class_names))}" if self.class_names else "") + ")")
            return None, count or 1
        if not n:
            raise ValueError("this model is unconditional: pass the number of samples instead of class_labels")
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

    # ---------------------------------------------------------------------------- pictures
    def picture_latents(self, image, batch: int) -> torch.Tensor:
        """Latents (B, c, h, w) of pictures: PIL images (resized to the trained resolution), a list
        of them, or a tensor (C, H, W) / (B, C, H, W) in [-1, 1]; one picture serves the whole batch."""
        if isinstance(image, Image.Image) or (isinstance(image, list) and isinstance(image[0], Image.Image)):
            images = image if isinstance(image, list) else [image] * batch
            size = self.config.extra.get("resolution")
            x = torch.stack([pil_to_tensor(im.resize((size, size)) if size else im) for im in images]).float() / 127.5 - 1
        else:
            x = torch.as_tensor(image)
        x = x if x.ndim == 4 else x[None].expand(batch, *x.shape)
        channels = self.autoencoder.image_channels
        x = x[:, :channels] if x.shape[1] >= channels else x.expand(-1, channels, -1, -1)
        return self.autoencoder.encode(x.to(self.device), sample=False).float()

    @staticmethod
    def batch_of(image) -> int | None:
        """How many pictures ``image`` holds, if it says (a list or a 4-D tensor)."""
        if isinstance(image, list):
            return len(image)
        if isinstance(image, torch.Tensor) and image.ndim == 4:
            return len(image)
        return None

    @torch.no_grad()
    def classify(self, images=None, *, latents: torch.Tensor | None = None, levels: int = 12, draws: int = 4,
                 sigma_range: tuple[float, float] = (0.2, 3.0), weighting: str = "elbo", seed: int = 0) -> torch.Tensor:
        """The model's posterior over its classes (B, K) for given images (PIL, a list of them or a
        tensor in [-1, 1]) or their ``latents`` (B, c, h, w), uniform prior: each class's diffusion
        ELBO (``core.likelihood``) on ``levels`` log-spaced noise levels in ``sigma_range`` (times
        ``sigma_data``) with ``draws`` noises per level, the same noises for every class.
        Deterministic for a given ``seed``."""
        if latents is None:
            latents = self.picture_latents(images, self.batch_of(images) or 1)
        n = self.model.config.num_classes
        if not n:
            raise ValueError("this model is unconditional: it has no classes to score")
        lo, hi = (s * self.config.sigma_data for s in sigma_range)
        scores = class_log_likelihoods(self.denoiser(), self.as_sample(latents), n, sigma_min=lo, sigma_max=hi,
                                       levels=levels, draws=draws, weighting=weighting,
                                       generator=torch.Generator().manual_seed(seed))
        return scores.log_softmax(-1).float()

    def as_sample(self, latents: torch.Tensor) -> torch.Tensor:
        """Picture latents (B, c, h, w) as what the model denoises (video: a still clip)."""
        return latents
