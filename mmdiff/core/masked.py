"""Masked (absorbing-state) diffusion over token ids: MDLM (Sahoo et al. 2024).

A token is *clean* at time ``t`` in [0, 1] with probability ``alpha(t)`` and otherwise replaced by
the absorbing ``[MASK]`` id; ``alpha(0) = 1`` (data), ``alpha(1) = 0`` (all masked). The network
reads the partly masked ids and predicts ``x0`` at every position; the SUBS parametrization
(``subs_log_probs``) gives ``[MASK]`` zero probability and copies unmasked tokens through (carry-over).
The continuous-time negative ELBO of a sequence is

    NELBO(x0) = E_t [ w(t) * sum over masked positions of -log p(x0_i | x_t) ],  w(t) = -alpha'(t) / (1 - alpha(t))

(``nelbo_terms``); with the log-linear schedule ``alpha = 1 - t`` the weight is ``1 / t``. The
network is not told ``t`` (with SUBS the masked ids already say how much is left), which is what
makes caching exact: a step that changed no token would get the same prediction again.

Samplers mirror ``core.samplers``: short stateless functions
``fn(denoiser, x, alphas, mask_id, *, generator, callback, progress, **options)`` where
``denoiser(x) -> p(x0 | x)`` (B, L, V) and ``alphas`` increases from ``alpha(1) = 0`` to 1; a
registry maps names to them (``MASKED_SAMPLERS``), checked by ``core.samplers.check_sampler``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import trange

from .samplers import per_sample_generators, randn

Tensor = torch.Tensor


# ------------------------------------------------------------------------------------ schedule

class MaskSchedule:
    """``alpha(t)``, the probability that a token is still clean at time ``t``: ``loglinear``
    (``1 - t``, MDLM's default) or ``cosine`` (``cos(pi t / 2)``)."""

    names = ("loglinear", "cosine")

    def __init__(self, name: str = "loglinear"):
        if name not in self.names:
            raise ValueError(f"mask schedule must be one of {self.names}, got {name!r}")
        self.name = name

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t if self.name == "loglinear" else torch.cos(0.5 * math.pi * t)

    def weight(self, t: Tensor) -> Tensor:
        """``-alpha'(t) / (1 - alpha(t))`` > 0: the ELBO's weight of a masked token's cross-entropy."""
        if self.name == "loglinear":
            return 1 / t
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * t) / (1 - torch.cos(0.5 * math.pi * t))

    def alphas(self, steps: int) -> Tensor:
        """``steps + 1`` levels at times equally spaced from 1 to 0 (float64), increasing from 0 to 1."""
        alphas = self.alpha(torch.linspace(1, 0, steps + 1, dtype=torch.float64)).clamp(0, 1)
        alphas[0], alphas[-1] = 0.0, 1.0  # exactly (cos(pi / 2) is 6e-17 in float64)
        return alphas

    def __repr__(self) -> str:
        return f"MaskSchedule({self.name!r})"


def training_times(n: int, eps: float = 1e-3, generator=None) -> Tensor:
    """``n`` times in [eps, 1]: ``(u + i / n) mod 1`` for one uniform ``u`` (MDLM's low-discrepancy
    draw), so every batch covers the whole range and the ELBO estimate varies less."""
    u = torch.rand((), generator=generator, dtype=torch.float64)
    t = (u + torch.arange(n, dtype=torch.float64) / n) % 1
    return eps + (1 - eps) * t


# ---------------------------------------------------------------------------------- the ELBO

def corrupt(x0: Tensor, t: Tensor, schedule: MaskSchedule, mask_id: int, keep: Tensor | None = None,
            generator=None) -> tuple[Tensor, Tensor]:
    """``(x_t, masked)``: each position not in ``keep`` (given or padding) masked with probability
    ``1 - alpha(t)`` (``t`` (B,))."""
    alpha = schedule.alpha(t.double()).float().to(x0.device)
    u = torch.rand(x0.shape, generator=generator).to(x0.device)
    masked = u >= alpha[:, None]
    if keep is not None:
        masked &= ~keep.bool()
    return torch.where(masked, mask_id, x0), masked


def subs_log_probs(logits: Tensor, x: Tensor, mask_id: int) -> Tensor:
    """SUBS: ``log p(x0 | x)`` (B, L, V) in float32 from logits over the V real tokens ([MASK] has
    no column: zero probability); positions that are not masked carry their token (log 1 = 0)."""
    logp = F.log_softmax(logits, dim=-1, dtype=torch.float32)
    clean = x != mask_id
    if not bool(clean.any()):
        return logp
    carry = torch.full_like(logp, -math.inf).scatter_(-1, x.clamp(max=logp.shape[-1] - 1)[..., None], 0.0)
    return torch.where(clean[..., None], carry, logp)


