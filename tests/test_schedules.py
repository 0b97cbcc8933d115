"""Schedules: exact values (against high-precision arithmetic), inverses, spacings, registry."""
import math

import mpmath
import pytest
import torch

from mmdiff.core.schedules import (SCHEDULES, SPACINGS, DiscreteSchedule, get_schedule, karras_sigmas,
                                   schedule_config, schedule_from_config)

ALL = ["linear", "scaled_linear", "cosine", "edm", "flow"]


def mp_alpha_bar(kind, n=1000):
    """alpha_bar of a DDPM schedule in 50-digit arithmetic."""
    mpmath.mp.dps = 50
    if kind == "linear":
        betas = [mpmath.mpf("0.0001") + (mpmath.mpf("0.02") - mpmath.mpf("0.0001")) * i / (n - 1) for i in range(n)]
    else:
        lo, hi = mpmath.sqrt(mpmath.mpf("0.00085")), mpmath.sqrt(mpmath.mpf("0.012"))
        betas = [(lo + (hi - lo) * i / (n - 1)) ** 2 for i in range(n)]
    out, acc = [], mpmath.mpf(1)
    for b in betas:
        acc *= 1 - b
        out.append(acc)
    return out


@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
def test_discrete_tables_are_exact_to_float64(kind):
    ref = mp_alpha_bar(kind)
    ours = get_schedule(kind).alphas_cumprod
    for i in (0, 1, 499, 998, 999):
        assert float(ours[i]) == pytest.approx(float(ref[i]), rel=1e-12)
    sig = get_schedule(kind).table
    assert float(sig[999]) == pytest.approx(float(mpmath.sqrt((1 - ref[999]) / ref[999])), rel=1e-12)


def test_cosine_follows_nichol_dhariwal():
    s = get_schedule("cosine")
    f = [math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(1001)]
    # Before the 0.999 clip bites, alpha_bar_i = f(i+1)/f(0).
    for i in (0, 100, 500, 900):
        assert float(s.alphas_cumprod[i]) == pytest.approx(f[i + 1] / f[0], rel=1e-9)
    betas = 1 - s.alphas_cumprod[1:] / s.alphas_cumprod[:-1]
    assert float(betas.max()) == pytest.approx(0.999, abs=1e-12)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_sigmas_decrease_to_zero(name, spacing):
    sched = get_schedule(name)
    for steps in (1, 7, 25):
        sig = sched.sigmas(steps, spacing)
        assert sig.shape == (steps + 1,) and sig.dtype == torch.float32
        assert sig[-1] == 0 and bool((sig[:-1] > 0).all()) and torch.isfinite(sig).all()
        assert bool((sig[:-1] > sig[1:]).all()), (name, spacing, steps, sig)


@pytest.mark.parametrize("name", ALL)
def test_t_inverts_sigma(name):
    sched = get_schedule(name)
    t = torch.linspace(sched.t_min, sched.t_max, 101, dtype=torch.float64)
    if name == "flow":
        t = t[:-1]  # t = 1 is clamped to the finite sigma_max
    assert torch.allclose(sched.t(sched.sigma(t)), t, atol=1e-9)


@pytest.mark.parametrize("name", ALL)
def test_alpha_sigma_is_the_native_form(name):
    sched = get_schedule(name)
    t = torch.linspace(sched.t_min, sched.t_max * 0.99, 11, dtype=torch.float64)
    alpha, sigma_t = sched.alpha_sigma(t)
    assert torch.allclose(sigma_t / alpha, sched.sigma(t))
    if name in ("linear", "scaled_linear", "cosine"):
        assert torch.allclose(alpha**2 + sigma_t**2, torch.ones_like(alpha))  # variance preserving
    if name == "flow":
        assert torch.allclose(alpha + sigma_t, torch.ones_like(alpha))  # alpha = 1 - t', sigma = t'


def test_spacing_endpoints_and_shapes():
    ddpm = get_schedule("linear")
    assert ddpm.sigmas(10, "linspace")[0].item() == pytest.approx(ddpm.sigma_max, rel=1e-6)
    assert ddpm.sigmas(10, "trailing")[0].item() == pytest.approx(ddpm.sigma_max, rel=1e-6)
    assert ddpm.sigmas(10, "leading")[0].item() < ddpm.sigma_max / 2  # leading never reaches T
    k = get_schedule("edm").sigmas(8, "karras", dtype=torch.float64)
    ramp = k[:-1] ** (1 / 7)
    assert torch.allclose(ramp[1:] - ramp[:-1], (ramp[1] - ramp[0]).expand(7))  # uniform in sigma^(1/rho)
    l = get_schedule("edm").sigmas(8, "logsnr", dtype=torch.float64)
    assert torch.allclose(l[:-1].log().diff(), (l[1].log() - l[0].log()).expand(7))
    assert torch.allclose(karras_sigmas(2, 0.1, 10.0), torch.tensor([10.0, 0.1], dtype=torch.float64))


def test_flow_shift_matches_sd3_formula():
    for shift in (1.0, 3.0):
        s = get_schedule("flow", shift=shift)
        t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
        shifted = shift * t / (1 + (shift - 1) * t)
        assert torch.allclose(s.sigma(t), shifted / (1 - shifted))
        assert torch.allclose(s.timestep(s.sigma(t)), 1000 * shifted)
    assert get_schedule("flow").sigma_max == pytest.approx(1e5, rel=1e-3)


def test_zero_terminal_snr_rescaling():
    base, zsnr = get_schedule("scaled_linear"), get_schedule("scaled_linear", zero_terminal_snr=True)
    assert float(zsnr.alphas_cumprod[0]) == pytest.approx(float(base.alphas_cumprod[0]), rel=1e-12)
    assert float(zsnr.alphas_cumprod[-1]) == 2.0**-24  # the finite stand-in for alpha_bar = 0
    assert zsnr.sigma_max == pytest.approx(4096.0, rel=1e-6)
    # Lin et al.: sqrt(alpha_bar) is an affine map of the original, so it falls to 0 at T
    root_b, root_z = base.alphas_cumprod.sqrt()[:-1], zsnr.alphas_cumprod.sqrt()[:-1]
    ratio = (root_z[1:] - root_z[:-1]) / (root_b[1:] - root_b[:-1])
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-6)


def test_registry_and_config_round_trip():
    assert set(ALL) <= set(SCHEDULES)
    with pytest.raises(ValueError, match="unknown schedule 'nope'.*cosine"):
        get_schedule("nope")
    with pytest.raises(ValueError, match="does not take options"):
        get_schedule("edm", beta_start=0.1)
    with pytest.raises(ValueError, match="unknown spacing 'wavy'"):
        get_schedule("linear").sigmas(10, "wavy")
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            get_schedule("linear").sigmas(bad)
    for name in ALL:
        s = get_schedule(name)
        again = schedule_from_config(schedule_config(s))
        assert torch.equal(again.sigmas(9), s.sigmas(9))
    assert isinstance(get_schedule("cosine"), DiscreteSchedule)
