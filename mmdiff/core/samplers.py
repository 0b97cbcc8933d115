"""Samplers: short stateless functions over a denoiser and an explicit tensor of VE noise levels.

Every sampler has the signature ``fn(denoiser, x, sigmas, *, generator, callback, progress, **options)``
where ``denoiser(x, sigma) -> x0_hat`` works in the VE form ``x = x0 + sigma * eps`` and ``sigmas``
decreases to the final level (0 for a full solve). Multistep history lives in locals. Updates are
written as ``denoised + ratio * (x - denoised)`` rather than ``x + d * dt`` so that a start at a huge
sigma (flow, zero-terminal-SNR) does not cancel catastrophically in float32.

Coefficients are Python floats (float64); ``lambda = -log(sigma)`` is the half log-SNR.
"""
from __future__ import annotations

import inspect
import math
from functools import partial
from typing import Callable

import torch
from tqdm.auto import trange

from . import checks
from .parametrization import tag_level

Tensor = torch.Tensor
DenoiserFn = Callable[..., Tensor]  # D(x, sigma, **cond) -> x0_hat; see parametrization.Denoiser


# ------------------------------------------------------------------------------------ noise

def per_sample_generators(generator, batch_size: int) -> list[torch.Generator] | None:
    """One generator per sample, so sample i gets the same noise whatever the batch size.

    ``generator`` may be None (global RNG), an int seed, one ``torch.Generator`` (its first draw
    seeds the children), or a list with one generator per sample.
    """
    if generator is None:
        return None
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch_size}; "
                             f"pass one per sample or a single generator")
        return list(generator)
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    base = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return [torch.Generator(generator.device).manual_seed((base + 1_000_003 * i) % 2**63)
            for i in range(batch_size)]


def randn(shape, generators: list[torch.Generator] | None, *, device=None, dtype=torch.float32) -> Tensor:
    """Standard normal noise of ``shape``; row i comes from ``generators[i]``."""
    if generators is None:
        return torch.randn(shape, device=device, dtype=dtype)
    rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=device, dtype=dtype)


def _noise_fn(x: Tensor, generator):
    gens = per_sample_generators(generator, x.shape[0])
    return lambda: randn(x.shape, gens, device=x.device, dtype=x.dtype)


def _steps(sigmas: Tensor, progress: bool, x: Tensor):
    """Yields ``(i, sigma_i, sigma_i+1, at)``: the levels as floats, and ``at(s)``, level ``s`` of
    the grid as the (B,) tensor a denoiser gets, tagged with its host value (``tag_level``)."""
    levels = sigmas.tolist()  # one read, not one per level
    dtype = torch.promote_types(x.dtype, torch.float32)  # float64 stays float64
    # every row made on the device in one go: handing a level over then launches no kernel (the
    # copy from pageable memory is staged before it returns, so non_blocking is safe and waits for nothing)
    rows = torch.tensor(levels, dtype=dtype).to(x.device, non_blocking=True)
    rows = rows[:, None].expand(-1, x.shape[0]).contiguous()
    index = {s: j for j, s in enumerate(levels)}

    def at(s: float) -> Tensor:
        return tag_level(rows[index[s]], s)

    for i in trange(len(levels) - 1, disable=not progress, desc="sampling", leave=False):
        yield i, levels[i], levels[i + 1], at


def _report(callback, **state):
    if callback is not None:
        callback(state)


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step to ``sigma_next`` into a deterministic part down to ``sigma_down`` and fresh
    noise of std ``sigma_up``; ``eta = 1`` is DDPM's posterior variance, 0 is deterministic."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


# ---------------------------------------------------------------------------------- samplers

