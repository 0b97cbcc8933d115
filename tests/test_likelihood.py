"""Class log-likelihoods from a conditional denoiser (``core.likelihood``), checked against the
closed form: with each class a Gaussian, the exact class-conditional denoiser is known, and the
diffusion ELBO must give back the exact log-density differences between classes."""
import pytest
import torch

from mmdiff.core.analytic import GaussianMixture, random_mixture
from mmdiff.core.likelihood import class_log_likelihoods, log_levels


def class_denoiser(mix: GaussianMixture):
    """D(x, sigma | y): the exact denoiser of component y alone."""
    parts = [GaussianMixture(mix.means[i:i + 1], mix.covs[i:i + 1]) for i in range(len(mix.weights))]

    def denoise(x, sigma, class_labels):
        out = torch.empty(x.shape, dtype=torch.float64)
        for i, part in enumerate(parts):
            pick = class_labels == i
            if pick.any():
                out[pick] = part.denoise(x[pick].double(), sigma[pick].double())
        return out.float()

    return denoise, parts


def test_elbo_gives_the_exact_log_density_differences_between_classes():
    mix = random_mixture(dim=8, components=3, seed=1)
    denoise, parts = class_denoiser(mix)
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(6, generator=g).float()
    exact = torch.stack([p.log_prob(x0.double()) for p in parts], 1)
    est = class_log_likelihoods(denoise, x0, 3, sigma_min=1e-3, sigma_max=1e3, levels=64, draws=16, generator=g)
    d_exact, d_est = exact - exact[:, :1], est - est[:, :1]
    # measured: within ~2 nats of differences of 12-225 nats; the truncated range and the draws are the error
    assert torch.allclose(d_est, d_exact, rtol=0.05, atol=1.0), torch.stack([d_est, d_exact], -1)
    assert torch.equal(est.argmax(1), exact.argmax(1))


def test_posterior_of_close_classes_matches_bayes():
    """Two overlapping 2-D Gaussians: the softmax of the estimates is the Bayes posterior."""
    mix = GaussianMixture(torch.tensor([[0.0, 0.0], [1.0, 0.5]]), torch.tensor([0.5, 0.3]))
    denoise, parts = class_denoiser(mix)
    x0 = mix.sample(200, generator=torch.Generator().manual_seed(1)).float()
    exact = torch.stack([p.log_prob(x0.double()) for p in parts], 1).softmax(1)[:, 1]
    est = class_log_likelihoods(denoise, x0, 2, sigma_min=1e-3, sigma_max=1e3, levels=48, draws=64,
                                generator=torch.Generator().manual_seed(0)).softmax(1)[:, 1]
    # measured 0.010-0.016 over three noise seeds (the batch shares one noise, so one seed is one draw)
    assert (est - exact).abs().mean() < 0.03, (est - exact).abs().mean()
    assert ((est > 0.5) == (exact > 0.5)).float().mean() > 0.95


def test_shared_noise_keeps_identical_classes_tied():
    """Two classes with one denoiser differ by nothing, draw for draw."""
    mix = GaussianMixture(torch.zeros(2, 4), torch.tensor([1.0, 1.0]))
    denoise, _ = class_denoiser(mix)
    est = class_log_likelihoods(denoise, torch.randn(5, 4), 2, sigma_min=0.1, sigma_max=10, levels=4, draws=2)
    assert torch.allclose(est[:, 0], est[:, 1], atol=1e-6, rtol=0)


def test_levels_are_log_midpoints_and_bad_options_are_named():
    sigmas, widths = log_levels(0.1, 10.0, 2)
    assert torch.allclose(sigmas, torch.tensor([0.1**0.5, 10**0.5], dtype=torch.float64))
    assert torch.allclose(widths.sum(), torch.tensor(100.0, dtype=torch.float64).log())
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        log_levels(1.0, 0.5, 4)
    with pytest.raises(ValueError, match="unknown weighting 'bad'"):
        class_log_likelihoods(lambda x, s, class_labels: x, torch.zeros(1, 2), 2, sigma_min=0.1, sigma_max=1,
                              weighting="bad")
