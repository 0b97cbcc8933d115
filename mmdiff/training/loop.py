"""The one Trainer: every recipe (image, video, text) trains through it, on accelerate.

A recipe hands the Trainer a ``Task`` (``task.py``): the data set, the model, the loss of one
batch, validation samples and the export. The Trainer owns the loop: mixed precision, gradient
accumulation and clipping, AdamW with warmup, EMA, signal handling, trackers, progress and the
final export; checkpoints that resume exactly are the ``CheckpointStore``'s (``checkpoints.py``),
the data order the loader's (``loader.py``), the options ``TrainConfig``'s (``config.py``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from ..core.ema import EMA
from .checkpoints import CHECKPOINTS, CheckpointStore, TrainState, init_from_export
from .config import TrainConfig, keep_freed_memory, lr_at, resolve_precision
from .loader import build_loader, start_epoch
from .weights import ema_weights, gathered_state_dict

logger = logging.getLogger("mmdiff.training")


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the parameters that train."""
    params = [p for p in model.parameters() if p.requires_grad]
    # One fused kernel over all parameters where PyTorch has it: at DiT-S/2 on the CPU 22 ms a
    # step instead of 107 ms for the default multi-tensor AdamW (benchmarks/dit_train.py).
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                             betas=(config.adam_beta1, config.adam_beta2), fused=fused or None)


