"""Published DiT-family weights -> mmdiff's one ``DiT``, with the same function (fp32: <= 1e-5).

Every converter returns ``(DiTConfig, tensors)``, a config and a state dict that ``DiT(config)``
loads strictly; ``build_dit`` does that without materialising random weights first::

    config_from_diffusers(config: dict) -> DiTConfig
    convert_diffusers(config: dict, state_dict) -> (DiTConfig, tensors)
    load_diffusers_transformer(folder, *, variant=None, dtype=None, device=None) -> DiT
    convert_original_state_dict(state_dict, kind="dit" | "sit", *, num_heads=None,
                                num_classes=None, flow_timesteps=1000) -> (DiTConfig, tensors)
    convert_original_checkpoint(path, kind=..., **same) -> (DiTConfig, tensors)
    build_dit(config, tensors, *, dtype=None, device=None) -> DiT

``folder`` is a diffusers model folder (a pipeline's ``transformer/``: ``config.json`` and
``diffusion_pytorch_model[.variant].safetensors``, sharded or not). Supported diffusers classes:
``DiTTransformer2DModel``, ``PixArtTransformer2DModel`` and the legacy ``Transformer2DModel`` with
``norm_type`` "ada_norm_zero" (facebook/DiT-XL-2-*) or "ada_norm_single" (PixArt-alpha repos),
read as diffusers itself reads them: as the first two. Original checkpoints: facebookresearch/DiT
and willisma/SiT ``.pt`` files (a training checkpoint's "ema" weights, as their sample.py).

What the converted model computes:

- DiT (either source): eps, with the variance channels of learned sigma dropped, conditioned on the
  DDPM step index and the class label (the null class is ``num_classes``).
- SiT: velocity on the interpolant ``x_t = t x_data + (1 - t) noise`` becomes mmdiff's flow target
  ``eps - x0`` at noise fraction ``s = 1 - t``, conditioned on ``FlowSchedule.timestep`` =
  ``flow_timesteps * s``: ``timestep_scale`` turns it back into a fraction, the first timestep
  layer absorbs ``t = 1 - s`` (the sinusoids of 1 - s are a fixed rotation of those of s) and
  the output layer the sign. No special case in the model.
- PixArt: eps (variance dropped), conditioned on the DDPM step index, the projected caption
  (cross-attention mask: 1 = attend) and, for ``size_conditioning``, resolution and aspect ratio.

``torch.load`` runs only in ``convert_original_checkpoint``, with ``weights_only=True``; every
other path reads safetensors.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mmdiff.core.checkpoint import FOREIGN_MODELS, CheckpointError, check_state_dict, load_tensors, read_config_json
from mmdiff.core.dit import SIZES, DiT, DiTConfig, timestep_frequencies
from mmdiff.core.patch import PatchConfig, build_patcher

Tensor = torch.Tensor
SUPPORTED_CLASSES = ("DiTTransformer2DModel", "PixArtTransformer2DModel", "Transformer2DModel")
ORIGINAL_KINDS = ("dit", "sit")
# diffusers reads a legacy Transformer2DModel folder as one of the new classes, by norm type.
LEGACY_NORMS = {"ada_norm_zero": "DiTTransformer2DModel", "ada_norm_single": "PixArtTransformer2DModel"}
# The constructor defaults of each class (diffusers' signatures; tests compare), for keys a
# config.json may leave out. A legacy config gets those of the class it is read as, as in diffusers.
_COMMON = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, num_layers=28, patch_size=2,
               activation_fn="gelu-approximate", num_embeds_ada_norm=1000, attention_bias=True,
               norm_elementwise_affine=False, cross_attention_dim=None, caption_channels=None,
               interpolation_scale=None, use_additional_conditions=None, attention_type="default",
               only_cross_attention=False, double_self_attention=False, num_vector_embeds=None)
DIFFUSERS_DEFAULTS = {
    "DiTTransformer2DModel": {**_COMMON, "out_channels": None, "sample_size": 32, "norm_type": "ada_norm_zero",
                              "norm_eps": 1e-5},
    "PixArtTransformer2DModel": {**_COMMON, "out_channels": 8, "sample_size": 128, "cross_attention_dim": 1152,
                                 "norm_type": "ada_norm_single", "norm_eps": 1e-6},
}
# What our DiT implements of the options diffusers' blocks offer; anything else is refused.
_REQUIRED = dict(activation_fn="gelu-approximate", attention_bias=True, norm_elementwise_affine=False,
                 attention_type="default", only_cross_attention=False, double_self_attention=False,
                 num_vector_embeds=None)
# diffusers' AdaLayerNormZero normalises before attention with a fixed eps, whatever norm_eps says.
ADA_NORM_ZERO_EPS = 1e-6
# diffusers' CombinedTimestepLabelEmbeddings always drops labels (0.1), so its table has a null row.
DIFFUSERS_CLASS_DROPOUT = 0.1
# DiT and SiT train with class dropout 0.1: the label table's last row is the null class.
ORIGINAL_CLASS_DROPOUT = 0.1


# ------------------------------------------------------------------------------- mapping rules

@dataclass(frozen=True)
class Rule:
    """Our tensor ``ours`` from the source tensors ``sources``. ``how``: "copy"; "cat" (rows
    stacked, e.g. q, k, v); "patch_in" (a conv patch embedding, (D, C, p, p) -> (D, C p p));
    "patch_out" (output rows laid out (p, q, c) -> ours (c, p, q))."""

    ours: str
    sources: tuple[str, ...]
    how: str = "copy"


def _linear(ours: str, theirs: str | tuple[str, ...], how: str = "copy") -> list[Rule]:
    theirs = (theirs,) if isinstance(theirs, str) else theirs
    bias_how = "copy" if how == "patch_in" else how  # a conv's bias is already per output channel
    return [Rule(f"{ours}.{kind}", tuple(f"{t}.{kind}" for t in theirs), h)
            for kind, h in (("weight", how), ("bias", bias_how))]


def _source_shape(rule: Rule, shape: tuple[int, ...], patch: PatchConfig) -> tuple[int, ...]:
    """The shape each source tensor of ``rule`` must have for our tensor of ``shape``."""
    if rule.how == "cat":
        return (shape[0] // len(rule.sources), *shape[1:])
    if rule.how == "patch_in":
        return (shape[0], patch.channels, patch.patch, patch.patch)
    return shape


def _transform(rule: Rule, parts: list[Tensor], patch: PatchConfig) -> Tensor:
    if rule.how == "cat":
        return torch.cat(parts)
    (t,) = parts
    if rule.how == "patch_in":
        return t.reshape(t.shape[0], -1)  # a conv's (c, p, q) order is our token layout
    if rule.how == "patch_out":
        p = patch.patch
        rows = t.reshape(p, p, -1, *t.shape[1:])  # (p, q, c, ...)
        return rows.movedim(2, 0).reshape(t.shape)  # (c, p, q, ...)
    return t


def apply_rules(rules: list[Rule], state_dict: dict, config: DiTConfig, source: str,
           tied: dict[str, str] | None = None, fixed: dict[str, str] | None = None) -> dict[str, Tensor]:
    """Our state dict from ``state_dict`` by ``rules``. ``tied``: source tensors that must equal
    another source tensor (copies we keep once); ``fixed``: source tables that must equal ours
    (our name -> theirs). Missing, unexpected, misshapen or differing tensors are named."""
    with torch.device("meta"):
        expected = DiT(config).state_dict()
    out, used = {}, set()
    for rule in rules:
        want = _source_shape(rule, tuple(expected[rule.ours].shape), config.patch)
        parts = [_source(state_dict, name, want, source) for name in rule.sources]
        out[rule.ours] = _transform(rule, parts, config.patch)
        used.update(rule.sources)
    for name, ref in (tied or {}).items():
        _check_equal(_source(state_dict, name, tuple(state_dict[ref].shape), source), state_dict[ref], name, ref,
                     source)
        used.add(name)
    # fixed sin-cos tables: ours, computed (patcher.pos of images, pos_space/pos_time of video)
    out.update({f"patcher.{k}": v for k, v in build_patcher(config.patch, config.hidden_size).named_buffers()})
    for ours, theirs in (fixed or {}).items():
        if theirs in state_dict:
            _check_table(state_dict[theirs], out[ours], theirs, source)
            used.add(theirs)
    unexpected = [k for k in state_dict if k not in used]
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor '{unexpected[0]}' that the converted DiT has no place "
                              f"for ({len(unexpected)} unexpected in all): a different architecture or config")
    check_state_dict(expected, out, source)
    return out


def _source(state_dict: dict, name: str, shape: tuple[int, ...], source: str) -> Tensor:
    if name not in state_dict:
        raise CheckpointError(f"{source}: missing tensor '{name}' (expected shape {shape})")
    t = state_dict[name]
    if tuple(t.shape) != shape:
        raise CheckpointError(f"{source}: tensor '{name}' has shape {tuple(t.shape)}, the config implies {shape}")
    return t


def _check_equal(t: Tensor, ref: Tensor, name: str, ref_name: str, source: str) -> None:
    if t.is_meta or ref.is_meta:  # a dry run on meta tensors checks names and shapes only
        return
    if not torch.equal(t, ref):
        diff = (t.double() - ref.double()).abs().max().item()
        raise CheckpointError(
            f"{source}: tensor '{name}' differs from '{ref_name}' (max abs difference {diff:.3g}). mmdiff's DiT has "
            f"one timestep and label embedder, which diffusers' DiT copies into every block; copies that differ "
            f"mean a model that is not a DiT, and cannot be converted")


def _check_table(stored: Tensor, ours: Tensor, name: str, source: str, atol: float = 1e-5) -> None:
    """A stored fixed positional table against ours; both are float32 roundings of float64 sin-cos."""
    stored = stored.reshape(-1, stored.shape[-1]).double()
    if stored.shape == ours.shape and stored.is_meta:  # a dry run: no values to compare
        return
    if stored.shape != ours.shape:
        problem = f"shape {tuple(stored.shape)}, not {tuple(ours.shape)}"
    elif (stored - ours.double()).abs().max() > atol:
        problem = f"max abs difference {(stored - ours.double()).abs().max().item():.3g}"
    else:
        return
    raise CheckpointError(f"{source}: the stored positional table '{name}' is not the 2-D sin-cos table of the "
                          f"config's grid ({problem}); the model was trained with other positions")


def _block_rules(i: int, theirs: str, attn1: str = "attn1") -> list[Rule]:
    """Self-attention and MLP of diffusers' BasicTransformerBlock ``theirs`` -> our block ``i``."""
    ours = f"blocks.{i}"
    return [*_linear(f"{ours}.attn.qkv", tuple(f"{theirs}.{attn1}.to_{x}" for x in "qkv"), "cat"),
            *_linear(f"{ours}.attn.proj", f"{theirs}.{attn1}.to_out.0"),
            *_linear(f"{ours}.mlp.fc1", f"{theirs}.ff.net.0.proj"),
            *_linear(f"{ours}.mlp.fc2", f"{theirs}.ff.net.2")]


