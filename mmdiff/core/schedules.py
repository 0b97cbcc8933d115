"""Noise schedules in one convention: a noisy sample is ``x = x0 + sigma * eps`` ("VE" form).

Every schedule is described natively by ``(alpha_t, sigma_t)`` over its own time ``t``
(``x_native = alpha_t * x0 + sigma_t * eps``) and by the VE noise level ``sigma = sigma_t / alpha_t``
that samplers see. A schedule answers four questions, and samplers never ask which schedule made
their sigmas:

- ``sigma(t)`` / ``t(sigma)``: VE noise level at time ``t`` and back;
- ``alpha(sigma)``: the native input scale, so a model trained on ``alpha*x0 + sigma_t*eps`` sees
  ``alpha(sigma) * x_ve``;
- ``timestep(sigma)``: the value a network is conditioned on (a DDPM index, or 1000 * flow time);
- ``sigmas(steps, spacing)``: a decreasing sampling grid ending in 0.

All arithmetic is float64: flow's ``sigma = t / (1 - t)`` near ``t = 1`` loses everything in float32.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
import math
from dataclasses import dataclass, field

import numpy as np
import torch

Tensor = torch.Tensor
SPACINGS = ("linspace", "leading", "trailing", "karras", "logsnr")
# How diffusers' scheduler classes place ``steps`` integer timesteps for one spacing name:
# EulerDiscrete (unrounded linspace), DDIM/DDPM (rounded linspace) and DPM-Solver/UniPC (steps + 1
# points, the last dropped). The grid a loaded scheduler config asks for is its class's.
GRID_RULES = ("euler", "ddim", "dpmsolver")
FINAL_LEVELS = ("zero", "first")


def _f64(x) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


class Schedule(ABC):
    """Base class; subclasses define ``sigma``, ``t``, ``alpha`` and the time domain."""

    name: str = "schedule"
    default_spacing: str = "linspace"
    heun_time: str = "sigma"  # the variable sample_heun takes its trapezoid in for this schedule
    t_min: float = 0.0
    t_max: float = 1.0

    # --- the contract -------------------------------------------------------------------------
    @abstractmethod
    def sigma(self, t) -> Tensor:
        ...

    @abstractmethod
    def t(self, sigma) -> Tensor:
        ...

    def alpha(self, sigma) -> Tensor:
        """Native input scale at VE level ``sigma``; variance-preserving by default."""
        sigma = _f64(sigma)
        return (1 + sigma**2).rsqrt()

    def timestep(self, sigma) -> Tensor:
        """Network conditioning value; 1000 * t unless a schedule trains on another scale."""
        return 1000 * self.t(sigma)

    # --- derived ------------------------------------------------------------------------------
    def alpha_sigma(self, t) -> tuple[Tensor, Tensor]:
        s = self.sigma(t)
        a = self.alpha(s)
        return a, a * s

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(self.t_min))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(self.t_max))

    def sigmas(self, steps: int, spacing: str | None = None, *, rho: float = 7.0,
               dtype: torch.dtype = torch.float32) -> Tensor:
        """``steps`` decreasing VE noise levels followed by a final 0 (length ``steps + 1``)."""
        if not isinstance(steps, int) or steps <= 0:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        spacing = spacing or self.default_spacing
        if spacing == "karras":
            sig = karras_sigmas(steps, self.sigma_min, self.sigma_max, rho)
        elif spacing == "logsnr":
            sig = torch.linspace(math.log(self.sigma_max), math.log(self.sigma_min), steps,
                                 dtype=torch.float64).exp()
        elif spacing in ("linspace", "leading", "trailing"):
            sig = self.sigma(self.spaced_t(steps, spacing))
        else:
            raise ValueError(f"unknown spacing '{spacing}'; choose one of {SPACINGS}")
        final = self.final_sigma()
        if final >= float(sig[-1]):  # the grid already ends there: diffusers' last step is the identity
            return sig.to(dtype)
        return torch.cat([sig, sig.new_full((1,), final)]).to(dtype)

    def final_sigma(self) -> float:
        """The level a full solve ends at (0: the data)."""
        return 0.0

    def spaced_t(self, steps: int, spacing: str) -> Tensor:
        """Times for the uniform spacings (diffusers' names, Lin et al. 2023 Table 2)."""
        lo, hi = self.t_min, self.t_max
        if spacing == "linspace":
            return torch.linspace(hi, lo, steps, dtype=torch.float64)
        i = torch.arange(steps, dtype=torch.float64)
        if spacing == "trailing":
            return hi - i * (hi - lo) / steps
        return lo + (steps - 1 - i) * (hi - lo) / steps  # leading

    def sampler_options(self, sampler: str) -> dict:
        """Options a sampler needs on this schedule's grids (Heun's time variable)."""
        return {"time": self.heun_time} if sampler == "heun" else {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, sigma {self.sigma_min:.4g}..{self.sigma_max:.4g})"


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) eq. 5: uniform in sigma^(1/rho) from sigma_max down to sigma_min."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


