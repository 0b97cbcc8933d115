"""Optimised step schedules: pick the noise levels of a short solve so that it agrees with a fine solve.

In the spirit of Align Your Steps (Sabour et al. 2024): every level after ``sigma_max`` is free,
kept monotone by construction (each lives between its two neighbours in log-sigma, the last one
between its neighbour and ``sigma_min``), and chosen to minimise the mean squared distance between
the short solve's endpoint and that of a fine solve from the same starting noise. AYS minimises a
KL upper bound of the discretisation instead; the endpoint objective needs nothing but the
denoiser, so it works for a trained network exactly as for a closed-form one, and it is tuned to
the sampler that will use the schedule.

    sigmas = optimize_sigmas(denoiser, lambda n, g: 80.0 * torch.randn(n, 64, generator=g),
                             "dpmpp_2m", steps=10, sigma_min=0.002, sigma_max=80.0, generator=0)
    x = sample(denoiser, 80.0 * torch.randn(16, 64), sigmas, "dpmpp_2m")
    sigmas_20 = log_interpolate(sigmas, 20)  # AYS's log-linear interpolation to another count

The search is derivative-free (samplers take their coefficients as Python floats): coordinate
descent in log-sigma from the best of the Karras, logSNR-uniform and flow-time-uniform grids.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from mmdiff.core.samplers import SAMPLERS, STOCHASTIC, DenoiserFn, sample
from mmdiff.core.schedules import karras_sigmas

Tensor = torch.Tensor
# Each interior level stays within [BALANCE, 1 - BALANCE] of the way between its neighbours in
# log-sigma, so adjacent steps differ by at most a factor 4. Without it the search learns to put
# two levels almost on top of each other and use the multistep formulas as a finite-difference
# derivative of the denoiser: a large gain on the batch it was fitted to that does not carry over.
BALANCE = 0.2


def fine_sigmas(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """``steps`` levels uniform in log-sigma (uniform in logSNR) from sigma_max to sigma_min, then 0."""
    sig = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64).exp()
    return torch.cat([sig, sig.new_zeros(1)])


def endpoint_error(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, sampler: str, reference: Tensor,
                   **options) -> float:
    """Mean squared distance per coordinate between ``sample(x, sigmas)`` and ``reference``."""
    out = sample(denoiser, x.clone(), sigmas, sampler, progress=False, **options)
    return (out.double() - reference.double()).pow(2).mean().item()


def optimize_sigmas(denoiser: DenoiserFn, x_prior_sampler: Callable[[int, torch.Generator], Tensor],
                    sampler: str = "dpmpp_2m", steps: int = 10, *, sigma_min: float, sigma_max: float,
                    iterations: int = 12, num_samples: int = 512, reference_sampler: str = "dpmpp_3m",
                    reference_steps: int = 400, fix_sigma_min: bool = False, init: Tensor | None = None,
                    generator: torch.Generator | int | None = None, **options) -> Tensor:
    """A ``steps``-step schedule for ``sampler``: ``sigma_max``, ``steps - 1`` optimised levels
    no lower than ``sigma_min``, then 0 (float64, strictly decreasing). With ``fix_sigma_min`` the
    last level is ``sigma_min`` itself, as in AYS (a better base for ``log_interpolate`` to many
    more steps); otherwise the search may stop higher and denoise from there, which pays at low NFE.

    ``x_prior_sampler(n, generator)`` draws n starting states at ``sigma_max`` (for a VE model,
    ``sigma_max * torch.randn(n, *shape, generator=generator)``). The objective is the mean squared
    endpoint distance to a ``reference_steps``-step ``reference_sampler`` solve over the same range,
    on one fixed batch of ``num_samples`` starts (fewer than ~500 fits that batch rather than the
    model). ``iterations`` is the number of coordinate sweeps; each costs up to ``2 * (steps - 1)``
    solves of ``evaluations(sampler, steps)`` denoiser calls. ``options`` go to the sampler
    (e.g. ``order=3`` for unipc). ``init``, a ``steps``-step schedule of one's own (``steps + 1``
    levels from ``sigma_max`` down to 0, e.g. a text model's learned warp spacing), joins the
    standard grids as a starting point; the search starts from whichever solves best.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}'; choose one of {sorted(SAMPLERS)}")
    if sampler in STOCHASTIC:
        deterministic = sorted(set(SAMPLERS) - STOCHASTIC)
        raise ValueError(f"'{sampler}' is stochastic and has no deterministic endpoint to match; "
                         f"optimise one of {deterministic} (the ODE it discretises is the same)")
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    if init is not None:
        init = _check_init(init, steps, sigma_min, sigma_max, fix_sigma_min)

    x = x_prior_sampler(num_samples, generator)
    reference = sample(denoiser, x.clone(), fine_sigmas(reference_steps, sigma_min, sigma_max),
                       reference_sampler, progress=False)

    def loss(log_levels: list[float]) -> float:
        return endpoint_error(denoiser, x, _with_zero(log_levels), sampler, reference, **options)

    # Start from the best of three standard families (Karras rho = 7, uniform in logSNR, uniform
    # in flow time sigma / (1 + sigma)) ending at a few levels from sigma_min up: with few steps
    # the last evaluation pays off well above sigma_min.
    ends = [sigma_min] if fix_sigma_min else [sigma_min * (sigma_max / sigma_min) ** (k / 8) for k in range(4)]
    starts = [family(steps, end, sigma_max).log().tolist() for end in ends
              for family in (karras_sigmas, _logsnr, _flow_time)]
    if init is not None:
        starts.append(init[:-1].log().tolist())
    losses = [loss(u) for u in starts]
    u, best = starts[losses.index(min(losses))], min(losses)
    free = range(1, steps - 1 if fix_sigma_min else steps)
    # Coordinate search: move a level by +-step (a fraction of the gap between its neighbours);
    # a level's step doubles after a move and halves when neither direction helps.
    step = {i: 0.2 for i in free}
    for _ in range(iterations):
        for i in free:
            last = i == steps - 1
            hi, lo = u[i - 1], (u[i + 1] if not last else math.log(sigma_min))
            frac = (u[i] - lo) / (hi - lo)
            for cand in (frac + step[i], frac - step[i]):
                if not (0.0 if last else BALANCE) <= cand <= 1 - BALANCE:
                    continue
                trial = u[:i] + [lo + cand * (hi - lo)] + u[i + 1:]
                value = loss(trial)
                if value < best:
                    u, best = trial, value
                    step[i] = min(2 * step[i], 0.4)
                    break
            else:
                step[i] /= 2
    sigmas = _with_zero(u)
    sigmas[0] = sigma_max  # exactly, not exp(log(sigma_max))
    if fix_sigma_min:
        sigmas[-2] = sigma_min
    return sigmas


