"""``mmdiff.pipeline(task)``: the registry of modality pipelines and their shared base.

A pipeline folder is ``pipeline.json`` (a ``PipelineConfig``) plus one subfolder per component,
each written by that component's ``save_pretrained``. The base class owns device/dtype handling,
saving/loading, and the one sampling path every modality uses: initial noise from per-sample
generators, optional classifier-free guidance, optional given content (inpainting, SDEdit, given
frames, infilling), then a core sampler over the schedule's sigmas.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .core.checkpoint import (CheckpointError, atomic_write_dir, config_from_dict, config_to_dict,
                              resolve_pretrained)
from .core.dit import DiT
from .core.guidance import cfg, keep_known, partial_start
from .core.parametrization import Denoiser
from .core.samplers import check_sigmas, per_sample_generators, randn, sample
from .core.schedules import Schedule, schedule_config, schedule_from_config

PIPELINE_FILE = "pipeline.json"
PIPELINES: dict[str, type["Pipeline"]] = {}
COMPONENTS: dict[str, type] = {"DiT": DiT}


def register_pipeline(task: str):
    def add(cls):
        cls.task = task
        PIPELINES[task] = cls
        return cls
    return add


def register_component(cls):
    COMPONENTS[cls.__name__] = cls
    return cls


def pipeline(task: str, model: str | os.PathLike | None = None, **kwargs) -> "Pipeline":
    """``pipeline("image", model="runs/digits/export")``; without ``model`` a modality loads the
    small default model shipped inside the package."""
    from . import modalities  # noqa: F401  (importing registers every modality's pipeline)

    if task not in PIPELINES:
        raise ValueError(f"unknown task '{task}'; known tasks are {sorted(PIPELINES)}")
    cls = PIPELINES[task]
    if model is None:
        return cls.default(**kwargs)
    return cls.from_pretrained(model, **kwargs)


@dataclass
class PipelineConfig:
    task: str = ""
    prediction: str = "eps"
    schedule: dict = field(default_factory=lambda: {"name": "linear"})
    sigma_data: float = 1.0  # data std the model was trained on; sets the prior's std
    sampler: str = "dpmpp_2m"
    steps: int = 25
    spacing: str | None = None
    guidance_scale: float = 1.0
    extra: dict = field(default_factory=dict)  # modality settings (class names, fps, ...)


class Pipeline:
    """Shared base: ``components`` maps a subfolder name to a module with save/from_pretrained;
    ``components["model"]`` is the denoiser network."""

    task: str = ""

    def __init__(self, components: dict[str, Any], schedule: Schedule, config: PipelineConfig):
        if "model" not in components:
            raise ValueError("a pipeline needs a 'model' component (the denoiser network)")
        self.components = dict(components)
        self.schedule = schedule
        self.config = dataclasses.replace(config, task=self.task or config.task,
                                          schedule=schedule_config(schedule))

    # ------------------------------------------------------------------ device, dtype, parts
    @property
    def model(self):
        return self.components["model"]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device=None, dtype=None) -> "Pipeline":
        for part in self.components.values():
            if isinstance(part, torch.nn.Module):
                part.to(device=device, dtype=dtype)
        return self

    def denoiser(self) -> Denoiser:
        return Denoiser(self.model, self.schedule, self.config.prediction, sigma_data=self.config.sigma_data)

    # ------------------------------------------------------------------------- save / load
    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        folder = Path(folder)
        names = {name: type(part).__name__ for name, part in self.components.items()}
        with atomic_write_dir(folder) as tmp:
            for name, part in self.components.items():
                kwargs = {"dtype": dtype} if isinstance(part, torch.nn.Module) else {}
                part.save_pretrained(tmp / name, **kwargs)
            body = {"components": names, **config_to_dict(self.config)}
            (tmp / PIPELINE_FILE).write_text(json.dumps(body, indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, device=None, dtype=None) -> "Pipeline":
        folder = resolve_pretrained(folder)
        path = folder / PIPELINE_FILE
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: {folder} is not a pipeline folder written by "
                                  f"save_pretrained (it holds {sorted(p.name for p in folder.iterdir())})")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is not valid JSON: {e}") from e
        names = raw.pop("components", {})
        config = config_from_dict(PipelineConfig, raw, source=str(path))
        if cls.task and config.task != cls.task:
            raise CheckpointError(f"{folder} holds a '{config.task}' pipeline, not '{cls.task}'; "
                                  f"use mmdiff.pipeline('{config.task}', model=...)")
        components = {}
        for name, class_name in names.items():
            if class_name not in COMPONENTS:
                raise CheckpointError(f"{path}: unknown component class '{class_name}' for '{name}'; "
                                      f"known: {sorted(COMPONENTS)}")
            components[name] = COMPONENTS[class_name].from_pretrained(folder / name)
        pipe = cls(components, schedule_from_config(config.schedule), config)
        return pipe.to(device=device, dtype=dtype)

    @classmethod
    def default(cls, **kwargs) -> "Pipeline":
        raise ValueError(f"the '{cls.task}' pipeline ships no default model; pass model=PATH")

    # ------------------------------------------------------------------------------ sampling
    def sigmas(self, steps: int | None = None, spacing: str | None = None) -> torch.Tensor:
        return self.schedule.sigmas(steps or self.config.steps, spacing or self.config.spacing)

    def _grid(self, steps: int | None, spacing: str | None, sigmas) -> torch.Tensor:
        if sigmas is None:
            return self.sigmas(steps, spacing)
        if steps is not None or spacing is not None:
            raise ValueError("pass either sigmas (a schedule of your own) or num_inference_steps/spacing, not both")
        sigmas = torch.as_tensor(sigmas).flatten()
        sigmas = sigmas if sigmas.is_floating_point() else sigmas.double()
        check_sigmas(sigmas)
        return sigmas

    @torch.no_grad()
    def solve(self, shape: tuple[int, ...], *, cond: dict | None = None, uncond: dict | None = None,
              guidance_scale: float | None = None, guidance_rescale: float = 0.0,
              guidance_interval: tuple[float, float] | None = None, num_inference_steps: int | None = None,
              sampler: str | None = None, spacing: str | None = None, sigmas=None, generator=None,
              known: torch.Tensor | None = None, mask: torch.Tensor | None = None, mask_kwarg: str | None = None,
              renoise_known: bool = False, init: torch.Tensor | None = None, strength: float = 1.0,
              progress: bool = True, callback=None, **sampler_options) -> torch.Tensor:
        """Sample latents of ``shape``. ``init`` + ``strength`` start part-way (SDEdit);
        ``known``/``mask`` hold given content (mask 1 = given). ``sigmas``, a decreasing schedule
        of one's own (e.g. from ``core.step_search.optimize_sigmas``), replaces
        ``num_inference_steps`` and ``spacing``."""
        cond = {k: v for k, v in (cond or {}).items() if v is not None}
        gens = per_sample_generators(generator, shape[0])
        device, dtype = self.device, torch.float32
        sigmas = self._grid(num_inference_steps, spacing, sigmas)
        noise = randn(shape, gens, device=device, dtype=dtype)
        if init is not None:
            x, sigmas = partial_start(init.to(device, dtype), sigmas, strength, noise)
        else:
            x = noise * math.sqrt(float(sigmas[0]) ** 2 + self.config.sigma_data**2)
        denoiser = self.denoiser()
        scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        if scale != 1.0:
            if uncond is None:
                raise ValueError("guidance_scale != 1 needs an unconditional input; this model has none "
                                 "(it was trained without condition dropout): use guidance_scale=1")
            fn = cfg(denoiser, scale, cond, uncond, rescale=guidance_rescale, interval=guidance_interval)
        else:
            def fn(x_, s_, **extra):
                return denoiser(x_, s_, **cond, **extra)
        if known is not None:
            fixed = randn(shape, gens, device=device, dtype=dtype) if renoise_known else None
            fn = keep_known(fn, known.to(device, dtype), mask.to(device), noise=fixed, mask_kwarg=mask_kwarg)
        sampler = sampler or self.config.sampler
        options = {**self.schedule.sampler_options(sampler), **sampler_options}
        return sample(fn, x, sigmas, sampler, generator=gens, callback=callback, progress=progress, **options)