# ------------------------------------------------------------------------------------ diffusers

def _diffusers_kind(config: dict) -> tuple[str, dict]:
    """(the class diffusers runs, the config with that class's defaults filled in)."""
    name = config.get("_class_name")
    if name not in SUPPORTED_CLASSES:
        raise CheckpointError(f"cannot convert a diffusers {name or 'config without _class_name'}: mmdiff's DiT "
                              f"runs {', '.join(SUPPORTED_CLASSES)} (the last with norm_type "
                              f"{' or '.join(repr(n) for n in LEGACY_NORMS)})")
    if name == "Transformer2DModel":
        norm = config.get("norm_type", "layer_norm")
        if norm not in LEGACY_NORMS or config.get("patch_size", 0) is None:
            raise CheckpointError(f"a diffusers Transformer2DModel with norm_type '{norm}' and patch_size "
                                  f"{config.get('patch_size')} is not a DiT (it is a UNet's attention block); "
                                  f"supported are patched ones with norm_type {' or '.join(LEGACY_NORMS)}")
        name = LEGACY_NORMS[norm]
    full = {**DIFFUSERS_DEFAULTS[name], **{k: v for k, v in config.items() if not k.startswith("_")}}
    wrong = {k: full[k] for k, v in _REQUIRED.items() if full[k] != v}
    if wrong:
        raise CheckpointError(f"diffusers {name} option(s) {wrong} are not supported by mmdiff's DiT, "
                              f"which implements {({k: _REQUIRED[k] for k in wrong})}")
    return name, full