# --------------------------------------------------------------------------------------- discrete

def ddpm_betas(kind: str, num_timesteps: int, beta_start: float, beta_end: float,
               dtype: torch.dtype = torch.float64) -> Tensor:
    """The betas, made in ``dtype`` as diffusers makes them in float32 (the cosine's in float64, then cast)."""
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=dtype)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=dtype) ** 2
    if kind == "cosine":
        # Nichol & Dhariwal (2021) eq. 17 with s = 0.008, betas clipped at 0.999 (their choice).
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return _f64([min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
                     for i in range(num_timesteps)]).to(dtype)
    raise ValueError(f"unknown beta schedule '{kind}'")


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. (2023) Algorithm 1: shift and scale sqrt(alpha_bar) so the last step is pure noise."""
    root = torch.cumprod(1 - betas, 0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    alpha_bar = root**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


@dataclass
class DiscreteSchedule(Schedule):
    """A DDPM schedule of ``num_timesteps`` betas. ``t = index / (num_timesteps - 1)``; between
    indices sigma is interpolated linearly, as diffusers' Euler schedulers do."""

    name: str = "linear"
    num_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    zero_terminal_snr: bool = False
    steps_offset: int = 0
    default_spacing: str = "trailing"
    # A zero-SNR last step has alpha_bar = 0 and infinite VE sigma; diffusers clamps alpha_bar to
    # 2**-24 for the same reason, which makes sigma_max = 4096.
    terminal_alpha_bar: float = 2.0**-24
    # Reproducing a diffusers scheduler: ``float32_cumprod`` makes the betas and their cumulative
    # product in float32 as diffusers does (its alphas_cumprod bit for bit; float64 differs by
    # ~1e-7); ``grid_rule`` is its class's timestep placement (GRID_RULES); ``final_level`` "first"
    # ends a solve at the first training step's level instead of 0 (DDIM's set_alpha_to_one=False,
    # DPM-Solver's final_sigmas_type="sigma_min").
    float32_cumprod: bool = False
    grid_rule: str = "euler"
    final_level: str = "zero"
    table: Tensor = field(init=False, repr=False)
    _tables: dict = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self):
        if self.grid_rule not in GRID_RULES:
            raise ValueError(f"unknown grid_rule '{self.grid_rule}'; choose one of {GRID_RULES}")
        if self.final_level not in FINAL_LEVELS:
            raise ValueError(f"unknown final_level '{self.final_level}'; choose one of {FINAL_LEVELS}")
        dtype = torch.float32 if self.float32_cumprod else torch.float64
        betas = ddpm_betas(self.name, self.num_timesteps, self.beta_start, self.beta_end, dtype)
        if self.zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        alpha_bar = torch.cumprod(1 - betas, 0).double()
        if self.zero_terminal_snr:
            alpha_bar[-1] = self.terminal_alpha_bar
        self.alphas_cumprod = alpha_bar
        self.table = ((1 - alpha_bar) / alpha_bar).sqrt()  # VE sigma per index, increasing

    def table_on(self, device: torch.device) -> Tensor:
        """The sigma table on ``device``, copied once: levels on a GPU convert there, without a
        round trip through the host that would stall the GPU's queue at every sampler step."""
        if device == self.table.device:
            return self.table
        if device not in self._tables:
            self._tables[device] = self.table.to(device)
        return self._tables[device]

    def sigma(self, t) -> Tensor:
        idx = _f64(t).clamp(0, 1) * (self.num_timesteps - 1)
        table = self.table_on(idx.device)
        lo = idx.floor().long().clamp(max=self.num_timesteps - 2)
        w = idx - lo
        return table[lo] * (1 - w) + table[lo + 1] * w

    def t(self, sigma) -> Tensor:
        sigma = _f64(sigma)
        table = self.table_on(sigma.device)
        sigma = sigma.clamp(table[0], table[-1])
        hi = torch.searchsorted(table, sigma.contiguous()).clamp(1, self.num_timesteps - 1)
        lo = hi - 1
        w = (sigma - table[lo]) / (table[hi] - table[lo])
        return (lo + w) / (self.num_timesteps - 1)

    def timestep(self, sigma) -> Tensor:
        return self.t(sigma) * (self.num_timesteps - 1)

    def final_sigma(self) -> float:
        return float(self.table[0]) if self.final_level == "first" else 0.0

    def spaced_t(self, steps: int, spacing: str) -> Tensor:
        # The integer grids of diffusers' schedulers, by class (grid_rule); leading adds steps_offset.
        n, last = self.num_timesteps, self.num_timesteps - 1
        extra = self.grid_rule == "dpmsolver"  # steps + 1 points, the last (lowest) dropped
        if spacing == "linspace":
            idx = np.linspace(0, last, steps + extra)
            idx = (idx if self.grid_rule == "euler" else idx.round())[::-1][:steps]
        elif spacing == "leading":
            ratio = n // (steps + extra)
            idx = (np.arange(steps + extra) * ratio).round()[::-1][:steps] + self.steps_offset
        elif spacing == "trailing":
            # [:steps]: arange with a float step yields one index too many for some step
            # counts (61, 103, ...), as in diffusers
            idx = (np.arange(n, 0, -n / steps).round() - 1)[:steps]
        else:
            raise ValueError(f"unknown spacing '{spacing}'")
        idx = torch.from_numpy(idx.astype(np.float64))
        return idx / last


