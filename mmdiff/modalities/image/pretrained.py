"""diffusers' image DiT pipelines as mmdiff ``ImagePipeline``s (registered in ``mmdiff.pretrained``).

``DiTPipeline`` (facebook/DiT-XL-2-*): class labels, the null class ``num_classes``.
``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline``: T5 captions (its tokenizer's padding mask),
PixArt-alpha 1024's micro-conditions. A bare DiT-family transformer folder loads as a
latent-space pipeline (no autoencoder: ``output_type="latent"``) on the DDPM
schedule every one of them was trained with.
"""
from __future__ import annotations

from pathlib import Path

from ...components.autoencoders import IdentityAutoencoder
from ...components.converters import SUPPORTED_CLASSES, load_diffusers_transformer
from ...pretrained import (SchedulerSettings, latent_components, part, read_scheduler, register_loader,
                           register_model_loader, trained_ddpm)
from ...registry import PipelineConfig
from .bins import BINNED_RESOLUTIONS

# The pipelines' own defaults (diffusers' __call__ signatures)
DIT_DEFAULTS = dict(steps=50, guidance_scale=4.0)
PIXART_DEFAULTS = dict(steps=20, guidance_scale=4.5)
# T5 tokens a caption is padded to: PixArt-alpha's 120, PixArt-Sigma's 300 (max_sequence_length)
CAPTION_TOKENS = {"PixArtAlphaPipeline": 120, "PixArtSigmaPipeline": 300}


def _config(sched: SchedulerSettings, defaults: dict, **extra) -> PipelineConfig:
    extra = {k: v for k, v in extra.items() if v is not None}
    if sched.init_noise:
        extra["init_noise"] = sched.init_noise
    # VP schedules: the prior's std is 1 in native units (sigma_data = 1 makes sqrt(sigma^2 + 1))
    return PipelineConfig(prediction=sched.prediction, sigma_data=1.0, sampler=sched.sampler, spacing=sched.spacing,
                          extra=extra, **defaults)


def _resolution(model, vae) -> int:
    return model.config.patch.size[-1] * vae.downsample_factor


@register_loader("DiTPipeline", task="image")
def load_dit_pipeline(cls, folder: Path, index: dict):
    components = latent_components(folder, index, load_diffusers_transformer(part(folder, index, "transformer")))
    model, vae = components["model"], components["autoencoder"]
    sched = read_scheduler(folder, index)
    # ImageNet's "tench, Tinca tinca": the first name of each class stands for it
    labels = index.get("id2label") or {}
    names = [labels[k].split(",")[0].strip() for k in sorted(labels, key=int)] if labels else None
    config = _config(sched, DIT_DEFAULTS, class_names=names, resolution=_resolution(model, vae))
    return cls(components, sched.schedule, config)


def load_pixart_pipeline(cls, folder: Path, index: dict):
    components = latent_components(folder, index, load_diffusers_transformer(part(folder, index, "transformer")),
                                   CAPTION_TOKENS[index["_class_name"]])
    sched = read_scheduler(folder, index)
    size = _resolution(components["model"], components["autoencoder"])
    config = _config(sched, PIXART_DEFAULTS, resolution=size, resolution_bins=size in BINNED_RESOLUTIONS or None)
    return cls(components, sched.schedule, config)


for _name in CAPTION_TOKENS:
    register_loader(_name, task="image")(load_pixart_pipeline)


def load_transformer_folder(cls, folder: Path, config: dict):
    """A bare transformer folder: the network in latent space, sampled on the DDPM schedule
    (linear betas 1e-4..0.02 over 1000 steps) DiT and PixArt were trained with."""
    model = load_diffusers_transformer(folder)
    settings = trained_ddpm()
    defaults = PIXART_DEFAULTS if model.config.context_dim else DIT_DEFAULTS
    autoencoder = IdentityAutoencoder(model.config.patch.channels)
    return cls({"model": model, "autoencoder": autoencoder}, settings.schedule, _config(settings, defaults))


for _name in SUPPORTED_CLASSES:
    register_model_loader(_name, task="image")(load_transformer_folder)
