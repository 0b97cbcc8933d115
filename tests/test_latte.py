"""Latte (diffusers' LatteTransformer3DModel) runs natively in mmdiff's DiT (mmdiff.components.latte).

A tiny LatteTransformer3DModel with random weights (every parameter, so no zero-init hides a wrong
mapping) is saved with ``save_pretrained``, loaded by mmdiff and run next to diffusers in float32 on
the same inputs: padded captions, a single frame, frames of another size. The measured max-abs
differences are printed (``pytest -s``).
"""
import inspect

import pytest
import torch
from diffusers import LatteTransformer3DModel

from mmdiff.components.latte import LATTE_1, LATTE_DEFAULTS, convert_latte, latte_config, load_latte_transformer
from mmdiff.core.checkpoint import CheckpointError

from test_pretrained_dit import randomize, report

TOL = 1e-5  # float32
CHANNELS, FRAMES, SIZE, CAPTION = 4, 4, 8, 12
LATTE = dict(num_attention_heads=2, attention_head_dim=8, in_channels=CHANNELS, out_channels=2 * CHANNELS,
             num_layers=2, cross_attention_dim=16, caption_channels=CAPTION, sample_size=SIZE, patch_size=2,
             activation_fn="gelu-approximate", attention_bias=True, num_embeds_ada_norm=1000,
             norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6, video_length=FRAMES)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    theirs = randomize(LatteTransformer3DModel(**LATTE))
    folder = tmp_path_factory.mktemp("latte") / "transformer"
    theirs.save_pretrained(folder)
    return theirs, folder


def inputs(frames=FRAMES, size=(SIZE, SIZE), seed=3):
    """Latents in Latte's layout (B, C, T, H, W), DDPM steps, captions (the second padded after 3
    of 6 tokens) and their mask (1 = a real token)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, CHANNELS, frames, *size, generator=g)
    caption = torch.randn(2, 6, CAPTION, generator=g)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    return x, torch.tensor([999, 17]), caption, mask


def run_both(theirs, ours, frames=FRAMES, size=(SIZE, SIZE)):
    x, t, caption, mask = inputs(frames, size)
    # diffusers' Latte passes the mask to each frame's cross-attention as it is: it must come as
    # the additive bias of every (video, frame) row, (B * T, 1, M)
    bias = ((1 - mask.float()) * -10000.0).repeat_interleave(frames, 0)[:, None]
    with torch.no_grad():
        expected = theirs(x, timestep=t, encoder_hidden_states=caption, encoder_attention_mask=bias).sample
        got = ours(x.transpose(1, 2), t, context=caption, context_mask=mask).transpose(1, 2)
    return got, expected[:, :CHANNELS]  # the eps channels; the variance ones are not computed


@pytest.mark.parametrize("frames, size", [(FRAMES, (SIZE, SIZE)), (1, (SIZE, SIZE)), (FRAMES, (8, 12))])
def test_latte_denoiser_matches_diffusers(saved, frames, size):
    theirs, folder = saved
    got, expected = run_both(theirs, load_latte_transformer(folder), frames, size)
    assert report(f"Latte, {frames} frame(s) of {size}, padded caption", got, expected) <= TOL


def test_padding_reaches_the_model(saved):
    """The masked caption tokens change nothing; unmasked, they would."""
    theirs, folder = saved
    ours = load_latte_transformer(folder)
    x, t, caption, mask = inputs()
    noisy = caption.clone()
    noisy[1, 3:] = torch.randn(3, CAPTION)
    with torch.no_grad():
        a = ours(x.transpose(1, 2), t, context=caption, context_mask=mask)
        b = ours(x.transpose(1, 2), t, context=noisy, context_mask=mask)
        c = ours(x.transpose(1, 2), t, context=noisy)
    assert torch.equal(a, b) and not torch.allclose(a[1], c[1], atol=1e-3)


def test_layout_of_the_converted_model(saved):
    theirs, folder = saved
    ours = load_latte_transformer(folder)
    c = ours.config
    assert (c.depth, c.attention, c.adaln, c.learned_sigma) == (4, "factorized", "single", True)
    assert [b.mode for b in ours.blocks] == ["spatial", "temporal"] * 2
    assert [b.cross for b in ours.blocks] == [True, False] * 2  # temporal blocks attend to no caption
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(ours) == count(theirs)  # nothing duplicated, nothing left out


def test_defaults_are_diffusers_own():
    signature = inspect.signature(LatteTransformer3DModel.__init__).parameters
    assert LATTE_DEFAULTS == {k: p.default for k, p in signature.items() if k != "self"}


def test_a_misshapen_tensor_is_named(saved):
    theirs, _ = saved
    state = dict(theirs.state_dict())
    state["temporal_transformer_blocks.1.attn1.to_k.weight"] = torch.zeros(16, 8)
    config = {"_class_name": "LatteTransformer3DModel", **LATTE}
    with pytest.raises(CheckpointError, match=r"'temporal_transformer_blocks.1.attn1.to_k.weight' has shape \(16, 8\)"):
        convert_latte(config, state)
    del state["temporal_transformer_blocks.1.attn1.to_k.weight"]
    with pytest.raises(CheckpointError, match="missing tensor 'temporal_transformer_blocks.1.attn1.to_k.weight'"):
        convert_latte(config, state)


def test_unsupported_options_are_refused():
    with pytest.raises(CheckpointError, match="activation_fn.*geglu.*gelu-approximate"):
        latte_config({"_class_name": "LatteTransformer3DModel", **{**LATTE, "activation_fn": "geglu"}})
    with pytest.raises(CheckpointError, match="_class_name 'PixArtTransformer2DModel'"):
        latte_config({"_class_name": "PixArtTransformer2DModel", **LATTE})


def test_latte_1_converts_on_meta_with_diffusers_parameter_count():
    with torch.device("meta"):
        theirs = LatteTransformer3DModel(**{k: v for k, v in LATTE_1.items() if k != "_class_name"})
        config, tensors = convert_latte(LATTE_1, theirs.state_dict())
    assert (config.depth, config.hidden_size, config.patch.size) == (56, 1152, (16, 64, 64))
    assert sum(v.numel() for k, v in tensors.items() if not k.startswith("patcher.")) == \
        sum(p.numel() for p in theirs.parameters())
