"""Modality-agnostic sample metrics: Fréchet distance of features, Wasserstein distances of point
clouds, and diversity of token sequences.

Every function takes plain tensors or arrays and returns a Python float, so the same numbers can
be logged from a training loop, a benchmark or a notebook.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import torch


# ----------------------------------------------------------------------------- Fréchet distance

def gaussian_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), in float64."""
    x = _as_float64_matrix(feats, "feats")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {x.shape[0]}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu_a, cov_a) and N(mu_b, cov_b):
    |mu_a - mu_b|^2 + tr(cov_a + cov_b - 2 (cov_a cov_b)^(1/2))."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.atleast_2d(cov_a).astype(np.float64), np.atleast_2d(cov_b).astype(np.float64)
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape:
        raise ValueError(f"feature dimensions differ: means {mu_a.shape} vs {mu_b.shape}, "
                         f"covariances {cov_a.shape} vs {cov_b.shape}")
    # tr (A B)^(1/2) = tr (A^(1/2) B A^(1/2))^(1/2); the right-hand matrix is symmetric PSD, so eigh
    # gives real eigenvalues and sqrtm's spurious imaginary parts on near-singular covariances
    # (common with ReLU features) never appear.
    root_a = _psd_sqrt(cov_a)
    trace_sqrt = np.sqrt(_psd_eigvals(root_a @ cov_b @ root_a)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D) — FID when
    the features come from Inception, ours come from the digits classifier."""
    return frechet_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    eig, vec = np.linalg.eigh((cov + cov.T) / 2)
    return (vec * np.sqrt(_clean(eig))) @ vec.T


def _psd_eigvals(mat: np.ndarray) -> np.ndarray:
    return _clean(np.linalg.eigvalsh((mat + mat.T) / 2))


def _clean(eig: np.ndarray) -> np.ndarray:
    # Eigenvalues below the numerical-rank cutoff (as in np.linalg.matrix_rank) are round-off of a
    # singular matrix; left in, their square roots (~1e-8 * scale each) add up to visible error.
    cutoff = max(eig.max(initial=0.0), 0.0) * len(eig) * np.finfo(np.float64).eps
    return np.where(eig > cutoff, eig, 0.0)


def _as_float64_matrix(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a matrix (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


# ----------------------------------------------------------------------------- Wasserstein

def wasserstein_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1-Wasserstein distance between the empirical distributions of a (..., N) and b (..., M),
    batched over leading dimensions: the integral of |F_a - F_b| over the merged support."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape[-1] == 0 or b.shape[-1] == 0:
        raise ValueError("wasserstein_1d needs at least one sample on each side")
    a, b = a.sort(dim=-1).values.contiguous(), b.sort(dim=-1).values.contiguous()
    support = torch.cat([a, b], dim=-1).sort(dim=-1).values
    widths = support.diff(dim=-1)  # (..., N + M - 1)
    left = support[..., :-1].contiguous()
    cdf_a = torch.searchsorted(a, left, right=True).double() / a.shape[-1]
    cdf_b = torch.searchsorted(b, left, right=True).double() / b.shape[-1]
    return ((cdf_a - cdf_b).abs() * widths).sum(dim=-1)


def sliced_wasserstein(a, b, num_projections: int = 256,
                       generator: torch.Generator | None = None) -> float:
    """Sliced 1-Wasserstein distance between point clouds a (N, D) and b (M, D): the mean over
    random unit directions of the 1-D Wasserstein distance of the projected points."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected point clouds (N, D) and (M, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    directions = torch.randn(a.shape[1], num_projections, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    return wasserstein_1d((a @ directions).T, (b @ directions).T).mean().item()


# ----------------------------------------------------------------------------- text diversity

def distinct_n(token_lists: Iterable[Sequence[Hashable]], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams / all n-grams, pooled over every sequence.
    1.0 means no n-gram repeats anywhere; a model that loops or mode-collapses scores low."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [tuple(seq[i:i + n]) for seq in map(_as_list, token_lists) for i in range(len(seq) - n + 1)]
    if not grams:
        raise ValueError(f"no sequence is long enough to hold a {n}-gram")
    return len(set(grams)) / len(grams)


def unigram_entropy(token_lists: Iterable[Sequence[Hashable]]) -> float:
    """Entropy in nats of the token frequency distribution pooled over every sequence."""
    counts = Counter(tok for seq in map(_as_list, token_lists) for tok in seq)
    total = sum(counts.values())
    if total == 0:
        raise ValueError("no tokens to measure")
    return -sum(c / total * math.log(c / total) for c in counts.values())


def _as_list(seq) -> list:
    # Token ids often arrive as tensors, whose elements hash by identity, not value.
    return seq.tolist() if isinstance(seq, (torch.Tensor, np.ndarray)) else list(seq)
