"""The shared ``Pipeline`` base: every modality's sampling goes through it.

A pipeline folder is ``pipeline.json`` (a ``PipelineConfig``) plus one subfolder per component,
each written by that component's ``save_pretrained``. The base owns device/dtype handling,
saving/loading, the shipped default model, and the one sampling path every modality uses
(``solve``): initial noise from per-sample generators, optional classifier-free guidance,
optional given content (inpainting, SDEdit, given frames, prompts and infilling), then a core
sampler over the schedule's sigmas. ``SamplingOptions`` are checked once, in ``options``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .components.lora import LoraAdapters
from .core.checkpoint import (CheckpointError, atomic_write_dir, component_folder, config_from_dict, config_to_dict,
                              resolve_pretrained)
from .core.dit import DiT
from .core.guidance import cfg, keep_known, partial_start
from .core.parametrization import Denoiser
from .core.samplers import SAMPLERS, check_sampler, check_sigmas, per_sample_generators, randn, sample
from .core.schedules import SPACINGS, Schedule, schedule_config, schedule_from_config
from .options import SamplingOptions
from .pretrained import load_diffusers
from .registry import COMPONENTS, PIPELINE_FILE, PipelineConfig, pipeline, register_component  # noqa: F401

ASSETS = Path(__file__).resolve().parent / "assets"
register_component(DiT)


@dataclass
class Given:
    """Content held fixed while the rest is sampled: ``known`` where ``mask == 1``. ``mask_kwarg``
    names the model input that flags it (models trained with given content); ``renoise`` noises
    it to the current level instead (the "replace" method, for models that never saw it)."""

    known: torch.Tensor
    mask: torch.Tensor
    mask_kwarg: str | None = None
    renoise: bool = False


@dataclass
class Start:
    """SDEdit: start from ``latents`` noised part-way, running the last ``strength`` of the steps."""

    latents: torch.Tensor
    strength: float = 1.0


class Pipeline(LoraAdapters):
    """Shared base: ``components`` maps a subfolder name to a module with save/from_pretrained;
    ``components["model"]`` is the denoiser network."""

    task: str = ""
    default_model: str | None = None  # the folder under mmdiff/assets that ``default()`` loads
    spacings: tuple[str, ...] = SPACINGS
    progress: bool = True  # show a progress bar unless the call says otherwise
    sampler_registry: dict = SAMPLERS  # where ``options.sampler`` is looked up (masked text: core.masked)

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
        """Load a folder written by ``save_pretrained``, a diffusers pipeline folder or a Hub repo id
        (``mmdiff.pretrained``). Weights stored in half precision (to keep a file small) compute in
        float32 unless ``dtype`` says otherwise."""
        folder = resolve_pretrained(folder)
        path = folder / PIPELINE_FILE
        if not path.is_file():  # a diffusers pipeline or model folder (mmdiff.pretrained says which it takes)
            return load_diffusers(cls, folder, device=device, dtype=dtype)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(raw, dict) or not isinstance(raw.get("components", {}), dict):
            raise CheckpointError(f"{path}: expected an object with a 'components' mapping of subfolder -> class name")
        names = raw.pop("components", {})
        config = config_from_dict(PipelineConfig, raw, source=str(path))
        if cls.task and config.task != cls.task:
            raise CheckpointError(f"{folder} holds a '{config.task}' pipeline, not '{cls.task}'; "
                                  f"use mmdiff.pipeline('{config.task}', model=...)")
        components = {}
        for name, class_name in names.items():
            where = component_folder(folder, name, str(path))
            if class_name not in COMPONENTS:
                raise CheckpointError(f"{path}: unknown component class {class_name!r} for '{name}'; "
                                      f"known: {sorted(COMPONENTS)}")
            components[name] = COMPONENTS[class_name].from_pretrained(where)
        pipe = cls(components, schedule_from_config(config.schedule), config)
        return pipe.to(device=device, dtype=dtype or torch.float32)

    @classmethod
    def default(cls, **kwargs) -> "Pipeline":
        """The small model shipped inside the package for this task."""
        if cls.default_model is None:
            raise ValueError(f"the '{cls.task}' pipeline ships no default model; pass model=PATH")
        path = ASSETS / cls.default_model
        if not (path / PIPELINE_FILE).is_file():
            raise FileNotFoundError(f"the shipped '{cls.task}' model is missing from {path}; reinstall mmdiff "
                                    f"or pass model=PATH")
        return cls.from_pretrained(path, **kwargs)

    # ------------------------------------------------------------------------------ sampling
    def options(self, options: SamplingOptions | None = None, **keywords) -> SamplingOptions:
        """The call's sampling options, defaults filled in from this pipeline and checked: the
        one place a bad sampler, step count, schedule or sampler option is refused."""
        opts = SamplingOptions.build(options, **keywords)
        if self.sampler_registry is SAMPLERS:
            return opts.resolve(self.config, self.spacings, self.progress)
        # another family's sampler: checked against its registry, everything else as for the rest
        name = opts.sampler or self.config.sampler
        check_sampler(name, opts.sampler_options, self.sampler_registry)
        plain = dataclasses.replace(opts, sampler=next(iter(SAMPLERS)), sampler_options={})
        return dataclasses.replace(plain.resolve(self.config, self.spacings, self.progress), sampler=name,
                                   sampler_options=opts.sampler_options)

    def sigmas(self, steps: int | None = None, spacing: str | None = None) -> torch.Tensor:
        return self.schedule.sigmas(steps or self.config.steps, spacing or self.config.spacing)

    def grid(self, options: SamplingOptions) -> torch.Tensor:
        """The noise levels a solve runs through: the options' own ``sigmas`` or this pipeline's."""
        if options.sigmas is not None:
            sigmas = torch.as_tensor(options.sigmas).flatten()
            return sigmas if sigmas.is_floating_point() else sigmas.double()
        sigmas = self.sigmas(options.num_inference_steps, options.spacing)
        try:
            check_sigmas(sigmas)
        except ValueError:
            raise ValueError(f"num_inference_steps={options.num_inference_steps} with spacing "
                             f"{options.spacing or self.schedule.default_spacing!r} repeats noise levels on this "
                             f"schedule ({self.schedule!r}); use fewer steps") from None
        return sigmas

    @torch.no_grad()
    def solve(self, shape: tuple[int, ...], options: SamplingOptions, *, cond: dict | None = None,
              uncond: dict | None = None, given: Given | None = None, start: Start | None = None) -> torch.Tensor:
        """Sample latents of ``shape`` with resolved ``options`` (see ``options``)."""
        cond = {k: v for k, v in (cond or {}).items() if v is not None}
        gens = per_sample_generators(options.generator, shape[0])
        device, dtype = self.device, options.dtype
        sigmas = self.grid(options)
        noise = self.initial_noise(shape, options, gens)
        if start is not None:
            x, sigmas = partial_start(start.latents.to(device, dtype), sigmas, start.strength, noise)
        else:
            x = noise * self.noise_scale(float(sigmas[0]))
        fn = self._guided(cond, uncond, options)
        if given is not None:
            fixed = randn(shape, gens, device=device, dtype=dtype) if given.renoise else None
            fn = keep_known(fn, given.known.to(device, dtype), given.mask.to(device), noise=fixed,
                            mask_kwarg=given.mask_kwarg)
        extra = {**self.schedule.sampler_options(options.sampler), **options.sampler_options}
        x = sample(fn, x, sigmas, options.sampler, generator=gens, callback=options.callback,
                   progress=options.progress, **extra)
        if float(sigmas[-1]) > 0:  # a grid ending above 0 (diffusers' set_alpha_to_one=False): its native sample
            x = x * float(self.schedule.alpha(float(sigmas[-1])))
        if not bool(torch.isfinite(x).all()):  # one read per solve; garbage is never returned
            raise FloatingPointError(f"sampling produced NaN or infinite values ({options.sampler}, "
                                     f"{len(sigmas) - 1} steps, guidance {options.guidance_scale}); check the "
                                     f"conditioning inputs, or try float32 weights or another sampler")
        return x

    def initial_noise(self, shape: tuple[int, ...], options: SamplingOptions, gens) -> torch.Tensor:
        """Unit-normal noise of ``shape``: the options' ``latents``, or drawn from the generators."""
        if options.latents is None:
            return randn(shape, gens, device=self.device, dtype=options.dtype)
        if tuple(options.latents.shape) != tuple(shape):
            raise ValueError(f"latents must be shaped {tuple(shape)} for this call, got {tuple(options.latents.shape)}; "
                             f"pass unit-normal noise of the sample's shape (batch first)")
        return options.latents.to(self.device, options.dtype)

    def noise_scale(self, sigma: float) -> float:
        """The std of the start at level ``sigma``: the prior's, sqrt(sigma^2 + sigma_data^2), which
        is diffusers' VP start (unit noise). ``extra["init_noise"] == "sigma"``: sigma itself, as
        diffusers' Euler schedulers start with linspace or trailing spacing (their init_noise_sigma)."""
        if self.config.extra.get("init_noise") == "sigma":
            return sigma
        return math.sqrt(sigma**2 + self.config.sigma_data**2)

    def _guided(self, cond: dict, uncond: dict | None, options: SamplingOptions):
        denoiser = self.denoiser()
        if options.guidance_scale == 1.0:
            return lambda x, s, **extra: denoiser(x, s, **cond, **extra)
        if uncond is None:
            raise ValueError("guidance_scale != 1 needs an unconditional input; this model has none "
                             "(it was trained without condition dropout): use guidance_scale=1")
        return cfg(denoiser, options.guidance_scale, cond, uncond, rescale=options.guidance_rescale,
                   interval=options.guidance_interval)
