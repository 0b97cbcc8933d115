"""The bad-input catalogue of docs/errors.md: one test per row, each checking the message the user
gets and, where something was saved before, that it is still there and intact."""
import errno
import io
import json
import warnings

import pytest
import torch
from PIL import Image

import mmdiff
from mmdiff.core.checkpoint import CheckpointError
from mmdiff.core.dit import DiT, DiTConfig
from mmdiff.core.patch import PatchConfig
from mmdiff.core.samplers import sample
from mmdiff.core.schedules import get_schedule
from mmdiff.data import DataError
from mmdiff.data.images import ImageFolderDataset
from mmdiff.data.text import load_text_files
from mmdiff.modalities.image import ImageArgs, ImageTask
from mmdiff.training import TrainConfig, Trainer, verify_checkpoint

TINY = dict(patch_size=2, hidden_size=32, depth=1, num_heads=2, sample_steps=2)


def trainer(tmp_path, args=None, **kw):
    cfg = dict(output_dir=str(tmp_path / "run"), max_steps=2, batch_size=8, checkpointing_steps=2,
               validation_steps=0, report_to="none", progress=False)
    return Trainer(ImageTask(args or ImageArgs(**TINY)), TrainConfig(**{**cfg, **kw}))


@pytest.fixture
def previous_run(tmp_path):
    trainer(tmp_path).train()
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000002"
    assert verify_checkpoint(ckpt) is None
    return ckpt


def png(path, size=(8, 8), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128).save(path)


# ------------------------------------------------------------------------------------ data

def test_missing_data_path_fails_before_training_and_keeps_the_run(tmp_path, previous_run):
    bad = trainer(tmp_path, ImageArgs(**TINY, data=str(tmp_path / "nope")), resume_from_checkpoint="latest",
                  max_steps=4)
    with pytest.raises(DataError, match="nope does not exist"):
        bad.train()
    assert verify_checkpoint(previous_run) is None
    assert sorted(p.name for p in previous_run.parent.iterdir()) == ["step-00000002"]


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        ImageFolderDataset(tmp_path / "empty", 8)


