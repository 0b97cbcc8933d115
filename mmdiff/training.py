"""The one Trainer: every recipe (image, video, text) trains through it, on accelerate.

A recipe hands the Trainer a ``Task`` (see ``mmdiff.modalities.base``): the data set, the model,
the loss of one batch, validation samples and the export. The Trainer owns everything else:
mixed precision, gradient accumulation and clipping, AdamW with warmup, EMA, checkpoints that
resume exactly, signal handling, trackers, progress and the final export.

A checkpoint is a folder ``<output_dir>/checkpoints/step-XXXXXXXX`` written atomically (temporary
folder, fsync, rename) and sealed by ``manifest.json`` (size and sha256 of every file); ``latest``
is the newest checkpoint whose manifest verifies. Weights are safetensors; optimizer and RNG
state are plain tensors and numbers read back with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from .core.checkpoint import (WEIGHTS_NAME, atomic_write_dir, check_state_dict, config_to_dict, fsync_tree,
                              load_tensors, read_config_json, save_tensors)
from .core.ema import EMA

logger = logging.getLogger("mmdiff.training")
CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
RUN_FILE = "run.json"
# Model options that --init_from may change: they alter how the weights are trained, not what they are.
INIT_FREE_OPTIONS = {"gradient_checkpointing"}


@dataclass
class TrainConfig:
    """Options every recipe shares (the modality adds ``--data``, ``--model``, ``--resolution``...)."""

    output_dir: str = field(default="runs/default", metadata={"help": "run folder: checkpoints, samples, logs, export"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps to train"})
    batch_size: int = field(default=64, metadata={"help": "examples per process per micro-batch"})
    learning_rate: float = field(default=1e-4, metadata={"help": "peak AdamW learning rate"})
    lr_schedule: str = field(default="constant", metadata={"help": "constant | cosine | linear (after warmup)"})
    lr_warmup_steps: int = field(default=0, metadata={"help": "linear warmup steps"})
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 = off)"})
    mixed_precision: str = field(default="auto", metadata={
        "help": "auto (bf16 where the device computes it natively, else no) | no | bf16 | fp16 (fp16 needs a GPU)"})
    seed: int = 0
    ema_decay: float = field(default=0.9999, metadata={"help": "EMA target decay"})
    ema_warmup: str = field(default="inverse_power", metadata={"help": "inverse_power | none"})
    ema_power: float = field(default=0.75, metadata={"help": "inverse-power warmup exponent"})
    gradient_checkpointing: bool = False
    checkpointing_steps: int = field(default=500, metadata={"help": "save a resumable checkpoint every N steps"})
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "keep at most N checkpoints"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder"})
    init_from: str | None = field(default=None, metadata={
        "help": "fine-tune: a pipeline export whose model weights start the run (optimizer, schedule, EMA fresh)"})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "start over in a folder holding a run"})
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard | wandb | all | none"})
    validation_steps: int = field(default=500, metadata={"help": "sample with the EMA weights every N steps (0 = off)"})
    log_steps: int = 10
    num_workers: int = 0
    max_nonfinite_steps: int = field(default=10, metadata={"help": "abort after N non-finite losses in a row"})
    deterministic: bool = field(default=False, metadata={"help": "torch.use_deterministic_algorithms (exact resume)"})
    keep_freed_memory: bool = field(default=True, metadata={
        "help": "training on a Linux CPU: let glibc keep freed memory for the next step (keep_freed_memory)"})
    progress: bool = True
    export_dir: str | None = field(default=None, metadata={"help": "pipeline export folder (default <output_dir>/export)"})


# ------------------------------------------------------------------------------- config parsing

def parse_config(classes: list[type], args: list[str] | None = None, default_config: str | Path | None = None):
    """HfArgumentParser over dataclasses, plus ``--config file.yaml`` whose values become defaults
    that command-line flags override (``default_config`` when no ``--config`` is given). Unknown
    YAML keys are an error listing the valid ones."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None if default_config is None else str(default_config))
    known, rest = pre.parse_known_args(args)
    parser = HfArgumentParser(classes)
    parser.add_argument("--config", default=known.config, help="YAML file of option values (flags override it)")
    values = {}
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            raise SystemExit(f"--config {path}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        valid = {f.name for cls in classes for f in dataclasses.fields(cls)}
        unknown = sorted(set(loaded) - valid)
        if unknown:
            raise SystemExit(f"--config {path}: unknown option(s) {unknown}; valid options: {sorted(valid)}")
        values.update(loaded)
    parser.set_defaults(**values)
    *outputs, extra = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    if extra:
        raise SystemExit(f"unknown argument(s) {extra}; see --help")
    return [o for o in outputs if isinstance(o, tuple(classes))]


# ------------------------------------------------------------------------------------- helpers

class EpochSampler(Sampler):
    """A permutation fixed by ``(seed, epoch)``: identical on every rank (so accelerate's sharding
    is consistent) and reproducible after a resume. Keys are ``epoch * size + index`` so that
    ``SeededItems`` knows the epoch even in persistent workers."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter((torch.randperm(self.size, generator=g) + self.epoch * self.size).tolist())

    def __len__(self):
        return self.size


class SeededItems(Dataset):
    """Each item's random transforms (crops, flips, random clips) draw from the torch RNG seeded by
    ``(seed, epoch, index)``: the same augmentation for any number of workers or ranks, and a
    resumed run rebuilds the batch the loader had prefetched before the checkpoint bit for bit
    (with the global RNG, that prefetch would have shifted every later draw)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key: int):
        epoch, index = divmod(key, len(self.dataset))
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed would also reseed every GPU's generator
            # (outside fork_rng's restore) and, where CUDA is not initialised, queue that reseed
            # with a traceback: ~0.23 ms per item, 30 ms per digits batch of 128 on the dev CPU
            torch.random.default_generator.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            return self.dataset[index]


