"""LoRA through peft: fine-tuning the shipped digits model to a new task, adapters as peft's
own files, several adapters with weights, fused and unfused, and the wrong base refused."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import mmdiff
from mmdiff.components.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX, lora_layers
from mmdiff.core.checkpoint import CheckpointError
from mmdiff.core.dit import DiT
from mmdiff.data.images import digits_arrays
from mmdiff.eval.digits import classify
from mmdiff.pipelines import ASSETS
from recipes import image_train

BASE = ASSETS / "image-digits"
QUIET = ["--report_to", "none", "--progress", "false", "--validation_steps", "0"]


def shifted_digits(folder: Path) -> Path:
    """The digits with every label moved by one: the folder of class c holds pictures of c + 1."""
    images, labels = digits_arrays("train")
    for i, (image, label) in enumerate(zip(images, labels)):
        target = folder / str((int(label) - 1) % 10)
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.asarray(image) * 255).astype(np.uint8), "L").save(target / f"{i}.png")
    return folder


def train_lora(out: Path, data: Path, *extra) -> Path:
    return image_train.main(["--init_from", str(BASE), "--data", str(data), "--resolution", "8", "--output_dir",
                             str(out), "--lora_rank", "8", "--lora_targets", "attention,mlp,adaln",
                             "--learning_rate", "0.003", "--lr_schedule", "constant", "--lr_warmup_steps", "0",
                             "--ema_decay", "0.99", "--batch_size", "64", "--checkpointing_steps", "100", *QUIET,
                             *extra])


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    export = train_lora(root / "run", shifted_digits(root / "shifted"), "--max_steps", "300", "--lora_merge", "true")
    return export


def samples(pipe, per_class=10):
    labels = torch.arange(10).repeat(per_class)
    gens = [torch.Generator().manual_seed(i) for i in range(len(labels))]
    return pipe(class_labels=labels.tolist(), generator=gens, output_type="pt", progress=False), labels


@pytest.mark.slow
def test_a_lora_learns_a_new_task_and_the_base_keeps_the_old(adapter):
    pipe = mmdiff.pipeline("image")
    base, labels = samples(pipe)
    name = pipe.load_lora(adapter)
    adapted, _ = samples(pipe)
    old, new = classify(base), classify(adapted)
    assert (old == labels).float().mean() >= 0.95  # the base draws the class asked for
    assert (new == (labels + 1) % 10).float().mean() >= 0.9  # the adapter draws the next digit
    assert (new == labels).float().mean() <= 0.1
    pipe.set_lora_scales({name: 0.0})  # off again: the base's pictures, up to float rounding
    assert (samples(pipe)[0] - base).abs().max() < 1e-4


def test_only_the_adapters_train_and_are_saved(adapter):
    run = adapter.parent
    checkpoint = run / "checkpoints" / "step-00000300"
    weights = load_file(str(checkpoint / "model.safetensors"))
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)
    assert set(weights) == set(load_file(str(checkpoint / "ema.safetensors")))
    tensors = load_file(str(adapter / ADAPTER_WEIGHTS))
    assert all(k.startswith(PEFT_PREFIX) and (".lora_A." in k or ".lora_B." in k) for k in tensors)
    trained = sum(t.numel() for t in tensors.values())
    total = sum(p.numel() for p in DiT.from_pretrained(BASE / "model").parameters())
    assert 0.05 < trained / total < 0.1  # rank 8 on attention, MLP and adaLN: 7.2% of the DiT
    assert (adapter / ADAPTER_WEIGHTS).stat().st_size < 0.1 * (BASE / "model" / "model.safetensors").stat().st_size
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["base_model_name_or_path"] == str(BASE)


def test_the_adapter_round_trips_through_peft(adapter):
    """peft's own loader (PeftModel.from_pretrained) on our file gives the same network as ours."""
    from peft import PeftModel

    x, t, y = torch.randn(4, 1, 8, 8), torch.rand(4) * 1000, torch.tensor([1, 2, 3, 4])
    theirs = PeftModel.from_pretrained(DiT.from_pretrained(BASE / "model"), str(adapter)).eval()
    pipe = mmdiff.pipeline("image")
    pipe.load_lora(adapter)
    with torch.no_grad():
        ours, ref = pipe.model(x, t, class_labels=y), theirs(x, t, class_labels=y)
        plain = DiT.from_pretrained(BASE / "model")(x, t, class_labels=y)
    assert (ours - ref).abs().max() < 1e-6 and (ours - plain).abs().max() > 1e-3
    from peft import get_peft_model_state_dict
    saved = load_file(str(adapter / ADAPTER_WEIGHTS))
    back = get_peft_model_state_dict(theirs)  # peft's own keys are the file's, prefix included
    assert set(back) == set(saved) and all(k.startswith(PEFT_PREFIX) for k in back)
    assert all(torch.equal(back[k], v) for k, v in saved.items())


