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


def tag_level(sigma: Tensor, level: float) -> Tensor:
    """Attach the host value of a batch-uniform level to its device tensor: whoever needs the
    number (a memo key, a guidance interval) reads it here instead of from the device, which on
    a GPU would wait for all queued work. Samplers tag every level they hand to a denoiser."""
    sigma.host_level = float(level)
    return sigma


def host_level(sigma) -> float | None:
    """The level of ``tag_level`` (or a plain number), else None."""
    if isinstance(sigma, (int, float)):
        return float(sigma)
    return getattr(sigma, "host_level", None)


class LevelMemo:
    """``compute(sigma, ndim)`` -> per-level tensors shaped to broadcast against an ``ndim``-D
    batch, memoised by the level's host value.

    A sampler calls with the same few levels again and again (every solve of a pipeline, both
    halves of Heun): looked up by value, the ~20 small tensor ops of a conversion run once per
    level instead of per evaluation, which on a GPU are ~20 kernel launches. A level is known on
    the host when tagged (``tag_level``, any device) or when a CPU batch holds one value; others
    (training's per-sample levels, untagged device tensors, whose read would wait for the device)
    are computed every time and not kept."""

    def __init__(self, compute, size: int = 1024):
        self.compute, self.size, self.memo = compute, size, {}

    def __len__(self) -> int:
        return len(self.memo)

    def __call__(self, sigma, like: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``(sigma, values)``: sigma as a (B,) tensor on ``like``'s device, values with one row
        per sample or one row for all (they broadcast; expand where a (B,) is needed)."""
        level, batch = host_level(sigma), like.shape[0]
        sigma = torch.as_tensor(sigma, device=like.device).reshape(-1).expand(batch)
        if torch.compiler.is_compiling():  # a compiled graph fuses the conversion; a lookup would break it
            return sigma, self.compute(sigma, like.ndim)
        if level is None and sigma.device.type == "cpu":
            values = sigma.tolist()
            level = values[0] if values.count(values[0]) == len(values) else None
        if level is None:
            return sigma, self.compute(sigma, like.ndim)
        key = (str(sigma.device), sigma.dtype, level, like.ndim)
        values = self.memo.get(key)
        if values is None:
            values = self.compute(sigma[:1], like.ndim)
            if len(self.memo) < self.size:
                self.memo[key] = values
        return sigma, values


class Denoiser(nn.Module):
    """Wraps a network ``model(x_in, timestep, **cond)`` into ``D(x, sigma, **cond) -> x0_hat``."""

    def __init__(self, model: nn.Module, schedule: Schedule, prediction: str = "eps",
                 sigma_data: float = 0.5):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction '{prediction}'; choose one of {PREDICTIONS}")
        self.model, self.schedule, self.prediction, self.sigma_data = model, schedule, prediction, sigma_data
        self._memo = LevelMemo(self._coefficients)

    @property
    def input_dtype(self) -> torch.dtype:
        param = next(self.model.parameters(), None) if isinstance(self.model, nn.Module) else None
        return param.dtype if param is not None and param.is_floating_point() else torch.float32

    def _coefficients(self, sigma: Tensor, ndim: int) -> tuple[Tensor, ...]:
        """``(c_skip, c_out, c_in)`` as (n, 1, ...) of ``ndim`` dims and the network's timestep (n,),
        for levels ``sigma`` (n,), float32 on its device."""
        coeffs = scalings(self.prediction, self.schedule, sigma, self.sigma_data)
        timestep = self.schedule.timestep(sigma.double())  # on sigma's device: no host round trip
        return (*(append_dims(c.to(sigma.device, torch.float32), ndim) for c in coeffs),
                timestep.to(sigma.device, torch.float32))

    def _inputs(self, x: Tensor, sigma: Tensor):
        sigma, (c_skip, c_out, c_in, timestep) = self._memo(sigma, x)
        return sigma, c_skip, c_out, c_in, timestep.expand(x.shape[0])

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        _, c_skip, c_out, c_in, timestep = self._inputs(x, sigma)
        out = self.model(self.network_input(x, c_in, cond.get("given")), timestep, **cond)
        return torch.addcmul(c_skip * x.float(), c_out, out.float()).to(x.dtype)

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

