"""One conversion for every target: denoiser, training target and loss weights agree."""
import collections
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmdiff.core.guidance import cfg, keep_known
from mmdiff.core.parametrization import (PREDICTIONS, Denoiser, loss_weight, sample_training_sigmas,
                                         scalings)
from mmdiff.core.samplers import evaluations, sample
from mmdiff.core.schedules import get_schedule

PAIRS = [(p, s) for p in PREDICTIONS for s in ("linear", "cosine", "edm", "flow")]


class Oracle(torch.nn.Module):
    """A 'network' that outputs exactly the target for known (x0, noise)."""

    def __init__(self, denoiser_factory):
        super().__init__()
        self.factory = denoiser_factory
        self.x0 = self.noise = self.sigma = None

    def forward(self, x_in, timestep):
        return self.factory().target(self.x0, self.noise, self.sigma)


@pytest.mark.parametrize("prediction,schedule", PAIRS)
def test_exact_target_gives_exact_denoiser_and_zero_loss(prediction, schedule):
    sched = get_schedule(schedule)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    sigma = torch.tensor([0.01, 0.1, 1.0, 3.0, 20.0, 60.0])
    oracle = Oracle(lambda: den)
    den = Denoiser(oracle, sched, prediction)
    oracle.x0, oracle.noise, oracle.sigma = x0, noise, sigma
    x = x0 + sigma[:, None, None, None] * noise
    assert torch.allclose(den(x, sigma), x0, atol=2e-4 * sigma.max().item())
    assert den.loss(x0, sigma, noise).abs().max() < 1e-6


def test_targets_are_the_textbook_ones():
    sched = get_schedule("linear")
    x0, noise, sigma = torch.randn(2, 5), torch.randn(2, 5), torch.tensor([0.5, 2.0])
    alpha = 1 / (1 + sigma**2).sqrt()
    sig_t = sigma * alpha
    assert torch.allclose(Denoiser(None, sched, "eps").target(x0, noise, sigma), noise, atol=1e-6)
    assert torch.allclose(Denoiser(None, sched, "x0").target(x0, noise, sigma), x0, atol=1e-6)
    v = alpha[:, None] * noise - sig_t[:, None] * x0
    assert torch.allclose(Denoiser(None, sched, "v").target(x0, noise, sigma), v, atol=1e-6)
    assert torch.allclose(Denoiser(None, get_schedule("flow"), "flow").target(x0, noise, sigma), noise - x0, atol=1e-5)


def test_model_sees_the_native_noisy_input():
    seen = {}

    def model(x_in, timestep):
        seen["x"], seen["t"] = x_in, timestep
        return torch.zeros_like(x_in)

    x0, noise, sigma = torch.randn(1, 4), torch.randn(1, 4), torch.tensor([1.5])
    flow = get_schedule("flow")
    Denoiser(model, flow, "flow")(x0 + sigma * noise, sigma)
    t = 1.5 / 2.5
    assert torch.allclose(seen["x"], (1 - t) * x0 + t * noise, atol=1e-6)  # the rectified-flow interpolant
    assert seen["t"].item() == pytest.approx(1000 * t)
    ddpm = get_schedule("linear")
    s = ddpm.table[500].float().reshape(1)
    Denoiser(model, ddpm, "eps")(x0 + s * noise, s)
    a = ddpm.alphas_cumprod[500]
    assert torch.allclose(seen["x"], a.sqrt().float() * x0 + (1 - a).sqrt().float() * noise, atol=1e-5)
    assert seen["t"].item() == pytest.approx(500, abs=1e-3)  # the DDPM index


def test_min_snr_weights_for_every_target():
    sched = get_schedule("linear")
    sigma = torch.tensor([0.05, 0.3, 1.0, 5.0], dtype=torch.float64)
    snr = sigma**-2
    gamma = 5.0
    assert torch.allclose(loss_weight("min_snr", "eps", sched, sigma, gamma=gamma), snr.clamp(max=gamma) / snr)
    assert torch.allclose(loss_weight("min_snr", "v", sched, sigma, gamma=gamma), snr.clamp(max=gamma) / (snr + 1))
    assert torch.allclose(loss_weight("min_snr", "x0", sched, sigma, gamma=gamma), snr.clamp(max=gamma))
    # EDM weighting makes the F-space loss uniform for EDM preconditioning
    assert torch.allclose(loss_weight("edm", "edm", sched, sigma), torch.ones_like(sigma))
    with pytest.raises(ValueError, match="unknown loss weighting"):
        loss_weight("nope", "eps", sched, sigma)


def test_training_sigma_distributions():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    edm = get_schedule("edm")
    log_s = sample_training_sigmas(edm, n, "lognormal", generator=g).double().log()
    assert log_s.mean().item() == pytest.approx(-1.2, abs=0.02)
    assert log_s.std().item() == pytest.approx(1.2, abs=0.03)  # clipping at 0.002/80 barely bites
    flow = get_schedule("flow")
    s = sample_training_sigmas(flow, n, "logit_normal", generator=g).double()
    t = flow.t(s)
    logit = (t / (1 - t)).log()
    assert logit.mean().item() == pytest.approx(0.0, abs=0.02)
    assert logit.std().item() == pytest.approx(1.0, abs=0.02)
    ddpm = get_schedule("linear")
    s = sample_training_sigmas(ddpm, n, "uniform", generator=g).double()
    idx = ddpm.timestep(s).round()
    assert idx.min() == 0 and idx.max() == 999
    assert torch.bincount(idx.long(), minlength=1000).float().std() / 200 < 0.1  # ~uniform over indices
    with pytest.raises(ValueError, match="unknown noise distribution"):
        sample_training_sigmas(ddpm, 4, "zipf")


