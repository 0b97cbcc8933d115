"""Published DiT-family weights run natively in mmdiff's one DiT (mmdiff.components.converters).

Each test builds a tiny reference with random weights, converts it and runs both on the same
inputs in float32: diffusers' DiTTransformer2DModel with its stock settings, the legacy
Transformer2DModel the DiT and PixArt-alpha hub repos ship, PixArtTransformer2DModel (caption
projection, padded captions, micro-conditions, interpolated and non-square positions), and the
original facebookresearch/DiT and willisma/SiT ``.pt`` layouts. Every parameter is overwritten
with random values first: diffusers zero-inits adaLN and outputs, which would hide a wrong
mapping. The measured max-abs differences are printed (``pytest -s``).
"""
import ast
import inspect
import math
from pathlib import Path

import pytest
import torch
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel, Transformer2DModel

import mmdiff.components.converters as converters
from mmdiff.components.converters import (DIFFUSERS_DEFAULTS, build_dit, config_from_diffusers, convert_diffusers,
                                          convert_original_checkpoint, load_diffusers_transformer)
from mmdiff.core.checkpoint import CheckpointError
from mmdiff.core.dit import DiT
from mmdiff.core.parametrization import Denoiser
from mmdiff.core.schedules import FlowSchedule

TOL = 1e-5  # float32
CLASSES, CHANNELS, SIZE = 10, 4, 8
DIT = dict(num_attention_heads=2, attention_head_dim=16, in_channels=CHANNELS, num_layers=2, sample_size=SIZE,
           patch_size=2, num_embeds_ada_norm=CLASSES)
PIXART = dict(num_attention_heads=2, attention_head_dim=24, in_channels=CHANNELS, out_channels=2 * CHANNELS,
              num_layers=2, cross_attention_dim=48, caption_channels=20, sample_size=SIZE, patch_size=2)


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter replaced by N(0, 1/fan_in) (vectors and tables: N(0, 0.1^2)), so no
    weight keeps diffusers' zero init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            std = p[0].numel() ** -0.5 if p.ndim > 1 and p.shape[0] > 6 else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def tie_embedders(model):
    """diffusers' DiT keeps a copy of the timestep/label embedder in every block (equal in every
    published checkpoint); random init makes them differ."""
    first = model.transformer_blocks[0].norm1.emb.state_dict()
    for block in model.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(first)
    return model


def report(name: str, got: torch.Tensor, expected: torch.Tensor) -> float:
    diff = (got - expected).abs().max().item()
    print(f"\n{name}: max abs difference {diff:.3g} (outputs' mean abs {expected.abs().mean():.3g})")
    assert expected.abs().mean() > 0.1  # a function worth comparing, not adaLN-Zero's zeros
    return diff


def dit_inputs(batch=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, CHANNELS, SIZE, SIZE, generator=g)
    t = torch.tensor([0, 250, 999, 500])[:batch]  # DDPM step indices
    y = torch.tensor([0, 3, 9, CLASSES])[:batch]  # the last: the null class
    return x, t, y


def full_config(model) -> dict:
    return {"_class_name": type(model).__name__, **model.config}


# ------------------------------------------------------------------------------ diffusers DiT

@pytest.mark.parametrize("learned_sigma", [True, False])
def test_diffusers_dit_with_stock_settings(tmp_path, learned_sigma):
    torch.manual_seed(0)
    theirs = tie_embedders(randomize(DiTTransformer2DModel(**DIT, out_channels=CHANNELS * (1 + learned_sigma))))
    assert theirs.config.norm_eps == 1e-5 and theirs.transformer_blocks[0].norm1.emb.time_proj.downscale_freq_shift == 1
    theirs.save_pretrained(tmp_path)  # through the folder, as a pipeline's transformer/ is read
    ours = load_diffusers_transformer(tmp_path)
    rows = 2 * 2 * CHANNELS * (1 + learned_sigma)  # the variance rows are kept, not computed
    assert ours.config.learned_sigma == learned_sigma and ours.final_layer.linear.out_features == rows
    x, t, y = dit_inputs()
    with torch.no_grad():
        expected, got = theirs(x, t, y).sample[:, :CHANNELS], ours(x, t, y)
    assert got.shape == (4, CHANNELS, SIZE, SIZE)
    assert report(f"diffusers DiT, learned sigma {learned_sigma}", got, expected) <= TOL


