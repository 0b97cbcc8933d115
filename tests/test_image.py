"""The image plugin: pipeline calls, SDEdit/inpainting through the core's partial path, text
conditioning through cross-attention, configs, and bad input."""
import pytest
import torch
import yaml
from PIL import Image

import mmdiff
from mmdiff.core.dit import DiT
from mmdiff.modalities.image import ImageArgs, ImagePipeline, ImageTask
from mmdiff.training import TrainConfig, Trainer

from tiny_models import tiny_bert

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
TINY = dict(patch_size=2, hidden_size=32, depth=1, num_heads=2, sample_steps=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("img")
    cfg = TrainConfig(output_dir=str(out / "run"), max_steps=4, batch_size=16, validation_steps=0,
                      checkpointing_steps=4, report_to="none", progress=False)
    export = Trainer(ImageTask(ImageArgs(**TINY)), cfg).train()
    return mmdiff.pipeline("image", model=export)


def test_pipeline_outputs_and_determinism(trained):
    imgs = trained(class_labels=[3, "7"], num_inference_steps=3, generator=0, progress=False)
    assert [im.size for im in imgs] == [(8, 8), (8, 8)] and imgs[0].mode == "L"
    t1 = trained(class_labels=[3, 7], num_inference_steps=3, generator=0, progress=False, output_type="pt")
    t2 = trained(class_labels=[3, 7], num_inference_steps=3, generator=0, progress=False, output_type="pt")
    assert t1.shape == (2, 1, 8, 8) and torch.equal(t1, t2) and t1.min() >= -1 and t1.max() <= 1
    guided = trained(class_labels=[3, 7], num_inference_steps=3, generator=0, guidance_scale=3.0,
                     progress=False, output_type="pt")
    assert not torch.equal(guided, t1)


def test_bad_calls_name_the_problem(trained):
    with pytest.raises(ValueError, match=r"class label out of range: got \[3, 12\], the model knows 0..9"):
        trained(class_labels=[3, 12], progress=False)
    with pytest.raises(ValueError, match="class-conditional: pass class_labels"):
        trained(progress=False)
    with pytest.raises(ValueError, match=r"num_inference_steps must be an integer in \[1, 10000\], got 0"):
        trained(class_labels=[1], num_inference_steps=0, progress=False)
    with pytest.raises(ValueError, match="unknown sampler 'fast'"):
        trained(class_labels=[1], sampler="fast", progress=False)
    with pytest.raises(ValueError, match="not trained with a text encoder"):
        trained(prompt="a three", progress=False)


def test_inpainting_keeps_the_unmasked_region(trained):
    source = trained(class_labels=[1], num_inference_steps=3, generator=1, progress=False, output_type="pt")
    mask = torch.zeros(8, 8)
    mask[:, 4:] = 1  # regenerate the right half
    out = trained(class_labels=[5], image=source, mask=mask, num_inference_steps=3, generator=2,
                  progress=False, output_type="pt")
    assert torch.allclose(out[..., :4], source[..., :4], atol=1e-6)
    assert not torch.allclose(out[..., 4:], source[..., 4:])


def test_img2img_strength(trained):
    source = Image.new("L", (8, 8), 255)
    seen = []
    trained(class_labels=[0], image=source, strength=0.5, num_inference_steps=10, generator=0, progress=False,
            callback=lambda s: seen.append(s["sigma"]))
    assert len(seen) == 5


def test_text_conditioning_through_cross_attention(tmp_path):
    enc = tiny_bert(tmp_path / "bert")
    args = ImageArgs(**TINY, text_encoder=str(enc), prompt_template="digit {label}", max_prompt_length=8)
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=3, batch_size=16, learning_rate=1e-2,
                      validation_steps=3, checkpointing_steps=3, report_to="none", progress=False)
    export = Trainer(ImageTask(args), cfg).train()
    assert (export / "text_encoder" / "model.safetensors").is_file()
    assert not [p for p in export.rglob("*") if p.suffix in (".bin", ".pt", ".pkl")]
    pipe = mmdiff.pipeline("image", model=export)
    assert pipe.model.config.context_dim == 16 and pipe.model.config.num_classes == 0
    a = pipe(prompt=["digit 3", "digit 8"], num_inference_steps=3, generator=0, progress=False, output_type="pt")
    b = pipe(prompt=["digit 3", "digit 3"], num_inference_steps=3, generator=0, progress=False, output_type="pt")
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])  # the prompt reaches the model
    assert pipe(prompt="digit 1", guidance_scale=2.0, num_inference_steps=2, progress=False)[0].size == (8, 8)


