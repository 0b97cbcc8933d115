"""Names to real objects: modality pipelines by task, pipeline components by class name.

A leaf module (it imports nothing of mmdiff), so every floor may register into it: a modality's
pipeline module registers its class with ``@register_pipeline("image")``, a component module
(autoencoders, tokenizers, text encoders, the DiT) its classes with ``@register_component``.
``mmdiff/__init__.py`` imports the modalities, so ``mmdiff.pipeline`` finds all three.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

PIPELINE_FILE = "pipeline.json"
PIPELINES: dict[str, type] = {}
COMPONENTS: dict[str, type] = {}


def register_pipeline(task: str):
    def add(cls):
        cls.task = task
        PIPELINES[task] = cls
        return cls
    return add


def register_component(cls):
    COMPONENTS[cls.__name__] = cls
    return cls


def pipeline(task: str, model: str | os.PathLike | None = None, **kwargs):
    """``pipeline("image", model="runs/digits/export")``; without ``model`` a modality loads the
    small default model shipped inside the package."""
    if task not in PIPELINES:
        raise ValueError(f"unknown task '{task}'; known tasks are {sorted(PIPELINES)}")
    cls = PIPELINES[task]
    if model is None:
        return cls.default(**kwargs)
    return cls.from_pretrained(model, **kwargs)


@dataclass
class PipelineConfig:
    """What ``pipeline.json`` holds besides the component names: how the model was trained and
    how it samples by default."""

    task: str = ""
    prediction: str = "eps"
    schedule: dict = field(default_factory=lambda: {"name": "linear"})
    sigma_data: float = 1.0  # data std the model was trained on; sets the prior's std
    sampler: str = "dpmpp_2m"
    steps: int = 25
    spacing: str | None = None
    guidance_scale: float = 1.0
    extra: dict = field(default_factory=dict)  # modality settings (class names, fps, ...)