def test_scalings_are_affine_identities():
    # For every target, D = c_skip x + c_out F is the identity on x when F is F's own target of x0 = D.
    sched = get_schedule("cosine")
    sigma = torch.tensor([0.2, 4.0], dtype=torch.float64)
    for p in PREDICTIONS:
        c_skip, c_out, c_in = scalings(p, sched, sigma)
        assert torch.isfinite(c_skip).all() and torch.isfinite(c_out).all() and (c_in > 0).all()
    with pytest.raises(ValueError, match="unknown prediction"):
        Denoiser(None, sched, "score")
    assert math.isfinite(float(scalings("flow", get_schedule("flow"), torch.tensor([1e5]))[0]))


class _CountOps(TorchDispatchMode):
    """Counts the ATen ops that compute (on a GPU: launch a kernel), not those that only make views."""
    VIEWS = {"view", "expand", "select", "slice", "alias", "_local_scalar_dense", "detach"}

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in self.VIEWS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def _ops_per_evaluation(denoiser, device: str, sampler: str) -> float:
    sched, x = get_schedule("linear"), torch.randn(2, 4, 8, 8).to(device)
    ops = {}
    for steps in (20, 40):  # the difference leaves out each solve's set-up
        sample(denoiser, x, sched.sigmas(steps), sampler, progress=False)
        with _CountOps() as count:
            sample(denoiser, x, sched.sigmas(steps), sampler, progress=False)
        ops[steps] = count.ops.total()
    return (ops[40] - ops[20]) / (evaluations(sampler, 40) - evaluations(sampler, 20))


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
def test_a_solve_on_a_device_converts_each_level_once(sampler):
    # On a GPU a level's value cannot be read without waiting for the device, so the memo keyed by
    # value used to miss there and ~30 small ops ran per evaluation. Samplers tag the levels they
    # hand over with their host value: on the meta device (like a GPU, nothing can be read back)
    # a warm solve costs what it costs on the CPU: the bare sampler's ops over the same network
    # plus three, c_in * x, c_skip * x and the addcmul with c_out * F.
    bare = _ops_per_evaluation(lambda x, sigma: 0.1 * x, "cpu", sampler)
    for device in ("cpu", "meta"):
        den = Denoiser(lambda x, t: 0.1 * x, get_schedule("linear"), "eps")
        assert _ops_per_evaluation(den, device, sampler) - bare == 3, device


def test_denoiser_traces_into_one_graph_under_torch_compile():
    # Under compile the memo steps aside (reading levels back would break the graph in two).
    den = Denoiser(lambda x, t: 0.1 * x * t[:, None, None, None], get_schedule("linear"), "v")
    x, noise, sigma = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor([0.5, 2.0, 9.0])
    compiled = torch.compile(lambda x, s: den.loss(x, s, noise), backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x, sigma), den.loss(x, sigma, noise), rtol=1e-6)
    assert torch.allclose(torch.compile(den, backend="eager", fullgraph=True)(x, sigma), den(x, sigma))


def test_guidance_and_given_content_keep_the_host_level():
    sched, grid = get_schedule("linear"), get_schedule("linear").sigmas(10)
    seen = []

    def net(x, t, **cond):
        seen.append(t)
        return 0.1 * x
    den = Denoiser(net, sched, "eps")
    x = torch.randn(2, 4, 8, 8, device="meta")
    known, mask = torch.zeros_like(x), torch.ones_like(x)
    labels, null = torch.ones(2, device="meta"), torch.zeros(2, device="meta")
    wrapped = keep_known(cfg(den, 3.0, {"y": labels}, {"y": null}, interval=(0.5, 50.0)),
                         known, mask, noise=torch.randn_like(x))
    sample(wrapped, x, grid, "euler", progress=False)  # on meta, any read of a level would raise
    assert len(den._memo) == len(grid) - 1
    assert {t.shape[0] for t in seen} == {2, 4}  # both halves of the interval were taken


def test_denoiser_memoises_levels_without_changing_results():
    sched = get_schedule("linear")
    calls = []

    def net(x, t, **cond):
        calls.append(t.clone())
        return 0.1 * x
    den = Denoiser(net, sched, "v")
    x = torch.randn(3, 2, 4, 4)
    first = den(x, torch.full((3,), 2.5))
    again = den(x, torch.full((3,), 2.5))
    other = den(x, torch.tensor([2.5, 1.0, 0.3]))  # per-sample levels (training) are not kept
    assert torch.equal(first, again) and len(den._memo) == 1
    fresh = Denoiser(net, sched, "v")
    assert torch.equal(fresh(x, torch.tensor([2.5, 1.0, 0.3])), other)
    assert torch.equal(calls[0], calls[1])  # the timestep handed to the network is the same too
