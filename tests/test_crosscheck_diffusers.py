"""Our samplers against diffusers' schedulers, step for step, on the same analytic model.

The model is the exact denoiser of a Gaussian mixture, turned into eps / v / flow outputs for
diffusers at the noise level each scheduler itself uses for a timestep. diffusers accumulates
alpha_bar in float32 (relative error up to 1e-3 at the ends of a cosine schedule); both sides get
the same float64 alpha_bar so the comparison measures the solvers, not the tables.
"""
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")  # a dev dependency: always installed by `make test`
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,  # noqa: E402
                       FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler,
                       HeunDiscreteScheduler, UniPCMultistepScheduler)

from mmdiff.core.analytic import GaussianMixture  # noqa: E402
from mmdiff.core.samplers import sample  # noqa: E402
from mmdiff.core.schedules import get_schedule  # noqa: E402

TOL = 1e-4
STEPS = 10  # divides 1000: DDIM steps to t - 1000 // steps, which leaves a trailing grid otherwise


@pytest.fixture(scope="module")
def gmm():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 4, generator=g, dtype=torch.float64)
    return GaussianMixture(means, torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64) ** 2,
                           torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))


def x_start(n=64):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def model_output(gmm, x_ve, s, prediction):
    """What an exact network trained for ``prediction`` outputs at VE level s (VP native form)."""
    d = gmm(x_ve, torch.tensor(s, dtype=torch.float64))
    eps = (x_ve - d) / s
    if prediction == "epsilon":
        return eps
    alpha = 1 / math.sqrt(1 + s * s)
    return alpha * eps - s * alpha * d  # v


def run_ours(gmm, sampler, sigmas, x_ve, **options):
    traj = []
    out = sample(gmm, x_ve.clone(), sigmas, sampler, callback=lambda st: traj.append(st["x"].clone()),
                 progress=False, **options)
    return traj + [out]


def run_diffusers(gmm, sched, prediction, x_ve, vp_sample: bool):
    """Run a diffusers scheduler; return its states converted to VE."""
    def level(i, t):
        """The VE level the scheduler itself uses at its i-th model call."""
        if hasattr(sched, "sigmas"):
            return float(sched.sigmas[i])
        a = float(sched.alphas_cumprod[int(t)])
        return math.sqrt((1 - a) / a)

    def to_ve(x, s):
        return x * math.sqrt(1 + s * s) if vp_sample else x

    s0 = level(0, sched.timesteps[0])
    x = x_ve / math.sqrt(1 + s0 * s0) if vp_sample else x_ve.clone()
    traj = []
    for i, t in enumerate(sched.timesteps):
        s = level(i, t)
        if not isinstance(sched, HeunDiscreteScheduler) or sched.state_in_first_order:
            traj.append(to_ve(x, s).clone())
        model_in = sched.scale_model_input(x, t)
        x_model_ve = model_in * math.sqrt(1 + s * s)  # every VP model sees x_vp = x_ve / sqrt(1 + s^2)
        x = sched.step(model_output(gmm, x_model_ve, s, prediction), t, x).prev_sample
    traj.append(x.clone())  # final level is 0: VP and VE coincide
    return traj


def assert_same(ours, theirs):
    """Relative error <= TOL per step. diffusers' steps cast the sample to float32 before forming
    ``x + d * dt``, which loses up to float32 epsilon times the largest state so far; from a start
    at sigma 2e4 (cosine) that alone is ~1e-4 of later states, so that much is allowed on top."""
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    for i, (a, b) in enumerate(zip(ours, theirs)):
        slack = 2.0**-23 * max(t.norm().item() for t in theirs[:i]) if i else 0.0
        err = (a - b).norm().item()
        assert err <= TOL * b.norm().item() + slack, f"step {i}: relative error {err / b.norm().item():.2e} > {TOL}"


def schedule_pair(cls, beta, spacing, prediction, steps=STEPS, **extra):
    kw = dict(beta_schedule={"cosine": "squaredcos_cap_v2"}.get(beta, beta), prediction_type=prediction)
    if beta == "scaled_linear":
        kw.update(beta_start=0.00085, beta_end=0.012)
    if spacing == "karras":
        kw.update(use_karras_sigmas=True, timestep_spacing="linspace" if cls in (EulerDiscreteScheduler,
                                                                                 HeunDiscreteScheduler) else "trailing")
    else:
        kw.update(timestep_spacing=spacing)
    sched = cls(**kw, **extra)
    ours = get_schedule(beta)
    sched.alphas_cumprod = ours.alphas_cumprod.clone()  # float64 on both sides
    sched.set_timesteps(steps)
    return sched, ours.sigmas(steps, spacing, dtype=torch.float64)