def resolve_precision(choice: str) -> str:
    """``auto``: bf16 autocast on a GPU with bf16 and on CPUs with AVX512-BF16 or AMX (1.65x faster
    per step than fp32 for the digits default, same quality: docs/training.md), else fp32 ("no")."""
    if choice != "auto":
        return choice
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")  # `accelerate launch --mixed_precision`
    if launcher != "no":  # "no" is also the launcher's unset default, so only a precision is honoured
        return launcher
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    if torch.backends.mps.is_available():
        return "no"
    native = [getattr(torch.cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return "bf16" if any(native) else "no"


def keep_freed_memory() -> bool:
    """Have glibc keep large freed blocks for reuse instead of handing them back to the OS.

    With its default (adaptive) thresholds glibc serves big blocks from fresh mappings or trims
    them off the heap when they are freed, so each training step's large activations page-fault
    their memory in again: on the dev machine every 16 MB tensor of a text-model step, ~4000
    faults and ~7 ms each, 10-20% of the step (docs/training.md). Here blocks up to 256 MB come
    from the heap and up to 1 GB of freed heap is kept for reuse: resident memory stays near the
    run's peak instead of falling between steps. Returns whether it applied: Linux with glibc
    only (``mallopt`` is process-wide)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl and other C libraries: nothing to tune
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 256 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): a pure function of the step and the
    current config, so a resumed run applies a changed lr or max_steps at once."""
    if step < config.lr_warmup_steps:
        return config.learning_rate * (step + 1) / config.lr_warmup_steps
    progress = (step - config.lr_warmup_steps) / max(1, config.max_steps - config.lr_warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if config.lr_schedule == "cosine":
        return config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))
    if config.lr_schedule == "linear":
        return config.learning_rate * (1 - progress)
    if config.lr_schedule == "constant":
        return config.learning_rate
    raise ValueError(f"unknown lr_schedule '{config.lr_schedule}'; choose constant, cosine or linear")


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": list(random.getstate()[1]), "python_version": random.getstate()[0],
            "python_gauss": random.getstate()[2]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files}
    (folder / MANIFEST).write_text(json.dumps(entries, indent=1))


