"""The contract between the one Trainer and a modality: what every recipe's task provides."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import nn


class Task(Protocol):
    """What the one Trainer (``mmdiff.training.Trainer``) asks of every recipe's task."""

    dataset: "torch.utils.data.Dataset"  # built by setup(); items are dicts of tensors
    model: nn.Module  # built by setup(); the module the optimizer trains

    def setup(self) -> None: ...  # build data set and model; raise on bad data before training
    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]: ...  # scalar loss, extra logs
    def validation(self, model: nn.Module, step: int, folder: Path) -> dict: ...  # writes files; name -> PIL image
    def export(self, model: nn.Module, folder: Path) -> Path: ...  # save_pretrained of the pipeline
    def signature(self) -> dict: ...  # what must match to resume (modality, model config)
    def config(self) -> dict: ...  # the task's options, for logs and run.json
    # optional: collate(items) -> batch; check_init_from(export) -> None, raising when an export
    # given to --init_from does not fit the run beyond the model's config (text: its tokenizer)