def rounded_like(sched):
    """diffusers keeps sigmas in float32; solving on the same rounded levels isolates the solver."""
    return sched.sigmas.double()


SCHEDULERS = {"euler": (EulerDiscreteScheduler, True, {}), "heun": (HeunDiscreteScheduler, True, {}),
              "ddim": (DDIMScheduler, False, {"clip_sample": False}),
              "dpmpp_2m": (DPMSolverMultistepScheduler, False, {}), "unipc": (UniPCMultistepScheduler, False, {})}
# (sampler, betas, spacings). Left out on purpose: Heun from cosine's sigma_max = 2e4 in one uniform
# step (a correction of ~1e4 where the answer is ~6, so float32 rounding inside diffusers dominates),
# and UniPC with cosine + Karras, where diffusers truncates fractional timesteps to duplicates and
# its step counter fails (`assert self.this_order > 0`).
CASES = [("euler", b, sp) for b in ("scaled_linear", "cosine") for sp in ("linspace", "leading", "trailing", "karras")]
CASES += [("heun", "scaled_linear", sp) for sp in ("linspace", "trailing", "karras")] + [("heun", "cosine", "karras")]
CASES += [("ddim", b, sp) for b in ("scaled_linear", "cosine") for sp in ("leading", "trailing")]
CASES += [("dpmpp_2m", b, sp) for b in ("scaled_linear", "cosine") for sp in ("trailing", "karras")]
CASES += [("unipc", "scaled_linear", "trailing"), ("unipc", "scaled_linear", "karras"), ("unipc", "cosine", "trailing")]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name,beta,spacing", CASES, ids=["-".join(c) for c in CASES])
def test_matches_diffusers_step_for_step(gmm, name, beta, spacing, prediction):
    cls, k_style, extra = SCHEDULERS[name]
    sched, sigmas = schedule_pair(cls, beta, spacing, prediction, **extra)
    reference = ([math.sqrt((1 - a) / a) for a in sched.alphas_cumprod[sched.timesteps.long()].tolist()]
                 if cls is DDIMScheduler else sched.sigmas[:-1:2 if cls is HeunDiscreteScheduler else 1].tolist())
    assert torch.allclose(sigmas[:-1], torch.tensor(reference, dtype=torch.float64), rtol=1e-5), "sigma grids differ"
    if cls is not DDIMScheduler:  # same float32-rounded levels on both sides from here on
        sigmas = rounded_like(sched)
        sigmas = torch.cat([sigmas[:-1:2], sigmas[-1:]]) if cls is HeunDiscreteScheduler else sigmas
    x0 = x_start() * float(sigmas[0])
    theirs = run_diffusers(gmm, sched, prediction, x0, vp_sample=not k_style)
    assert_same(run_ours(gmm, name, sigmas, x0), theirs)


@pytest.mark.parametrize("order", [2, 3])
def test_unipc_orders_match_diffusers(gmm, order):
    sched, _ = schedule_pair(UniPCMultistepScheduler, "linear", "trailing", "epsilon", solver_order=order)
    sigmas = rounded_like(sched)
    x0 = x_start() * float(sigmas[0])
    assert_same(run_ours(gmm, "unipc", sigmas, x0, order=order),
                run_diffusers(gmm, sched, "epsilon", x0, vp_sample=True))


def test_zero_terminal_snr_euler_matches(gmm):
    sched = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   rescale_betas_zero_snr=True, timestep_spacing="trailing",
                                   prediction_type="v_prediction")
    ours = get_schedule("scaled_linear", zero_terminal_snr=True)
    sched.alphas_cumprod = ours.alphas_cumprod.clone()
    sched.set_timesteps(STEPS)
    assert ours.sigmas(STEPS, "trailing")[0].item() == pytest.approx(4096.0, rel=1e-6)  # alpha_bar_T = 2**-24
    sigmas = rounded_like(sched)
    x0 = x_start() * float(sigmas[0])
    assert_same(run_ours(gmm, "euler", sigmas, x0), run_diffusers(gmm, sched, "v_prediction", x0, vp_sample=False))


