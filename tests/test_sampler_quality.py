"""Closed-form proof that the samplers solve the right equation.

With the exact denoiser of a Gaussian, the probability-flow ODE has the closed-form solution
``x(s) = mu + sqrt(v + s^2) / sqrt(v + S^2) * (x_S - mu)``; with the exact denoiser of a mixture,
exact samples are available. Deterministic samplers must converge to the ODE solution at their
order and to the right distribution; stochastic ones must get the mean and variance right; the
contracts around them (generators, names, callback, NFE, grids) must hold.
"""
import math

import pytest
import torch

from mmdiff.core.analytic import gaussian, ring_mixture
from mmdiff.core.samplers import SAMPLERS, STOCHASTIC, evaluations, sample
from mmdiff.core.schedules import SCHEDULES, SPACINGS, get_schedule
from mmdiff.eval.metrics import sliced_wasserstein

F64 = torch.float64
DETERMINISTIC = sorted(set(SAMPLERS) - STOCHASTIC)
EDM = get_schedule("edm")
MU, VAR = torch.tensor([0.5, -1.0], dtype=F64), 0.25


def normal(n, dim=2, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


def grid(steps, spacing="karras"):
    return EDM.sigmas(steps, spacing, dtype=F64)


def ode_endpoint(x_start, s_start):
    """Exact PF-ODE solution at sigma = 0 for N(MU, VAR) from x_start at s_start."""
    return MU + math.sqrt(VAR) / math.sqrt(VAR + s_start**2) * (x_start - MU)


def run(denoiser, x, sigmas, sampler, **kw):
    return sample(denoiser, x.clone(), sigmas, sampler, progress=False, **kw)


# ---------------------------------------------------------------------------- convergence

# Between 40 and 80 Karras steps every sampler is in its asymptotic range (euler 0.99, heun 2.08,
# dpmpp_2m 2.13, unipc 3.11); between 20 and 40 a second-order method can still look third order.
ORDERS = {"euler": 1, "ddim": 1, "heun": 2, "dpmpp_2m": 2, "dpmpp_3m": 3, "unipc": 3}


def test_orders_cover_every_deterministic_sampler():
    assert sorted(ORDERS) == DETERMINISTIC


@pytest.mark.parametrize("sampler", sorted(ORDERS))
def test_convergence_order_on_a_gaussian(sampler):
    g, x = gaussian(MU, VAR), normal(64) * EDM.sigma_max
    exact = ode_endpoint(x, EDM.sigma_max)

    def error(steps):
        return (run(g, x, grid(steps), sampler) - exact).pow(2).mean().sqrt().item()

    order = math.log2(error(40) / error(80))
    assert abs(order - ORDERS[sampler]) < 0.4, f"{sampler}: measured order {order:.2f}, expected {ORDERS[sampler]}"


def test_heun_in_flow_time_is_second_order_and_survives_a_flow_grid():
    g, x = gaussian(MU, VAR), normal(64) * EDM.sigma_max
    exact = ode_endpoint(x, EDM.sigma_max)

    def error(steps):
        return (run(g, x, grid(steps), "heun", time="flow") - exact).pow(2).mean().sqrt().item()
    assert abs(math.log2(error(40) / error(80)) - 2) < 0.4
    flow = get_schedule("flow").sigmas(10, "linspace", dtype=F64)  # from sigma_max = 1e5
    start = normal(64) * flow[0]
    exact = ode_endpoint(start, float(flow[0]))
    flow_time = (run(g, start, flow, "heun", time="flow") - exact).pow(2).mean().sqrt().item()
    sigma_time = (run(g, start, flow, "heun") - exact).pow(2).mean().sqrt().item()
    assert flow_time < 0.05 < 10 < sigma_time, (flow_time, sigma_time)
    with pytest.raises(ValueError, match="time must be 'sigma' or 'flow'"):
        run(g, start, flow, "heun", time="t")


def test_dpmpp_3m_is_exact_for_a_quadratic_denoised_path():
    """A third-order multistep step integrates a denoised value that is quadratic in
    lambda = -log(sigma) exactly. With D = lambda^2 (independent of x) and x = 0, the exact step
    from lambda = 0 to 1 after levels at lambda = -2, -1 is x = sigma_t * int_0^1 e^l l^2 dl
    = e^-1 (e - 2). The update's second-difference term must carry its full weight."""
    sigmas = torch.tensor([math.e**2, math.e, 1.0, math.exp(-1.0)], dtype=F64)
    history = []

    def denoiser(x, sigma):
        lam = round(-math.log(float(sigma[0])))  # levels sit at integer lambda; sigma arrives in float32
        return torch.full_like(x, float(lam**2))

    def record(state):
        history.append(state["x"].clone())

    exact_step = math.exp(-1.0) * (math.e - 2)
    x0 = torch.zeros(1, 1, dtype=F64)
    # Run the first two steps, then restart the last step from x = 0 at sigma = 1 by linearity:
    # the update is affine in x with coefficient sigma_t / sigma_s, so subtract that part.
    out = run(denoiser, x0, sigmas, "dpmpp_3m", callback=record)
    x_at_1 = history[2]
    last_step = out - (math.exp(-1.0) / 1.0) * x_at_1
    assert last_step.item() == pytest.approx(exact_step, rel=1e-9)


# ---------------------------------------------------------------------------- distributions

# Steps at which each sampler's Gaussian endpoint is within ~1% of the exact one.
ENOUGH = {"euler": 400, "ddim": 400, "heun": 50, "dpmpp_2m": 100, "dpmpp_3m": 50, "unipc": 50}


@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_deterministic_samplers_reach_the_gaussian(sampler):
    g, x = gaussian(MU, VAR), normal(4000, seed=1) * EDM.sigma_max
    out = run(g, x, grid(ENOUGH[sampler]), sampler)
    target = ode_endpoint(x, EDM.sigma_max)  # the exact pushforward of this very noise
    assert (out.mean(0) - target.mean(0)).abs().max() < 5e-3
    assert (out.var(0) / target.var(0) - 1).abs().max() < 0.03
    assert (out.mean(0) - MU).abs().max() < 0.03  # and that is N(MU, VAR) up to sampling noise
    assert (out.var(0) / VAR - 1).abs().max() < 0.1


@pytest.fixture(scope="module")
def ring():
    gmm, n = ring_mixture(), 1000
    exact = gmm.sample(n, torch.Generator().manual_seed(1))

    def sw(x):
        return sliced_wasserstein(x, exact, generator=torch.Generator().manual_seed(3))

    return gmm, normal(n, seed=2) * EDM.sigma_max, sw, sw(gmm.sample(n, torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_deterministic_samplers_converge_on_a_mixture(ring, sampler):
    gmm, x, sw, floor = ring
    steps = (lambda n: (n + 1) // 2) if sampler == "heun" else (lambda n: n)
    coarse, fine = sw(run(gmm, x, grid(steps(4)), sampler)), sw(run(gmm, x, grid(steps(40)), sampler))
    assert fine < 1.3 * floor, f"{sampler}: SW {fine:.3f} at NFE 40, floor {floor:.3f}"
    assert fine < coarse


@pytest.mark.parametrize("sampler", sorted(STOCHASTIC))
def test_stochastic_samplers_get_mean_and_variance(sampler):
    # Ancestral steps sample around the point estimate of x0 and miss its posterior variance, a
    # first-order deficit: -6% at 200 logSNR steps, -3.5% at 400. The DPM++ SDEs are at -1% by 200.
    steps = 800 if sampler == "euler_ancestral" else 200
    with torch.random.fork_rng():  # one batched draw per step: 8000 per-sample generators are slow
        torch.manual_seed(4)
        out = run(gaussian(MU, VAR), normal(8000, seed=3) * EDM.sigma_max, grid(steps, "logsnr"), sampler)
    assert (out.mean(0) - MU).abs().max() < 0.03
    assert abs(out.var(0).mean().item() / VAR - 1) < 0.04


# ---------------------------------------------------------------------------- contracts

@pytest.mark.parametrize("sampler", sorted(STOCHASTIC))
def test_sample_i_does_not_depend_on_the_batch(sampler):
    gmm, x, sig = ring_mixture(), normal(6, seed=5) * 80.0, grid(6)
    full = run(gmm, x, sig, sampler, generator=11)
    assert torch.allclose(run(gmm, x[:2], sig, sampler, generator=11), full[:2], rtol=0, atol=1e-10)
    seeded = run(gmm, x[:3], sig, sampler, generator=torch.Generator().manual_seed(11))
    assert torch.allclose(seeded, full[:3], rtol=0, atol=1e-10)
    own = [torch.Generator().manual_seed(100 + i) for i in range(6)]
    alone = run(gmm, x[4:5], sig, sampler, generator=[torch.Generator().manual_seed(104)])
    assert torch.allclose(alone, run(gmm, x, sig, sampler, generator=own)[4:5], rtol=0, atol=1e-10)
    assert not torch.allclose(run(gmm, x, sig, sampler, generator=12), full)  # the seed matters


def test_unknown_names_raise_and_list_the_valid_ones():
    g, x, sig = gaussian(MU, VAR), normal(2), grid(3)
    with pytest.raises(ValueError) as e:
        run(g, x, sig, "dpmpp_9m")
    assert all(name in str(e.value) for name in SAMPLERS)
    with pytest.raises(ValueError) as e:
        run(g, x, sig, "ddim", etta=0.5)
    assert "etta" in str(e.value) and "eta" in str(e.value).replace("etta", "") and "s_noise" in str(e.value)
    with pytest.raises(ValueError) as e:
        run(g, x, sig, "dpmpp_2m_sde", solver_type="rk4")
    assert "midpoint" in str(e.value) and "heun" in str(e.value)
    with pytest.raises(ValueError) as e:
        EDM.sigmas(5, "cosine_spaced")
    assert all(sp in str(e.value) for sp in SPACINGS)
    with pytest.raises(ValueError) as e:
        get_schedule("sqrt")
    assert all(name in str(e.value) for name in SCHEDULES)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_callback_sees_every_step(sampler):
    sig, seen = grid(7), []
    out = run(gaussian(MU, VAR), normal(3) * 80.0, sig, sampler, generator=0, callback=seen.append)
    assert [s["i"] for s in seen] == list(range(7))
    assert [s["sigma"] for s in seen] == pytest.approx(sig[:-1].tolist())
    assert [s["sigma_next"] for s in seen] == pytest.approx(sig[1:].tolist())
    assert all(s["x"].shape == out.shape and s["denoised"].shape == out.shape for s in seen)


@pytest.mark.parametrize("steps", [1, 2, 5])
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_evaluations_counts_the_model_calls(sampler, steps):
    calls = []
    g = gaussian(MU, VAR)

    def counted(x, sigma):
        calls.append(float(sigma[0]))
        return g(x, sigma)

    run(counted, normal(2) * 80.0, grid(steps), sampler, generator=0)
    assert len(calls) == evaluations(sampler, steps)


@pytest.mark.parametrize("name", ["linear", "cosine", "edm", "flow"])
def test_every_grid_has_steps_plus_one_levels(name):
    """``sigmas(steps)`` is ``steps`` decreasing levels and a final 0, for every step count.
    (diffusers' trailing grid, ``np.arange(1000, 0, -1000 / steps)``, gets one extra element for
    steps = 61, 103, 121, ... from float rounding; a copy of it must not.)"""
    schedule = get_schedule(name)
    for spacing in SPACINGS:
        for steps in range(1, 125):
            sig = schedule.sigmas(steps, spacing, dtype=F64)
            assert len(sig) == steps + 1, f"{name} {spacing} steps={steps}: {len(sig) - 1} levels"
            assert sig[-1] == 0 and bool(torch.all(sig[:-1] > sig[1:])), f"{name} {spacing} steps={steps}"