def test_folder_without_readable_images(tmp_path):
    for name in ("a/x.png", "b/y.png"):
        (tmp_path / "d" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / name).write_bytes(b"not a png")
    with pytest.raises(DataError, match="none of the 2 image files .* could be read"):
        ImageFolderDataset(tmp_path / "d", 8)


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    png(tmp_path / "d" / "cat" / "ok.png")
    png(tmp_path / "d" / "dog" / "ok.png")
    (tmp_path / "d" / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.warns(UserWarning, match="broken.png"):
        ds = ImageFolderDataset(tmp_path / "d", 8)
    assert len(ds) == 2 and len(ds.skipped) == 1 and "broken.png" in ds.skipped[0][0]


def test_mixed_sizes_and_modes_come_out_uniform(tmp_path):
    png(tmp_path / "d" / "a" / "gray.png", (10, 7), "L")
    png(tmp_path / "d" / "a" / "rgba.png", (31, 40), "RGBA")
    png(tmp_path / "d" / "b" / "pal.png", (8, 8), "P")
    png(tmp_path / "d" / "b" / "rgb.png", (64, 16), "RGB")
    ds = ImageFolderDataset(tmp_path / "d", 8)
    shapes = {tuple(ds[i]["image"].shape) for i in range(len(ds))}
    assert shapes == {(3, 8, 8)} and ds.num_classes == 2


def test_non_utf8_text_and_empty_lines_are_skipped_and_counted(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "good.txt").write_text("first line\n\n\nsecond line\n")
    (tmp_path / "t" / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corpus = load_text_files(tmp_path / "t")
    assert corpus.texts == ["first line", "second line"]
    reasons = " ".join(r for _, r in corpus.skipped)
    assert "UTF-8" in reasons and "blank" in reasons
    assert any("latin1.txt" in str(w.message) for w in caught)


def test_empty_text_corpus_is_an_error(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_text("\n\n")
    with pytest.raises(DataError, match="a.txt"):
        load_text_files(tmp_path / "t")


# ------------------------------------------------------------------------------- names, numbers

def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown sampler 'dpm'; choose one of \[.*'dpmpp_2m'"):
        sample(lambda x, s: x, torch.zeros(1, 2), get_schedule("edm").sigmas(3), "dpm")
    with pytest.raises(ValueError, match=r"unknown schedule 'karras'; choose one of \[.*'edm'"):
        get_schedule("karras")
    with pytest.raises(ValueError, match=r"unknown DiT preset 'DiT-M/2'; choose one of \['DiT-S/2'"):
        DiT.from_preset("DiT-M/2")
    with pytest.raises(ValueError, match=r"unknown --model 'DiT-XXL/2'"):
        ImageTask(ImageArgs(model="DiT-XXL/2")).dit_config_for((1, 8, 8), 10)


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        get_schedule("flow").sigmas(0)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipes")
    guided = trainer(out / "a").train()
    no_dropout = trainer(out / "b", ImageArgs(**TINY, class_dropout=0.0)).train()
    return mmdiff.pipeline("image", model=guided), mmdiff.pipeline("image", model=no_dropout)


def test_guidance_without_label_dropout(pipes):
    _, plain = pipes
    assert plain.model.null_class is None
    with pytest.raises(ValueError, match="trained without condition dropout.*guidance_scale=1"):
        plain(class_labels=[1], guidance_scale=4.0, progress=False)


def test_class_label_out_of_range(pipes):
    guided, _ = pipes
    with pytest.raises(ValueError, match=r"class label out of range: got \[10\], the model knows 0..9"):
        guided(class_labels=[10], progress=False)


# ------------------------------------------------------------------------------ checkpoints

@pytest.fixture
def saved_model(tmp_path):
    model = DiT(DiTConfig(patch=PatchConfig("image", 1, (4, 4), 2), hidden_size=16, depth=1, num_heads=2))
    return model.save_pretrained(tmp_path / "m")


def test_from_pretrained_wrong_or_missing_config(saved_model):
    cfg = saved_model / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "depth": "two"}))
    with pytest.raises(CheckpointError, match="option 'depth' of DiTConfig should be int, got 'two'"):
        DiT.from_pretrained(saved_model)
    cfg.unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        DiT.from_pretrained(saved_model)


def test_from_pretrained_missing_tensor_wrong_shape_truncated(saved_model):
    from safetensors.torch import load_file, save_file
    weights = saved_model / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(str(weights))
    tensors["final_layer.linear.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match=r"'final_layer.linear.weight' has shape \(3, 3\)"):
        DiT.from_pretrained(saved_model)
    tensors.pop("final_layer.linear.weight")
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match="missing tensor 'final_layer.linear.weight'"):
        DiT.from_pretrained(saved_model)
    weights.write_bytes(original[:-500])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        DiT.from_pretrained(saved_model)


def test_pickle_files_are_refused(saved_model):
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1)}, buffer)
    (saved_model / "diffusion_pytorch_model.bin").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="refusing a pickle-based file"):
        DiT.from_pretrained(saved_model)


# ----------------------------------------------------------------------------- run folders

def test_output_dir_holding_another_run(tmp_path, previous_run):
    before = {p.name: p.stat().st_mtime_ns for p in previous_run.iterdir()}
    with pytest.raises(FileExistsError, match="already holds a run.*--overwrite_output_dir"):
        trainer(tmp_path, ImageArgs(**{**TINY, "hidden_size": 64})).train()
    assert {p.name: p.stat().st_mtime_ns for p in previous_run.iterdir()} == before


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, previous_run, monkeypatch):
    import mmdiff.training.checkpoints as training

    real = training.save_tensors

    def full(tensors, path, **kw):
        if path.name == "ema.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, **kw)

    monkeypatch.setattr(training, "save_tensors", full)
    with pytest.raises(OSError, match="could not write checkpoint .*step-00000004.*No space left on device.*"
                                      "newest intact checkpoint is step-00000002"):
        trainer(tmp_path, resume_from_checkpoint="latest", max_steps=4).train()
    root = previous_run.parent
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002"]  # no partial folder, nothing lost
    assert verify_checkpoint(previous_run) is None