def test_imagenet_dit_xl2_config_builds_on_meta():
    values = yaml.safe_load((ROOT / "recipes/configs/image_imagenet256_dit_xl2.yaml").read_text())
    train_keys = {f for f in TrainConfig.__dataclass_fields__}
    args = ImageArgs(**{k: v for k, v in values.items() if k not in train_keys})
    train = TrainConfig(**{k: v for k, v in values.items() if k in train_keys})
    assert (args.model, args.resolution, train.mixed_precision) == ("DiT-XL/2", 256, "bf16")
    task = ImageTask(args)
    config = task.dit_config_for((4, 32, 32), num_classes=1000)  # SD-VAE latents of 256x256
    with torch.device("meta"):
        model = DiT(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate)
    params = sum(p.numel() for p in model.parameters())
    assert params == pytest.approx(675e6, rel=0.01)  # the DiT paper's DiT-XL/2
    assert len(optimizer.param_groups[0]["params"]) == len(list(model.parameters()))


def test_digits_config_is_the_recipe_default():
    from recipes.image_train import DEFAULT_CONFIG
    from mmdiff.training import parse_config
    values = yaml.safe_load(DEFAULT_CONFIG.read_text())
    train, args = parse_config([TrainConfig, ImageArgs], [], default_config=DEFAULT_CONFIG)
    merged = {**train.__dict__, **args.__dict__}
    assert all(merged[k] == v for k, v in values.items()), "the no-argument recipe differs from image_digits.yaml"
    train, _ = parse_config([TrainConfig, ImageArgs], ["--max_steps", "7"], default_config=DEFAULT_CONFIG)
    assert train.max_steps == 7


def test_default_pipeline_is_shipped():
    pipe = mmdiff.pipeline("image")
    assert isinstance(pipe, ImagePipeline) and pipe.model.config.num_classes == 10
    size = sum(p.stat().st_size for p in (ROOT / "mmdiff/assets/image-digits").rglob("*") if p.is_file())
    assert size <= 8 * 2**20


def test_shipped_model_samples_the_same_with_bf16_weights():
    """Sampling's fast path on the CPU (docs/image.md): bf16 weights, float32 sampler state. The
    same noise gives nearly the same images (measured: mean |difference| 0.0018 on [-1, 1], at most
    0.027) that read as the same digits (98% in both)."""
    from mmdiff.eval.digits import digits_scores
    labels = list(range(10)) * 20
    fp32 = mmdiff.pipeline("image")(class_labels=labels, generator=0, progress=False, output_type="pt")
    fast = mmdiff.pipeline("image", dtype=torch.bfloat16)
    assert {p.dtype for p in fast.model.parameters()} == {torch.bfloat16}
    bf16 = fast(class_labels=labels, generator=0, progress=False, output_type="pt")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    diff = (bf16 - fp32).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.1 and diff.max() > 0  # bf16 did run
    assert digits_scores(bf16, torch.tensor(labels))["accuracy"] >= 0.95


def test_shipped_model_classifies_held_out_digits_by_its_own_likelihood():
    """A class-conditional model is a classifier (``classify``: the diffusion ELBO per class).
    Measured: 99.3% of 300 test-split digits (never trained on); unconditional models refuse."""
    from mmdiff.eval.digits import _digits_tensors
    pipe = mmdiff.pipeline("image")
    images, labels = _digits_tensors("test")
    log_probs = pipe.classify(images[:30])
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(30), atol=1e-5)
    assert (log_probs.argmax(1) == labels[:30]).float().mean() >= 0.9
    assert torch.allclose(pipe.classify(images[3:5], seed=0), log_probs[3:5], atol=1e-5)  # whatever the batch


def test_unconditional_run_with_a_guidance_default_validates_and_exports_unguided(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=2, batch_size=16, validation_steps=2,
                      checkpointing_steps=2, report_to="none", progress=False)
    task = ImageTask(ImageArgs(**TINY, unconditional=True, guidance_scale=4.0))
    export = Trainer(task, cfg).train()  # validation samples at step 2 must not ask for guidance
    pipe = mmdiff.pipeline("image", model=export)
    assert pipe.config.guidance_scale == 1.0 and pipe.model.config.num_classes == 0
    assert len(pipe(num_images=2, num_inference_steps=2, generator=0, progress=False)) == 2
    with pytest.raises(ValueError, match="guidance_scale=1"):
        pipe(num_images=1, num_inference_steps=2, guidance_scale=3.0, progress=False)
    with pytest.raises(ValueError, match="unconditional: it has no classes"):
        pipe.classify(torch.zeros(1, 1, 8, 8))


def test_heun_on_the_shipped_flow_model_draws_digits():
    """Pipelines of flow models run Heun in flow time (diffusers' FlowMatchHeun); a trapezoid in
    sigma from the flow grid's sigma_max = 1e5 returned noise here before."""
    from mmdiff.eval.digits import classify
    pipe = mmdiff.pipeline("image")
    labels = torch.arange(10).repeat(4)
    for options in ({}, {"time": "sigma"}):
        x = pipe(class_labels=labels.tolist(), num_inference_steps=13, sampler="heun", generator=0,
                 output_type="pt", progress=False, **options)
        accuracy = (classify(x) == labels).float().mean().item()
        if options:
            assert accuracy < 0.5, "the sigma-time trapezoid should fail on this grid"
        else:
            assert accuracy > 0.9
