"""Training: one Trainer for every recipe, on accelerate.

``config.py`` the options and the command line, ``loader.py`` the data order, ``checkpoints.py``
the checkpoint store, ``loop.py`` the Trainer, ``task.py`` what a modality hands it.
"""
from .checkpoints import CheckpointStore, find_checkpoint, verify_checkpoint
from .config import TrainConfig, keep_freed_memory, lr_at, parse_config, resolve_precision, run_command
from .loader import EpochSampler, SeededItems
from .loop import Trainer, describe_outputs, run
from .task import Task

__all__ = ["CheckpointStore", "EpochSampler", "SeededItems", "Task", "TrainConfig", "Trainer", "describe_outputs",
           "find_checkpoint", "keep_freed_memory", "lr_at", "parse_config", "resolve_precision", "run", "run_command",
           "verify_checkpoint"]
