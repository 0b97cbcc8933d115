"""The checkpoint store of a run folder: every write atomic and checksummed, every read verified.

A checkpoint is a folder ``<output_dir>/checkpoints/step-XXXXXXXX`` written atomically
(``core.checkpoint.atomic_write_dir``: temporary folder, fsync, rename) and sealed by
``manifest.json`` (size and sha256 of every file); ``latest`` is the newest checkpoint whose
manifest verifies. Weights are safetensors; optimizer and RNG state are plain tensors and numbers
read back with ``torch.load(weights_only=True)``. ``run.json`` records what the run is, so a
folder holding another run is never overwritten by accident.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.checkpoint import (WEIGHTS_NAME, atomic_write_dir, check_state_dict, config_to_dict, fsync_tree,
                               load_tensors, read_config_json, save_tensors)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
RUN_FILE = "run.json"
RUN_OUTPUTS = (CHECKPOINTS, "export", "samples", "logs", RUN_FILE)  # what --overwrite_output_dir removes
# Model options that --init_from may change: they alter how the weights are trained, not what they are.
INIT_FREE_OPTIONS = {"gradient_checkpointing"}
# Trainer options a resume may change without a word: they say how to start, not what the run is.
RESUME_FREE_OPTIONS = {"resume_from_checkpoint", "overwrite_output_dir", "progress"}


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


class CheckpointStore:
    """Saving, finding, resuming and rotating the checkpoints of one run folder. Every rank calls
    ``save`` (its RNG state and the weights' gathering are collective); the main process writes."""

    def __init__(self, output_dir: Path, accelerator):
        self.output_dir, self.accelerator = Path(output_dir), accelerator

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def check(self, resume: str | None, overwrite: bool, init_from: str | None = None) -> None:
        """Before anything is built or written: refuse what would lose a run already in the folder.
        A folder holding a run needs a resume or ``--overwrite_output_dir``; ``latest`` in a
        finished run whose checkpoints are gone has nothing to resume (a fresh start would
        overwrite its export); a named checkpoint must exist and verify, an ``--init_from`` export exist."""
        run_file = self.output_dir / RUN_FILE
        if run_file.exists() and not resume and not overwrite:
            raise FileExistsError(
                f"--output_dir {self.output_dir} already holds a run ({run_file}); pass --resume_from_checkpoint "
                f"latest to continue it, --overwrite_output_dir to start over (this deletes its checkpoints and "
                f"export), or choose another --output_dir")
        if resume == "latest" and not checkpoint_folders(self.output_dir) and (self.output_dir / "export").is_dir():
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: {self.output_dir} holds a finished run (its export/) but no "
                f"checkpoint to resume, and a new run would replace that export; nothing was changed. Fine-tune it "
                f"with --init_from {self.output_dir / 'export'} and another --output_dir, or start over with "
                f"--overwrite_output_dir")
        if resume and resume != "latest":
            find_checkpoint(self.output_dir, resume)
        if init_from:
            export_weights(Path(init_from))

    def begin(self, overwrite: bool, record: dict) -> None:
        """A new run, once every check has passed: a previous run is removed (``overwrite``),
        leftovers of interrupted writes are cleaned, and ``run.json`` is written."""
        self.accelerator.wait_for_everyone()
        if self.main:
            if overwrite and (self.output_dir / RUN_FILE).exists():
                for name in RUN_OUTPUTS:
                    path = self.output_dir / name
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            self.clean_leftovers()
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / RUN_FILE).write_text(json.dumps(record, indent=2))
        self.accelerator.wait_for_everyone()

    def clean_leftovers(self) -> list[Path]:
        """Hidden temporary folders of writes a crash interrupted (``atomic_write_dir``'s
        ``.<name>.tmp-*`` and ``.<name>.old-*``, a checkpoint's staged ``.<name>.rng``): never
        valid, only in the way. Removed by the main process; returns what it removed."""
        gone = []
        for root in (self.output_dir, self.output_dir / CHECKPOINTS):
            if not root.is_dir():
                continue
            for path in root.iterdir():
                if path.is_dir() and path.name.startswith(".") and (".tmp-" in path.name or ".old-" in path.name
                                                                    or path.name.endswith(".rng")):
                    shutil.rmtree(path, ignore_errors=True)
                    gone.append(path)
        if gone:
            warnings.warn(f"removed {len(gone)} leftover temporary folder(s) of an interrupted write: "
                          f"{[str(g) for g in gone]}")
        return gone

    def start_point(self, resume: str | None, log) -> Path | None:
        """The checkpoint a run resumes from (``--resume_from_checkpoint``); None starts a new run,
        as does ``latest`` in a folder without checkpoints yet (a requeued job's first start)."""
        if not resume:
            return None
        if resume == "latest" and not checkpoint_folders(self.output_dir):
            log(f"no checkpoint in {self.output_dir / CHECKPOINTS} yet: starting a new run")
            return None
        return find_checkpoint(self.output_dir, resume)

    def save(self, state: "TrainState", gather_weights, ema, optimizer, record: dict, limit: int | None) -> Path:
        """Write the checkpoint of ``state.step``; ``gather_weights()`` is the (collective) full
        state dict. A failed write replaces nothing and says which checkpoint is intact."""
        acc = self.accelerator
        final = self.output_dir / CHECKPOINTS / f"step-{state.step:08d}"
        staging = final.with_name(f".{final.name}.rng")
        if self.main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        acc.wait_for_everyone()
        torch.save(rng_state(), staging / f"rank-{acc.process_index}.pt")  # each rank's own RNG
        weights = gather_weights()
        acc.wait_for_everyone()
        if self.main:
            try:
                self._write(final, staging, weights, ema, optimizer, {**record, "state": dataclasses.asdict(state)})
            except OSError as e:
                shutil.rmtree(staging, ignore_errors=True)
                good = [f.name for f in checkpoint_folders(self.output_dir) if verify_checkpoint(f) is None]
                raise OSError(e.errno, f"could not write checkpoint {final} ({e.strerror or e}); nothing was "
                                       f"replaced: the newest intact checkpoint is "
                                       f"{good[-1] if good else 'none'}. Free space and resume with "
                                       f"--resume_from_checkpoint latest") from e
            self.rotate(limit)
        acc.wait_for_everyone()
        return final

    @staticmethod
    def _write(final: Path, staging: Path, weights: dict, ema, optimizer, record: dict) -> None:
        with atomic_write_dir(final) as tmp:
            save_tensors(weights, tmp / "model.safetensors")
            save_tensors(ema.shadow, tmp / "ema.safetensors", metadata={"step": str(ema.step)})
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            shutil.move(str(staging), tmp / "rng")
            (tmp / STATE_FILE).write_text(json.dumps(record, indent=2))
            write_manifest(tmp)
            fsync_tree(tmp)

    def rotate(self, limit: int | None) -> None:
        """Keep the newest ``limit`` complete checkpoints; never the newest good one."""
        if not limit:
            return
        good = [f for f in checkpoint_folders(self.output_dir) if verify_checkpoint(f) is None]
        for old in good[: max(0, len(good) - max(1, limit))]:
            shutil.rmtree(old)

    def resume(self, folder: Path, *, model, ema, optimizer, signature: dict, train: dict, log) -> "TrainState":
        """Load ``folder`` into the bare ``model``, the EMA and the optimizer; the RNG state of
        this rank is restored. The run must be the same (``signature``); changed trainer options
        are logged and apply from now on."""
        acc = self.accelerator
        if self.main:
            self.clean_leftovers()
        record = json.loads((folder / STATE_FILE).read_text())
        if record["signature"] != signature:
            changes = describe_changes(record["signature"], signature)
            raise ValueError(f"cannot resume {folder}: it was trained with a different model or modality "
                             f"({'; '.join(changes)}). Use the original options or a new --output_dir")
        changes = [c for c in describe_changes(record["train"], train) if c.split(":")[0] not in RESUME_FREE_OPTIONS]
        if changes:
            log("resuming with changed options (applied from now on): " + "; ".join(changes))
        tensors, _ = load_tensors(folder / "model.safetensors")
        model.load_state_dict(tensors)
        shadow, meta = load_tensors(folder / "ema.safetensors")
        ema.load_state_dict({"shadow": shadow, "step": int(meta.get("step", 0))})
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu"))
        state = TrainState(**record["state"])
        if record.get("world_size") != acc.num_processes:
            warnings.warn(f"{folder} was saved by {record.get('world_size')} processes, now {acc.num_processes}: "
                          f"the data order restarts at the current epoch's start")
            state.batch_in_epoch = 0
        rng_file = folder / "rng" / f"rank-{acc.process_index}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=True))
        log(f"resumed from {folder} at step {state.step}")
        return state