def nelbo_terms(logp: Tensor, x0: Tensor, masked: Tensor, t: Tensor, schedule: MaskSchedule) -> Tensor:
    """One Monte-Carlo draw of the NELBO per sequence (B,): ``w(t) * sum over masked positions of
    -log p(x0_i | x_t)`` for ``logp`` (B, L, V) at the corrupted input."""
    ce = -logp.gather(-1, x0[..., None])[..., 0]  # (B, L)
    return schedule.weight(t.double()).float().to(ce.device) * (ce * masked).sum(1)


# ---------------------------------------------------------------------------------- samplers

def uniforms(shape, generators, device=None) -> Tensor:
    """Uniform [0, 1) draws of ``shape``, row ``i`` from ``generators[i]`` (the core's per-sample
    normal draws through the normal CDF: one source of per-sample randomness)."""
    return torch.special.ndtr(randn(shape, generators, device=device)).clamp(max=1 - 1e-7)


def categorical(probs: Tensor, u: Tensor) -> Tensor:
    """Draws (B, L) from ``probs`` (B, L, V) by inverting the CDF at uniforms ``u`` (B, L)."""
    cdf = probs.float().cumsum(-1)
    idx = (cdf < u[..., None] * cdf[..., -1:]).sum(-1)
    return idx.clamp(max=probs.shape[-1] - 1)


def _unmask(denoiser, x, alphas, mask_id, gens, region, cache, callback, progress, confidence=False):
    """Steps down the grid, unmasking masked positions inside ``region`` (B, L): the one loop of
    every masked sampler. The denoiser is called again only when a token changed (``cache``)."""
    levels = alphas.tolist()
    probs, calls = None, 0
    for i in trange(len(levels) - 1, disable=not progress, desc="unmasking", leave=False):
        a, a_next = levels[i], levels[i + 1]
        u = uniforms((x.shape[0], 2, x.shape[1]), gens, x.device)  # drawn every step: caching changes nothing
        if probs is None or not cache or changed:
            probs, calls = denoiser(x), calls + 1
        masked = (x == mask_id) & region
        draw = categorical(probs, u[:, 1])
        p = 1.0 if a_next >= 1 else (a_next - a) / (1 - a)  # the last step unmasks everything left
        if confidence:  # as many as the schedule expects, the most probable draws first
            count = torch.round(masked.sum(1, keepdim=True) * p)
            score = torch.where(masked, probs.gather(-1, draw[..., None])[..., 0], -1.0)
            rank = score.argsort(1, descending=True).argsort(1)
            unmask = masked & (rank < count)
        else:
            unmask = masked & (u[:, 0] < p)
        x = torch.where(unmask, draw, x)
        changed = bool(unmask.any())
        if callback is not None:
            callback({"x": x, "i": i, "alpha": a, "alpha_next": a_next, "probs": probs, "calls": calls})
    return x, calls


@torch.no_grad()
def sample_ancestral(denoiser, x, alphas, mask_id, *, generator=None, callback=None, progress=True, cache=True):
    """MDLM's ancestral sampler: from ``alpha_t`` to ``alpha_s`` each masked token is unmasked with
    probability ``(alpha_s - alpha_t) / (1 - alpha_t)`` to a draw of ``p(x0 | x_t)``; unmasked
    tokens never change. ``cache``: skip the denoiser when the last step changed no token."""
    gens = per_sample_generators(generator, x.shape[0])
    return _unmask(denoiser, x, alphas, mask_id, gens, torch.ones_like(x, dtype=torch.bool), cache, callback,
                   progress)[0]


@torch.no_grad()
def sample_confident(denoiser, x, alphas, mask_id, *, generator=None, callback=None, progress=True, cache=True):
    """Confidence-ordered unmasking (MaskGIT-style): per step, the number of tokens the schedule
    expects, taking the masked positions whose draw has the highest probability first."""
    gens = per_sample_generators(generator, x.shape[0])
    return _unmask(denoiser, x, alphas, mask_id, gens, torch.ones_like(x, dtype=torch.bool), cache, callback,
                   progress, confidence=True)[0]


@torch.no_grad()
def sample_semi_ar(denoiser, x, alphas, mask_id, *, block_size=16, generator=None, callback=None, progress=True,
                   cache=True):
    """Semi-autoregressive: blocks of ``block_size`` positions from left to right, each unmasked by
    the ancestral sampler over the whole grid while the blocks after it stay masked (MDLM's mode
    for long texts; ``TextPipeline`` slides the window past its length the same way)."""
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    gens = per_sample_generators(generator, x.shape[0])
    block = torch.arange(x.shape[1], device=x.device) // block_size
    for b in range(int(block[-1]) + 1):
        region = (block == b)[None].expand_as(x)
        if bool(((x == mask_id) & region).any()):
            x = _unmask(denoiser, x, alphas, mask_id, gens, region, cache, callback, progress)[0]
    return x


MASKED_SAMPLERS: dict[str, Callable] = {
    "ancestral": sample_ancestral,
    "confident": sample_confident,
    "semi_ar": sample_semi_ar,
}