def test_each_diffusers_option_is_needed():
    """Without the frequency shift the model is another function (the 0.24 of the old mapping)."""
    torch.manual_seed(0)
    theirs = tie_embedders(randomize(DiTTransformer2DModel(**DIT, out_channels=2 * CHANNELS)))
    config, tensors = convert_diffusers(full_config(theirs), theirs.state_dict())
    assert (config.frequency_shift, config.attention_norm_eps, config.mlp_norm_eps) == (1.0, 1e-6, 1e-5)
    config.frequency_shift = 0.0
    x, t, y = dit_inputs()
    with torch.no_grad():
        diff = (build_dit(config, tensors)(x, t, y) - theirs(x, t, y).sample[:, :CHANNELS]).abs().max()
    assert diff > 100 * TOL


def test_attention_and_mlp_norms_use_their_own_eps():
    """diffusers' AdaLayerNormZero normalises before attention with eps 1e-6 whatever norm_eps
    says; the MLP's norm uses norm_eps. Hidden states of variance ~1e-6 make eps visible: either
    eps swapped moves the block's output 90x (MLP) and 39000x (attention) past the tolerance."""
    torch.manual_seed(0)
    theirs = tie_embedders(randomize(DiTTransformer2DModel(**DIT, out_channels=CHANNELS)))
    ours = build_dit(*convert_diffusers(full_config(theirs), theirs.state_dict()))
    h = 1e-3 * torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(2))
    t, y = torch.tensor([10, 700]), torch.tensor([1, 2])
    block, reference = ours.blocks[0], theirs.transformer_blocks[0]
    with torch.no_grad():
        expected = reference(h, timestep=t, class_labels=y)
        c = ours.condition(t, y)
        assert (block(h, c) - expected).abs().max() <= TOL
        for norm, wrong in ((block.norm1, 1e-5), (block.norm2, 1e-6)):
            right, norm.eps = norm.eps, wrong
            assert (block(h, c) - expected).abs().max() > 10 * TOL
            norm.eps = right


def test_legacy_transformer2d_as_the_dit_hub_repos_ship_it(tmp_path):
    torch.manual_seed(0)
    theirs = Transformer2DModel(**DIT, out_channels=2 * CHANNELS, attention_bias=True, activation_fn="gelu-approximate",
                                norm_type="ada_norm_zero", norm_elementwise_affine=False)
    tie_embedders(randomize(theirs))
    theirs.save_pretrained(tmp_path)
    ours = load_diffusers_transformer(tmp_path)
    x, t, y = dit_inputs()
    with torch.no_grad():
        expected, got = theirs(x, timestep=t, class_labels=y).sample[:, :CHANNELS], ours(x, t, y)
    assert report("legacy Transformer2DModel (ada_norm_zero)", got, expected) <= TOL


# ------------------------------------------------------------------------------------ PixArt

def pixart_inputs(shape, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, CHANNELS, *shape, generator=g)
    caption = torch.randn(4, 6, PIXART["caption_channels"], generator=g)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]])  # T5 padding
    height, width = 8 * shape[0], 8 * shape[1]
    sizes = {"resolution": torch.tensor([[height, width]] * 4, dtype=torch.float32),
             "aspect_ratio": torch.tensor([[height / width]] * 4)}
    return x, torch.tensor([0, 250, 999, 500]), caption, mask, sizes


def run_pixart(theirs, ours, shape):
    x, t, caption, mask, sizes = pixart_inputs(shape)
    with torch.no_grad():
        expected = theirs(x, encoder_hidden_states=caption, timestep=t, added_cond_kwargs=sizes,
                          encoder_attention_mask=mask).sample[:, :CHANNELS]
        got = ours(x, t, context=caption, context_mask=mask, **sizes)
    return got, expected


