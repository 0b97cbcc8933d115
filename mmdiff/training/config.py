"""Options every recipe shares (``TrainConfig``), the command line and YAML that fill them, and the
settings derived from them: the mixed precision, the learning rate at a step, the allocator."""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser

from ..core import checks


LR_SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("auto", "no", "bf16", "fp16")
REPORTERS = ("tensorboard", "wandb", "all", "none")


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

    def __post_init__(self):
        checks.check_fields(self)
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpointing_steps", "log_steps",
                     "max_nonfinite_steps"):
            checks.integer(f"--{name}", getattr(self, name), low=1)
        for name in ("lr_warmup_steps", "validation_steps", "num_workers", "seed"):
            checks.integer(f"--{name}", getattr(self, name), low=0)
        if self.checkpoints_total_limit is not None:
            checks.integer("--checkpoints_total_limit", self.checkpoints_total_limit, low=1)
        checks.number("--learning_rate", self.learning_rate, low=0)
        for name in ("weight_decay", "max_grad_norm"):
            checks.number(f"--{name}", getattr(self, name), low=0)
        for name in ("adam_beta1", "adam_beta2", "ema_decay"):
            checks.number(f"--{name}", getattr(self, name), low=0, high=1)
        checks.number("--ema_power", self.ema_power, low=0, open_low=True)
        checks.choice("--lr_schedule", self.lr_schedule, LR_SCHEDULES)
        checks.choice("--mixed_precision", self.mixed_precision, PRECISIONS)
        checks.choice("--ema_warmup", self.ema_warmup, ("inverse_power", "none"))
        checks.choice("--report_to", self.report_to, REPORTERS)
        if not self.output_dir:
            checks.fail("--output_dir", "a folder path", self.output_dir)


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
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise SystemExit(f"--config {path} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise SystemExit(f"--config {path}: expected a mapping of option: value, found a YAML "
                             f"{type(loaded).__name__}")
        hints = {f.name: typing.get_type_hints(cls)[f.name] for cls in classes for f in dataclasses.fields(cls)}
        unknown = sorted(set(loaded) - set(hints))
        if unknown:
            raise SystemExit(f"--config {path}: unknown option(s) {unknown}; valid options: {sorted(hints)}")
        for name, value in loaded.items():  # argparse would only convert strings, and with a traceback
            if not checks.fits(hints[name], value):
                raise SystemExit(f"--config {path}: option '{name}' should be {checks.type_name(hints[name])}, "
                                 f"got {value!r}")
        values.update(loaded)
    parser.set_defaults(**values)
    *outputs, extra = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    if extra:
        raise SystemExit(f"unknown argument(s) {extra}; see --help")
    return [o for o in outputs if isinstance(o, tuple(classes))]


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


USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError)


def run_command(main, argv: list[str] | None = None) -> int:
    """Run a recipe's ``main(argv)`` as a command: bad input (every library check raises one of
    ``USER_ERRORS`` with a message that names the option and the fix) is one line on stderr and
    exit status 2, not a traceback; ``MMDIFF_TRACEBACK=1`` shows the traceback."""
    try:
        main(argv)
    except USER_ERRORS as e:
        if os.environ.get("MMDIFF_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