def _check_init(init, steps: int, sigma_min: float, sigma_max: float, fix_sigma_min: bool) -> Tensor:
    init = torch.as_tensor(init, dtype=torch.float64).flatten()
    levels = init[:-1]
    problem = None
    if len(init) != steps + 1:
        problem = f"{len(init)} values for {steps} steps (expected {steps + 1}: the levels, then 0)"
    elif float(init[-1]) != 0 or not bool(torch.all(levels[:-1] > levels[1:])):
        problem = "not strictly decreasing to a final 0"
    elif not math.isclose(float(levels[0]), sigma_max, rel_tol=1e-5) or float(levels[-1]) < sigma_min * (1 - 1e-5):
        problem = (f"its levels run from {float(levels[0]):g} to {float(levels[-1]):g}, "
                   f"outside sigma_max {sigma_max:g} .. sigma_min {sigma_min:g}")
    elif fix_sigma_min and not math.isclose(float(levels[-1]), sigma_min, rel_tol=1e-5):
        problem = f"fix_sigma_min needs its last level at sigma_min {sigma_min:g}, found {float(levels[-1]):g}"
    if problem:
        raise ValueError(f"init schedule: {problem}")
    levels = levels.clone()
    levels[0] = sigma_max
    levels[-1] = levels[-1].clamp(min=sigma_min)
    return torch.cat([levels, init[-1:]])


def _logsnr(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    return fine_sigmas(steps, sigma_min, sigma_max)[:-1]


def _flow_time(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    t = torch.linspace(sigma_max / (1 + sigma_max), sigma_min / (1 + sigma_min), steps, dtype=torch.float64)
    return t / (1 - t)


def _with_zero(log_levels: list[float]) -> Tensor:
    sig = torch.tensor(log_levels, dtype=torch.float64).exp()
    return torch.cat([sig, sig.new_zeros(1)])


def log_interpolate(sigmas: Tensor, steps: int) -> Tensor:
    """Resample a schedule to ``steps`` levels by linear interpolation of log-sigma over the step
    index (AYS's ``loglinear_interp``). A trailing 0 is kept off the interpolation and put back."""
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    zero = bool(sigmas[-1] == 0)
    levels = sigmas[:-1] if zero else sigmas
    if len(levels) < 2 or not bool(torch.all(levels[:-1] > levels[1:])) or not bool(levels[-1] > 0):
        raise ValueError("expected a strictly decreasing schedule of at least two positive levels "
                         "(optionally followed by 0)")
    pos = torch.linspace(0, len(levels) - 1, steps, dtype=torch.float64)
    lo = pos.floor().long().clamp(max=len(levels) - 2)
    w = pos - lo
    logs = levels.log()
    out = (logs[lo] * (1 - w) + logs[lo + 1] * w).exp()
    out[0], out[-1] = levels[0], levels[-1]  # exact ends, no exp(log()) round trip
    return torch.cat([out, out.new_zeros(1)]) if zero else out