# ------------------------------------------------------------------------------------- continuous

@dataclass
class FlowSchedule(Schedule):
    """Rectified flow: ``alpha = 1 - t'``, ``sigma = t'`` with the SD3 shift
    ``t' = shift * t / (1 + (shift - 1) * t)``; ``t`` runs over ``[1 / num_timesteps, 1]``."""

    name: str = "flow"
    heun_time: str = "flow"  # sigma_max = 1e5: a trapezoid in sigma loses the sample (sample_heun)
    shift: float = 1.0
    num_timesteps: int = 1000
    default_spacing: str = "linspace"
    # t' = 1 is pure noise with infinite VE sigma; stopping at 1 - 1e-5 changes the model input by
    # a relative 1e-5 and keeps the VE state finite.
    max_noise: float = 1.0 - 1e-5

    def __post_init__(self):
        self.t_min = 1.0 / self.num_timesteps

    def _shifted(self, t) -> Tensor:
        t = _f64(t)
        return (self.shift * t / (1 + (self.shift - 1) * t)).clamp(max=self.max_noise)

    def sigma(self, t) -> Tensor:
        s = self._shifted(t)
        return s / (1 - s)

    def t(self, sigma) -> Tensor:
        s = _f64(sigma) / (1 + _f64(sigma))
        return s / (self.shift - (self.shift - 1) * s)

    def alpha(self, sigma) -> Tensor:
        return 1 / (1 + _f64(sigma))

    def timestep(self, sigma) -> Tensor:
        # diffusers/SD3 condition on 1000 * shifted time, the native sigma_t.
        sigma = _f64(sigma)
        return self.num_timesteps * sigma / (1 + sigma)


