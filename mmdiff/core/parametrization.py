"""The one place where a network's output becomes a denoiser, and where its training loss comes from.

Every prediction target is an affine map of the VE state (as in k-diffusion's ``Denoiser`` and
EDM's preconditioning):

    D(x, sigma) = c_skip * x + c_out * F(c_in * x, timestep(sigma))

``c_in`` is the schedule's native input scale, so a model trained on ``alpha*x0 + sigma_t*eps``
(VP, flow) sees exactly that. The training target is the ``F`` that makes ``D`` exact,
``(x0 - c_skip * x) / c_out``, and loss weights are written in x0 space and converted with
``c_out**2``, which is what makes min-SNR correct for every target.
"""
from __future__ import annotations

import torch
from torch import nn

from .schedules import DiscreteSchedule, Schedule

Tensor = torch.Tensor
PREDICTIONS = ("eps", "x0", "v", "flow", "edm")
WEIGHTINGS = ("uniform", "min_snr", "edm")
NOISE_DISTRIBUTIONS = ("uniform", "logit_normal", "lognormal")


def append_dims(t: Tensor, ndim: int) -> Tensor:
    return t.reshape(t.shape + (1,) * (ndim - t.ndim))


def scalings(prediction: str, schedule: Schedule, sigma: Tensor, sigma_data: float = 0.5):
    """``(c_skip, c_out, c_in)`` in float64 for VE levels ``sigma``."""
    s = sigma.double()
    if prediction == "edm":
        root = (s**2 + sigma_data**2).sqrt()
        return sigma_data**2 / root**2, s * sigma_data / root, 1 / root
    a = schedule.alpha(s).to(s.device)
    sn = a * s  # native sigma_t
    one = torch.ones_like(s)
    if prediction == "eps":
        return one, -s, a
    if prediction == "x0":
        return 0 * one, one, a
    if prediction == "v":  # v = alpha * eps - sigma_t * x0
        norm = a**2 + sn**2
        return a**2 / norm, -sn / norm, a
    if prediction == "flow":  # u = eps - x0
        return a / (a + sn), -sn / (a + sn), a
    raise ValueError(f"unknown prediction '{prediction}'; choose one of {PREDICTIONS}")


def loss_weight(weighting: str, prediction: str, schedule: Schedule, sigma: Tensor, *,
                gamma: float = 5.0, sigma_data: float = 0.5) -> Tensor:
    """Per-sample weight on the target-space squared error."""
    if weighting == "uniform":
        return torch.ones_like(sigma.double())
    _, c_out, _ = scalings(prediction, schedule, sigma, sigma_data)
    s = sigma.double()
    if weighting == "min_snr":  # Hang et al. (2023): x0-space weight min(SNR, gamma), SNR = 1/sigma^2
        return torch.clamp(s**-2, max=gamma) * c_out**2
    if weighting == "edm":  # Karras et al. (2022) lambda(sigma), in x0 space
        return (s**2 + sigma_data**2) / (s * sigma_data) ** 2 * c_out**2
    raise ValueError(f"unknown loss weighting '{weighting}'; choose one of {WEIGHTINGS}")


def sample_training_sigmas(schedule: Schedule, n: int, distribution: str = "uniform", *,
                           mean: float | None = None, std: float | None = None,
                           generator: torch.Generator | None = None, device=None) -> Tensor:
    """Noise levels for a training batch.

    ``uniform``: t uniform over the schedule's domain (uniform over the training indices of a
    discrete schedule); ``logit_normal``: SD3's t = sigmoid(N(mean, std)); ``lognormal``: EDM's
    log sigma ~ N(mean, std), clipped to the schedule's range.
    """
    def normal():
        return torch.randn(n, generator=generator, dtype=torch.float64)

    if distribution == "uniform":
        if isinstance(schedule, DiscreteSchedule):
            idx = torch.randint(0, schedule.num_timesteps, (n,), generator=generator)
            t = idx.double() / (schedule.num_timesteps - 1)
        else:
            u = torch.rand(n, generator=generator, dtype=torch.float64)
            t = schedule.t_min + u * (schedule.t_max - schedule.t_min)
        sigma = schedule.sigma(t)
    elif distribution == "logit_normal":
        u = torch.sigmoid((0.0 if mean is None else mean) + (1.0 if std is None else std) * normal())
        sigma = schedule.sigma(schedule.t_min + u * (schedule.t_max - schedule.t_min))
    elif distribution == "lognormal":
        log_s = (-1.2 if mean is None else mean) + (1.2 if std is None else std) * normal()
        sigma = log_s.exp().clamp(schedule.sigma_min, schedule.sigma_max)
    else:
        raise ValueError(f"unknown noise distribution '{distribution}'; choose one of {NOISE_DISTRIBUTIONS}")
    return sigma.float().to(device)


