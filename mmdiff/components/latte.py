"""Latte (Ma et al. 2024; diffusers ``LatteTransformer3DModel``) -> mmdiff's one ``DiT``.

Latte is PixArt-alpha's transformer made factorized over space and time, so it is the DiT with
``attention="factorized"`` and PixArt's options (``converters``), plus two of its own:

- each of its ``num_layers`` layers is a spatial block (self-attention within a frame, then
  cross-attention to the projected caption) followed by a temporal block (self-attention across
  frames at one position, no cross-attention): our ``depth = 2 * num_layers`` alternating blocks
  with ``temporal_cross_attention=False``;
- the spatial sin-cos table (PixArt's stretched one) is added at the input, the temporal table
  (``video_length`` rows) after the first spatial block, and not for a single frame:
  ``PatchConfig(time_positions="after_first_block")``.

One adaLN-single projection of the timestep feeds both block types and the final layer, as in
diffusers. The converted model takes our layout (B, T, C, H, W); Latte's (B, C, T, H, W) is the
pipeline's to swap. It returns eps (learned variance channels dropped)::

    latte_config(config: dict) -> DiTConfig
    convert_latte(config: dict, state_dict) -> (DiTConfig, tensors)
    load_latte_transformer(folder, *, variant=None, dtype=None, device=None) -> DiT
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmdiff.core.checkpoint import CheckpointError, read_config_json
from mmdiff.core.dit import DiT, DiTConfig
from mmdiff.core.patch import PatchConfig

from .converters import adaln_single_rules, apply_rules, build_dit, read_diffusers_weights, single_block_rules

Tensor = torch.Tensor
CLASS_NAME = "LatteTransformer3DModel"
# LatteTransformer3DModel's constructor defaults (diffusers' signature; a test compares).
LATTE_DEFAULTS = dict(num_attention_heads=16, attention_head_dim=88, in_channels=None, out_channels=None,
                      num_layers=1, dropout=0.0, cross_attention_dim=None, attention_bias=False, sample_size=64,
                      patch_size=None, activation_fn="geglu", num_embeds_ada_norm=None, norm_type="layer_norm",
                      norm_elementwise_affine=True, norm_eps=1e-5, caption_channels=None, video_length=16)
# What our DiT implements of the block options Latte passes on; Latte-1 uses exactly these.
REQUIRED = dict(activation_fn="gelu-approximate", attention_bias=True, norm_type="ada_norm_single",
                norm_elementwise_affine=False)

# maxin-cn/Latte-1's transformer/config.json (T5-XXL captions, 512 px: 64x64 latents, 16 frames)
LATTE_1 = dict(_class_name=CLASS_NAME, activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=72,
               caption_channels=4096, cross_attention_dim=1152, dropout=0.0, in_channels=4,
               norm_elementwise_affine=False, norm_eps=1e-6, norm_type="ada_norm_single", num_attention_heads=16,
               num_embeds_ada_norm=1000, num_layers=28, out_channels=8, patch_size=2, sample_size=64, video_length=16)


def _full_config(config: dict) -> dict:
    if config.get("_class_name") != CLASS_NAME:
        raise CheckpointError(f"expected a diffusers {CLASS_NAME} config, got _class_name "
                              f"{config.get('_class_name')!r}")
    full = {**LATTE_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    wrong = {k: full[k] for k, v in REQUIRED.items() if full[k] != v}
    if wrong:
        raise CheckpointError(f"{CLASS_NAME} option(s) {wrong} are not supported by mmdiff's DiT, which implements "
                              f"{({k: REQUIRED[k] for k in wrong})} (Latte-1's)")
    for name in ("in_channels", "patch_size", "caption_channels"):
        if full[name] is None:
            raise CheckpointError(f"{CLASS_NAME} config has no {name}; diffusers cannot build one without it either")
    return full


def latte_config(config: dict) -> DiTConfig:
    """The ``DiTConfig`` of a diffusers ``LatteTransformer3DModel`` ``config.json`` (a dict)."""
    c = _full_config(config)
    heads, sample, p, cin = c["num_attention_heads"], c["sample_size"], c["patch_size"], c["in_channels"]
    hidden = heads * c["attention_head_dim"]
    if c["cross_attention_dim"] != hidden:
        raise CheckpointError(f"{CLASS_NAME}: the caption projection outputs hidden_size {hidden}, but "
                              f"cross_attention_dim is {c['cross_attention_dim']}; mmdiff's DiT attends to the "
                              f"projected caption")
    cout = c["out_channels"] or cin
    learned = cout == 2 * cin  # as LattePipeline splits the variance off
    # diffusers' PatchEmbed: positions stretched to the trained grid, interpolation scale sample // 64
    patch = PatchConfig("video", cin, (c["video_length"], sample, sample), p, pos_base=sample // p,
                        pos_scale=float(max(sample // 64, 1)), time_positions="after_first_block")
    return DiTConfig(patch=patch, out_channels=None if learned or cout == cin else cout, learned_sigma=learned,
                     hidden_size=hidden, depth=2 * c["num_layers"], num_heads=heads, mlp_ratio=4.0,
                     attention="factorized", temporal_cross_attention=False, num_classes=0,
                     context_dim=c["caption_channels"], context_projection=True, context_norm=False, adaln="single",
                     attention_norm_eps=c["norm_eps"], mlp_norm_eps=c["norm_eps"])


def convert_latte(config: dict, state_dict: dict[str, Tensor]) -> tuple[DiTConfig, dict[str, Tensor]]:
    """``(DiTConfig, tensors)`` from a ``LatteTransformer3DModel``'s config dict and state dict;
    a state dict on the meta device is a dry run (names and shapes only)."""
    ours = latte_config(config)
    rules = adaln_single_rules(ours)
    for i in range(ours.depth // 2):  # Latte's layer i: our spatial block 2i, temporal block 2i + 1
        rules += single_block_rules(2 * i, f"transformer_blocks.{i}", cross=True)
        rules += single_block_rules(2 * i + 1, f"temporal_transformer_blocks.{i}", cross=False)
    # tables diffusers no longer saves (non-persistent buffers) are checked when an old file has them
    fixed = {"patcher.pos_space": "pos_embed.pos_embed", "patcher.pos_time": "temp_pos_embed"}
    return ours, apply_rules(rules, state_dict, ours, f"diffusers {CLASS_NAME}", fixed=fixed)


def load_latte_transformer(folder: str | Path, *, variant: str | None = None, dtype: torch.dtype | None = None,
                           device: str | torch.device | None = None) -> DiT:
    """Our ``DiT`` from a diffusers ``LatteTransformer3DModel`` folder (a Latte pipeline's
    ``transformer/``: ``config.json`` + safetensors weights)."""
    folder = Path(folder)
    config = read_config_json(folder)
    return build_dit(*convert_latte(config, read_diffusers_weights(folder, variant)), dtype=dtype, device=device)