def export_weights(export: Path) -> Path:
    """The model folder of a pipeline export given to ``--init_from``."""
    folder = export / "model" if (export / "model" / WEIGHTS_NAME).is_file() else export
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"--init_from {export}: no {WEIGHTS_NAME} in it or in its model/ folder; "
                                f"pass a pipeline export (the run's export/ folder)")
    return folder


def init_from_export(model: torch.nn.Module, export: Path, task) -> Path:
    """Fine-tuning: load an export's model weights into the freshly built model. The model
    options must be the export's (a differing option is named with both values); a task with
    other components to match (text: the tokenizer) checks them first in ``check_init_from``.
    Returns the weights' folder."""
    folder = export_weights(export)
    if hasattr(task, "check_init_from"):  # first: a wrong tokenizer also changes the vocabulary size
        task.check_init_from(export)
    saved = {k: v for k, v in read_config_json(folder).items() if not k.startswith("_")}
    built = config_to_dict(model.config)
    changes = [c for c in describe_changes(saved, built) if c.split(":")[0] not in INIT_FREE_OPTIONS]
    if changes:
        raise ValueError(f"--init_from {export}: this run builds another model than the export's "
                         f"(export -> this run: {'; '.join(changes)}); pass the export's model options")
    tensors, _ = load_tensors(folder / WEIGHTS_NAME)
    check_state_dict(model.state_dict(), tensors, str(folder / WEIGHTS_NAME))
    model.load_state_dict(tensors)
    return folder
