"""Optimised step schedules: shape of the result, generalisation to a held-out model, and
log-linear interpolation."""

import pytest
import torch

from mmdiff.core.analytic import GaussianMixture, random_mixture
from mmdiff.core.samplers import sample
from mmdiff.core.schedules import get_schedule, karras_sigmas
from mmdiff.core.step_search import fine_sigmas, log_interpolate, optimize_sigmas

F64 = torch.float64
SIGMA_MIN, SIGMA_MAX, DIM = 0.002, 80.0, 8


def mixture(seed: int) -> GaussianMixture:
    return random_mixture(DIM, 4, seed)


def prior(n, generator):
    return SIGMA_MAX * torch.randn(n, DIM, generator=generator, dtype=F64)


@pytest.fixture(scope="module")
def optimized():
    return optimize_sigmas(mixture(0), prior, "dpmpp_2m", steps=5, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                           iterations=6, num_samples=128, reference_steps=200, generator=0)


def endpoint_rms(gmm, sigmas, sampler="dpmpp_2m", n=256):
    x = prior(n, torch.Generator().manual_seed(123))
    reference = sample(gmm, x.clone(), fine_sigmas(400, SIGMA_MIN, SIGMA_MAX), "dpmpp_3m", progress=False)
    return (sample(gmm, x.clone(), sigmas, sampler, progress=False) - reference).pow(2).mean().sqrt().item()


def test_schedule_shape(optimized):
    assert optimized.dtype == F64 and len(optimized) == 6
    assert optimized[0].item() == SIGMA_MAX and optimized[-1].item() == 0.0
    assert bool(torch.all(optimized[:-1] > optimized[1:]))
    assert optimized[-2].item() >= SIGMA_MIN


def test_beats_karras_on_a_held_out_model(optimized):
    held_out = mixture(1)
    karras = torch.cat([karras_sigmas(5, SIGMA_MIN, SIGMA_MAX), torch.zeros(1, dtype=F64)])
    ours, theirs = endpoint_rms(held_out, optimized), endpoint_rms(held_out, karras)
    assert ours < 0.75 * theirs, f"optimized {ours:.4f} vs karras {theirs:.4f}"
    logsnr = get_schedule("edm").sigmas(5, "logsnr", dtype=F64)
    assert ours < endpoint_rms(held_out, logsnr)


def test_starts_from_a_schedule_of_ones_own(optimized):
    """``init`` joins the standard grids as a start: with no sweep, the search returns the best
    start, which for the fitted schedule fed back in is that schedule itself."""
    kwargs = dict(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, iterations=0, num_samples=128, reference_steps=200,
                  generator=0)
    assert torch.allclose(optimize_sigmas(mixture(0), prior, "dpmpp_2m", 5, init=optimized, **kwargs), optimized,
                          rtol=1e-12)
    assert not torch.allclose(optimize_sigmas(mixture(0), prior, "dpmpp_2m", 5, **kwargs), optimized)
    with pytest.raises(ValueError, match="6 values for 5 steps|expected 6"):
        optimize_sigmas(mixture(0), prior, "dpmpp_2m", 5, init=optimized[1:], **kwargs)
    with pytest.raises(ValueError, match="outside sigma_max"):
        optimize_sigmas(mixture(0), prior, "dpmpp_2m", 5, init=optimized * 2, **kwargs)


def test_fixed_sigma_min_and_reproducibility():
    kwargs = dict(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, iterations=2, num_samples=32, reference_steps=50,
                  fix_sigma_min=True, generator=3)
    a = optimize_sigmas(mixture(0), prior, "euler", 4, **kwargs)
    assert a[-2].item() == pytest.approx(SIGMA_MIN) and a[0].item() == SIGMA_MAX
    assert torch.equal(a, optimize_sigmas(mixture(0), prior, "euler", 4, **kwargs))


def test_any_denoiser_in_float32():
    """Only denoiser calls are needed: a float32 model wrapped in a closure works."""
    gmm = mixture(0)

    def model(x, sigma):
        assert x.dtype == torch.float32
        return gmm(x.double(), sigma).float()

    sig = optimize_sigmas(model, lambda n, g: prior(n, g).float(), "unipc", 4, sigma_min=SIGMA_MIN,
                          sigma_max=SIGMA_MAX, iterations=1, num_samples=16, reference_steps=40, generator=0)
    assert len(sig) == 5 and bool(torch.all(sig[:-1] > sig[1:]))


def test_rejects_what_it_cannot_optimise():
    gmm = mixture(0)
    with pytest.raises(ValueError, match="stochastic"):
        optimize_sigmas(gmm, prior, "dpmpp_2m_sde", 5, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    with pytest.raises(ValueError, match="dpmpp_2m"):
        optimize_sigmas(gmm, prior, "dpm_fast", 5, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    with pytest.raises(ValueError, match="steps"):
        optimize_sigmas(gmm, prior, "euler", 1, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    with pytest.raises(ValueError, match="sigma_min"):
        optimize_sigmas(gmm, prior, "euler", 5, sigma_min=SIGMA_MAX, sigma_max=SIGMA_MIN)


def test_log_interpolate():
    sig = torch.tensor([8.0, 2.0, 0.0], dtype=F64)
    assert torch.allclose(log_interpolate(sig, 3), torch.tensor([8.0, 4.0, 2.0, 0.0], dtype=F64))
    assert torch.equal(log_interpolate(sig, 2), sig)
    assert torch.allclose(log_interpolate(torch.tensor([8.0, 2.0], dtype=F64), 3),
                          torch.tensor([8.0, 4.0, 2.0], dtype=F64))  # no trailing 0 in, none out
    karras = get_schedule("edm").sigmas(10, "karras", dtype=F64)
    up = log_interpolate(karras, 19)  # every other level is an original one
    assert len(up) == 20 and torch.allclose(up[:-1:2], karras[:-1]) and up[-1] == 0
    assert bool(torch.all(up[:-1] > up[1:]))
    with pytest.raises(ValueError):
        log_interpolate(torch.tensor([1.0, 2.0, 0.0], dtype=F64), 5)
