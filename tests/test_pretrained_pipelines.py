"""Published diffusers pipelines load by name in mmdiff and sample the same pictures (mmdiff.pretrained).

Each parity test builds a tiny random diffusers pipeline, writes it with ``save_pretrained`` in
the layout of the hub repos, loads the folder with ``mmdiff.pipeline("image", model=...)`` and
runs both on the same latents, labels or prompt embeddings and guidance scale, in float32:
the network's outputs at every step (<= 1e-5), the final latents (<= 1e-4) and the 8-bit
pictures. The measured max-abs differences are printed (``pytest -s``).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKL, Transformer2DModel, DDIMScheduler, DiTPipeline, DiTTransformer2DModel, DPMSolverMultistepScheduler,
                       EulerDiscreteScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline, PixArtTransformer2DModel)
from test_pretrained_dit import (CHANNELS, CLASSES, DIT, PIXART, SIZE, dit_inputs, original_layout, original_reference,
                                 randomize, tie_embedders)

import mmdiff
from mmdiff.core.checkpoint import CheckpointError
from mmdiff.core.dit import DiT
from mmdiff.core.schedules import schedule_config
from mmdiff.media import to_pil
from mmdiff.pretrained import scheduler_settings

NET_TOL, LATENT_TOL = 1e-5, 1e-4
VAE = dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2, norm_num_groups=4,
           up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=CHANNELS,
           scaling_factor=0.3611, sample_size=16)


def tiny_vae(seed=7):
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE).eval()
    with torch.no_grad():  # off the identity init, so a misplaced norm or scale would show
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return vae


class Recorder:
    """The outputs of a network at every call (diffusers': the first ``channels``, eps)."""

    def __init__(self, module, channels=CHANNELS):
        self.outputs = []
        module.register_forward_hook(lambda m, args, out: self.outputs.append(
            (out[0] if isinstance(out, tuple) else getattr(out, "sample", out))[:, :channels].detach().clone()))


def theirs_latents(pipe):
    return pipe.seen_latents[0]


def last_latents(pipe):
    """diffusers' final latents: what its pipeline hands the VAE, times the scaling factor."""
    seen, decode = [], pipe.vae.decode

    def spy(z, *args, **kwargs):
        seen.append(z * pipe.vae.config.scaling_factor)
        return decode(z, *args, **kwargs)
    pipe.vae.decode = spy
    return seen


def latent_tol(latents) -> float:
    """1e-4, or 1e-6 of the latents' largest magnitude where a random network's latents run far
    above a trained one's unit scale (float32 itself resolves only 1.5e-5 at 128)."""
    return max(LATENT_TOL, 1e-6 * latents.abs().max().item())


def compare(name, theirs_pipe, run_theirs, ours_pipe, run_ours, uncond_first=False):
    """Run both; returns the max-abs differences (network outputs, latents, 8-bit pixels).
    ``uncond_first``: diffusers batches the unconditional half first (PixArt), mmdiff second."""
    theirs_net, ours_net = Recorder(theirs_pipe.transformer), Recorder(ours_pipe.model)
    seen = theirs_pipe.seen_latents = last_latents(theirs_pipe)
    expected_images = np.stack([np.asarray(im) for im in run_theirs()])
    got_latents = run_ours()
    got_images = np.stack([np.asarray(im) for im in to_pil(ours_pipe.decode(got_latents))])
    assert len(theirs_net.outputs) == len(ours_net.outputs)
    if uncond_first:
        theirs_net.outputs = [torch.cat(o.chunk(2)[::-1]) if len(o) == 2 * len(got_latents) else o
                              for o in theirs_net.outputs]
    net = max((a - b).abs().max().item() for a, b in zip(ours_net.outputs, theirs_net.outputs))
    lat = (got_latents - seen[0]).abs().max().item()
    off = np.abs(got_images.astype(int) - expected_images.astype(int))
    pix = off.max()
    print(f"\n{name}: network outputs {net:.3g} over {len(ours_net.outputs)} calls, final latents {lat:.3g} "
          f"(mean abs {seen[0].abs().mean():.3g}), 8-bit pixels {pix} ({(off > 0).sum()} of {off.size} differ)")
    # a value one rounding away from a .5 boundary: float32 latents of magnitude ~1e3 (a random
    # network at guidance 4.5) carry 6e-5 of rounding, which can flip one pixel; never more than 1 step
    assert pix <= 1 and (off > 0).mean() < 1e-4
    assert seen[0].abs().mean() > 0.1
    return net, lat, pix


# ------------------------------------------------------------------------------------- DiT

def dit_folder(tmp_path, scheduler, learned_sigma=True):
    torch.manual_seed(0)
    # DiTPipeline's null class is the literal 1000 (ImageNet's): the label table needs 1000 classes
    config = {**DIT, "num_embeds_ada_norm": 1000, "out_channels": CHANNELS * (1 + learned_sigma)}
    transformer = tie_embedders(randomize(DiTTransformer2DModel(**config)))
    pipe = DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=scheduler)
    pipe.save_pretrained(tmp_path / "dit")
    return pipe, tmp_path / "dit"


