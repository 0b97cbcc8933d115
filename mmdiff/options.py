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
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .core.samplers import check_sampler


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
        steps = self.num_inference_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0):
            raise ValueError(f"num_inference_steps must be a positive integer, got {steps!r}")
        if self.spacing is not None and self.spacing not in spacings:
            raise ValueError(f"unknown spacing {self.spacing!r}; choose one of {list(spacings)}")
        check_sampler(self.sampler, self.sampler_options)