@dataclass
class EDMSchedule(Schedule):
    """Karras et al. (2022): sigma runs from sigma_min to sigma_max uniformly in sigma^(1/rho).
    The native input scale is EDM's c_in = 1 / sqrt(sigma^2 + sigma_data^2)."""

    name: str = "edm"
    sigma_lo: float = 0.002
    sigma_hi: float = 80.0
    rho: float = 7.0
    sigma_data: float = 0.5
    default_spacing: str = "karras"

    def sigma(self, t) -> Tensor:
        lo, hi = self.sigma_lo ** (1 / self.rho), self.sigma_hi ** (1 / self.rho)
        return (lo + _f64(t) * (hi - lo)) ** self.rho

    def t(self, sigma) -> Tensor:
        lo, hi = self.sigma_lo ** (1 / self.rho), self.sigma_hi ** (1 / self.rho)
        return (_f64(sigma) ** (1 / self.rho) - lo) / (hi - lo)

    def alpha(self, sigma) -> Tensor:
        return (_f64(sigma) ** 2 + self.sigma_data**2).rsqrt()

    def sigmas(self, steps, spacing=None, *, rho=None, dtype=torch.float32):
        return super().sigmas(steps, spacing, rho=self.rho if rho is None else rho, dtype=dtype)


# -------------------------------------------------------------------------------------- registry

SCHEDULES = {
    "linear": lambda **kw: DiscreteSchedule(name="linear", **kw),
    "scaled_linear": lambda **kw: DiscreteSchedule(name="scaled_linear", **{"beta_start": 0.00085,
                                                                            "beta_end": 0.012, **kw}),
    "cosine": lambda **kw: DiscreteSchedule(name="cosine", **kw),
    "edm": lambda **kw: EDMSchedule(**kw),
    "flow": lambda **kw: FlowSchedule(**kw),
}


def get_schedule(name: str, **options) -> Schedule:
    """``get_schedule("cosine")``, ``get_schedule("flow", shift=3.0)``,
    ``get_schedule("linear", zero_terminal_snr=True)``."""
    if isinstance(name, Schedule):
        return name
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule '{name}'; choose one of {sorted(SCHEDULES)}")
    try:
        return SCHEDULES[name](**options)
    except TypeError as e:
        raise ValueError(f"schedule '{name}' does not take options {sorted(options)}: {e}") from e


# DiscreteSchedule's options for reproducing diffusers, written to a config only when set
DIFFUSERS_EXACT = {"float32_cumprod": False, "grid_rule": "euler", "final_level": "zero"}


def schedule_config(schedule: Schedule) -> dict:
    """The options that rebuild ``schedule`` with ``get_schedule`` (stored in pipeline configs)."""
    if isinstance(schedule, DiscreteSchedule):
        return {"name": schedule.name, "num_timesteps": schedule.num_timesteps,
                "beta_start": schedule.beta_start, "beta_end": schedule.beta_end,
                "zero_terminal_snr": schedule.zero_terminal_snr, "steps_offset": schedule.steps_offset,
                "default_spacing": schedule.default_spacing,
                **{k: getattr(schedule, k) for k, default in DIFFUSERS_EXACT.items() if getattr(schedule, k) != default}}
    if isinstance(schedule, FlowSchedule):
        return {"name": "flow", "shift": schedule.shift, "num_timesteps": schedule.num_timesteps,
                "default_spacing": schedule.default_spacing}
    if isinstance(schedule, EDMSchedule):
        return {"name": "edm", "sigma_lo": schedule.sigma_lo, "sigma_hi": schedule.sigma_hi,
                "rho": schedule.rho, "sigma_data": schedule.sigma_data,
                "default_spacing": schedule.default_spacing}
    raise TypeError(f"cannot describe {schedule!r} as a config")


def schedule_from_config(config: dict) -> Schedule:
    config = dict(config)
    return get_schedule(config.pop("name"), **config)
