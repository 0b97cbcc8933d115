"""Class log-likelihoods from a class-conditional denoiser: the diffusion ELBO per class.

A conditional diffusion model is a classifier for free (Li et al. 2023, "Your diffusion model is
secretly a zero-shot classifier"; Clark & Jaini 2023): for VE noising ``x = x0 + sigma * eps``,

    log p(x0 | y) = -integral E_eps ||x0 - D(x, sigma | y)||^2 / sigma^2  d(log sigma) + C(x0)

where ``C`` does not depend on ``y`` and the equality holds when ``D`` is the exact denoiser (the
continuous-time bound is tight for the exact score). The estimate below takes a log-spaced grid of
levels with midpoint weights in log sigma, and the same noise for every class (so the class
differences are far less noisy than each term) and for every sample of a batch (so a sample's
result does not depend on its batch). Pipelines use it to infer the label of a given image or of
given video frames; ``weighting="uniform"`` (equal weight per level) is the paper's alternative.
"""
from __future__ import annotations

import math

import torch

from .parametrization import tag_level

Tensor = torch.Tensor
WEIGHTINGS = ("elbo", "uniform")


def log_levels(sigma_min: float, sigma_max: float, num: int) -> tuple[Tensor, Tensor]:
    """``num`` levels at the midpoints of equal steps in log sigma, and each step's width."""
    if not 0 < sigma_min < sigma_max or num < 1:
        raise ValueError(f"need 0 < sigma_min < sigma_max and num >= 1, got {sigma_min}, {sigma_max}, {num}")
    edges = torch.linspace(math.log(sigma_min), math.log(sigma_max), num + 1, dtype=torch.float64)
    return ((edges[1:] + edges[:-1]) / 2).exp(), edges.diff()


@torch.no_grad()
def class_log_likelihoods(denoiser, x0: Tensor, num_classes: int, *, sigma_min: float, sigma_max: float,
                          levels: int = 12, draws: int = 8, weighting: str = "elbo",
                          generator: torch.Generator | None = None, label_key: str = "class_labels",
                          max_batch: int = 4096, **cond) -> Tensor:
    """(B, num_classes) estimates of ``log p(x0[b] | y)`` up to a per-sample constant (so a softmax
    over classes is the posterior under a uniform prior). ``denoiser(x, sigma, **{label_key: y},
    **cond)``; ``levels`` x ``draws`` evaluations of every (sample, class) pair, shared noise."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting '{weighting}'; choose one of {WEIGHTINGS}")
    b, k = x0.shape[0], num_classes
    sigmas, widths = log_levels(sigma_min, sigma_max, levels)
    weights = widths / sigmas**2 if weighting == "elbo" else widths / widths.sum()
    labels = torch.arange(k, device=x0.device).repeat(b)
    clean = x0.float().repeat_interleave(k, 0)
    cond = {key: v.repeat_interleave(k, 0) if isinstance(v, Tensor) else v for key, v in cond.items()}
    total = torch.zeros(b, k, dtype=torch.float64, device=x0.device)
    chunk = max(1, max_batch // k) * k
    for sigma, weight in zip(sigmas.tolist(), weights.tolist()):
        level = torch.full((b * k,), sigma, device=x0.device)
        for _ in range(draws):
            # one noise for the whole batch: a sample's scores do not depend on what it is batched with
            eps = torch.randn(x0.shape[1:], generator=generator, dtype=torch.float32).to(x0.device)
            noisy = clean + sigma * eps
            err = torch.cat([
                (denoiser(noisy[i:i + chunk], tag_level(level[i:i + chunk], sigma), **{label_key: labels[i:i + chunk]},
                          **{key: v[i:i + chunk] if isinstance(v, Tensor) else v for key, v in cond.items()})
                 .float() - clean[i:i + chunk]).square().flatten(1).sum(1)
                for i in range(0, b * k, chunk)])
            total -= weight / draws * err.view(b, k).double()
    return total
