"""``SamplingOptions``: every setting of how to sample, one object for every modality.

A pipeline's ``__call__`` takes these fields as keywords (``pipe(class_labels=[3],
num_inference_steps=25, sampler="heun")``) or as one ``options=SamplingOptions(...)``; keywords
that are not fields are the sampler's own options (``eta``, ``order``, ``s_noise``...). The base
``Pipeline`` fills the defaults from the pipeline's config and checks everything once
(``resolve``), so a bad value gets the same message from images, video and text; after that the
options pass through unchanged to ``Pipeline.solve``.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .core import checks
from .core.samplers import check_sampler, check_sigmas

# A grid finer than this changes no sampler's result measurably, and memory grows with it.
MAX_STEPS = 10_000


@dataclass
class SamplingOptions:
    """``None`` means the pipeline's default (``pipeline.json``)."""

    sampler: str | None = None
    num_inference_steps: int | None = None
    spacing: str | None = None
    sigmas: Any = None  # a decreasing schedule of one's own: replaces num_inference_steps and spacing
    guidance_scale: float | None = None
    guidance_rescale: float = 0.0  # Lin et al. 2023: pull the guided std back to the conditional one's
    guidance_interval: tuple[float, float] | None = None  # guide only for lo < sigma <= hi
    generator: Any = None  # None, an int seed, a torch.Generator, or one generator per sample
    # The initial noise itself, unit normal and shaped like the sample (images: (B, C, h, w)), as
    # diffusers' ``latents=``: the pipeline scales it to the first noise level as diffusers'
    # schedulers do, so the same latents give the same picture. Replaces ``generator``'s first draw.
    latents: Any = None
    dtype: torch.dtype = torch.float32  # of the sampler's state (the model keeps its own dtype)
    progress: bool | None = None
    callback: Callable[[dict], None] | None = None  # called after every step with the solver's state
    sampler_options: dict = field(default_factory=dict)  # the sampler's own: eta, order, s_noise...

    @classmethod
    def build(cls, options: "SamplingOptions | None" = None, **keywords) -> "SamplingOptions":
        """``options`` updated by ``keywords``; keywords that are no field go to ``sampler_options``."""
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"options must be a SamplingOptions, got {type(options).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"sampler_options"}
        own = {k: v for k, v in keywords.items() if k in names}
        extra = {k: v for k, v in keywords.items() if k not in names}
        merged = dataclasses.replace(options or cls(), **own)
        if extra:
            merged = dataclasses.replace(merged, sampler_options={**merged.sampler_options, **extra})
        return merged

    def resolve(self, defaults, spacings: tuple[str, ...], progress: bool) -> "SamplingOptions":
        """The options with the pipeline's defaults (a ``PipelineConfig``) filled in, checked."""
        if self.sigmas is not None and (self.num_inference_steps is not None or self.spacing is not None):
            raise ValueError("pass either sigmas (a schedule of your own) or num_inference_steps/spacing, not both")
        def default(value, fallback):
            return fallback if value is None else value

        out = dataclasses.replace(self, sampler=default(self.sampler, defaults.sampler),
                                  guidance_scale=default(self.guidance_scale, defaults.guidance_scale),
                                  progress=default(self.progress, progress))
        if out.sigmas is None:
            out.num_inference_steps = default(self.num_inference_steps, defaults.steps)
            out.spacing = default(self.spacing, defaults.spacing)
        out.check(spacings)
        return out

    def check(self, spacings: tuple[str, ...]) -> None:
        """Every value's type and range; the sampler's own options by name (``check_sampler``)."""
        if not isinstance(self.sampler, str):
            checks.fail("sampler", "a sampler name", self.sampler, error=TypeError)
        if self.num_inference_steps is not None:
            checks.integer("num_inference_steps", self.num_inference_steps, low=1, high=MAX_STEPS,
                           fix="more steps than this change nothing measurable for any sampler")
        if self.spacing is not None:
            checks.choice("spacing", self.spacing, spacings)
        if self.sigmas is not None:
            _check_grid(self.sigmas)
        checks.number("guidance_scale", self.guidance_scale, low=0, fix="1 means no guidance")
        checks.probability("guidance_rescale", self.guidance_rescale)
        if self.guidance_interval is not None:
            _check_interval(self.guidance_interval)
        _check_generator(self.generator)
        if self.latents is not None and not (isinstance(self.latents, torch.Tensor) and self.latents.is_floating_point()):
            checks.fail("latents", "a float tensor of unit-normal noise shaped like the sample", type(self.latents).__name__,
                        error=TypeError)
        if not (isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point):
            checks.fail("dtype", "a floating torch.dtype (torch.float32, torch.float64...)", self.dtype, error=TypeError)
        checks.flag("progress", self.progress)
        if self.callback is not None and not callable(self.callback):
            checks.fail("callback", "a function of the step's state dict", self.callback, error=TypeError)
        check_sampler(self.sampler, self.sampler_options)


def _check_grid(sigmas) -> None:
    try:
        grid = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        checks.fail("sigmas", "a decreasing sequence of noise levels", sigmas, error=TypeError)
    try:
        check_sigmas(grid)
    except ValueError as e:
        raise ValueError(f"sigmas: {e}") from None


def _check_interval(interval) -> None:
    pair = tuple(interval) if isinstance(interval, (tuple, list)) else None
    if pair is None or len(pair) != 2:
        checks.fail("guidance_interval", "a pair (lo, hi) of noise levels", interval, error=TypeError)
    lo = checks.number("guidance_interval[0]", pair[0], low=0)
    checks.number("guidance_interval[1]", pair[1], low=lo, open_low=True)


def _check_generator(generator) -> None:
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)) and generator and all(isinstance(g, torch.Generator) for g in generator):
        return
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        checks.integer("generator", generator, low=0, high=2**63 - 1)
        return
    checks.fail("generator", "None, an int seed, a torch.Generator or a list with one per sample", generator,
                error=TypeError)