@pytest.mark.parametrize("micro_conditions, interpolation_scale, shape", [
    (True, 2, (8, 12)),  # PixArt-alpha 1024 px: sizes embedded, positions interpolated, a wide latent
    (False, 2, (12, 8)),  # PixArt-Sigma: no micro-conditions
    (False, None, (8, 8)),  # the trained grid, interpolation scale from sample_size (1)
])
def test_pixart(micro_conditions, interpolation_scale, shape):
    torch.manual_seed(0)
    theirs = randomize(PixArtTransformer2DModel(**PIXART, interpolation_scale=interpolation_scale,
                                                use_additional_conditions=micro_conditions))
    config, tensors = convert_diffusers(full_config(theirs), theirs.state_dict())
    assert config.size_conditioning == micro_conditions and config.adaln == "single"
    got, expected = run_pixart(theirs, build_dit(config, tensors), shape)
    assert got.shape == (4, CHANNELS, *shape)
    name = f"PixArt, micro-conditions {micro_conditions}, interpolation {interpolation_scale}, latent {shape}"
    assert report(name, got, expected) <= TOL


def test_legacy_transformer2d_as_the_pixart_alpha_hub_repos_ship_it(tmp_path):
    torch.manual_seed(0)
    theirs = Transformer2DModel(**PIXART, attention_bias=True, activation_fn="gelu-approximate", norm_eps=1e-6,
                                norm_type="ada_norm_single", norm_elementwise_affine=False,
                                use_additional_conditions=True)
    randomize(theirs).save_pretrained(tmp_path)
    got, expected = run_pixart(theirs, load_diffusers_transformer(tmp_path), (8, 8))
    assert report("legacy Transformer2DModel (ada_norm_single)", got, expected) <= TOL


def test_a_caption_with_every_token_masked():
    """Decided: masks are boolean. diffusers turns a 0/1 mask into a -10000 bias, which equals a
    boolean mask while one key is kept (exp(-10000) is 0 in float32) and, with every key masked,
    averages over the padding instead; mmdiff's cross-attention then gives nothing (SDPA's rule),
    as the original PixArt's attention over the caption's real tokens would. A T5 caption always
    keeps its end token, so published pipelines never meet the difference."""
    torch.manual_seed(0)
    theirs = randomize(PixArtTransformer2DModel(**PIXART, use_additional_conditions=False))
    ours = build_dit(*convert_diffusers(full_config(theirs), theirs.state_dict()))
    x, t, caption, mask, _ = pixart_inputs((8, 8))
    mask[3] = 0
    other = caption.clone()
    other[3] = torch.randn_like(other[3])
    with torch.no_grad():
        ours_a, ours_b = (ours(x, t, context=c, context_mask=mask) for c in (caption, other))
        theirs_a, theirs_b = (theirs(x, encoder_hidden_states=c, timestep=t, encoder_attention_mask=mask).sample[
            :, :CHANNELS] for c in (caption, other))
    assert (ours_a[:3] - theirs_a[:3]).abs().max() <= TOL  # a kept key: the same function
    assert torch.equal(ours_a[3], ours_b[3])  # nothing attended: the caption's values do not matter
    assert (theirs_a[3] - theirs_b[3]).abs().max() > 1e-3  # diffusers attends to the padding
    diff = (ours_a[3] - theirs_a[3]).abs().max()
    print(f"\nall-masked caption: ours vs diffusers {diff:.3g} (the decided difference, see the docstring)")


# ------------------------------------------------------------------------ original DiT / SiT

def original_reference(seed=0):
    """The facebookresearch/DiT function as a diffusers model: one embedder (tied), the paper's
    frequencies (shift 0) and LayerNorm eps 1e-6 everywhere; SiT has the same network."""
    torch.manual_seed(seed)
    model = tie_embedders(randomize(DiTTransformer2DModel(**DIT, out_channels=2 * CHANNELS, norm_eps=1e-6), seed))
    for block in model.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    return model


