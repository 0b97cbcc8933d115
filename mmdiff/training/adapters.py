"""LoRA fine-tuning in the one Trainer (``--lora_rank``): adapters injected into the model built
from ``--init_from``, only they train, checkpoints hold only them (the base comes from the export
again on resume), and the export is the adapter in peft's layout (plus, on request, the base with
it merged in). The adapter code itself is ``mmdiff.components.lora``, shared with the pipelines."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..components.lora import add_adapter, lora_config, merged, save_adapter
from .config import TrainConfig


def attach_lora(model: nn.Module, config: TrainConfig, log) -> set[str] | None:
    """With ``--lora_rank``: inject the adapters and return the names of what trains (what the
    EMA averages and a checkpoint holds); None when every weight trains."""
    if not config.lora_rank:
        return None
    trainable = add_adapter(model, settings(config))
    total = sum(p.numel() for p in model.parameters())
    log(f"LoRA rank {config.lora_rank} on {config.lora_targets}: {trainable:,} of {total:,} parameters train "
        f"({100 * trainable / total:.2f}%)")
    return {name for name, p in model.named_parameters() if p.requires_grad}


def settings(config: TrainConfig):
    """The run's peft ``LoraConfig`` (None without LoRA)."""
    if not config.lora_rank:
        return None
    return lora_config(config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets)


def signature(config: TrainConfig) -> dict:
    """What a resumed LoRA run must share with its checkpoint besides the model."""
    return {"lora": {"rank": config.lora_rank, "alpha": config.lora_alpha, "targets": config.lora_targets,
                     "base": config.init_from}} if config.lora_rank else {}


def export_run(model: nn.Module, config: TrainConfig, folder: Path, task) -> Path:
    """A run's export (EMA weights): the task's pipeline, or with LoRA the adapter in peft's
    layout and, with ``--lora_merge``, the pipeline with it merged in at ``<folder>-merged``."""
    if not config.lora_rank:
        return task.export(model, folder)
    save_adapter(model, folder, settings(config), base=config.init_from)
    if config.lora_merge:
        task.export(merged(model), Path(f"{folder}-merged"))
    return folder
