"""The latent-diffusion task that images and video share (the training side of a modality).

A modality supplies: its data (``build_dataset``), data -> latents (``encode``, through an
autoencoder), latents -> tokens (a ``PatchConfig`` the core DiT patchifies with), latents -> data
(``decode``), the conditioning it accepts, and how outputs are saved. Schedules, samplers, losses,
the DiT and the Trainer know nothing else about it.

``LatentDiffusionTask`` is what the one Trainer drives for images and video (the ``Task`` of
``mmdiff.training.task``): the loss of a batch goes through
``mmdiff.core.parametrization.Denoiser.loss``, validation and export go through the modality's
pipeline (``latent_pipeline.py``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core import checks
from ..core.checkpoint import config_to_dict, shared_fields
from ..core.dit import PRESETS, DiT, DiTConfig
from ..core.parametrization import NOISE_DISTRIBUTIONS, PREDICTIONS, WEIGHTINGS, Denoiser, sample_training_sigmas
from ..core.patch import PatchConfig
from ..core.samplers import SAMPLERS
from ..core.schedules import SCHEDULES, get_schedule
from ..options import MAX_STEPS
from ..registry import PipelineConfig

CROPS = ("center", "random")  # of the image and video recipes' --crop


@dataclass
class DiffusionArgs:
    """Model and diffusion options shared by the image and video recipes."""

    data: str = field(default="digits", metadata={"help": "built-in name, local path, or Hugging Face data set"})
    model: str = field(default="DiT-S/2", metadata={"help": f"DiT preset: {', '.join(PRESETS)}"})
    patch_size: int | None = field(default=None, metadata={"help": "override the preset's patch size"})
    hidden_size: int | None = field(default=None, metadata={"help": "override the preset's width"})
    depth: int | None = field(default=None, metadata={"help": "override the preset's depth"})
    num_heads: int | None = field(default=None, metadata={"help": "override the preset's heads"})
    qk_norm: bool = False
    autoencoder: str = field(default="identity", metadata={"help": "identity, or a folder (ours or an SD vae/)"})
    schedule: str = field(default="flow", metadata={"help": "linear | scaled_linear | cosine | edm | flow"})
    schedule_shift: float = field(default=1.0, metadata={"help": "SD3 time shift of the flow schedule"})
    zero_terminal_snr: bool = False
    prediction: str = field(default="flow", metadata={"help": "eps | x0 | v | flow | edm"})
    noise_distribution: str = field(default="logit_normal", metadata={"help": "uniform | logit_normal | lognormal"})
    noise_mean: float | None = None
    noise_std: float | None = None
    loss_weighting: str = field(default="uniform", metadata={"help": "uniform | min_snr | edm"})
    min_snr_gamma: float = 5.0
    sigma_data: float = field(default=1.0, metadata={"help": "data std (EDM preconditioning, prior std)"})
    class_dropout: float = field(default=0.1, metadata={"help": "label dropout for classifier-free guidance"})
    class_embed_std: float = field(default=0.02, metadata={
        "help": "init std of the label embeddings (DiT: 0.02; 1.0 learns labels sooner in short runs)"})
    unconditional: bool = field(default=False, metadata={"help": "ignore labels even if the data has them"})
    sampler: str = field(default="dpmpp_2m", metadata={"help": "sampler for validation and the export default"})
    sample_steps: int = 25
    guidance_scale: float = field(default=1.0, metadata={"help": "validation / export default guidance"})

    def __post_init__(self):
        checks.check_fields(self)
        checks.choice("--model", self.model, PRESETS)
        for name in ("patch_size", "hidden_size", "depth", "num_heads"):
            if getattr(self, name) is not None:
                checks.integer(f"--{name}", getattr(self, name), low=1)
        checks.choice("--schedule", self.schedule, SCHEDULES)
        checks.choice("--prediction", self.prediction, PREDICTIONS)
        checks.choice("--noise_distribution", self.noise_distribution, NOISE_DISTRIBUTIONS)
        checks.choice("--loss_weighting", self.loss_weighting, WEIGHTINGS)
        checks.choice("--sampler", self.sampler, SAMPLERS)
        for name in ("schedule_shift", "min_snr_gamma", "sigma_data", "class_embed_std"):
            checks.number(f"--{name}", getattr(self, name), low=0, open_low=True)
        if self.noise_std is not None:
            checks.number("--noise_std", self.noise_std, low=0, open_low=True)
        if self.noise_mean is not None:
            checks.number("--noise_mean", self.noise_mean)
        checks.number("--class_dropout", self.class_dropout, low=0, high=0.999)
        checks.integer("--sample_steps", self.sample_steps, low=1, high=MAX_STEPS)
        checks.number("--guidance_scale", self.guidance_scale, low=0)
        if not self.data:
            checks.fail("--data", "a built-in name, a path or a Hugging Face data set", self.data)


class LatentDiffusionTask(ABC):
    """Trainer hooks for a latent diffusion model over a modality's tensors.

    Subclasses set ``modality``, ``data_key`` and ``pipeline_class`` and implement
    ``build_dataset``, ``patch_config`` and ``validation``."""

    modality = ""
    data_key = ""
    pipeline_class = None

    def __init__(self, args: DiffusionArgs):
        self.args = args
        self.schedule = get_schedule(args.schedule, **self.schedule_options())
        self.dataset = self.model = self.autoencoder = None

    # ------------------------------------------------------------------- built by subclasses
    @abstractmethod
    def build_dataset(self):
        ...

    @abstractmethod
    def build_autoencoder(self) -> nn.Module:
        ...

    @abstractmethod
    def patch_config(self, latent_shape: tuple[int, ...]) -> PatchConfig:
        ...

    @abstractmethod
    def validation(self, model: nn.Module, step: int, folder: Path) -> dict:
        ...

    # -------------------------------------------------------------------------------- shared
    def schedule_options(self) -> dict:
        a = self.args
        if a.schedule == "flow":
            return {"shift": a.schedule_shift}
        if a.schedule in ("linear", "scaled_linear", "cosine"):
            return {"zero_terminal_snr": a.zero_terminal_snr}
        if a.schedule == "edm":
            return {"sigma_data": a.sigma_data}
        return {}

    def setup(self) -> None:
        self.dataset = self.build_dataset()
        self.class_names = list(getattr(self.dataset, "class_names", []) or [])
        self.num_classes = self.count_classes()
        self.autoencoder = self.build_autoencoder().eval().requires_grad_(False)
        self.model = DiT(self.dit_config())

    def count_classes(self) -> int:
        """Label classes the model is conditioned on (0: none)."""
        return 0 if self.args.unconditional else getattr(self.dataset, "num_classes", 0)

    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.dataset[0][self.data_key].shape)

    def dit_config(self) -> DiTConfig:
        latent = self.autoencoder.latent_shape(self.example_shape())
        return self.dit_config_for(latent, self.num_classes)

    def dit_config_for(self, latent_shape: tuple[int, ...], num_classes: int) -> DiTConfig:
        """The DiT for latents of ``latent_shape`` (no data needed: configs are built on meta in tests)."""
        a = self.args
        if a.model not in PRESETS:
            raise ValueError(f"unknown --model '{a.model}'; choose one of {list(PRESETS)}")
        preset = dict(PRESETS[a.model])
        patch = preset.pop("patch")
        pc = dataclasses.replace(self.patch_config(latent_shape), patch=a.patch_size or patch)
        # the recipe's options that are the DiT's (--depth, --qk_norm, --attention...) by name
        return DiTConfig(**{**preset, **shared_fields(a, DiTConfig), "patch": pc, "num_classes": num_classes,
                            **self.extra_dit_options()})

    def extra_dit_options(self) -> dict:
        return {}

    def denoiser(self, model: nn.Module) -> Denoiser:
        return Denoiser(model, self.schedule, self.args.prediction, sigma_data=self.args.sigma_data)

    def conditioning(self, batch: dict) -> dict:
        if self.num_classes:
            return {"class_labels": batch["label"]}
        return {}

    @torch.no_grad()
    def latents(self, batch: dict, device) -> torch.Tensor:
        data = batch[self.data_key].to(device)
        self.autoencoder.to(device)
        return self.autoencoder.encode(data, sample=True).float()

    def loss(self, model: nn.Module, batch: dict):
        a = self.args
        x0 = self.latents(batch, next(model.parameters()).device)
        sigma = sample_training_sigmas(self.schedule, x0.shape[0], a.noise_distribution, mean=a.noise_mean,
                                       std=a.noise_std, device=x0.device)
        cond = {k: v.to(x0.device) for k, v in self.conditioning(batch).items()}
        extra = self.training_extras(x0)
        per_sample = self.denoiser(model).loss(x0, sigma, weighting=a.loss_weighting, gamma=a.min_snr_gamma,
                                               **cond, **extra)
        return per_sample.mean(), {}

    def training_extras(self, x0: torch.Tensor) -> dict:
        """Extra keyword arguments of the loss (video: given frames and their mask)."""
        return {}

    def pipeline_config(self) -> PipelineConfig:
        a = self.args
        # A model without a null class (unlabelled data, --unconditional, no dropout) cannot be
        # guided: its validation and export default to no guidance instead of failing.
        guidable = bool(getattr(self, "num_classes", 0)) and a.class_dropout > 0
        return PipelineConfig(prediction=a.prediction, sigma_data=a.sigma_data, sampler=a.sampler,
                              steps=a.sample_steps, guidance_scale=a.guidance_scale if guidable else 1.0,
                              extra=self.pipeline_extra())

    def pipeline_extra(self) -> dict:
        return {"class_names": self.class_names}

    def pipeline(self, model: nn.Module):
        return self.pipeline_class({"model": model, "autoencoder": self.autoencoder}, self.schedule,
                                   self.pipeline_config())

    def export(self, model: nn.Module, folder: Path) -> Path:
        return self.pipeline(model).save_pretrained(folder)

    def signature(self) -> dict:
        """What a resumed run must share with the checkpoint."""
        return {"modality": self.modality, "model": config_to_dict(self.model.config),
                "schedule": self.args.schedule, "prediction": self.args.prediction}

    def config(self) -> dict:
        return dataclasses.asdict(self.args)