def original_layout(model) -> dict:
    """The state dict of ``model`` under the official DiT/SiT names (diffusers'
    scripts/convert_dit_to_diffusers.py read backwards)."""
    src, emb = model.state_dict(), "transformer_blocks.0.norm1.emb."
    out = {"pos_embed": model.pos_embed.pos_embed.clone()}  # the stored fixed table, (1, N, D)
    pairs = {"x_embedder.proj": "pos_embed.proj", "t_embedder.mlp.0": emb + "timestep_embedder.linear_1",
             "t_embedder.mlp.2": emb + "timestep_embedder.linear_2", "final_layer.linear": "proj_out_2",
             "final_layer.adaLN_modulation.1": "proj_out_1"}
    for i in range(model.config.num_layers):
        block = f"transformer_blocks.{i}."
        pairs.update({f"blocks.{i}.attn.proj": block + "attn1.to_out.0",
                      f"blocks.{i}.mlp.fc1": block + "ff.net.0.proj", f"blocks.{i}.mlp.fc2": block + "ff.net.2",
                      f"blocks.{i}.adaLN_modulation.1": block + "norm1.linear"})
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([src[f"{block}attn1.to_{x}.{kind}"] for x in "qkv"])
    for ours, theirs in pairs.items():
        for kind in ("weight", "bias"):
            out[f"{ours}.{kind}"] = src[f"{theirs}.{kind}"].clone()
    out["y_embedder.embedding_table.weight"] = src[emb + "class_embedder.embedding_table.weight"].clone()
    return out


def test_original_dit_checkpoint(tmp_path):
    reference = original_reference()
    path = tmp_path / "DiT-tiny.pt"
    # a training checkpoint: sample.py (and the converter) take its EMA weights
    torch.save({"model": {}, "ema": original_layout(reference)}, path)
    ours = build_dit(*convert_original_checkpoint(path, num_heads=2))
    assert ours.null_class == CLASSES
    x, t, y = dit_inputs()
    with torch.no_grad():
        expected, got = reference(x, t, y).sample[:, :CHANNELS], ours(x, t, y)
    assert report("original DiT .pt", got, expected) <= TOL


def sit_case(tmp_path):
    reference = original_reference(seed=4)
    path = tmp_path / "SiT-tiny.pt"
    torch.save(original_layout(reference), path)
    g = torch.Generator().manual_seed(5)
    sigma = torch.tensor([0.05, 1.0, 9.0, 99.0])  # noise fraction s = sigma / (1 + sigma): 0.048 .. 0.99
    x = torch.randn(4, CHANNELS, SIZE, SIZE, generator=g) * (1 + sigma[:, None, None, None])  # x0 + sigma eps
    return reference, path, x, sigma, torch.tensor([1, 5, 9, CLASSES])


def sit_velocity_formula(reference, x, sigma, y):
    """x0 from SiT's velocity v = x_data - noise on x_t = t x_data + (1 - t) noise: at t = 1 - s,
    x_data = x_t + s v, with x_t = x / (1 + sigma) the same input mmdiff's flow denoiser makes."""
    s = (sigma / (1 + sigma))[:, None, None, None]
    x_t = x / (1 + sigma[:, None, None, None])
    v = reference(x_t, 1 - s.flatten(), y).sample[:, :CHANNELS]
    return x_t + s * v


def test_sit_checkpoint_is_a_flow_denoiser(tmp_path):
    reference, path, x, sigma, y = sit_case(tmp_path)
    config, tensors = convert_original_checkpoint(path, "sit", num_heads=2)
    assert config.timestep_scale == 1 / FlowSchedule().num_timesteps
    denoiser = Denoiser(build_dit(config, tensors), FlowSchedule(), "flow")
    with torch.no_grad():
        got, expected = denoiser(x, sigma, class_labels=y), sit_velocity_formula(reference, x, sigma, y)
    assert report("SiT .pt as mmdiff's flow denoiser vs SiT's velocity formula", got, expected) <= TOL


def test_sit_checkpoint_read_as_a_dit_is_not_a_flow_denoiser(tmp_path):
    """The time reversal and sign are what make the SiT conversion right."""
    reference, path, x, sigma, y = sit_case(tmp_path)
    denoiser = Denoiser(build_dit(*convert_original_checkpoint(path, "dit", num_heads=2)), FlowSchedule(), "flow")
    with torch.no_grad():
        assert (denoiser(x, sigma, class_labels=y) - sit_velocity_formula(reference, x, sigma, y)).abs().max() > 0.1


