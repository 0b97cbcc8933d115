"""diffusers' ``LattePipeline`` (maxin-cn/Latte-1) as an mmdiff ``VideoPipeline`` (registered in
``mmdiff.pretrained``); a bare ``LatteTransformer3DModel`` folder loads as a latent-space one.

What is Latte's own and kept at this boundary (``extra["layout"] == "latte"``):

- latents are (B, C, T, h, w): ``latents=`` is taken, and ``output_type="latent"`` returned, in
  that layout, so the same noise gives the same video as diffusers; inside, (B, T, C, h, w);
- frames are decoded one by one through the image VAE, ``decode_chunk_size`` at a time;
- captions (T5, 120 tokens, lower-cased) reach the transformer without an attention mask, as
  ``LattePipeline(mask_feature=True)`` prepares them (``latte_prompts``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ...components.autoencoders import IdentityAutoencoder
from ...components.latte import CLASS_NAME, load_latte_transformer
from ...pretrained import (SchedulerSettings, latent_components, part, read_scheduler, register_loader,
                           register_model_loader, trained_ddpm)
from ...registry import PipelineConfig

LAYOUT = "latte"
# LattePipeline.__call__'s defaults and its tokenizer length
LATTE_DEFAULTS = dict(steps=50, guidance_scale=7.5)
CAPTION_TOKENS = 120


def _config(sched: SchedulerSettings, **extra) -> PipelineConfig:
    extra = {"layout": LAYOUT, **{k: v for k, v in extra.items() if v is not None}}
    if sched.init_noise:
        extra["init_noise"] = sched.init_noise
    # VP schedules: the prior's std is 1 in native units
    return PipelineConfig(prediction=sched.prediction, sigma_data=1.0, sampler=sched.sampler, spacing=sched.spacing,
                          extra=extra, **LATTE_DEFAULTS)


@register_loader("LattePipeline", task="video")
def load_latte_pipeline(cls, folder: Path, index: dict):
    components = latent_components(folder, index, load_latte_transformer(part(folder, index, "transformer")),
                                   CAPTION_TOKENS)
    sched = read_scheduler(folder, index)
    resolution = components["model"].config.patch.size[-1] * components["autoencoder"].downsample_factor
    return cls(components, sched.schedule, _config(sched, resolution=resolution))


@register_model_loader(CLASS_NAME, task="video")
def load_latte_transformer_folder(cls, folder: Path, config: dict):
    """A bare transformer folder: the network in latent space (``output_type="latent"``), on the
    DDPM schedule Latte was trained with (linear betas 1e-4..0.02, 1000 steps)."""
    model = load_latte_transformer(folder)
    settings = trained_ddpm()
    autoencoder = IdentityAutoencoder(model.config.patch.channels)
    return cls({"model": model, "autoencoder": autoencoder}, settings.schedule, _config(settings))


def latte_prompts(cond: dict, uncond: dict | None, from_text: bool) -> tuple[dict, dict | None]:
    """The caption states as LattePipeline hands them to its transformer, which takes no mask:
    from a prompt of one video, the prompt's and the negative's first n states (n = the prompt's
    tokens); from several, the padding states of the prompts zeroed and the negatives whole.
    Embeddings given directly attend wherever their masks (default: all ones) say."""
    if not from_text:
        return cond, uncond
    context, mask = cond["context"], cond["context_mask"]
    if len(context) == 1:
        keep = int(mask.sum())
        cond = {"context": context[:, :keep], "context_mask": mask[:, :keep]}
        if uncond is not None:
            uncond = {"context": uncond["context"][:, :keep], "context_mask": torch.ones_like(mask[:, :keep])}
        return cond, uncond
    cond = {"context": context * mask[..., None].to(context.dtype), "context_mask": torch.ones_like(mask)}
    if uncond is not None:
        uncond = {**uncond, "context_mask": torch.ones_like(uncond["context_mask"])}
    return cond, uncond