SCHEDULERS = {
    "ddim": lambda: DDIMScheduler(clip_sample=False),  # DiT-XL-2's: linear betas, leading spacing
    "dpm": lambda: DPMSolverMultistepScheduler(),  # ++(2M), linspace over steps + 1, final step into 0
    "ddim-trailing-no-alpha-one": lambda: DDIMScheduler(clip_sample=False, timestep_spacing="trailing",
                                                        set_alpha_to_one=False),
    "dpm-scaled-leading-offset": lambda: DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                                     beta_end=0.012, timestep_spacing="leading",
                                                                     steps_offset=1),
}


@pytest.mark.parametrize("scheduler, learned_sigma, steps, guidance", [
    ("ddim", True, 8, 4.0), ("dpm", True, 6, 4.0), ("dpm", False, 5, 1.0), ("ddim", False, 4, 1.5),
    ("ddim-trailing-no-alpha-one", True, 5, 3.0), ("dpm-scaled-leading-offset", True, 7, 2.0),
])
def test_dit_pipeline_matches_diffusers(tmp_path, scheduler, learned_sigma, steps, guidance):
    theirs, folder = dit_folder(tmp_path, SCHEDULERS[scheduler](), learned_sigma)
    ours = mmdiff.pipeline("image", model=folder)
    labels = [1, 3, 9]
    latents = torch.randn(3, CHANNELS, 8, 8, generator=torch.manual_seed(11))  # what diffusers draws from seed 11

    def run_theirs():
        return theirs(labels, guidance_scale=guidance, num_inference_steps=steps, generator=torch.manual_seed(11)).images

    def run_ours():
        return ours(labels, guidance_scale=guidance, num_inference_steps=steps, latents=latents, output_type="latent",
                    progress=False)

    net, lat, pix = compare(f"DiTPipeline {scheduler}, learned sigma {learned_sigma}, {steps} steps, guidance "
                            f"{guidance}", theirs, run_theirs, ours, run_ours)
    assert net <= NET_TOL and lat <= latent_tol(theirs_latents(theirs))
    assert ours.config.sampler == {"ddim": "ddim", "dpm": "dpmpp_2m"}[scheduler.split("-")[0]]


@pytest.mark.parametrize("make, steps", [(SCHEDULERS["ddim"], [1, 7, 50, 61]), (SCHEDULERS["dpm"], [1, 7, 20, 25]),
                                         (SCHEDULERS["ddim-trailing-no-alpha-one"], [3, 9]),
                                         (SCHEDULERS["dpm-scaled-leading-offset"], [4, 30]),
                                         (lambda: EulerDiscreteScheduler(), [10, 33]),
                                         (lambda: EulerDiscreteScheduler(timestep_spacing="leading"), [10])])