def config_from_diffusers(config: dict) -> DiTConfig:
    """The ``DiTConfig`` of a diffusers transformer's ``config.json`` (a dict with ``_class_name``)."""
    name, c = _diffusers_kind(config)
    heads, sample, p, cin = c["num_attention_heads"], c["sample_size"], c["patch_size"], c["in_channels"]
    hidden = heads * c["attention_head_dim"]
    cout = c["out_channels"] or cin
    learned = cout == 2 * cin  # as diffusers' pipelines decide to split the variance off
    pixart = name == "PixArtTransformer2DModel"
    # PatchEmbed's base_size is the trained grid; only PixArt passes an interpolation scale.
    scale = (c["interpolation_scale"] or max(sample // 64, 1)) if pixart else 1
    common = dict(patch=PatchConfig("image", cin, (sample, sample), p, pos_base=sample // p, pos_scale=float(scale)),
                  out_channels=None if learned or cout == cin else cout, learned_sigma=learned,
                  hidden_size=hidden, depth=c["num_layers"], num_heads=heads, mlp_ratio=4.0)
    if not pixart:
        if c["cross_attention_dim"] is not None:
            raise CheckpointError("a diffusers DiT with cross_attention_dim (a LayerNorm-ed cross-attention in "
                                  "every adaLN-Zero block) is not supported")
        return DiTConfig(**common, num_classes=c["num_embeds_ada_norm"], class_dropout=DIFFUSERS_CLASS_DROPOUT,
                         frequency_shift=1.0, attention_norm_eps=ADA_NORM_ZERO_EPS, mlp_norm_eps=c["norm_eps"])
    caption, cross = c["caption_channels"], c["cross_attention_dim"]
    if caption is not None and cross != hidden:
        raise CheckpointError(f"PixArt's caption projection outputs hidden_size {hidden}, but cross_attention_dim "
                              f"is {cross}")
    extra = sample == 128 if c["use_additional_conditions"] is None else c["use_additional_conditions"]
    return DiTConfig(**common, num_classes=0, context_dim=caption or cross or 0, context_projection=caption is not None,
                     context_norm=False, adaln="single", size_conditioning=bool(extra),
                     attention_norm_eps=c["norm_eps"], mlp_norm_eps=c["norm_eps"])


def convert_diffusers(config: dict, state_dict: dict[str, Tensor]) -> tuple[DiTConfig, dict[str, Tensor]]:
    """``(DiTConfig, tensors)`` from a diffusers transformer's config dict and state dict. With a
    state dict on the meta device it is a dry run that checks names and shapes only."""
    name, _ = _diffusers_kind(config)
    ours = config_from_diffusers(config)
    source = f"diffusers {name}"
    # Old saves keep PatchEmbed's table (now a non-persistent buffer): checked, not loaded.
    fixed = {"patcher.pos": "pos_embed.pos_embed"}
    if name == "PixArtTransformer2DModel":
        return ours, apply_rules(_pixart_rules(ours), state_dict, ours, source, fixed=fixed)
    rules, tied = _dit_rules(ours)
    return ours, apply_rules(rules, state_dict, ours, source, tied=tied, fixed=fixed)


def _dit_rules(config: DiTConfig) -> tuple[list[Rule], dict[str, str]]:
    emb = "transformer_blocks.{}.norm1.emb."
    embedders = {"t_embedder.mlp.0": "timestep_embedder.linear_1", "t_embedder.mlp.2": "timestep_embedder.linear_2"}
    rules = [*_linear("x_embedder", "pos_embed.proj", "patch_in"),
             *(r for ours, theirs in embedders.items() for r in _linear(ours, emb.format(0) + theirs)),
             Rule("y_embedder.weight", (emb.format(0) + "class_embedder.embedding_table.weight",)),
             *_linear("final_layer.adaLN_modulation.1", "proj_out_1"),
             *_linear("final_layer.linear", "proj_out_2", "patch_out")]
    tied = {}
    for i in range(config.depth):
        rules += [*_block_rules(i, f"transformer_blocks.{i}"),
                  *_linear(f"blocks.{i}.adaLN_modulation.1", f"transformer_blocks.{i}.norm1.linear")]
        if i:  # every block's copy of the embedders must be block 0's
            names = [f"{theirs}.{kind}" for theirs in embedders.values() for kind in ("weight", "bias")]
            names.append("class_embedder.embedding_table.weight")
            tied.update({emb.format(i) + n: emb.format(0) + n for n in names})
    return rules, tied


def _pixart_rules(config: DiTConfig) -> list[Rule]:
    rules = adaln_single_rules(config)
    for i in range(config.depth):
        rules += single_block_rules(i, f"transformer_blocks.{i}", cross=bool(config.context_dim))
    return rules


def single_block_rules(i: int, theirs: str, cross: bool) -> list[Rule]:
    """diffusers' ada_norm_single BasicTransformerBlock ``theirs`` (PixArt, Latte) -> our block ``i``."""
    rules = [*_block_rules(i, theirs), Rule(f"blocks.{i}.scale_shift_table", (f"{theirs}.scale_shift_table",))]
    if cross:
        rules += [*_linear(f"blocks.{i}.cross_attn.q", f"{theirs}.attn2.to_q"),
                  *_linear(f"blocks.{i}.cross_attn.kv", (f"{theirs}.attn2.to_k", f"{theirs}.attn2.to_v"), "cat"),
                  *_linear(f"blocks.{i}.cross_attn.proj", f"{theirs}.attn2.to_out.0")]
    return rules


def adaln_single_rules(config: DiTConfig) -> list[Rule]:
    """What PixArt and Latte share outside their blocks: patch embedding, adaLN-single, the final
    layer, the micro-conditions and the caption projection."""
    emb = "adaln_single.emb."
    rules = [*_linear("x_embedder", "pos_embed.proj", "patch_in"),
             *_linear("t_embedder.mlp.0", emb + "timestep_embedder.linear_1"),
             *_linear("t_embedder.mlp.2", emb + "timestep_embedder.linear_2"),
             *_linear("adaLN_single.1", "adaln_single.linear"),
             Rule("final_layer.scale_shift_table", ("scale_shift_table",)),
             *_linear("final_layer.linear", "proj_out", "patch_out")]
    if config.size_conditioning:
        for ours, theirs in (("resolution", "resolution_embedder"), ("aspect_ratio", "aspect_ratio_embedder")):
            rules += [*_linear(f"size_embedder.{ours}.mlp.0", f"{emb}{theirs}.linear_1"),
                      *_linear(f"size_embedder.{ours}.mlp.2", f"{emb}{theirs}.linear_2")]
    if config.context_projection:
        rules += [*_linear("context_embedder.fc1", "caption_projection.linear_1"),
                  *_linear("context_embedder.fc2", "caption_projection.linear_2")]
    return rules


def load_diffusers_transformer(folder: str | Path, *, variant: str | None = None, dtype: torch.dtype | None = None,
                               device: str | torch.device | None = None) -> DiT:
    """Our ``DiT`` from a diffusers model folder (``config.json`` + safetensors weights)."""
    folder = Path(folder)
    config = read_config_json(folder)
    return build_dit(*convert_diffusers(config, read_diffusers_weights(folder, variant)), dtype=dtype, device=device)


def read_diffusers_weights(folder: Path, variant: str | None = None) -> dict[str, Tensor]:
    """The tensors of a diffusers model folder: ``diffusion_pytorch_model[.variant].safetensors``,
    sharded or not; pickled weights are refused."""
    folder = Path(folder)
    stem = "diffusion_pytorch_model" + (f".{variant}" if variant else "")
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        tensors, _ = load_tensors(single)
    elif index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        tensors = {k: v for shard in shards for k, v in load_tensors(folder / shard)[0].items()}
    else:
        present = sorted(p.name for p in folder.iterdir())
        raise CheckpointError(f"{folder} has no {single.name} (or a sharded {index.name}); it holds {present}. "
                              f"mmdiff reads only safetensors: convert .bin weights with safetensors.torch.save_file")
    return tensors


# ---------------------------------------------------------------------- original DiT / SiT files

def original_config(state_dict: dict[str, Tensor], *, num_heads: int | None = None,
                    num_classes: int | None = None) -> DiTConfig:
    """The ``DiTConfig`` of a facebookresearch/DiT or willisma/SiT state dict, read off its shapes.
    The head count is not in the weights: the paper's sizes give it, or pass ``num_heads``."""
    source = "original DiT/SiT checkpoint"
    # the tensors whose shapes say the sizes (pos_embed: the input grid)
    for name in ("x_embedder.proj.weight", "pos_embed", "final_layer.linear.weight"):
        if name not in state_dict:
            raise CheckpointError(f"{source}: missing tensor '{name}', which gives the model's size")
    hidden, cin, p, _ = state_dict["x_embedder.proj.weight"].shape
    depth = sum(1 for k in state_dict if k.startswith("blocks.") and k.endswith(".attn.qkv.weight"))
    heads = num_heads or {(d, n): h for d, n, h in SIZES.values()}.get((hidden, depth))
    if heads is None:
        raise CheckpointError(f"{source}: hidden size {hidden} and depth {depth} are none of the DiT paper's sizes "
                              f"{sorted(SIZES)}, and the head count is not in the weights: pass num_heads=")
    grid = math.isqrt(state_dict["pos_embed"].shape[-2])
    table = state_dict.get("y_embedder.embedding_table.weight")
    rows = 0 if table is None else table.shape[0]
    classes = rows - 1 if num_classes is None and rows else (num_classes or 0)
    if rows not in (classes, classes + 1):
        raise CheckpointError(f"{source}: the label table has {rows} rows, not num_classes={classes} (+1 null class)")
    cout = state_dict["final_layer.linear.weight"].shape[0] // (p * p)
    fc1 = state_dict.get("blocks.0.mlp.fc1.weight")
    return DiTConfig(patch=PatchConfig("image", cin, (grid * p, grid * p), p), hidden_size=hidden, depth=depth,
                     num_heads=heads, mlp_ratio=4.0 if fc1 is None else fc1.shape[0] / hidden, num_classes=classes,
                     class_dropout=ORIGINAL_CLASS_DROPOUT if rows == classes + 1 else 0.0,
                     learned_sigma=cout == 2 * cin, out_channels=None if cout in (cin, 2 * cin) else cout)


def convert_original_state_dict(state_dict: dict[str, Tensor], kind: str = "dit", *, num_heads: int | None = None,
                                num_classes: int | None = None,
                                flow_timesteps: int = 1000) -> tuple[DiTConfig, dict[str, Tensor]]:
    """``(DiTConfig, tensors)`` from an original DiT (``kind="dit"``) or SiT (``"sit"``) state
    dict; ``flow_timesteps`` is the ``num_timesteps`` of the FlowSchedule a SiT will sample with."""
    if kind not in ORIGINAL_KINDS:
        raise ValueError(f"unknown checkpoint kind '{kind}'; choose one of {ORIGINAL_KINDS}")
    config = original_config(state_dict, num_heads=num_heads, num_classes=num_classes)
    if kind == "sit":  # SiT embeds its time in [0, 1]; ours is flow_timesteps * noise fraction
        config = replace(config, timestep_scale=1.0 / flow_timesteps)
    rules = [*_linear("x_embedder", "x_embedder.proj", "patch_in"),
             *_linear("t_embedder.mlp.0", "t_embedder.mlp.0"), *_linear("t_embedder.mlp.2", "t_embedder.mlp.2"),
             *_linear("final_layer.adaLN_modulation.1", "final_layer.adaLN_modulation.1"),
             *_linear("final_layer.linear", "final_layer.linear", "patch_out")]
    if config.num_classes:
        rules.append(Rule("y_embedder.weight", ("y_embedder.embedding_table.weight",)))
    for i in range(config.depth):
        for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"):
            rules += _linear(f"blocks.{i}.{name}", f"blocks.{i}.{name}")
    source = f"original {kind.upper()} checkpoint"
    tensors = apply_rules(rules, state_dict, config, source, fixed={"patcher.pos": "pos_embed"})
    if kind == "sit":
        _fold_sit(tensors, config)
    return config, tensors


def _fold_sit(tensors: dict[str, Tensor], config: DiTConfig) -> None:
    """SiT's velocity at time t = 1 - s from our inputs at noise fraction s, in the weights.

    With frequencies f, SiT's first timestep layer sees [cos((1 - s) f), sin((1 - s) f)] =
    [cos f cos sf + sin f sin sf, sin f cos sf - cos f sin sf]: our features [cos sf, sin sf]
    rotated, so W = [W_c, W_s] becomes [W_c cos f + W_s sin f, W_c sin f - W_s cos f]. The
    velocity x_data - noise is minus our target eps - x0: the output layer is negated."""
    name = "t_embedder.mlp.0.weight"
    w = tensors[name]
    f = timestep_frequencies(config.frequency_dim).double()  # the frequencies SiT's code uses
    cos, sin = f.cos(), f.sin()
    w_cos, w_sin = w.double().chunk(2, dim=1)
    tensors[name] = torch.cat([w_cos * cos + w_sin * sin, w_cos * sin - w_sin * cos], dim=1).to(w.dtype)
    for kind in ("weight", "bias"):
        tensors[f"final_layer.linear.{kind}"] = -tensors[f"final_layer.linear.{kind}"]


def convert_original_checkpoint(path: str | Path, kind: str = "dit", **options) -> tuple[DiTConfig, dict[str, Tensor]]:
    """``(DiTConfig, tensors)`` from a facebookresearch/DiT or willisma/SiT ``.pt`` file: the one
    place mmdiff unpickles, with ``weights_only=True`` (tensors and plain containers only)."""
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # a pickle with code objects or classes in it, or not a torch file
        raise CheckpointError(f"{path}: not a plain tensor checkpoint ({type(e).__name__}: {e}). A training "
                              f"checkpoint stores argparse args too: re-save its 'ema' dict alone, from trusted "
                              f"code, with torch.save(ckpt['ema'], ...)") from e
    if isinstance(obj, dict) and "ema" in obj:  # a training checkpoint: sample.py uses its EMA weights
        obj = obj["ema"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return convert_original_state_dict(obj, kind, **options)


# ----------------------------------------------------------------------------------------- build

def build_dit(config: DiTConfig, tensors: dict[str, Tensor], *, dtype: torch.dtype | None = None,
              device: str | torch.device | None = None) -> DiT:
    """``DiT(config)`` holding ``tensors`` (checked by name and shape), in eval mode; built on the
    meta device, so no random weights are made and thrown away."""
    with torch.device("meta"):
        model = DiT(config)
    check_state_dict(model.state_dict(), tensors, "converted checkpoint")
    model.load_state_dict(tensors, strict=True, assign=True)
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


# ``DiT.from_pretrained(folder)`` reads a diffusers transformer folder too
FOREIGN_MODELS.update({name: (DiT, load_diffusers_transformer) for name in SUPPORTED_CLASSES})