@torch.no_grad()
def sample_euler(denoiser, x, sigmas, *, generator=None, callback=None, progress=True):
    """First-order probability-flow ODE step (DDIM with eta = 0 is the same step)."""
    for i, s, s_next, at in _steps(sigmas, progress, x):
        den = denoiser(x, at(s))
        _report(callback, x=x, i=i, sigma=s, sigma_next=s_next, denoised=den)
        x = den + (s_next / s) * (x - den)
    return x


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, *, eta=0.0, s_noise=1.0, generator=None, callback=None, progress=True):
    """DDIM (Song et al. 2021) in VE form; ``eta = 1`` is DDPM ancestral sampling, which is also
    k-diffusion's Euler ancestral step."""
    noise = _noise_fn(x, generator)
    for i, s, s_next, at in _steps(sigmas, progress, x):
        den = denoiser(x, at(s))
        _report(callback, x=x, i=i, sigma=s, sigma_next=s_next, denoised=den)
        down, up = ancestral_step(s, s_next, eta)
        x = den + (down / s) * (x - den)
        if up > 0:
            x = x + noise() * (s_noise * up)
    return x


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, *, time="sigma", generator=None, callback=None, progress=True):
    """Karras et al. (2022) Algorithm 1 (deterministic): trapezoidal correction, Euler into 0.
    Costs two evaluations per step except the last.

    ``time`` is the variable the trapezoid is taken in. ``"sigma"`` is Karras' (and diffusers'
    ``HeunDiscreteScheduler``). ``"flow"`` takes it in flow time ``t = sigma / (1 + sigma)`` on
    ``x / (1 + sigma)``, as ``FlowMatchHeunDiscreteScheduler`` does: a flow grid starts at
    sigma_max = 1e5, where a trapezoid in sigma multiplies the change of the denoiser between
    the two ends of the first step by ~1e5 / sigma_next and the sample is lost."""
    if time not in ("sigma", "flow"):
        raise ValueError(f"time must be 'sigma' or 'flow', got '{time}'")
    for i, s, s_next, at in _steps(sigmas, progress, x):
        den = denoiser(x, at(s))
        _report(callback, x=x, i=i, sigma=s, sigma_next=s_next, denoised=den)
        x_euler = den + (s_next / s) * (x - den)
        if s_next == 0:
            x = x_euler
            continue
        den_next = denoiser(x_euler, at(s_next))
        # how dx/dsigma = (x - den) / sigma changed from the start of the step to its Euler end
        change = (x_euler - den_next) / s_next - (x - den) / s
        if time == "sigma":
            x = x_euler + (0.5 * (s_next - s)) * change
        else:  # flow velocity v = (x - den) / sigma - den, and dt (1 + s_next) = (s_next - s) / (1 + s)
            x = x_euler + (0.5 * (s_next - s) / (1 + s)) * (change - (den_next - den))
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, *, generator=None, callback=None, progress=True):
    """DPM-Solver++(2M) (Lu et al. 2022), data-prediction multistep; first order at the start and
    into sigma = 0."""
    den_prev, h_prev = None, None
    for i, s, s_next, at in _steps(sigmas, progress, x):
        den = denoiser(x, at(s))
        _report(callback, x=x, i=i, sigma=s, sigma_next=s_next, denoised=den)
        if s_next == 0:
            x = den
            continue
        h = math.log(s / s_next)
        d = den
        if den_prev is not None:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * den_prev
        x = d + (s_next / s) * (x - d)
        den_prev, h_prev = den, h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(denoiser, x, sigmas, *, eta=1.0, s_noise=1.0, solver_type="midpoint",
                        generator=None, callback=None, progress=True):
    """DPM-Solver++(2M) SDE; ``eta = 0`` reduces it to the ODE solver."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got '{solver_type}'")
    noise = _noise_fn(x, generator)
    den_prev, h_prev = None, None
    for i, s, s_next, at in _steps(sigmas, progress, x):
        den = denoiser(x, at(s))
        _report(callback, x=x, i=i, sigma=s, sigma_next=s_next, denoised=den)
        if s_next == 0:
            x = den
            continue
        h = math.log(s / s_next)
        eta_h = eta * h
        one_minus = -math.expm1(-h - eta_h)  # 1 - (s_next / s)^(1 + eta)
        x = (s_next / s) * math.exp(-eta_h) * x + one_minus * den
        if den_prev is not None:
            r = h_prev / h
            if solver_type == "midpoint":
                x = x + (0.5 * one_minus / r) * (den - den_prev)
            else:
                x = x + ((1 - one_minus / (h + eta_h)) / r) * (den - den_prev)
        if eta > 0:
            x = x + noise() * (s_noise * s_next * math.sqrt(-math.expm1(-2 * eta_h)))
        den_prev, h_prev = den, h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(denoiser, x, sigmas, *, eta=1.0, s_noise=1.0, legacy=False, generator=None,
                        callback=None, progress=True):
    """DPM-Solver++(3M) SDE (third-order multistep); ``eta = 0`` is the 3M ODE solver.

    The second divided difference ``d2`` estimates ``h^2 x0''`` here. The reference code of
    DPM-Solver, k-diffusion and diffusers gives it half that weight, which makes their "3M" second
    order (and damps it, which can help at NFE <= 20); ``legacy=True`` reproduces them."""
    noise = _noise_fn(x, generator)
    den_1 = den_2 = None
    h_1 = h_2 = None
    for i, s, s_next, at in _steps(sigmas, progress, x):
        den = denoiser(x, at(s))
        _report(callback, x=x, i=i, sigma=s, sigma_next=s_next, denoised=den)
        if s_next == 0:
            x = den
            continue
        h = math.log(s / s_next)
        h_eta = h * (eta + 1)
        x = math.exp(-h_eta) * x - math.expm1(-h_eta) * den
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if h_2 is not None:
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (den - den_1) / r0
            d1_1 = (den_1 - den_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (1 if legacy else 2) * (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        elif h_1 is not None:
            x = x + phi_2 * (den - den_1) / (h_1 / h)
        if eta > 0:
            x = x + noise() * (s_noise * s_next * math.sqrt(-math.expm1(-2 * h * eta)))
        den_1, den_2, h_1, h_2 = den, den_1, h, h_1
    return x


def _unipc_update(x, s0, s_t, dens, lams, order, den_t=None):
    """One UniP (``den_t`` None) or UniC step of Zhao et al. (2023), B(h) = expm1(-h) ("bh2"),
    data prediction. ``dens[-1]`` is the denoised value at ``s0``; earlier entries extend the
    history. Returns x at ``s_t``."""
    lam0, lam_t = -math.log(s0), -math.log(s_t)
    h = lam_t - lam0
    m0 = dens[-1]
    rks = [(lams[-1 - k] - lam0) / h for k in range(1, order)]
    d1s = [(dens[-1 - k] - m0) / rk for k, rk in zip(range(1, order), rks)]
    rks.append(1.0)
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = h_phi_1
    h_phi_k, fact = h_phi_1 / hh - 1, 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append([rk ** (i - 1) for rk in rks])
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    x_lin = (s_t / s0) * x - h_phi_1 * m0
    if den_t is None:
        if order == 1:
            return x_lin
        rhos = [0.5] if order == 2 else _solve([r[:-1] for r in rows[:-1]], b[:-1])
        return x_lin - b_h * sum(r * d for r, d in zip(rhos, d1s))
    rhos = [0.5] if order == 1 else _solve(rows, b)
    corr = sum((r * d for r, d in zip(rhos[:-1], d1s)), torch.zeros_like(x)) + rhos[-1] * (den_t - m0)
    return x_lin - b_h * corr


def _solve(matrix, rhs) -> list[float]:
    return torch.linalg.solve(torch.tensor(matrix, dtype=torch.float64),
                              torch.tensor(rhs, dtype=torch.float64)).tolist()


@torch.no_grad()
def sample_unipc(denoiser, x, sigmas, *, order=2, use_corrector=True, generator=None, callback=None,
                 progress=True):
    """UniPC (bh2) multistep predictor-corrector: UniP-``order`` predicts, UniC corrects with the
    next evaluation at no extra cost, for accuracy order ``order + 1``. Lower orders warm up the
    history and finish the solve (the last step into 0 is first order)."""
    n = len(sigmas) - 1
    dens, lams = [], []
    x_prev = s_prev = order_prev = None
    for i, s, s_next, at in _steps(sigmas, progress, x):
        den = denoiser(x, at(s))
        _report(callback, x=x, i=i, sigma=s, sigma_next=s_next, denoised=den)
        if use_corrector and x_prev is not None:
            x = _unipc_update(x_prev, s_prev, s, dens, lams, order_prev, den_t=den)
        dens, lams = (dens + [den])[-order:], (lams + [-math.log(s)])[-order:]
        if s_next == 0:
            x = den
            continue
        this_order = min(order, n - i, len(dens))
        x_prev, s_prev, order_prev = x, s, this_order
        x = _unipc_update(x, s, s_next, dens, lams, this_order)
    return x


SAMPLERS: dict[str, Callable] = {
    "euler": sample_euler,
    # Same update, other default: Euler ancestral is DDIM with eta = 1 in VE form.
    "euler_ancestral": partial(sample_ddim, eta=1.0),
    "heun": sample_heun,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m": partial(sample_dpmpp_3m_sde, eta=0.0),
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "unipc": sample_unipc,
}
STOCHASTIC = {"euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde"}


def evaluations(sampler: str, steps: int) -> int:
    """Denoiser evaluations of a full solve with ``steps`` steps (Heun pays twice but for the last)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def sampler_option_names(sampler: str, registry: dict | None = None) -> list[str]:
    """The named sampler's own options (``eta``, ``order``...), besides the shared generator,
    callback and progress; an unknown name lists the known ones. ``registry``: another family's
    samplers of the same shape (``core.masked.MASKED_SAMPLERS``), default ``SAMPLERS``."""
    registry = SAMPLERS if registry is None else registry
    fn = registry.get(sampler)
    if fn is None:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(registry)}")
    params = inspect.signature(fn).parameters
    return sorted(p for p, v in params.items() if v.kind is v.KEYWORD_ONLY
                  and p not in ("generator", "callback", "progress"))