def test_scheduler_grid_is_diffusers_own(make, steps):
    """The noise levels and model timesteps of our grid are those diffusers steps through."""
    scheduler = make()
    settings = scheduler_settings({"_class_name": type(scheduler).__name__, **scheduler.config})
    ac = scheduler.alphas_cumprod.double()
    table = ((1 - ac) / ac).sqrt()
    assert torch.equal(settings.schedule.alphas_cumprod, scheduler.alphas_cumprod.double())  # float32, bit for bit
    for n in steps:
        scheduler.set_timesteps(n)
        ours = settings.schedule.sigmas(n, settings.spacing, dtype=torch.float64)
        t = scheduler.timesteps.double()
        expected = torch.from_numpy(np.interp(t.numpy(), np.arange(len(table)), table.numpy()))
        assert torch.allclose(ours[:n], expected, rtol=1e-12), (type(scheduler).__name__, n)
        assert torch.allclose(settings.schedule.timestep(ours[:n]), t, atol=1e-6)


# ------------------------------------------------------------------------------------ errors

def test_unsupported_pipeline_names_the_supported_ones(tmp_path):
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                           "unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(CheckpointError, match="StableDiffusionPipeline.*DiTPipeline, LattePipeline, PixArtAlphaPipeline, "
                                              "PixArtSigmaPipeline"):
        mmdiff.pipeline("image", model=tmp_path / "sd")
    unet = tmp_path / "lone-unet"
    unet.mkdir()
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(CheckpointError, match="UNet2DConditionModel.*DiTTransformer2DModel"):
        mmdiff.pipeline("image", model=unet)


