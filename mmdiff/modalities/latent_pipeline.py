"""What image and video sampling share: latents through an autoencoder, labels or prompts as
conditions, pictures encoded as given content, and the model as a classifier.

``ImagePipeline`` and ``VideoPipeline`` differ only in the latent's shape (one picture or T
frames) and in what their ``__call__`` adds (img2img and inpainting; given frames).
"""
from __future__ import annotations

import numbers

import torch
from PIL import Image

from ..core.likelihood import class_log_likelihoods
from ..data.images import pil_to_tensor
from ..core import checks
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
    def check_output_type(output_type: str, allowed: tuple[str, ...] = OUTPUT_TYPES) -> None:
        if output_type not in allowed:
            names = [repr(a) for a in allowed]
            raise ValueError(f"output_type must be {', '.join(names[:-1])} or {names[-1]}, got {output_type!r}")

    # -------------------------------------------------------------------------- conditions
    def conditioning(self, class_labels=None, prompt=None, count: int | None = None,
                     count_name: str = "num_images", *, negative_prompt=None,
                     embeds: dict | None = None) -> tuple[dict, dict | None, int]:
        """``(cond, uncond, batch)`` for labels, a prompt (or prompts), prompt embeddings
        (``embeds``: diffusers' ``prompt_embeds``, ``prompt_attention_mask``,
        ``negative_prompt_embeds``, ``negative_prompt_attention_mask``), or ``count``
        unconditional samples (``count_name`` is the caller's argument, for messages)."""
        if count is not None:
            checks.integer(count_name, count, low=1)
        embeds = {k: v for k, v in (embeds or {}).items() if v is not None}
        if prompt is not None or embeds:
            if class_labels is not None:
                raise ValueError("pass class_labels or prompt, not both")
            if prompt is not None and "prompt_embeds" in embeds:
                raise ValueError("pass prompt or prompt_embeds, not both")
            if isinstance(prompt, str) and count is not None:
                prompt = [prompt] * count  # one prompt serves every sample
            elif isinstance(prompt, (list, tuple)) and count is not None and len(prompt) != count:
                raise ValueError(f"{len(prompt)} prompts for {count_name}={count}; pass one prompt or {count}")
            return self._prompt_conditioning(prompt, negative_prompt, embeds)
        labels, batch = self._labels(class_labels, count, count_name)
        if labels is None and self.components.get("text_encoder") is not None:
            # a text model's "no condition" is the empty prompt it was trained with for dropped ones
            context, mask = self._encode([""] * batch, "prompt")
            cond = {"context": context, "context_mask": mask}
            return cond, cond, batch
        cond = {"class_labels": labels} if labels is not None else {}
        return cond, self._uncond(labels), batch

    def _labels(self, class_labels, count, count_name):
        n = self.model.config.num_classes
        if class_labels is None:
            if n:
                raise ValueError(f"this model is class-conditional: pass class_labels (0..{n - 1}"
                                 + (f", e.g. {dict(enumerate(self.class_names))}" if self.class_names else "") + ")")
            return None, count or 1
        if not n:
            raise ValueError(f"this model is unconditional: pass {count_name} instead of class_labels")
        labels = torch.as_tensor([self._label_index(c) for c in _as_list(class_labels, "class_labels")])
        if labels.min() < 0 or labels.max() >= n:
            raise ValueError(f"class label out of range: got {labels.tolist()}, the model knows 0..{n - 1}")
        return labels.to(self.device), len(labels)

    def _label_index(self, label) -> int:
        if isinstance(label, str):
            if label not in self.class_names:
                raise ValueError(f"unknown class name {label!r}; this model's classes are {self.class_names}")
            return self.class_names.index(label)
        if isinstance(label, torch.Tensor) and label.ndim == 0 and not label.is_floating_point():
            label = label.item()
        return checks.integer("class_labels", label, low=0, fix="labels are class indices or class names")

    def _uncond(self, labels):
        if labels is None or self.model.null_class is None:
            return None
        return {"class_labels": torch.full_like(labels, self.model.null_class)}

    def _prompt_conditioning(self, prompt, negative_prompt, embeds: dict) -> tuple[dict, dict | None, int]:
        if "prompt_embeds" in embeds:
            context, mask = self._given_embeddings(embeds, "prompt_embeds", "prompt_attention_mask")
        else:
            context, mask = self._encode(prompt, "prompt")
        batch = len(context)
        if "negative_prompt_embeds" in embeds:
            empty, empty_mask = self._given_embeddings(embeds, "negative_prompt_embeds",
                                                       "negative_prompt_attention_mask", batch)
        elif self.components.get("text_encoder") is None:
            return {"context": context, "context_mask": mask}, None, batch  # guidance then asks for them
        else:
            negative = "" if negative_prompt is None else negative_prompt
            empty, empty_mask = self._encode([negative] * batch if isinstance(negative, str) else negative,
                                             "negative_prompt")
        if empty.shape[0] != batch or empty.shape[2:] != context.shape[2:]:
            checks.fail("negative_prompt_embeds", f"shaped ({batch}, M, {context.shape[-1]}) like the prompt's",
                        tuple(empty.shape))
        return {"context": context, "context_mask": mask}, {"context": empty, "context_mask": empty_mask}, batch

    def _encode(self, prompt, name: str):
        encoder = self.components.get("text_encoder")
        if encoder is None:
            raise ValueError(f"this pipeline has no text encoder: pass {name}_embeds (and its attention mask) "
                             f"instead of {name}" if self.model.config.context_dim else
                             "this model was not trained with a text encoder: pass class_labels, not prompt")
        prompts = _as_list(prompt, name)
        if not all(isinstance(p, str) for p in prompts):
            checks.fail(name, "a string or a list of strings", prompt, error=TypeError)
        return encoder(prompts)

    def _given_embeddings(self, embeds: dict, name: str, mask_name: str, batch: int | None = None):
        """Embeddings (B, M, D) as diffusers takes them, with their padding mask (B, M), 1 = a token."""
        context = embeds[name]
        width = self.model.config.context_dim
        if not isinstance(context, torch.Tensor) or context.ndim != 3 or context.shape[-1] != width:
            checks.fail(name, f"a (B, M, {width}) tensor of text-encoder states",
                        tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__,
                        error=TypeError if not isinstance(context, torch.Tensor) else ValueError)
        mask = embeds.get(mask_name)
        if mask is None:
            mask = torch.ones(context.shape[:2], dtype=torch.bool)
        if tuple(mask.shape) != tuple(context.shape[:2]):
            checks.fail(mask_name, f"shaped {tuple(context.shape[:2])} like {name}'s (B, M)", tuple(mask.shape))
        return context.to(self.device, self.dtype), mask.to(self.device).bool()

    # ---------------------------------------------------------------------------- pictures
    def picture_latents(self, image, batch: int, name: str = "image") -> torch.Tensor:
        """Latents (B, c, h, w) of pictures: PIL images (resized to the trained resolution), a list
        of them, or a tensor (C, H, W) / (B, C, H, W) in [-1, 1]; one picture serves the whole batch."""
        if isinstance(image, Image.Image) or (isinstance(image, list) and image and isinstance(image[0], Image.Image)):
            images = image if isinstance(image, list) else [image] * batch
            size = self.config.extra.get("resolution")
            x = torch.stack([pil_to_tensor(im.resize((size, size)) if size else im) for im in images]).float() / 127.5 - 1
        else:
            x = self._picture_tensor(image, name)
        x = x if x.ndim == 4 else x[None].expand(batch, *x.shape)
        if len(x) not in (1, batch):
            raise ValueError(f"{name} holds {len(x)} pictures for a batch of {batch}; pass one or {batch}")
        channels = self.autoencoder.image_channels
        x = x[:, :channels] if x.shape[1] >= channels else x.expand(-1, channels, -1, -1)
        return self.autoencoder.encode(x.expand(batch, *x.shape[1:]).to(self.device), sample=False).float()

    def _picture_tensor(self, image, name: str) -> torch.Tensor:
        """A tensor picture, checked: floating, (C, H, W) or (B, C, H, W) at the trained size, in [-1, 1]."""
        if not isinstance(image, torch.Tensor):
            checks.fail(name, "a PIL image, a list of them, or a float tensor in [-1, 1]", type(image).__name__,
                        error=TypeError)
        if not image.is_floating_point():
            checks.fail(name, "a float tensor in [-1, 1]", f"a {image.dtype} tensor",
                        "pixels 0..255 become image / 127.5 - 1, or pass a PIL image", TypeError)
        if image.ndim not in (3, 4):
            checks.fail(name, "shaped (C, H, W) or (B, C, H, W)", tuple(image.shape))
        size = self.picture_size()
        if size is not None and tuple(image.shape[-2:]) != size:
            checks.fail(name, f"{size[0]}x{size[1]} pixels, the size this model generates",
                        f"{image.shape[-2]}x{image.shape[-1]}", "resize it, or pass a PIL image (resized for you)")
        lo, hi = float(image.min()), float(image.max())
        if not (-1 - 1e-3 <= lo and hi <= 1 + 1e-3):
            checks.fail(name, "in [-1, 1]", f"values in [{lo:.4g}, {hi:.4g}]",
                        "pixels 0..255 become image / 127.5 - 1, 0..1 become 2 * image - 1")
        return image.float()

    def picture_size(self) -> tuple[int, int] | None:
        """(H, W) in pixels of what the model generates."""
        h, w = self.model.config.patch.size[-2:]
        f = self.autoencoder.downsample_factor
        return h * f, w * f

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
            latents = self.picture_latents(images, self.batch_of(images) or 1, name="images")
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


def _as_list(values, name: str) -> list:
    """One value or a sequence of them (a list, tuple or 1-D tensor), as a non-empty list."""
    if isinstance(values, (str, numbers.Integral)) or (isinstance(values, torch.Tensor) and values.ndim == 0):
        return [values]
    if isinstance(values, torch.Tensor):
        if values.ndim != 1:
            checks.fail(name, "one value or a 1-D sequence", f"a tensor of shape {tuple(values.shape)}", error=TypeError)
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        checks.fail(name, "one value or a list of them", values, error=TypeError)
    if not values:
        checks.fail(name, "a non-empty list", values, "pass at least one")
    return list(values)