class Denoiser(nn.Module):
    """Wraps a network ``model(x_in, timestep, **cond)`` into ``D(x, sigma, **cond) -> x0_hat``."""

    def __init__(self, model: nn.Module, schedule: Schedule, prediction: str = "eps",
                 sigma_data: float = 0.5):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction '{prediction}'; choose one of {PREDICTIONS}")
        self.model, self.schedule, self.prediction, self.sigma_data = model, schedule, prediction, sigma_data
        self._memo: dict[tuple, tuple[Tensor, ...]] = {}

    @property
    def input_dtype(self) -> torch.dtype:
        param = next(self.model.parameters(), None) if isinstance(self.model, nn.Module) else None
        return param.dtype if param is not None and param.is_floating_point() else torch.float32

    def _coefficients(self, sigma: Tensor) -> tuple[Tensor, ...]:
        """``(c_skip, c_out, c_in, timestep)`` for levels ``sigma`` (1-D), float32 on its device."""
        coeffs = scalings(self.prediction, self.schedule, sigma, self.sigma_data)
        timestep = self.schedule.timestep(sigma.double())  # on sigma's device: no host round trip
        return tuple(c.to(sigma.device, torch.float32) for c in (*coeffs, timestep))

    def _inputs(self, x: Tensor, sigma: Tensor):
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(x.shape[0])
        key = (sigma.dtype, *sigma.tolist()) if sigma.device.type == "cpu" else None
        coeffs = self._memo.get(key)
        if coeffs is None:
            coeffs = self._coefficients(sigma)
            if key is not None and len(self._memo) < 1024:
                # A sampler calls with the same few levels again and again: memoised by value,
                # the ~20 small tensor ops of the conversion run once per level, not per evaluation.
                self._memo[key] = coeffs
        c_skip, c_out, c_in, timestep = coeffs
        return (sigma, *(append_dims(c, x.ndim) for c in (c_skip, c_out, c_in)), timestep)

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        _, c_skip, c_out, c_in, timestep = self._inputs(x, sigma)
        out = self.model(self.network_input(x, c_in, cond.get("given")), timestep, **cond)
        return (c_skip * x.float() + c_out * out.float()).to(x.dtype)

    def network_input(self, x: Tensor, c_in: Tensor, given: Tensor | None = None) -> Tensor:
        """``c_in * x``. Clean given content (the DiT's ``given`` mask, 1 = given) is scaled as at
        sigma = 0 instead: ``c_in`` vanishes at high noise (flow, VP, EDM), and given frames or
        tokens scaled by it would vanish with it, when the sample depends on them most."""
        x_in = x * c_in
        if given is not None:
            c_clean = scalings(self.prediction, self.schedule, torch.zeros(1), self.sigma_data)[2]
            x_in = torch.lerp(x_in, x * float(c_clean), given.to(x_in.dtype))
        return x_in.to(self.input_dtype)

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        """What ``F`` should output for ``x = x0 + sigma * noise``; written from ``(x0, noise)``
        rather than ``x`` so eps stays exact at tiny sigma."""
        _, c_skip, c_out, _, _ = self._inputs(x0, sigma)
        s = append_dims(sigma.float(), x0.ndim)
        return ((1 - c_skip) * x0 - c_skip * s * noise) / c_out

    def loss(self, x0: Tensor, sigma: Tensor, noise: Tensor | None = None, *, weighting: str = "uniform",
             gamma: float = 5.0, mask: Tensor | None = None, **cond) -> Tensor:
        """Per-sample weighted squared error in target space. ``mask`` (broadcastable to x0, 1 =
        counts) leaves given regions out of the loss."""
        noise = torch.randn_like(x0) if noise is None else noise
        sigma, _, _, c_in, timestep = self._inputs(x0, sigma)
        x = x0 + append_dims(sigma.float(), x0.ndim) * noise
        out = self.model(self.network_input(x, c_in, cond.get("given")), timestep, **cond).float()
        err = (out - self.target(x0, noise, sigma)) ** 2
        if mask is not None:
            mask = mask.expand_as(err).float()
            per_sample = (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1)
        else:
            per_sample = err.flatten(1).mean(1)
        w = loss_weight(weighting, self.prediction, self.schedule, sigma, gamma=gamma,
                        sigma_data=self.sigma_data).to(x0.device, torch.float32)
        return w * per_sample