def test_unsupported_scheduler_settings_are_refused():
    with pytest.raises(CheckpointError, match=r"clip_sample': True"):
        scheduler_settings({"_class_name": "DDIMScheduler"})  # DDIM clips x0 unless told not to
    with pytest.raises(CheckpointError, match="PNDMScheduler.*DDIMScheduler"):
        scheduler_settings({"_class_name": "PNDMScheduler"})
    with pytest.raises(CheckpointError, match="solver_type 'heun'.*midpoint"):
        scheduler_settings({"_class_name": "DPMSolverMultistepScheduler", "solver_type": "heun"})
    assert scheduler_settings({"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3}).sampler == "dpmpp_3m"
    euler = scheduler_settings({"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing",
                                "prediction_type": "v_prediction", "rescale_betas_zero_snr": True})
    assert (euler.sampler, euler.prediction, euler.init_noise, euler.schedule.zero_terminal_snr) == \
        ("euler", "v", "sigma", True)


# ---------------------------------------------------------------------------------- PixArt

def pixart_folder(tmp_path, cls, **transformer):
    torch.manual_seed(0)
    model = randomize(PixArtTransformer2DModel(**{**PIXART, **transformer}))
    pipe = cls(tokenizer=None, text_encoder=None, vae=tiny_vae(), transformer=model,
               scheduler=DPMSolverMultistepScheduler())  # the hub repos' scheduler
    pipe.save_pretrained(tmp_path / cls.__name__)
    return pipe, tmp_path / cls.__name__


def caption_embeddings(batch, tokens=6, seed=5):
    """T5 states with their padding masks, as a tokenizer padded to max_length leaves them."""
    g = torch.Generator().manual_seed(seed)
    width = PIXART["caption_channels"]
    embeds, negative = torch.randn(batch, tokens, width, generator=g), torch.randn(batch, tokens, width, generator=g)
    mask = torch.tensor([[1] * tokens, [1, 1, 1, 0, 0, 0]])[:batch]
    negative_mask = torch.tensor([[1, 0, 0, 0, 0, 0]] * batch)  # "": just the end token
    return dict(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=negative,
                negative_prompt_attention_mask=negative_mask)


@pytest.mark.parametrize("cls, transformer, size, steps, guidance", [
    # PixArt-alpha 1024's layout: sample_size 128 (micro-conditions on), a coarse patch keeps it tiny
    (PixArtAlphaPipeline, dict(sample_size=128, patch_size=8, interpolation_scale=2), (256, 256), 6, 4.5),
    # PixArt-Sigma: no micro-conditions; a wide picture off the trained grid (interpolated positions)
    (PixArtSigmaPipeline, dict(sample_size=8, interpolation_scale=1), (16, 24), 5, 3.0),
    (PixArtAlphaPipeline, dict(sample_size=8), (16, 16), 4, 1.0),
])
def test_pixart_pipeline_matches_diffusers(tmp_path, cls, transformer, size, steps, guidance):
    theirs, folder = pixart_folder(tmp_path, cls, **transformer)
    ours = mmdiff.pipeline("image", model=folder)
    assert ours.model.config.size_conditioning == (transformer["sample_size"] == 128)
    h, w = size
    latents = torch.randn(2, CHANNELS, h // 2, w // 2, generator=torch.manual_seed(3))
    embeds = caption_embeddings(2)

    def run_theirs():
        return theirs(**embeds, negative_prompt=None, guidance_scale=guidance, num_inference_steps=steps,
                      latents=latents.clone(), height=h,
                      width=w, use_resolution_binning=False).images

    def run_ours():
        return ours(**embeds, guidance_scale=guidance, num_inference_steps=steps, latents=latents, height=h, width=w,
                    output_type="latent", progress=False)

    net, lat, pix = compare(f"{cls.__name__} {transformer}, {h}x{w}, {steps} steps, guidance {guidance}", theirs,
                            run_theirs, ours, run_ours, uncond_first=True)
    assert net <= NET_TOL and lat <= latent_tol(theirs_latents(theirs))
    assert ours.config.sampler == "dpmpp_2m" and ours.config.steps == 20 and ours.config.guidance_scale == 4.5


def test_pixart_without_text_encoder_needs_embeddings(tmp_path):
    _, folder = pixart_folder(tmp_path, PixArtSigmaPipeline)
    ours = mmdiff.pipeline("image", model=folder)
    with pytest.raises(ValueError, match="no text encoder: pass prompt_embeds"):
        ours(prompt="a cat", num_inference_steps=2)
    embeds = caption_embeddings(2)
    with pytest.raises(ValueError, match="guidance_scale != 1 with prompt_embeds needs negative_prompt_embeds"):
        ours(prompt_embeds=embeds["prompt_embeds"], num_inference_steps=2, guidance_scale=3.0)
    with pytest.raises(ValueError, match=r"prompt_attention_mask must be shaped \(2, 6\)"):
        ours(prompt_embeds=embeds["prompt_embeds"], prompt_attention_mask=torch.ones(2, 5), num_inference_steps=2,
             guidance_scale=1.0)
    with pytest.raises(ValueError, match=r"prompt_embeds must be a \(B, M, 20\) tensor"):
        ours(prompt_embeds=torch.zeros(2, 6, 7), num_inference_steps=2, guidance_scale=1.0)
    with pytest.raises(ValueError, match=r"latents must be shaped \(2, 4, 8, 8\)"):
        ours(**embeds, num_inference_steps=2, latents=torch.zeros(1, 4, 8, 8))


# -------------------------------------------------------------------- exports and legacy names

def test_a_loaded_pipeline_exports_to_our_format_and_samples_the_same(tmp_path):
    _, folder = dit_folder(tmp_path, SCHEDULERS["ddim-trailing-no-alpha-one"]())
    ours = mmdiff.pipeline("image", model=folder)
    again = mmdiff.pipeline("image", model=ours.save_pretrained(tmp_path / "export"))
    assert (tmp_path / "export" / "pipeline.json").is_file()
    assert schedule_config(again.schedule) == schedule_config(ours.schedule) and again.schedule.final_level == "first"  # the diffusers options kept
    latents = torch.randn(2, CHANNELS, 8, 8, generator=torch.manual_seed(1))
    run = dict(class_labels=[2, 5], num_inference_steps=4, latents=latents, output_type="latent", progress=False)
    assert torch.equal(ours(**run), again(**run))
    assert isinstance(DiT.from_pretrained(folder / "transformer"), DiT)  # the network alone, from diffusers' folder


def test_the_legacy_transformer2d_class_loads_as_the_hub_repos_ship_it(tmp_path):
    torch.manual_seed(0)
    legacy = Transformer2DModel(**{**DIT, "num_embeds_ada_norm": 1000}, out_channels=2 * CHANNELS, attention_bias=True,
                                activation_fn="gelu-approximate", norm_type="ada_norm_zero", norm_elementwise_affine=False)
    theirs = DiTPipeline(transformer=tie_embedders(randomize(legacy)), vae=tiny_vae(),
                         scheduler=DDIMScheduler(clip_sample=False))
    theirs.save_pretrained(tmp_path / "dit")
    assert json.loads((tmp_path / "dit" / "transformer" / "config.json").read_text())["_class_name"] == \
        "Transformer2DModel"
    ours = mmdiff.pipeline("image", model=tmp_path / "dit")
    latents = torch.randn(2, CHANNELS, 8, 8, generator=torch.manual_seed(4))
    net, lat, _ = compare("DiTPipeline, legacy Transformer2DModel", theirs,
                          lambda: theirs([0, 7], num_inference_steps=4, generator=torch.manual_seed(4)).images, ours,
                          lambda: ours([0, 7], num_inference_steps=4, latents=latents, output_type="latent",
                                       progress=False))
    assert net <= NET_TOL and lat <= latent_tol(theirs_latents(theirs))


def test_a_misshapen_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = dit_folder(tmp_path, SCHEDULERS["ddim"]())
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["transformer_blocks.1.attn1.to_k.weight"] = torch.zeros(32, 31)
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match=r"'transformer_blocks\.1\.attn1\.to_k\.weight' has shape \(32, 31\), "
                                              r"the config implies \(32, 32\)"):
        mmdiff.pipeline("image", model=folder)


# ------------------------------------------------------------------ original checkpoints (CLI)

def diffusers_vae_folder(tmp_path) -> Path:
    tiny_vae().save_pretrained(tmp_path / "vae")
    return tmp_path / "vae"


# ``python -m mmdiff.convert`` and the ``mmdiff convert`` command are one command
ENTRY_POINTS = {"module": ["-m", "mmdiff.convert"], "command": ["-m", "mmdiff.cli", "convert"]}


def run_convert(*args, env=None, entry="module"):
    return subprocess.run([sys.executable, *ENTRY_POINTS[entry], *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=300)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_convert_an_original_dit_checkpoint_with_the_cli(tmp_path, entry):
    reference = original_reference()
    torch.save({"model": {}, "ema": original_layout(reference)}, tmp_path / "DiT-tiny.pt")  # a training checkpoint
    done = run_convert(tmp_path / "DiT-tiny.pt", tmp_path / "out", "--num_heads", 2, "--vae",
                       diffusers_vae_folder(tmp_path), entry=entry)
    assert done.returncode == 0, done.stderr
    assert not list((tmp_path / "out").rglob("*.pt")) and list((tmp_path / "out").rglob("*.safetensors"))
    pipe = mmdiff.pipeline("image", model=tmp_path / "out")
    x, t, y = dit_inputs()
    with torch.no_grad():
        diff = (pipe.model(x, t, y) - reference(x, t, y).sample[:, :CHANNELS]).abs().max().item()
    print(f"\nconverted original DiT .pt through the CLI: max abs difference {diff:.3g}")
    assert diff <= NET_TOL
    assert pipe.model.null_class == CLASSES and pipe.config.prediction == "eps" and pipe.config.guidance_scale == 4.0
    images = pipe([1, 2], num_inference_steps=3, output_type="pt", progress=False)
    assert images.shape == (2, 3, 2 * SIZE, 2 * SIZE) and bool(torch.isfinite(images).all())


def test_convert_a_sit_checkpoint_samples_as_a_flow_model(tmp_path):
    from mmdiff.convert import main
    torch.save(original_layout(original_reference(seed=4)), tmp_path / "SiT-tiny.pt")
    assert main([str(tmp_path / "SiT-tiny.pt"), str(tmp_path / "out"), "--kind", "sit", "--num_heads", "2",
                 "--vae", "none"]) == 0
    pipe = mmdiff.pipeline("image", model=tmp_path / "out")
    assert pipe.config.prediction == "flow" and type(pipe.schedule).__name__ == "FlowSchedule"
    assert pipe.model.config.timestep_scale == 1 / pipe.schedule.num_timesteps


def test_convert_errors_are_one_line(tmp_path, capsys):
    from mmdiff.convert import main
    torch.save({"ema": {}, "args": Path("x")}, tmp_path / "code.pt")
    assert main([str(tmp_path / "code.pt"), str(tmp_path / "out"), "--vae", "none"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mmdiff convert: error:") and "not a plain tensor checkpoint" in err
    assert main([str(tmp_path / "missing.pt"), str(tmp_path / "out")]) == 1
    assert main(["--kind", "unet", "a.pt", "b"]) == 2  # argparse's own message and code
    done = run_convert(tmp_path / "code.pt", tmp_path / "out", "--vae", "none", entry="command")
    assert done.returncode == 1 and done.stderr.startswith("mmdiff convert: error:") and done.stderr.count("\n") == 1


def test_a_pickle_is_never_loaded_without_the_convert_step(tmp_path):
    folder = tmp_path / "downloaded"
    folder.mkdir()
    torch.save(original_layout(original_reference()), folder / "DiT-XL-2-256x256.pt")
    for model in (folder, folder / "DiT-XL-2-256x256.pt"):
        with pytest.raises(CheckpointError, match="never unpickles implicitly.*python -m mmdiff.convert"):
            mmdiff.pipeline("image", model=model)


# ------------------------------------------------------------------------ the Hub cache, offline

OFFLINE_SCRIPT = """
import os, socket, sys
def refuse(*args, **kwargs):
    raise AssertionError(f"network call: connect{args[1:]}")
socket.socket.connect = socket.socket.connect_ex = refuse
socket.create_connection = refuse
import mmdiff
from mmdiff.core.checkpoint import CheckpointError
pipe = mmdiff.pipeline("image", model="tiny-org/tiny-dit")  # cached: no network call, even online
print("loaded", type(pipe.model).__name__, pipe.config.sampler)
os.environ["HF_HUB_OFFLINE"] = "1"
try:
    mmdiff.pipeline("image", model="tiny-org/not-cached")
except CheckpointError as e:
    print("refused:", e)
"""


def test_a_cached_hub_repo_loads_without_any_network_call(tmp_path):
    """huggingface_hub's cache layout (models--org--name/refs/main -> snapshots/<commit>/...)
    under a temporary HF_HOME; sockets refuse to connect in the child process."""
    _, folder = dit_folder(tmp_path, SCHEDULERS["dpm"]())
    repo = tmp_path / "hf" / "hub" / "models--tiny-org--tiny-dit"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    folder.rename(repo / "snapshots" / commit) if (repo / "snapshots").mkdir() is None else None
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded DiT dpmpp_2m" in done.stdout
    assert "refused: 'tiny-org/not-cached' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in done.stdout


def tiny_t5(folder: Path):
    """A random T5 encoder (d_model = the caption width) and a word-level tokenizer that pads
    and appends </s> as T5's does, both written as the PixArt repos hold them."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = "<pad> </s> <unk> a an the cat dog photo of sitting on mat horse riding astronaut".split()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    torch.manual_seed(2)
    encoder = T5EncoderModel(T5Config(vocab_size=len(words), d_model=PIXART["caption_channels"], d_kv=8, d_ff=32,
                                      num_layers=2, num_heads=2, relative_attention_num_buckets=8)).eval()
    return tokenizer, encoder


def test_pixart_with_its_t5_encoder_matches_diffusers(tmp_path):
    tokenizer, encoder = tiny_t5(tmp_path)
    torch.manual_seed(0)
    transformer = randomize(PixArtTransformer2DModel(**PIXART))
    theirs = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=tiny_vae(), transformer=transformer,
                                 scheduler=DPMSolverMultistepScheduler())
    theirs.save_pretrained(tmp_path / "pixart")
    ours = mmdiff.pipeline("image", model=tmp_path / "pixart")
    assert ours.components["text_encoder"].max_length == 120  # PixArt-alpha's max_sequence_length
    prompts = ["A Cat sitting on a mat ", "an astronaut riding a horse"]  # diffusers lower-cases and strips
    latents = torch.randn(2, CHANNELS, 8, 8, generator=torch.manual_seed(8))
    net, lat, _ = compare(
        "PixArtAlphaPipeline with a T5 encoder", theirs,
        lambda: theirs(prompts, num_inference_steps=4, latents=latents.clone(), clean_caption=False,
                       use_resolution_binning=False).images,
        ours, lambda: ours(prompt=prompts, num_inference_steps=4, latents=latents, output_type="latent", progress=False),
        uncond_first=True)
    assert net <= NET_TOL and lat <= latent_tol(theirs_latents(theirs))


def test_pixart_resolution_binning_as_diffusers(tmp_path):
    """A 256-px PixArt (factor-8 autoencoder, as the real ones) asked for 200x320 generates at the
    bin of the nearest aspect ratio, 192x320, and resizes and crops back, as diffusers does."""
    torch.manual_seed(0)
    model = randomize(PixArtTransformer2DModel(**{**PIXART, "sample_size": 32, "patch_size": 8}))
    vae = AutoencoderKL(**{**VAE, "block_out_channels": (8,) * 4, "down_block_types": ("DownEncoderBlock2D",) * 4,
                           "up_block_types": ("UpDecoderBlock2D",) * 4, "sample_size": 256}).eval()
    theirs = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=model,
                                 scheduler=DPMSolverMultistepScheduler())
    theirs.save_pretrained(tmp_path / "pixart")
    ours = mmdiff.pipeline("image", model=tmp_path / "pixart")
    embeds = caption_embeddings(2)
    latents = torch.randn(2, CHANNELS, 24, 40, generator=torch.manual_seed(6))  # the 192x320 bin's
    seen = last_latents(theirs)
    expected = np.stack([np.asarray(im) for im in theirs(**embeds, negative_prompt=None, height=200, width=320,
                                                           num_inference_steps=3, latents=latents.clone()).images])
    run = dict(**embeds, height=200, width=320, num_inference_steps=3, latents=latents, progress=False)
    got = np.stack([np.asarray(im) for im in ours(**run)])
    assert got.shape == expected.shape == (2, 200, 320, 3)
    lat = (ours(**run, output_type="latent") - seen[0]).abs().max().item()
    off = np.abs(got.astype(int) - expected.astype(int))
    print(f"\nPixArt binned 200x320 -> 192x320: final latents {lat:.3g} (largest {seen[0].abs().max():.3g}), 8-bit "
          f"pixels {off.max()} ({(off > 0).sum()} of {off.size} differ)")
    assert lat <= latent_tol(seen[0]) and off.max() <= 1 and (off > 0).mean() < 1e-4  # as in compare()
    with pytest.raises(ValueError, match="height must be a multiple of 64 pixels"):
        ours(**run, use_resolution_binning=False)