def check_sampler(sampler: str, options: dict, registry: dict | None = None) -> None:
    """Names, and values of the defaults' types: numbers finite and >= 0 (eta, s_noise, order),
    strings for strings (solver_type, time), bools for bools (legacy, use_corrector)."""
    names = sampler_option_names(sampler, registry)
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"sampler '{sampler}' has no option(s) {unknown}; its options are {names}")
    fn = (SAMPLERS if registry is None else registry)[sampler]
    defaults = {k: v.default for k, v in inspect.signature(fn).parameters.items()}
    for key, value in options.items():
        default = defaults[key]
        if isinstance(default, bool) or isinstance(default, str):
            if type(value) is not type(default):
                checks.fail(key, f"a {type(default).__name__} (option of sampler '{sampler}')", value, error=TypeError)
        elif isinstance(default, (int, float)):
            checks.number(key, value, low=0)


def sample(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, sampler: str = "dpmpp_2m", *, generator=None,
           callback=None, progress: bool = True, **options) -> Tensor:
    """Solve from ``x`` at ``sigmas[0]`` down the grid ``sigmas`` with the named sampler."""
    check_sampler(sampler, options)
    check_sigmas(sigmas)
    return SAMPLERS[sampler](denoiser, x, sigmas, generator=generator, callback=callback, progress=progress,
                             **options)


def check_sigmas(sigmas: Tensor) -> None:
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of at least 2 levels, got shape {tuple(sigmas.shape)}")
    if not bool(torch.all(sigmas[:-1] > sigmas[1:])):
        raise ValueError("sigmas must be strictly decreasing (from the start level down to the end level)")
    if not bool(torch.all(sigmas >= 0)) or not bool(torch.isfinite(sigmas).all()):
        raise ValueError("sigmas must be finite and non-negative")
