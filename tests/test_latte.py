"""Latte (diffusers' LatteTransformer3DModel) runs natively in mmdiff's DiT (mmdiff.components.latte).

A tiny LatteTransformer3DModel with random weights (every parameter, so no zero-init hides a wrong
mapping) is saved with ``save_pretrained``, loaded by mmdiff and run next to diffusers in float32 on
the same inputs: padded captions, a single frame, frames of another size. Then whole LattePipeline
folders (tiny AutoencoderKL, T5 encoder and tokenizer; DDIM and DPM-Solver++) sample the same
latents and 8-bit frames from the same noise as diffusers' own pipeline. The measured max-abs
differences are printed (``pytest -s``).
"""
import inspect

import numpy as np

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, LattePipeline, LatteTransformer3DModel

import mmdiff

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


# ----------------------------------------------------------------------------- LattePipeline folders

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "runs", "on", "the", "beach", "cat", "sleeps"]
VAE = dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2, norm_num_groups=4,
           up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=CHANNELS,
           scaling_factor=0.3611, sample_size=16)
SCHEDULERS = {"ddim": lambda: DDIMScheduler(clip_sample=False), "dpm": lambda: DPMSolverMultistepScheduler()}


def text_parts(folder):
    """A tiny T5 encoder (width CAPTION) and a word-level tokenizer that pads: the caption path of
    Latte-1 (T5 + its tokenizer) at toy size."""
    from transformers import BertTokenizer, T5Config, T5EncoderModel
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS))
    torch.manual_seed(1)
    encoder = T5EncoderModel(T5Config(vocab_size=len(WORDS), d_model=CAPTION, d_kv=6, num_heads=2, num_layers=1,
                                      d_ff=24)).eval()
    return BertTokenizer(str(folder / "vocab.txt")), encoder


def latte_folder(tmp_path, scheduler: str):
    torch.manual_seed(0)
    transformer = randomize(LatteTransformer3DModel(**LATTE))
    torch.manual_seed(7)
    vae = AutoencoderKL(**VAE).eval()
    with torch.no_grad():  # off the identity init, so a misplaced scale would show
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tokenizer, encoder = text_parts(tmp_path / "words")
    pipe = LattePipeline(tokenizer=tokenizer, text_encoder=encoder, vae=vae, transformer=transformer,
                         scheduler=SCHEDULERS[scheduler]())
    pipe.save_pretrained(tmp_path / "latte")
    return pipe, tmp_path / "latte"


class Outputs:
    """The eps outputs of a network at every call, in our layout (B, T, C, h, w)."""

    def __init__(self, module, theirs: bool):
        self.seen = []

        def hook(m, args, out):
            out = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
            self.seen.append((out[:, :CHANNELS].transpose(1, 2) if theirs else out).detach().clone())
        module.register_forward_hook(hook)


def run_pair(theirs, ours, steps, guidance, **call):
    """Both pipelines on the same noise: max-abs differences of the network outputs (every call),
    the final latents and the 8-bit frames."""
    prompt = call.get("prompt")
    batch = len(call["prompt_embeds"]) if "prompt_embeds" in call else len(prompt) if isinstance(prompt, list) else 1
    latents = torch.randn(batch, CHANNELS, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(11))
    net_theirs, net_ours = Outputs(theirs.transformer, True), Outputs(ours.model, False)
    args = dict(num_inference_steps=steps, guidance_scale=guidance, latents=latents)
    with torch.no_grad():
        expected = theirs(**call, **args, video_length=FRAMES, output_type="latent").frames
        frames_theirs = theirs(**call, **args, video_length=FRAMES, output_type="pil").frames
    got = ours(**call, **args, num_frames=FRAMES, output_type="latent", progress=False)
    frames_ours = ours(**call, **args, num_frames=FRAMES, decode_chunk_size=3, progress=False).frames
    half = len(net_theirs.seen) // 2  # two runs each; diffusers batches the unconditional half first
    if guidance > 1:
        net_theirs.seen = [torch.cat(o.chunk(2)[::-1]) for o in net_theirs.seen]
    net = max((a - b).abs().max().item() for a, b in zip(net_ours.seen[:half], net_theirs.seen[:half]))
    # relative to the latents' scale: a random network's run far above a trained one's (to 1e3 at
    # guidance 4, where float32 resolves only 6e-5); 1e-4 absolute at unit scale
    lat = (got - expected).abs().max().item() / max(1.0, expected.abs().max().item())
    pixels = np.abs(np.stack([[np.asarray(f, dtype=int) for f in v] for v in frames_ours])
                    - np.stack([[np.asarray(f, dtype=int) for f in v] for v in frames_theirs]))
    print(f"\nLattePipeline: network {net:.3g} over {half} calls, final latents {lat:.3g} relative to max abs "
          f"{expected.abs().max():.3g}, 8-bit frames: max {pixels.max()}, {(pixels > 0).sum()} of {pixels.size} differ")
    assert expected.abs().mean() > 0.1 and len(net_ours.seen) == len(net_theirs.seen)
    return net, lat, pixels