# ------------------------------------------------------------------------------------- errors

def dit_checkpoint():
    torch.manual_seed(0)
    model = tie_embedders(randomize(DiTTransformer2DModel(**DIT, out_channels=CHANNELS)))
    return full_config(model), dict(model.state_dict())


def test_differing_per_block_embedders_are_refused_by_name():
    config, state = dit_checkpoint()
    name = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.weight"
    state[name] = state[name] + 1e-3
    with pytest.raises(CheckpointError, match=rf"'{name}' differs from 'transformer_blocks\.0\..*0\.001"):
        convert_diffusers(config, state)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update({"transformer_blocks.1.attn1.to_k.weight": torch.zeros(32, 31)}),
     r"tensor 'transformer_blocks\.1\.attn1\.to_k\.weight' has shape \(32, 31\), the config implies \(32, 32\)"),
    (lambda s: s.pop("proj_out_2.bias"), r"missing tensor 'proj_out_2\.bias'"),
    (lambda s: s.update({"transformer_blocks.0.norm3.weight": torch.ones(32)}),
     r"unexpected tensor 'transformer_blocks\.0\.norm3\.weight'"),
])
def test_tensor_problems_name_the_tensor(edit, message):
    config, state = dit_checkpoint()
    edit(state)
    with pytest.raises(CheckpointError, match=message):
        convert_diffusers(config, state)


def test_unsupported_classes_are_refused_with_the_supported_ones_listed():
    with pytest.raises(CheckpointError, match="UNet2DConditionModel.*DiTTransformer2DModel, PixArtTransformer2DModel, "
                                              "Transformer2DModel"):
        config_from_diffusers({"_class_name": "UNet2DConditionModel", "in_channels": 4})
    with pytest.raises(CheckpointError, match="norm_type 'layer_norm'.*not a DiT"):
        config_from_diffusers({"_class_name": "Transformer2DModel", "in_channels": 4, "patch_size": 2})
    with pytest.raises(CheckpointError, match="patch_size None is not a DiT"):
        config_from_diffusers({"_class_name": "Transformer2DModel", "norm_type": "ada_norm_zero", "patch_size": None})
    with pytest.raises(CheckpointError, match="norm_elementwise_affine"):
        config_from_diffusers({"_class_name": "DiTTransformer2DModel", "norm_elementwise_affine": True})


def test_original_checkpoint_with_foreign_positions_or_unknown_size(tmp_path):
    state = original_layout(original_reference())
    with pytest.raises(CheckpointError, match="head count is not in the weights: pass num_heads="):
        converters.convert_original_state_dict(state)
    state["pos_embed"] = state["pos_embed"] + 1e-3
    with pytest.raises(CheckpointError, match=r"positional table 'pos_embed'.*0\.001"):
        converters.convert_original_state_dict(state, num_heads=2)


def test_a_pickle_with_code_is_refused(tmp_path):
    torch.save({"ema": {}, "args": Path("not a tensor")}, tmp_path / "train.pt")
    with pytest.raises(CheckpointError, match="not a plain tensor checkpoint"):
        convert_original_checkpoint(tmp_path / "train.pt")


# ------------------------------------------------------------------------- sizes and structure

# facebook/DiT-XL-2-256's transformer/config.json as diffusers' conversion script writes it
DIT_XL_2_256 = dict(_class_name="Transformer2DModel", sample_size=32, num_layers=28, attention_head_dim=72,
                    in_channels=4, out_channels=8, patch_size=2, attention_bias=True, num_attention_heads=16,
                    activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
                    norm_elementwise_affine=False)
# PixArt-alpha/PixArt-XL-2-1024-MS's transformer/config.json (T5-XXL captions, 1024 px: 128 latent)
PIXART_XL_2_1024 = dict(_class_name="Transformer2DModel", activation_fn="gelu-approximate", attention_bias=True,
                        attention_head_dim=72, caption_channels=4096, cross_attention_dim=1152, in_channels=4,
                        norm_elementwise_affine=False, norm_eps=1e-6, norm_type="ada_norm_single",
                        num_attention_heads=16, num_embeds_ada_norm=1000, num_layers=28, out_channels=8,
                        patch_size=2, sample_size=128)