def flow_velocity(gmm):
    """The exact flow model's output ``eps - x0_hat`` at flow time t (flow-scaled input)."""
    mean = (gmm.weights[:, None] * gmm.means).sum(0)

    def velocity(x_flow, t):
        if t >= 1.0:  # the limit of eps - E[x0 | x] as the signal vanishes
            return x_flow - mean
        s = t / (1 - t)
        x_ve = x_flow / (1 - t)
        d = gmm(x_ve, torch.tensor(s, dtype=torch.float64))
        return (x_ve - d) / s - d
    return velocity


def run_flow_diffusers(gmm, sched, noise):
    """A FlowMatch scheduler's states at each first-order stage, in flow scale."""
    velocity, x, theirs = flow_velocity(gmm), noise.clone(), []
    for i, t in enumerate(sched.timesteps):
        if getattr(sched, "state_in_first_order", True):
            theirs.append(x.clone())
        x = sched.step(velocity(x, float(sched.sigmas[i])), t, x).prev_sample
    return theirs + [x]


def run_flow_ours(gmm, sampler, sigmas, noise, **options):
    ours_ve = run_ours(gmm, sampler, sigmas, noise * (1 + float(sigmas[0])), **options)
    return [x / (1 + float(s)) for x, s in zip(ours_ve, sigmas.tolist())]


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler_matches_flow_match_euler(gmm, shift):
    schedule = get_schedule("flow", shift=shift)
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    # diffusers' default grid shifts its lower end twice; give it the unshifted grid explicitly.
    sched.set_timesteps(sigmas=torch.linspace(1, 1 / 1000, STEPS, dtype=torch.float64).tolist())
    sigmas = schedule.sigmas(STEPS, "linspace", dtype=torch.float64)
    t_ref = sched.sigmas.double()
    assert torch.allclose((sigmas / (1 + sigmas))[1:], t_ref[1:], rtol=1e-6)
    noise = x_start()
    assert_same(run_flow_ours(gmm, "euler", sigmas, noise), run_flow_diffusers(gmm, sched, noise))


def test_flow_heun_matches_flow_match_heun(gmm):
    """``heun`` with ``time="flow"`` (what pipelines of flow models run) is diffusers'
    FlowMatchHeunDiscreteScheduler; the sigma-time trapezoid from sigma_max = 1e5 is far off."""
    schedule = get_schedule("flow")
    assert schedule.heun_time == "flow"
    sched = FlowMatchHeunDiscreteScheduler()
    sched.set_timesteps(STEPS)
    sigmas = schedule.sigmas(STEPS, "linspace", dtype=torch.float64)
    t_ref = torch.cat([sched.sigmas[0:-1:2], sched.sigmas[-1:]]).double()
    assert torch.allclose((sigmas / (1 + sigmas))[1:], t_ref[1:], rtol=1e-6)
    noise = x_start()
    theirs = run_flow_diffusers(gmm, sched, noise)
    assert_same(run_flow_ours(gmm, "heun", sigmas, noise, time="flow"), theirs)
    sigma_time = run_flow_ours(gmm, "heun", sigmas, noise)[-1]
    assert (sigma_time - theirs[-1]).norm() > 10 * theirs[-1].norm()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_dpmpp_3m_legacy_matches_diffusers_third_order(gmm, prediction):
    # 16 steps: diffusers lowers the order of the second-to-last step below 15. Its second-order
    # warm-up step is our "heun" form, and its third-order step carries the reference code's
    # halved second difference, which is what legacy=True reproduces.
    sched, _ = schedule_pair(DPMSolverMultistepScheduler, "scaled_linear", "trailing", prediction, steps=16,
                             solver_order=3, solver_type="heun")
    sigmas = rounded_like(sched)
    x0 = x_start() * float(sigmas[0])
    theirs = run_diffusers(gmm, sched, prediction, x0, vp_sample=True)
    assert_same(run_ours(gmm, "dpmpp_3m", sigmas, x0, legacy=True), theirs)
    corrected = run_ours(gmm, "dpmpp_3m", sigmas, x0)
    assert (corrected[-1] - theirs[-1]).norm() / theirs[-1].norm() > 10 * TOL  # the fix is not a no-op