@pytest.mark.parametrize("scheduler, prompt, steps, guidance", [
    ("ddim", "A dog runs on the beach", 6, 4.0),  # one prompt: diffusers cuts captions to its tokens
    ("dpm", ["a cat sleeps", "a dog runs on the beach"], 5, 3.0),  # several: padding states zeroed
    ("dpm", "a cat", 4, 1.0),  # unguided
])
def test_latte_pipeline_matches_diffusers(tmp_path, scheduler, prompt, steps, guidance):
    theirs, folder = latte_folder(tmp_path, scheduler)
    ours = mmdiff.pipeline("video", model=folder)
    assert ours.config.sampler == {"ddim": "ddim", "dpm": "dpmpp_2m"}[scheduler]
    net, lat, pixels = run_pair(theirs, ours, steps, guidance, prompt=prompt)
    assert net <= TOL and lat <= 1e-4
    assert pixels.max() <= 1 and (pixels > 0).mean() < 1e-3  # 8-bit: at most a rounding boundary apart


def test_latte_pipeline_with_prompt_embeds(tmp_path):
    """Given embeddings (a padded caption's states, zeros past its tokens, as Latte leaves them) and
    negative ones: diffusers attends to all of them, so does the loaded pipeline."""
    theirs, folder = latte_folder(tmp_path, "ddim")
    ours = mmdiff.pipeline("video", model=folder)
    g = torch.Generator().manual_seed(5)
    embeds, negative = torch.randn(2, 7, CAPTION, generator=g), torch.randn(2, 7, CAPTION, generator=g)
    embeds[1, 4:] = 0
    net, lat, pixels = run_pair(theirs, ours, 5, 2.5, prompt_embeds=embeds, negative_prompt_embeds=negative,
                                negative_prompt=None)
    assert net <= TOL and lat <= 1e-4 and pixels.max() <= 1


def test_bare_latte_transformer_folder_and_wrong_task(tmp_path):
    theirs, folder = latte_folder(tmp_path, "ddim")
    bare = mmdiff.pipeline("video", model=folder / "transformer")  # a pipeline's transformer/: the whole pipeline
    assert "text_encoder" in bare.components
    torch.manual_seed(0)
    LatteTransformer3DModel(**LATTE).save_pretrained(tmp_path / "alone")
    alone = mmdiff.pipeline("video", model=tmp_path / "alone")
    embeds = torch.randn(1, 5, CAPTION)
    latents = alone(prompt_embeds=embeds, num_inference_steps=2, guidance_scale=1.0, output_type="latent",
                    progress=False)
    assert latents.shape == (1, CHANNELS, FRAMES, SIZE, SIZE)  # Latte's layout
    with pytest.raises(ValueError, match=r"latents must be Latte's \(B, C, T, h, w\) noise, got \(1, 4, 8, 8\)"):
        alone(prompt_embeds=embeds, latents=torch.randn(1, CHANNELS, SIZE, SIZE), progress=False)
    with pytest.raises(CheckpointError, match="'video' pipeline.*mmdiff.pipeline\\('video'"):
        mmdiff.pipeline("image", model=folder)