OFFICIAL_DIT_XL2 = 675_129_632  # the official repo's printout (the paper: 675M), its pos_embed included
PIXART_ALPHA_XL2 = 611_349_152  # diffusers' PixArt-alpha XL/2 1024 (the paper: 0.6B)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_papers_and_diffusers():
    """Full size, on the meta device (no memory, no time): the converters map every tensor of
    diffusers' DiT-XL/2 and PixArt-alpha XL/2 by name and shape."""
    with torch.device("meta"):
        their_dit = DiTTransformer2DModel(**{k: v for k, v in DIT_XL_2_256.items() if k != "_class_name"})
        their_pixart = PixArtTransformer2DModel(**{k: v for k, v in PIXART_XL_2_1024.items() if k != "_class_name"})
    dit = build_dit(*convert_diffusers(DIT_XL_2_256, their_dit.state_dict()))
    pixart = build_dit(*convert_diffusers(PIXART_XL_2_1024, their_pixart.state_dict()))
    table = dit.patcher.pos.numel()  # ours is a buffer, the official repo's a frozen parameter
    assert count(dit) + table == OFFICIAL_DIT_XL2
    copies = count(their_dit.transformer_blocks[0].norm1.emb) * 27  # diffusers' 27 extra embedder copies
    assert count(dit) == count(their_dit) - copies
    assert count(pixart) == count(their_pixart) == PIXART_ALPHA_XL2
    assert pixart.config.size_conditioning and pixart.config.patch.pos_scale == 2
    c = dit.config  # the hub config leaves norm_eps out: DiTTransformer2DModel's default, as diffusers reads it
    assert (c.learned_sigma, c.frequency_shift, c.attention_norm_eps, c.mlp_norm_eps) == (True, 1.0, 1e-6, 1e-5)
    no_eps = {k: v for k, v in PIXART_XL_2_1024.items() if k != "norm_eps"}
    assert config_from_diffusers(no_eps).mlp_norm_eps == 1e-6  # PixArtTransformer2DModel's default


def test_defaults_match_diffusers_signatures():
    for cls in (DiTTransformer2DModel, PixArtTransformer2DModel):
        params = inspect.signature(cls.__init__).parameters
        ours = {k: v for k, v in DIFFUSERS_DEFAULTS[cls.__name__].items() if k in params}
        assert len(ours) >= 13 and ours == {k: params[k].default for k in ours}, cls.__name__


def test_library_never_imports_diffusers_and_unpickles_in_one_place():
    for module in ("components/converters.py", "core/dit.py", "core/attention.py", "core/patch.py"):
        tree = ast.parse((Path(converters.__file__).parents[1] / module).read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not any(n.startswith("diffusers") for n in names), module
    tree = ast.parse(Path(converters.__file__).read_text())
    loads = [f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
             for n in ast.walk(f) if isinstance(n, ast.Attribute) and n.attr == "load"
             and isinstance(n.value, ast.Name) and n.value.id == "torch"]
    assert loads == ["convert_original_checkpoint"]
    assert Path(converters.__file__).with_name("__init__.py").read_text() == (
        '"""Reusable parts any floor may use: autoencoders, text encoders, tokenizers, weight converters."""\n')


def test_converted_models_save_and_load_as_mmdiff_models(tmp_path):
    torch.manual_seed(0)
    theirs = randomize(PixArtTransformer2DModel(**PIXART, use_additional_conditions=True))
    ours = build_dit(*convert_diffusers(full_config(theirs), theirs.state_dict()))
    ours.save_pretrained(tmp_path / "pixart")
    loaded = DiT.from_pretrained(tmp_path / "pixart")
    x, t, caption, mask, sizes = pixart_inputs((8, 12))
    with torch.no_grad():
        assert torch.equal(loaded(x, t, context=caption, context_mask=mask, **sizes),
                           ours(x, t, context=caption, context_mask=mask, **sizes))
    with pytest.raises(ValueError, match="resolution=.*aspect_ratio="):
        loaded(x, t, context=caption)
    assert math.isclose(loaded.config.patch.pos_scale, 1.0)