def test_fuse_unfuse_and_several_adapters_with_weights(adapter, tmp_path):
    second = tmp_path / "second"
    shutil.copytree(adapter, second)
    pipe = mmdiff.pipeline("image")
    qkv = pipe.model.blocks[0].attn.qkv
    w0 = qkv.weight.detach().clone()
    a, b = pipe.load_lora(adapter, scale=0.7, name="a"), pipe.load_lora(second, scale=0.5, name="b")
    assert pipe.lora_scales == {"a": 0.7, "b": 0.5} and len(lora_layers(pipe.model)) > 0
    layer = pipe.model.blocks[0].attn.qkv
    out, _ = samples(pipe, 2)
    pipe.fuse_lora()
    fused_weight = layer.get_base_layer().weight.detach().clone()
    manual = w0 + sum(layer.scaling[n] * (layer.lora_B[n].weight @ layer.lora_A[n].weight) for n in (a, b))
    assert (fused_weight - manual).abs().max() < 1e-6 and layer.scaling[a] == pytest.approx(0.7 * 8 / 8)
    fused, _ = samples(pipe, 2)
    assert (fused - out).abs().max() < 1e-4  # the same pictures, from merged weights
    with pytest.raises(ValueError, match="fused into the weights: unfuse_lora\\(\\) first"):
        pipe.set_lora_scales({"a": 1.0})
    pipe.unfuse_lora()
    assert torch.allclose(layer.get_base_layer().weight, w0, atol=1e-6)
    pipe.set_lora_scales({"a": 0.7})  # b off
    only_a, _ = samples(pipe, 2)
    assert (only_a - out).abs().max() > 1e-3
    pipe.unload_lora()
    assert pipe.lora_scales == {} and type(pipe.model.blocks[0].attn.qkv) is torch.nn.Linear
    assert torch.allclose(pipe.model.blocks[0].attn.qkv.weight, w0, atol=1e-6)  # fused and back: float rounding


def test_the_merged_export_is_a_plain_pipeline(adapter):
    merged = mmdiff.pipeline("image", model=Path(f"{adapter}-merged"))
    assert not lora_layers(merged.model)
    pipe = mmdiff.pipeline("image")
    pipe.load_lora(adapter)
    a, _ = samples(pipe, 2)
    b, _ = samples(merged, 2)
    assert (a - b).abs().max() < 1e-4


def test_an_adapter_on_the_wrong_base_is_refused(adapter, tmp_path):
    other = mmdiff.pipeline("video")  # another DiT config
    with pytest.raises(CheckpointError, match="the adapter was trained on another DiT"):
        other.load_lora(adapter)
    changed = mmdiff.pipeline("image")
    with torch.no_grad():
        changed.model.blocks[3].mlp.fc2.weight.mul_(1.01)  # same shapes, other weights
    with pytest.raises(CheckpointError, match="trained on other weights than this model's"):
        changed.load_lora(adapter)
    with pytest.raises(CheckpointError, match="adapter_config.json is missing"):
        mmdiff.pipeline("image").load_lora(tmp_path)
    pipe = mmdiff.pipeline("image")
    pipe.load_lora(adapter, name="x")
    with pytest.raises(ValueError, match="an adapter named 'x' is loaded already"):
        pipe.load_lora(adapter, name="x")


def test_lora_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="--init_from must be the model the adapters adapt"):
        image_train.main(["--lora_rank", "4", "--output_dir", str(tmp_path / "a"), *QUIET])
    with pytest.raises(ValueError, match=r"--lora_targets \['nope'\] matches no layer of DiT"):
        image_train.main(["--lora_rank", "4", "--init_from", str(BASE), "--lora_targets", "nope", "--max_steps", "1",
                          "--output_dir", str(tmp_path / "b"), *QUIET])
    assert not (tmp_path / "b" / "run.json").exists()
