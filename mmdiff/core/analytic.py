"""Closed-form denoisers: the exact ``E[x0 | x0 + sigma * eps = x]`` of a Gaussian mixture.

Used as ground truth for samplers (the probability-flow ODE of a mixture can be solved to any
precision) and by ``make demo`` before any network is trained. Works in float64.
"""
from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


class GaussianMixture:
    """``sum_k w_k N(mu_k, Sigma_k)`` in D dimensions; the denoiser at VE level sigma is

        D(x) = sum_k r_k(x) (mu_k + Sigma_k (Sigma_k + sigma^2 I)^-1 (x - mu_k)),

    with r_k the posterior weight of component k under ``N(mu_k, Sigma_k + sigma^2 I)``.
    """

    def __init__(self, means: Tensor, covs: Tensor, weights: Tensor | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        k, d = self.means.shape
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.ndim == 1:  # one isotropic variance per component
            covs = covs[:, None, None] * torch.eye(d, dtype=torch.float64)
        self.covs = covs
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()
        self.eigval, self.eigvec = torch.linalg.eigh(covs)  # Sigma_k = U diag(l) U^T

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scale = self.eigvec[comp] * self.eigval[comp].clamp(min=0).sqrt()[:, None, :]
        return self.means[comp] + (scale @ z[:, :, None])[..., 0]

    def _projected(self, x: Tensor, sigma: Tensor):
        """Coordinates of x - mu_k in each component's eigenbasis, and the noisy variances."""
        z = torch.einsum("kde,nkd->nke", self.eigvec, x[:, None, :] - self.means[None])  # (N,K,D)
        var = self.eigval[None] + sigma.reshape(-1, 1, 1) ** 2  # (N,K,D)
        return z, var

    def log_prob(self, x: Tensor, sigma: float | Tensor = 0.0) -> Tensor:
        """Log density of ``x0 + sigma * eps``."""
        x = x.double()
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        z, var = self._projected(x, sigma)
        log_n = -0.5 * ((z**2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        return torch.logsumexp(log_n + self.weights.log(), dim=1)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        shape, dtype = x.shape, x.dtype
        x = x.double().reshape(shape[0], -1)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        z, var = self._projected(x, sigma)
        log_n = -0.5 * ((z**2 / var).sum(-1) + var.log().sum(-1))
        r = torch.softmax(log_n + self.weights.log(), dim=1)  # (N,K)
        shrunk = z * (self.eigval[None] / var)  # Sigma (Sigma + s^2)^-1 (x - mu) in the eigenbasis
        means = self.means[None] + torch.einsum("kde,nke->nkd", self.eigvec, shrunk)
        return (r[..., None] * means).sum(1).reshape(shape).to(dtype)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.denoise(x, sigma)


def gaussian(mean: Tensor, var: float | Tensor) -> GaussianMixture:
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
    return GaussianMixture(mean, torch.as_tensor([var], dtype=torch.float64).reshape(1))


def ring_mixture(k: int = 8, radius: float = 2.0, std: float = 0.15, dim: int = 2) -> GaussianMixture:
    """k isotropic components evenly spaced on a circle in the first two coordinates."""
    angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    means = torch.zeros(k, dim, dtype=torch.float64)
    means[:, 0], means[:, 1] = radius * angles.cos(), radius * angles.sin()
    return GaussianMixture(means, torch.full((k,), std**2, dtype=torch.float64))


def random_mixture(dim: int = 64, components: int = 8, seed: int = 0) -> GaussianMixture:
    """A non-trivial mixture for benchmarks: means N(0, 0.25 I), covariances with random
    eigenvectors and eigenvalues log-uniform in [1e-3, 1], weights uniform in [0.5, 1.5] before
    normalising."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    means = 0.5 * torch.randn(components, dim, generator=g, dtype=f64)
    rot = torch.linalg.qr(torch.randn(components, dim, dim, generator=g, dtype=f64))[0]
    eig = (math.log(1e-3) * torch.rand(components, dim, generator=g, dtype=f64)).exp()
    covs = rot @ torch.diag_embed(eig) @ rot.transpose(1, 2)
    return GaussianMixture(means, covs, 0.5 + torch.rand(components, generator=g, dtype=f64))