def verify_checkpoint(folder: Path) -> str | None:
    """None if every file matches the manifest, else a sentence naming the bad file."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"{manifest} is missing (the checkpoint was not finished)"
    try:
        entries = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return f"{manifest} is corrupt"
    for name, meta in entries.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != meta["bytes"]:
            return f"{path} is truncated ({path.stat().st_size} of {meta['bytes']} bytes)"
        if sha256(path) != meta["sha256"]:
            return f"{path} is corrupt (checksum mismatch)"
    return None


def checkpoint_folders(output_dir: Path) -> list[Path]:
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")), key=lambda p: p.name)


def find_checkpoint(output_dir: Path, which: str) -> Path:
    """``latest`` -> newest checkpoint that verifies (warning about each broken newer one);
    a path -> that checkpoint, which must verify."""
    if which != "latest":
        folder = Path(which)
        if not folder.is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {which}: no such checkpoint folder")
        problem = verify_checkpoint(folder)
        if problem:
            raise ValueError(f"--resume_from_checkpoint {which}: {problem}")
        return folder
    for folder in reversed(checkpoint_folders(output_dir)):
        problem = verify_checkpoint(folder)
        if problem is None:
            return folder
        warnings.warn(f"skipping checkpoint {folder.name}: {problem}; falling back to the previous one")
    raise FileNotFoundError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir / CHECKPOINTS}")


def describe_changes(old: dict, new: dict) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches this rank consumed in the current epoch
    nonfinite_in_a_row: int = 0


# --------------------------------------------------------------------------------------- trainer

class Trainer:
    def __init__(self, task, config: TrainConfig):
        self.task, self.config = task, config
        self.output_dir = Path(config.output_dir)
        self.export_dir = Path(config.export_dir) if config.export_dir else self.output_dir / "export"
        self._stop_signal = None
        report = [] if config.report_to == "none" else (["tensorboard", "wandb"] if config.report_to == "all"
                                                       else [config.report_to])
        precision = resolve_precision(config.mixed_precision)
        if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
            # A second Trainer in one process (a notebook, a sweep) may use another precision;
            # the process group (PartialState) is kept.
            AcceleratorState._reset_state()
        self.accelerator = Accelerator(
            # With no accelerator, processes started by `accelerate launch --multi_gpu` only join one
            # gloo group when accelerate is told it runs on the CPU.
            cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
            mixed_precision=precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            # Every rank reads a stream and keeps its slice of each global batch (no dispatching from
            # rank 0), so loaders keep their own generator and resume exactly.
            dataloader_config=DataLoaderConfiguration(dispatch_batches=False),
            log_with=report or None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / "logs")))
        self.state = TrainState()
        if config.keep_freed_memory and self.accelerator.device.type == "cpu":
            keep_freed_memory()

    # ------------------------------------------------------------------------------- setup
    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def log(self, message: str) -> None:
        if self.main:
            tqdm.write(message)

    def _check_output_dir(self) -> None:
        """A folder holding another run is refused unless resuming it or told to overwrite."""
        run_file = self.output_dir / RUN_FILE
        if not run_file.exists() or self.config.resume_from_checkpoint:
            return
        if self.config.overwrite_output_dir:
            self.accelerator.wait_for_everyone()
            if self.main:
                for name in (CHECKPOINTS, "export", "samples", "logs", RUN_FILE):
                    path = self.output_dir / name
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            self.accelerator.wait_for_everyone()
            return
        raise FileExistsError(
            f"--output_dir {self.output_dir} already holds a run ({run_file}); pass --resume_from_checkpoint latest "
            f"to continue it, --overwrite_output_dir to start over (this deletes its checkpoints and export), "
            f"or choose another --output_dir")

    def _dataloader(self, dataset) -> tuple[DataLoader, EpochSampler | None]:
        """Map-style data: a ``(seed, epoch)`` permutation sharded by accelerate. Streams
        (``IterableDataset``): read in order, each rank taking its slice of every global batch;
        a stream with ``set_epoch`` reshuffles per epoch."""
        cfg, acc = self.config, self.accelerator
        common = dict(batch_size=cfg.batch_size, drop_last=True, num_workers=cfg.num_workers,
                      collate_fn=getattr(self.task, "collate", None), persistent_workers=cfg.num_workers > 0,
                      # its own generator: starting an iterator (as a resume does) must not draw from
                      # the global RNG that the loss uses
                      generator=torch.Generator().manual_seed(cfg.seed))
        if isinstance(dataset, IterableDataset):
            return DataLoader(dataset, **common), None
        if len(dataset) < cfg.batch_size * acc.num_processes:
            raise ValueError(f"the data set has {len(dataset)} examples, fewer than one batch "
                             f"({cfg.batch_size} x {acc.num_processes} processes); lower --batch_size")
        sampler = EpochSampler(len(dataset), cfg.seed)
        return DataLoader(SeededItems(dataset, cfg.seed), sampler=sampler, **common), sampler

    def _set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.epoch = epoch
        elif hasattr(self.task.dataset, "set_epoch"):
            self.task.dataset.set_epoch(epoch)

    def _install_signal_handlers(self):
        def handler(signum, frame):
            self._stop_signal = signal.Signals(signum).name
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        return previous

    # ------------------------------------------------------------------------------- train
    def train(self) -> Path | None:
        cfg, acc = self.config, self.accelerator
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        set_seed(cfg.seed)
        self._check_output_dir()
        self.task.setup()  # data set and model; bad data fails here, before any training
        model = self.task.model
        if cfg.gradient_checkpointing and hasattr(model, "config"):
            model.config.gradient_checkpointing = True
        fresh_latest = cfg.resume_from_checkpoint == "latest" and not checkpoint_folders(self.output_dir)
        resuming = bool(cfg.resume_from_checkpoint) and not fresh_latest
        if cfg.init_from and not resuming:  # a resumed run's checkpoint already holds its weights
            self._init_from(model, Path(cfg.init_from))
        loader, sampler = self._dataloader(self.task.dataset)
        params = list(model.parameters())
        # One fused kernel over all parameters where PyTorch has it: at DiT-S/2 on the CPU 22 ms a
        # step instead of 107 ms for the default multi-tensor AdamW (benchmarks/dit_train.py).
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                      betas=(cfg.adam_beta1, cfg.adam_beta2), fused=fused or None)
        self.ema = EMA(model, decay=cfg.ema_decay, warmup=cfg.ema_warmup, power=cfg.ema_power)
        self.model, self.optimizer, self.loader = acc.prepare(model, optimizer, loader)
        self.ema.to(next(self.bare_model.parameters()).device)
        self.sampler = sampler
        if resuming:
            self._resume(find_checkpoint(self.output_dir, cfg.resume_from_checkpoint))
        elif self.main:
            if fresh_latest:  # a requeued job's first start: nothing to resume yet
                self.log(f"no checkpoint in {self.output_dir / CHECKPOINTS} yet: starting a new run")
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / RUN_FILE).write_text(json.dumps(self._run_record(), indent=2))
        if acc.log_with:
            acc.init_trackers("mmdiff", config=self._flat_config())
        # Handlers stay until the export is written: a signal after the last step lets the short
        # final save and export finish rather than killing them half-way.
        previous = self._install_signal_handlers()
        try:
            if self._loop() == "interrupted":
                acc.end_training()
                return None
            if self.state.step % cfg.checkpointing_steps:
                self.save_checkpoint()
            if cfg.validation_steps:
                self._validate()
            path = self.export()
            if self._stop_signal:
                self.log(f"{self._stop_signal} arrived after the last step; the run finished and exported")
            acc.end_training()
            return path
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _loop(self) -> str:
        cfg, acc, state = self.config, self.accelerator, self.state
        bar = tqdm(total=cfg.max_steps, initial=state.step, disable=not (self.main and cfg.progress),
                   desc="training", dynamic_ncols=True)
        self.model.train()
        window_finite, t0 = True, time.time()
        while state.step < cfg.max_steps:
            self._set_epoch(state.epoch)
            loader = acc.skip_first_batches(self.loader, state.batch_in_epoch) if state.batch_in_epoch else self.loader
            if hasattr(loader, "set_epoch"):  # accelerate re-sets a stream's epoch from its own pass count
                loader.set_epoch(state.epoch)
            if getattr(loader, "generator", None) is not None:
                # worker seeds then depend on (seed, epoch) only, so a resumed epoch gets the same ones
                loader.generator.manual_seed(cfg.seed * 1_000_003 + state.epoch)
            for batch in loader:
                with acc.accumulate(self.model):
                    loss, logs = self.task.loss(self.model, batch)
                    finite = self._all_finite(loss)
                    window_finite &= finite
                    if finite:
                        acc.backward(loss)
                    grad_norm = None
                    if acc.sync_gradients and window_finite and cfg.max_grad_norm > 0:
                        grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    if acc.sync_gradients and window_finite:
                        for group in self.optimizer.param_groups:
                            group["lr"] = lr_at(cfg, state.step)
                        self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                state.batch_in_epoch += 1
                if not acc.sync_gradients:
                    continue
                self._after_step(window_finite, loss, grad_norm, logs, bar)
                window_finite = True
                if self._should_stop():
                    self.save_checkpoint()
                    self.log(f"stopped by {self._stop_signal or 'a signal'} at step {state.step}; checkpoint saved. "
                             f"Resume with --resume_from_checkpoint latest")
                    bar.close()
                    return "interrupted"
                if state.step >= cfg.max_steps:
                    break
            else:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        bar.close()
        self.log(f"trained {state.step} steps in {time.time() - t0:.0f} s")
        return "done"

    def _all_finite(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss.detach()).all()
        if self.accelerator.num_processes == 1:
            return bool(finite)
        flag = finite.float().reshape(1)
        return bool(self.accelerator.reduce(flag, "sum").item() == self.accelerator.num_processes)

    def _after_step(self, finite: bool, loss, grad_norm, logs: dict, bar) -> None:
        cfg, state, acc = self.config, self.state, self.accelerator
        if finite:
            state.nonfinite_in_a_row = 0
            self.ema.update(self.bare_model)
        else:
            state.nonfinite_in_a_row += 1
            warnings.warn(f"step {state.step}: non-finite loss, step skipped "
                          f"({state.nonfinite_in_a_row} in a row)")
            if state.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                raise FloatingPointError(
                    f"{state.nonfinite_in_a_row} non-finite losses in a row at step {state.step}: training "
                    f"diverged. Lower --learning_rate, use --mixed_precision bf16 instead of fp16, or resume "
                    f"from an earlier checkpoint")
        state.step += 1
        if state.step % cfg.log_steps == 0 or state.step == 1:
            mean_loss = acc.reduce(loss.detach().float().reshape(1), "mean").item()
            values = {"loss": mean_loss, "lr": lr_at(cfg, state.step - 1), "epoch": state.epoch}
            if grad_norm is not None:
                values["grad_norm"] = float(grad_norm)
            values.update({k: float(v) for k, v in logs.items()})
            acc.log(values, step=state.step)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{values['lr']:.2e}")
        bar.update(1)
        if state.step % cfg.checkpointing_steps == 0:
            self.save_checkpoint()
        if cfg.validation_steps and state.step % cfg.validation_steps == 0 and state.step < cfg.max_steps:
            self._validate()

    def _should_stop(self) -> bool:
        if self.accelerator.num_processes == 1:  # no flag to share, and no wait for the GPU
            return bool(self._stop_signal)
        flag = torch.tensor([1.0 if self._stop_signal else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "sum").item() > 0)

    # --------------------------------------------------------------------- validation, export
    @property
    def bare_model(self) -> torch.nn.Module:
        """The model itself, without the distributed and ``torch.compile`` wrappers (whose state
        dict keys carry an ``_orig_mod.`` prefix): what the EMA, validation and resume address."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def full_state_dict(self) -> dict:
        """Full weights, gathered on the main process (a collective under FSDP / ZeRO-3), keyed
        as the bare model's."""
        state = self.accelerator.get_state_dict(self.model)
        return {k.replace("_orig_mod.", ""): v for k, v in state.items()}

    @property
    def sharded(self) -> bool:
        """Parameters split across ranks (FSDP, DeepSpeed): the main process alone cannot run or
        save the model, so the EMA weights are gathered into an unsharded copy first."""
        return self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    @contextmanager
    def ema_model(self):
        """The model with the EMA weights, usable by the main process (None on other ranks);
        a collective call under FSDP/DeepSpeed."""
        model = self.bare_model
        if not self.sharded:
            with self.ema.averaged(model):
                yield model.eval() if self.main else None
            model.train()
            return
        with self.ema.averaged(model):
            state = self.full_state_dict()
        copy = None
        if self.main:
            copy = type(model)(model.config)  # models are built as cls(config)
            copy.load_state_dict(state)
        yield copy.eval() if copy is not None else None

    def _validate(self) -> None:
        with self.ema_model() as model:
            if model is not None:
                with torch.no_grad():
                    images = self.task.validation(model, self.state.step, self.output_dir / "samples")
                self._log_images(images)
        self.accelerator.wait_for_everyone()

    def _log_images(self, images: dict) -> None:
        for tracker in self.accelerator.trackers:
            arrays = {k: np.asarray(v.convert("RGB"))[None] for k, v in images.items()}  # (1, H, W, 3)
            kwargs = {"dataformats": "NHWC"} if tracker.name == "tensorboard" else {}
            tracker.log_images(arrays, step=self.state.step, **kwargs)

    def export(self) -> Path | None:
        """The EMA weights as a pipeline folder (``save_pretrained``), written by the main process."""
        acc = self.accelerator
        acc.wait_for_everyone()
        path = None
        with self.ema_model() as model:
            if model is not None:
                path = self.task.export(model, self.export_dir)
                self.log(f"exported pipeline (EMA weights): {path.resolve()}")
        acc.wait_for_everyone()
        return path

    # ----------------------------------------------------------------------- checkpoints
    def _run_record(self) -> dict:
        return {"signature": self.task.signature(), "train": dataclasses.asdict(self.config),
                "task": self.task.config(), "world_size": self.accelerator.num_processes,
                "mixed_precision": str(self.accelerator.mixed_precision)}

    def _flat_config(self) -> dict:
        flat = {}
        for prefix, values in (("train", dataclasses.asdict(self.config)), ("task", self.task.config())):
            for k, v in values.items():
                flat[f"{prefix}/{k}"] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
        return flat

    def save_checkpoint(self) -> Path:
        acc, state = self.accelerator, self.state
        final = self.output_dir / CHECKPOINTS / f"step-{state.step:08d}"
        staging = final.with_name(f".{final.name}.rng")
        if self.main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        acc.wait_for_everyone()
        torch.save(rng_state(), staging / f"rank-{acc.process_index}.pt")  # each rank's own RNG
        model_state = self.full_state_dict()
        acc.wait_for_everyone()
        if self.main:
            try:
                self._write_checkpoint(final, staging, model_state)
            except OSError as e:
                shutil.rmtree(staging, ignore_errors=True)
                good = [f.name for f in checkpoint_folders(self.output_dir) if verify_checkpoint(f) is None]
                raise OSError(e.errno, f"could not write checkpoint {final} ({e.strerror or e}); nothing was "
                                       f"replaced: the newest intact checkpoint is "
                                       f"{good[-1] if good else 'none'}. Free space and resume with "
                                       f"--resume_from_checkpoint latest") from e
            self._rotate()
        acc.wait_for_everyone()
        return final

    def _write_checkpoint(self, final: Path, staging: Path, model_state: dict) -> None:
        with atomic_write_dir(final) as tmp:
            save_tensors(model_state, tmp / "model.safetensors")
            save_tensors(self.ema.shadow, tmp / "ema.safetensors", metadata={"step": str(self.ema.step)})
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            shutil.move(str(staging), tmp / "rng")
            record = {**self._run_record(), "state": dataclasses.asdict(self.state)}
            (tmp / STATE_FILE).write_text(json.dumps(record, indent=2))
            write_manifest(tmp)
            fsync_tree(tmp)

    def _rotate(self) -> None:
        """Keep the newest ``checkpoints_total_limit`` complete checkpoints; never the newest good one."""
        limit = self.config.checkpoints_total_limit
        if not limit:
            return
        folders = checkpoint_folders(self.output_dir)
        good = [f for f in folders if verify_checkpoint(f) is None]
        for old in good[: max(0, len(good) - max(1, limit))]:
            shutil.rmtree(old)

    def _init_from(self, model: torch.nn.Module, export: Path) -> None:
        """Fine-tuning: load an export's model weights into the freshly built model. The model
        options must be the export's (a differing option is named with both values); a task with
        other components to match (text: the tokenizer) checks them first in ``check_init_from``."""
        folder = export / "model" if (export / "model" / WEIGHTS_NAME).is_file() else export
        if not (folder / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"--init_from {export}: no {WEIGHTS_NAME} in it or in its model/ folder; "
                                    f"pass a pipeline export (the run's export/ folder)")
        if hasattr(self.task, "check_init_from"):  # first: a wrong tokenizer also changes the vocabulary size
            self.task.check_init_from(export)
        saved = {k: v for k, v in read_config_json(folder).items() if not k.startswith("_")}
        built = config_to_dict(model.config)
        changes = [c for c in describe_changes(saved, built) if c.split(":")[0] not in INIT_FREE_OPTIONS]
        if changes:
            raise ValueError(f"--init_from {export}: this run builds another model than the export's "
                             f"(export -> this run: {'; '.join(changes)}); pass the export's model options")
        tensors, _ = load_tensors(folder / WEIGHTS_NAME)
        check_state_dict(model.state_dict(), tensors, str(folder / WEIGHTS_NAME))
        model.load_state_dict(tensors)
        self.log(f"initialised the model from {folder}")

    def _resume(self, folder: Path) -> None:
        acc = self.accelerator
        record = json.loads((folder / STATE_FILE).read_text())
        current = self.task.signature()
        if record["signature"] != current:
            changes = describe_changes(record["signature"], current)
            raise ValueError(f"cannot resume {folder}: it was trained with a different model or modality "
                             f"({'; '.join(changes)}). Use the original options or a new --output_dir")
        changes = describe_changes(record["train"], dataclasses.asdict(self.config))
        ignored = {"resume_from_checkpoint", "overwrite_output_dir", "progress"}
        changes = [c for c in changes if c.split(":")[0] not in ignored]
        if changes:
            self.log("resuming with changed options (applied from now on): " + "; ".join(changes))
        tensors, _ = load_tensors(folder / "model.safetensors")
        self.bare_model.load_state_dict(tensors)
        ema, meta = load_tensors(folder / "ema.safetensors")
        self.ema.load_state_dict({"shadow": ema, "step": int(meta.get("step", 0))})
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu"))
        self.state = TrainState(**record["state"])
        rng_file = folder / "rng" / f"rank-{acc.process_index}.pt"
        if record.get("world_size") != acc.num_processes:
            warnings.warn(f"{folder} was saved by {record.get('world_size')} processes, now {acc.num_processes}: "
                          f"the data order restarts at the current epoch's start")
            self.state.batch_in_epoch = 0
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=True))
        self.log(f"resumed from {folder} at step {self.state.step}")


def run(task, config: TrainConfig) -> Path | None:
    """Entry point for recipes: train, export, and print where the results are."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    trainer = Trainer(task, config)
    return trainer.train()


def describe_outputs(config: TrainConfig, export: Path | None) -> str:
    root = Path(config.output_dir).resolve()
    return (f"run folder: {root}\n  samples: {root / 'samples'}\n  checkpoints: {root / CHECKPOINTS}\n"
            f"  tensorboard: tensorboard --logdir {root / 'logs'}\n  export: {export.resolve() if export else '-'}")


__all__ = ["TrainConfig", "Trainer", "parse_config", "run", "lr_at", "find_checkpoint", "verify_checkpoint",
           "describe_outputs"]
