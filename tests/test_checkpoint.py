"""Checkpoints: safetensors + JSON only, validated on load, written atomically."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mmdiff.core.checkpoint import CheckpointError, atomic_write_dir
from mmdiff.core.dit import DiT, DiTConfig
from mmdiff.core.patch import PatchConfig


def small_dit(**kw):
    torch.manual_seed(0)
    cfg = DiTConfig(patch=PatchConfig("image", 2, (8, 8), 2), hidden_size=32, depth=2, num_heads=2,
                    num_classes=3, **kw)
    model = DiT(cfg)
    with torch.no_grad():  # adaLN-Zero starts at zero; give every tensor real values to compare
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_round_trip_is_bitwise_and_config_is_in_header(tmp_path):
    model = small_dit(qk_norm=True)
    model.save_pretrained(tmp_path / "m")
    again = DiT.from_pretrained(tmp_path / "m")
    assert again.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    x, t, y = torch.randn(2, 2, 8, 8), torch.tensor([3.0, 700.0]), torch.tensor([0, 2])
    assert torch.equal(model.eval()(x, t, y), again(x, t, y))
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        header = f.metadata()
    assert json.loads(header["config"])["hidden_size"] == 32 and header["class"] == "DiT"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]


def test_saved_weights_are_as_readable_as_any_file_the_user_writes(tmp_path):
    import os
    old = os.umask(0o022)
    try:
        small_dit().save_pretrained(tmp_path / "m")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "m" / "model.safetensors") == mode(tmp_path / "plain.txt") == 0o644
    assert mode(tmp_path / "m") == 0o755  # safetensors alone writes 0600 (others could not load it)


def test_half_precision_save(tmp_path):
    small_dit().save_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    tensors = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in tensors.values() if t.is_floating_point())
    assert DiT.from_pretrained(tmp_path / "m").x_embedder.weight.dtype == torch.bfloat16


def corrupt(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


@pytest.mark.parametrize("case,message", [
    ("missing_tensor", "missing tensor 'final_layer.linear.weight'"),
    ("wrong_shape", "tensor 'x_embedder.weight' has shape (32, 9)"),
    ("extra_tensor", "unexpected tensor 'surprise'"),
    ("int_weights", "expected a floating dtype"),
])
def test_bad_tensors_are_named(tmp_path, case, message):
    small_dit().save_pretrained(tmp_path / "m")
    edits = {
        "missing_tensor": lambda t: t.pop("final_layer.linear.weight"),
        "wrong_shape": lambda t: t.__setitem__("x_embedder.weight", torch.zeros(32, 9)),
        "extra_tensor": lambda t: t.__setitem__("surprise", torch.zeros(1)),
        "int_weights": lambda t: t.__setitem__("x_embedder.weight", torch.zeros(32, 8, dtype=torch.int32)),
    }
    corrupt(tmp_path / "m", edits[case])
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DiT.from_pretrained(tmp_path / "m")


def test_truncated_missing_and_pickled_files(tmp_path):
    small_dit().save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt"):
        DiT.from_pretrained(tmp_path / "m")
    weights.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        DiT.from_pretrained(tmp_path / "m")
    torch.save({"x": torch.zeros(1)}, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing a pickle-based file"):
        DiT.from_pretrained(tmp_path / "m")


def test_bad_configs(tmp_path):
    small_dit().save_pretrained(tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    good = json.loads(cfg_path.read_text())
    cfg_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        DiT.from_pretrained(tmp_path / "m")
    cfg_path.write_text(json.dumps({**good, "hiden_size": 3}))
    with pytest.raises(CheckpointError, match=r"unknown option\(s\) \['hiden_size'\]"):
        DiT.from_pretrained(tmp_path / "m")
    cfg_path.write_text(json.dumps({**good, "_class": "AutoencoderKL"}))
    with pytest.raises(CheckpointError, match="describes a AutoencoderKL, not a DiT"):
        DiT.from_pretrained(tmp_path / "m")
    cfg_path.write_text(json.dumps({**good, "hidden_size": 64}))
    with pytest.raises(CheckpointError, match="has shape"):
        DiT.from_pretrained(tmp_path / "m")
    cfg_path.unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        DiT.from_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="not a folder"):
        DiT.from_pretrained(tmp_path / "nowhere")


def test_atomic_write_keeps_the_old_folder_on_failure(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_write_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(OSError):
        with atomic_write_dir(target) as tmp:
            (tmp / "a.txt").write_text("second, partial")
            raise OSError("No space left on device")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary leftovers