def make_accelerator(config: TrainConfig) -> Accelerator:
    output_dir = Path(config.output_dir)
    report = {"none": [], "all": ["tensorboard", "wandb"]}.get(config.report_to, [config.report_to])
    precision = resolve_precision(config.mixed_precision)
    if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
        # A second Trainer in one process (a notebook, a sweep) may use another precision;
        # the process group (PartialState) is kept.
        AcceleratorState._reset_state()
    return Accelerator(
        # With no accelerator, processes started by `accelerate launch --multi_gpu` only join one
        # gloo group when accelerate is told it runs on the CPU.
        cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
        mixed_precision=precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # Every rank reads a stream and keeps its slice of each global batch (no dispatching from
        # rank 0), so loaders keep their own generator and resume exactly.
        dataloader_config=DataLoaderConfiguration(dispatch_batches=False),
        log_with=report or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")))


class Trainer:
    def __init__(self, task, config: TrainConfig):
        self.task, self.config = task, config
        self.output_dir = Path(config.output_dir)
        self.export_dir = Path(config.export_dir) if config.export_dir else self.output_dir / "export"
        self._stop_signal = None
        self.accelerator = make_accelerator(config)
        self.store = CheckpointStore(self.output_dir, self.accelerator)
        self.state = TrainState()
        if config.keep_freed_memory and self.accelerator.device.type == "cpu":
            keep_freed_memory()

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def log(self, message: str) -> None:
        if self.main:
            tqdm.write(message)

    # ------------------------------------------------------------------------------- train
    def train(self) -> Path | None:
        cfg, acc = self.config, self.accelerator
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        set_seed(cfg.seed)
        self.store.check(cfg.resume_from_checkpoint, cfg.overwrite_output_dir, cfg.init_from)  # nothing written yet
        self._setup()
        if acc.log_with:
            acc.init_trackers("mmdiff", config=flat_options(self.config, self.task.config()))
        # Handlers stay until the export is written: a signal after the last step lets the short
        # final save and export finish rather than killing them half-way.
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            if self._loop() == "interrupted":
                acc.end_training()
                return None
            return self._finish()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _setup(self) -> None:
        """Data, model, optimizer and EMA, prepared by accelerate; the checkpoint or export the run
        starts from."""
        cfg, acc = self.config, self.accelerator
        self.task.setup()  # data set and model; bad data fails here, before any training
        model = self.task.model
        if cfg.gradient_checkpointing and hasattr(model, "config"):
            model.config.gradient_checkpointing = True
        start = self.store.start_point(cfg.resume_from_checkpoint, self.log)
        if cfg.init_from and start is None:  # a resumed run's checkpoint already holds its weights
            self.log(f"initialised the model from {init_from_export(model, Path(cfg.init_from), self.task)}")
        loader, self.sampler = build_loader(self.task.dataset, cfg, acc.num_processes, getattr(self.task, "collate", None))
        optimizer = make_optimizer(model, cfg)
        self.ema = EMA(model, decay=cfg.ema_decay, warmup=cfg.ema_warmup, power=cfg.ema_power)
        self.model, self.optimizer, self.loader = acc.prepare(model, optimizer, loader)
        self.ema.to(next(self.bare_model.parameters()).device)
        if start is None:  # every check passed: only now is a previous run replaced
            self.store.begin(cfg.overwrite_output_dir, run_record(self.task, cfg, acc))
            return
        self.state = self.store.resume(start, model=self.bare_model, ema=self.ema, optimizer=self.optimizer,
                                       signature=self.task.signature(), train=dataclasses.asdict(cfg), log=self.log)

    def _loop(self) -> str:
        cfg, acc, state = self.config, self.accelerator, self.state
        bar = tqdm(total=cfg.max_steps, initial=state.step, disable=not (self.main and cfg.progress),
                   desc="training", dynamic_ncols=True)
        self.model.train()
        window_finite, t0 = True, time.time()
        while state.step < cfg.max_steps:
            loader = start_epoch(self.loader, self.sampler, self.task.dataset, state.epoch, state.batch_in_epoch,
                                 acc, cfg.seed)
            for batch in loader:
                loss, logs, grad_norm, window_finite = self._step(batch, window_finite)
                state.batch_in_epoch += 1
                if not acc.sync_gradients:
                    continue
                self._after_step(window_finite, loss, grad_norm, logs, bar)
                window_finite = True
                if any_rank(acc, bool(self._stop_signal)):
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

    def _step(self, batch, window_finite: bool):
        """One micro-batch: forward, backward, and at an accumulation boundary the clipped
        optimizer step, skipped when any loss of the window was not finite."""
        cfg, acc = self.config, self.accelerator
        with acc.accumulate(self.model):
            loss, logs = self.task.loss(self.model, batch)
            finite = not any_rank(acc, not bool(torch.isfinite(loss.detach()).all()))
            window_finite &= finite
            if finite:
                acc.backward(loss)
            grad_norm = None
            if acc.sync_gradients and window_finite and cfg.max_grad_norm > 0:
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            if acc.sync_gradients and window_finite:
                for group in self.optimizer.param_groups:
                    group["lr"] = lr_at(cfg, self.state.step)
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss, logs, grad_norm, window_finite

    def _after_step(self, finite: bool, loss, grad_norm, logs: dict, bar) -> None:
        cfg, state = self.config, self.state
        if finite:
            state.nonfinite_in_a_row = 0
            self.ema.update(self.bare_model)
        else:
            state.nonfinite_in_a_row += 1
            warnings.warn(f"step {state.step}: non-finite loss, step skipped ({state.nonfinite_in_a_row} in a row)")
            if state.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                raise FloatingPointError(
                    f"{state.nonfinite_in_a_row} non-finite losses in a row at step {state.step}: training "
                    f"diverged. Lower --learning_rate, use --mixed_precision bf16 instead of fp16, or resume "
                    f"from an earlier checkpoint")
        state.step += 1
        if state.step % cfg.log_steps == 0 or state.step == 1:
            self._log_values(loss, grad_norm, logs, bar)
        bar.update(1)
        if state.step % cfg.checkpointing_steps == 0:
            self.save_checkpoint()
        if cfg.validation_steps and state.step % cfg.validation_steps == 0 and state.step < cfg.max_steps:
            self._validate()

    def _log_values(self, loss, grad_norm, logs: dict, bar) -> None:
        acc = self.accelerator
        mean_loss = acc.reduce(loss.detach().float().reshape(1), "mean").item()
        values = {"loss": mean_loss, "lr": lr_at(self.config, self.state.step - 1), "epoch": self.state.epoch}
        if grad_norm is not None:
            values["grad_norm"] = float(grad_norm)
        values.update({k: float(v) for k, v in logs.items()})
        acc.log(values, step=self.state.step)
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{values['lr']:.2e}")

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signal.Signals(signum).name

    def _finish(self) -> Path | None:
        """After the last step: the final checkpoint, validation and the export."""
        if self.state.step % self.config.checkpointing_steps:
            self.save_checkpoint()
        if self.config.validation_steps:
            self._validate()
        path = self.export()
        if self._stop_signal:
            self.log(f"{self._stop_signal} arrived after the last step; the run finished and exported")
        self.accelerator.end_training()
        return path

    def save_checkpoint(self) -> Path:
        return self.store.save(self.state, self.full_state_dict, self.ema, self.optimizer, run_record(self.task, self.config, self.accelerator),
                               self.config.checkpoints_total_limit)

    # --------------------------------------------------------------------- weights, export
    @property
    def bare_model(self) -> torch.nn.Module:
        """The model itself, without the distributed and ``torch.compile`` wrappers (whose state
        dict keys carry an ``_orig_mod.`` prefix): what the EMA, validation and resume address."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def full_state_dict(self) -> dict:
        return gathered_state_dict(self.accelerator, self.model)

    def ema_model(self):
        return ema_weights(self.accelerator, self.bare_model, self.model, self.ema)

    def _validate(self) -> None:
        with self.ema_model() as model:
            if model is not None:
                with torch.no_grad():
                    images = self.task.validation(model, self.state.step, self.output_dir / "samples")
                log_images(self.accelerator.trackers, images, self.state.step)
        self.accelerator.wait_for_everyone()

    def export(self) -> Path | None:
        """The EMA weights as a pipeline folder (``save_pretrained``), written by the main process."""
        self.accelerator.wait_for_everyone()
        path = None
        with self.ema_model() as model:
            if model is not None:
                path = self.task.export(model, self.export_dir)
                self.log(f"exported pipeline (EMA weights): {path.resolve()}")
        self.accelerator.wait_for_everyone()
        return path



def any_rank(accelerator, flag: bool) -> bool:
    """Whether ``flag`` holds on any process (every rank gets the same answer)."""
    if accelerator.num_processes == 1:  # no flag to share, and no wait for the GPU
        return flag
    flags = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flags, "sum").item() > 0)


def log_images(trackers, images: dict, step: int) -> None:
    for tracker in trackers:
        arrays = {k: np.asarray(v.convert("RGB"))[None] for k, v in images.items()}  # (1, H, W, 3)
        kwargs = {"dataformats": "NHWC"} if tracker.name == "tensorboard" else {}
        tracker.log_images(arrays, step=step, **kwargs)


def run_record(task, config: TrainConfig, accelerator) -> dict:
    """What ``run.json`` and every checkpoint say the run is."""
    return {"signature": task.signature(), "train": dataclasses.asdict(config), "task": task.config(),
            "world_size": accelerator.num_processes, "mixed_precision": str(accelerator.mixed_precision)}


def flat_options(config: TrainConfig, task_options: dict) -> dict:
    """Every option as one flat mapping of plain values, for the trackers' hyperparameter tables."""
    flat = {}
    for prefix, values in (("train", dataclasses.asdict(config)), ("task", task_options)):
        for k, v in values.items():
            flat[f"{prefix}/{k}"] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return flat


def run(task, config: TrainConfig) -> Path | None:
    """Entry point for recipes: train, export, and print where the results are."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    return Trainer(task, config).train()


def describe_outputs(config: TrainConfig, export: Path | None) -> str:
    root = Path(config.output_dir).resolve()
    return (f"run folder: {root}\n  samples: {root / 'samples'}\n  checkpoints: {root / CHECKPOINTS}\n"
            f"  tensorboard: tensorboard --logdir {root / 'logs'}\n  export: {export.resolve() if export else '-'}")
