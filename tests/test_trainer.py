"""The one Trainer: export, exact resume, checkpoint safety, rotation, non-finite losses."""
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file

import mmdiff
from mmdiff.modalities.image import ImageArgs, ImageTask
from mmdiff.training import (EpochSampler, SeededItems, TrainConfig, Trainer, find_checkpoint, lr_at, resolve_precision,
                             parse_config, verify_checkpoint)

TINY = dict(patch_size=2, hidden_size=32, depth=1, num_heads=2, sample_steps=3)


def config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), max_steps=6, batch_size=16, learning_rate=1e-3,
                checkpointing_steps=3, validation_steps=0, report_to="none", progress=False, log_steps=1)
    return TrainConfig(**{**base, **kw})


def train(tmp_path, task_kw=None, **kw):
    trainer = Trainer(ImageTask(ImageArgs(**{**TINY, **(task_kw or {})})), config(tmp_path, **kw))
    return trainer, trainer.train()


def test_lr_schedule_and_sampler():
    cfg = TrainConfig(learning_rate=1.0, lr_warmup_steps=4, max_steps=14, lr_schedule="cosine")
    assert [lr_at(cfg, s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(cfg, 9) == pytest.approx(0.5) and lr_at(cfg, 14) == pytest.approx(0.0)
    s = EpochSampler(10, seed=3)
    first = list(s)
    assert sorted(first) == list(range(10)) and list(s) == first
    s.epoch = 1
    second = list(s)
    assert sorted(second) == list(range(10, 20)) and [k - 10 for k in second] != first  # keys carry the epoch


def test_item_augmentation_depends_on_epoch_and_index_only():
    class Noisy(torch.utils.data.Dataset):  # a random augmentation drawn from the global RNG
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.rand(())
    items = SeededItems(Noisy(), seed=1)
    state = torch.get_rng_state()
    first = [items[k] for k in range(12)]  # keys of epochs 0 and 1
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG (the loss's) is untouched
    torch.rand(7)
    assert [items[k] for k in reversed(range(12))] == first[::-1]  # any order, any worker: same draws
    assert len(set(first)) == 12  # different per index and per epoch


def test_item_seeding_leaves_gpu_generators_alone(monkeypatch):
    """Seeding an item touches the CPU generator only: torch.manual_seed would also reseed every
    GPU's generator outside the fork (the training noise on a GPU), and where CUDA is not
    initialised it queues that reseed with a traceback, ~0.5 ms per item."""
    def forbidden(seed):
        raise AssertionError("an item reseeded the GPU generators")
    monkeypatch.setattr(torch.cuda, "manual_seed_all", forbidden)
    items = SeededItems([0.0] * 4, seed=3)
    assert [items[k] for k in range(8)] == [0.0] * 8


def test_train_exports_a_pipeline_that_samples(tmp_path):
    trainer, export = train(tmp_path, validation_steps=6, report_to="tensorboard")
    assert (tmp_path / "run" / "samples" / "step-00000006.png").is_file()
    assert any((tmp_path / "run" / "logs").rglob("events.out.tfevents*"))
    pipe = mmdiff.pipeline("image", model=export)
    images = pipe(class_labels=[1, 2], num_inference_steps=3, generator=0, progress=False)
    assert len(images) == 2 and images[0].size == (8, 8)
    # the export holds the EMA weights, not the raw ones
    ema = trainer.ema.shadow
    exported = load_file(str(export / "model" / "model.safetensors"))
    assert torch.equal(exported["x_embedder.weight"], ema["x_embedder.weight"])


@pytest.mark.slow
def test_compiled_training_checkpoints_and_resumes_with_plain_keys(tmp_path, monkeypatch):
    """`accelerate launch --dynamo_backend inductor` wraps the model in torch.compile, whose state
    dict keys carry an `_orig_mod.` prefix; the EMA, checkpoints, export and resume address the
    bare model (the EMA update failed with a KeyError before)."""
    from accelerate.state import AcceleratorState
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    AcceleratorState._reset_state()  # the launcher's settings are read when the shared state is made
    trainer, export = train(tmp_path, max_steps=3)
    assert trainer.model is not trainer.bare_model  # compiled
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step-00000003" / "model.safetensors"))
    assert saved.keys() == trainer.bare_model.state_dict().keys()
    assert torch.equal(saved["x_embedder.weight"], trainer.bare_model.state_dict()["x_embedder.weight"].cpu())
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND")  # resumed without compile: the same checkpoint
    AcceleratorState._reset_state()
    resumed, _ = train(tmp_path, max_steps=4, resume_from_checkpoint="latest")
    assert resumed.model is resumed.bare_model
    assert resumed.state.step == 4
    assert mmdiff.pipeline("image", model=export)(class_labels=[1], num_inference_steps=2, generator=0,
                                                  progress=False)


def test_resume_is_bitwise_identical(tmp_path):
    straight, _ = train(tmp_path / "a", max_steps=6)
    first, _ = train(tmp_path / "b", max_steps=3)
    resumed, _ = train(tmp_path / "b", max_steps=6, resume_from_checkpoint="latest")
    assert resumed.state.step == 6
    a, b = straight.accelerator.unwrap_model(straight.model), resumed.accelerator.unwrap_model(resumed.model)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    for k in straight.ema.shadow:
        assert torch.equal(straight.ema.shadow[k], resumed.ema.shadow[k]), k
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert resumed.optimizer.param_groups[0]["fused"]  # the fused AdamW kernel, also after resuming


def test_corrupt_latest_falls_back_and_names_the_file(tmp_path):
    train(tmp_path, max_steps=6)
    newest = tmp_path / "run" / "checkpoints" / "step-00000006"
    weights = newest / "optimizer.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    assert "optimizer.pt is truncated" in verify_checkpoint(newest)
    with pytest.warns(UserWarning, match="skipping checkpoint step-00000006: .*optimizer.pt is truncated"):
        assert find_checkpoint(tmp_path / "run", "latest").name == "step-00000003"
    with pytest.raises(ValueError, match="optimizer.pt is truncated"):
        find_checkpoint(tmp_path / "run", str(newest))


def test_refuses_other_runs_and_incompatible_resume(tmp_path):
    train(tmp_path, max_steps=3)
    with pytest.raises(FileExistsError, match="already holds a run.*--overwrite_output_dir"):
        train(tmp_path, max_steps=3)
    with pytest.raises(ValueError, match="cannot resume .*different model.*hidden_size"):
        train(tmp_path, task_kw={"hidden_size": 64}, max_steps=6, resume_from_checkpoint="latest")
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert saved == ["step-00000003"]  # nothing lost by the refusals
    trainer, _ = train(tmp_path, max_steps=3, overwrite_output_dir=True)
    assert trainer.state.step == 3


def test_init_from_starts_from_an_exports_weights(tmp_path):
    _, export = train(tmp_path / "a", max_steps=3)
    saved = load_file(export / "model" / "model.safetensors")
    # lr 0: the one step leaves the weights where --init_from put them; the empty folder with
    # --resume_from_checkpoint latest is a requeued job's first start, which must initialise too.
    tuned, _ = train(tmp_path / "b", max_steps=1, learning_rate=0.0, init_from=str(export),
                     resume_from_checkpoint="latest")
    weights = tuned.accelerator.unwrap_model(tuned.model).state_dict()
    assert saved.keys() == weights.keys()
    assert all(torch.equal(saved[k], weights[k]) for k in saved)
    assert all(torch.equal(saved[k], tuned.ema.shadow[k]) for k in tuned.ema.shadow)
    fresh, _ = train(tmp_path / "c", max_steps=1, learning_rate=0.0)  # the same seed without --init_from
    changed = [k for k, v in fresh.accelerator.unwrap_model(fresh.model).state_dict().items()
               if not torch.equal(v, saved[k])]
    assert len(changed) > len(saved) // 2


def test_init_from_refuses_another_model_and_names_the_option(tmp_path):
    _, export = train(tmp_path / "a", max_steps=3)
    with pytest.raises(ValueError, match=r"another model than the export's \(export -> this run: "
                                         r"hidden_size: 32 -> 64"):
        train(tmp_path / "b", task_kw={"hidden_size": 64}, init_from=str(export))
    with pytest.raises(FileNotFoundError, match=r"--init_from .*nowhere: no model.safetensors.*export/ folder"):
        train(tmp_path / "c", init_from=str(tmp_path / "nowhere"))
    assert not (tmp_path / "b" / "run" / "run.json").exists()  # refused before the run began
    assert load_file(export / "model" / "model.safetensors")  # the export is untouched


def test_rotation_keeps_newest(tmp_path):
    train(tmp_path, max_steps=9, checkpointing_steps=2, checkpoints_total_limit=2)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-00000008", "step-00000009"]


class NanTask(ImageTask):
    def __init__(self, bad_steps):
        super().__init__(ImageArgs(**TINY))
        self.bad, self.calls = bad_steps, 0

    def loss(self, model, batch):
        loss, logs = super().loss(model, batch)
        self.calls += 1
        return (loss * float("nan") if self.calls in self.bad else loss), logs


def test_nonfinite_steps_are_skipped_then_abort(tmp_path):
    trainer = Trainer(NanTask({2}), config(tmp_path, max_steps=4))
    with pytest.warns(UserWarning, match="non-finite loss, step skipped"):
        trainer.train()
    assert trainer.state.step == 4
    trainer = Trainer(NanTask(set(range(1, 100))), config(tmp_path / "x", max_steps=20, max_nonfinite_steps=3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FloatingPointError, match="3 non-finite losses in a row"):
            trainer.train()


def test_yaml_config_and_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_steps: 7\nhidden_size: 48\nlearning_rate: 0.01\n")
    train_cfg, args = parse_config([TrainConfig, ImageArgs], ["--config", str(cfg), "--learning_rate", "0.5"])
    assert train_cfg.max_steps == 7 and train_cfg.learning_rate == 0.5 and args.hidden_size == 48
    cfg.write_text("max_stepz: 7\n")
    with pytest.raises(SystemExit, match=r"unknown option\(s\) \['max_stepz'\]"):
        parse_config([TrainConfig, ImageArgs], ["--config", str(cfg)])


def test_resume_latest_in_an_empty_folder_starts_a_new_run(tmp_path):
    trainer, export = train(tmp_path, max_steps=3, resume_from_checkpoint="latest")
    assert trainer.state.step == 3 and export.is_dir()


class DigitStream(torch.utils.data.IterableDataset):
    """A finite stream in a per-epoch order, standing in for data that does not fit in memory."""

    def __init__(self, base):
        self.base, self.epoch = base, 0
        self.num_classes, self.class_names, self.channels = base.num_classes, base.class_names, base.channels

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(len(self.base), generator=torch.Generator().manual_seed(self.epoch))[:200]
        for i in order.tolist():
            yield {**self.base[i], "index": torch.tensor(i)}


class StreamTask(ImageTask):
    def __init__(self):
        super().__init__(ImageArgs(**TINY))
        self.seen = []

    def build_dataset(self):
        return DigitStream(super().build_dataset())

    def example_shape(self):
        return tuple(next(iter(self.dataset))["image"].shape)

    def loss(self, model, batch):
        self.seen += batch["index"].tolist()
        return super().loss(model, batch)


def test_streamed_data_resumes_without_repeating_or_skipping(tmp_path):
    straight = Trainer(StreamTask(), config(tmp_path / "a", max_steps=16, checkpointing_steps=5))
    straight.train()
    part = Trainer(StreamTask(), config(tmp_path / "b", max_steps=5, checkpointing_steps=5))
    part.train()
    rest = Trainer(StreamTask(), config(tmp_path / "b", max_steps=16, checkpointing_steps=5,
                                        resume_from_checkpoint="latest"))
    rest.train()
    assert part.task.seen + rest.task.seen == straight.task.seen  # 12 batches per epoch: crosses one
    assert rest.state.epoch == straight.state.epoch == 1
    a = straight.accelerator.unwrap_model(straight.model).state_dict()
    b = rest.accelerator.unwrap_model(rest.model).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_auto_precision_is_bf16_only_where_native(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if not torch.cuda.is_available():
        assert resolve_precision("auto") == ("bf16" if native else "no")
    assert resolve_precision("no") == "no" and resolve_precision("bf16") == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # the launcher's default: auto still decides
    assert resolve_precision("auto") == resolve_precision("auto")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # a launcher choice wins over auto only
    assert resolve_precision("auto") == "fp16" and resolve_precision("no") == "no"
    trainer = Trainer(ImageTask(ImageArgs(**TINY)), TrainConfig(mixed_precision="no", report_to="none"))
    assert trainer.accelerator.mixed_precision == "no"


FAULTS_PER_REUSE = """
import resource, sys, torch
from mmdiff.training import keep_freed_memory
assert keep_freed_memory()
x = torch.randn(32, 64, 2048)  # a text model's (batch, length, vocab) logits: 16 MB, 4096 pages
def cycle():
    y = torch.softmax(x, -1)
    z = y * 2  # a second block of the same size, freed with the first
    del y, z
for _ in range(3):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tunes glibc's malloc")
def test_freed_memory_is_reused_without_page_faults():
    # glibc's default hands each freed 16 MB block back to the OS, and the next one faults its
    # 4096 pages in again (8000 faults per cycle of two on the dev machine, ~15 ms of each step).
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_REUSE], capture_output=True, text=True, check=True)
    assert float(out.stdout.split()[-1]) < 1024, out.stdout  # of the 8192 pages a cycle touches


def test_trainer_keeps_freed_memory_on_the_cpu_unless_told_not_to(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("mmdiff.training.loop.keep_freed_memory", lambda: calls.append(1) or True)
    task = ImageTask(ImageArgs(**TINY))
    Trainer(task, config(tmp_path))
    Trainer(task, config(tmp_path, keep_freed_memory=False))
    assert calls == [1]
