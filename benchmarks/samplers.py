"""Sampler quality per denoiser evaluation, ours and diffusers' side by side, on closed-form models.

    python benchmarks/samplers.py            # full run (~14 min on 2 shared cores); rewrites two sections
    python benchmarks/samplers.py --quick    # small sizes, prints only

The model is the exact denoiser of a Gaussian mixture (``mmdiff.core.analytic``), so every error
is the sampler's own. Two problems: ``ring-2d`` (8 isotropic components on a circle) and
``gmm-64d`` (8 components in 64-D with random means and anisotropic covariances, eigenvalues
log-uniform in [1e-3, 1]). Every sampler, ours or diffusers', starts from the same standard
normal draw ``z`` times its first noise level; for every grid but "leading" that level is the
schedule's full sigma_max. Two measures:

- endpoint error (deterministic samplers): RMS per coordinate between the output and the exact
  probability-flow ODE solution from ``z * sigma_max`` at sigma_max down to sigma = 0 (scipy's DOP853
  in log-sigma time, rtol 1e-10; its own error is checked against rtol 1e-12 on a subset). A grid
  that starts below sigma_max is charged for the start it skips.
- sliced Wasserstein distance (every sampler) to exact mixture samples, with the noise floor of
  exact samples against other exact samples of the same size.

NFE is counted by wrapping the model: a target budget buys ``steps`` with
``evaluations(sampler, steps) <= budget`` (Heun: 2 steps - 1).

The second part optimises step schedules (``mmdiff.core.step_search``) on a third mixture (64-D,
another seed) over the sigma range of the schedule in the best fixed pair at NFE 10 on gmm-64d,
and evaluates them on both problems above.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import torch
from scipy.integrate import solve_ivp

from mmdiff.eval.tables import machine, pin_threads, table, update_section
from mmdiff.core.analytic import random_mixture, ring_mixture
from mmdiff.core.samplers import SAMPLERS, STOCHASTIC, evaluations, sample
from mmdiff.core.schedules import SPACINGS, get_schedule
from mmdiff.core.step_search import log_interpolate, optimize_sigmas
from mmdiff.eval.metrics import sliced_wasserstein

F64 = torch.float64
DETERMINISTIC = [s for s in SAMPLERS if s not in STOCHASTIC]
OPTIMIZED = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc")
REFERENCE_END = 1e-6  # the exact ODE is solved to here, then denoised: x(0) to ~1e-9
FULL = dict(samples={"ring-2d": 2000, "gmm-64d": 400}, nfes=(5, 10, 20, 50),
            schedules=("linear", "cosine", "edm", "flow"), opt_samples=512, opt_iterations=12)
QUICK = dict(samples={"ring-2d": 256, "gmm-64d": 64}, nfes=(5, 10),
             schedules=("linear", "edm", "flow"), opt_samples=64, opt_iterations=3)


PROBLEMS = {"ring-2d": ring_mixture, "gmm-64d": lambda: random_mixture(seed=0)}


@dataclass
class Run:
    side: str  # "mmdiff" or "diffusers"
    problem: str
    schedule: str
    sampler: str
    spacing: str
    target: int  # NFE budget
    nfe: int  # evaluations made
    error: float | None  # endpoint RMS; None for stochastic samplers
    sw: float

    @property
    def pair(self) -> str:
        return f"{self.sampler} / {self.schedule} {self.spacing}"


class Counted:
    """The exact denoiser, counting its calls."""

    def __init__(self, gmm):
        self.gmm, self.calls = gmm, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.gmm(x, sigma)


def steps_for(sampler: str, nfe: int) -> int:
    return (nfe + 1) // 2 if sampler in ("heun", "Heun", "FlowMatchHeun") else nfe


# ------------------------------------------------------------------------------------- reference

def exact_endpoint(gmm, x, sigma_max: float, rtol: float = 1e-10) -> torch.Tensor:
    """x(0) of the PF-ODE dx/du = x - D(x, e^u), u = log sigma, from x at sigma_max."""
    shape = x.shape

    def rhs(u, y):
        xs = torch.from_numpy(y).view(shape)
        return (xs - gmm(xs, torch.tensor(math.exp(u), dtype=F64))).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(sigma_max), math.log(REFERENCE_END)), x.reshape(-1).numpy().copy(),
                    method="DOP853", rtol=rtol, atol=rtol * 1e-3)
    if not sol.success:
        raise RuntimeError(f"reference solve failed: {sol.message}")
    end = torch.from_numpy(sol.y[:, -1].copy()).view(shape)
    return gmm(end, torch.tensor(REFERENCE_END, dtype=F64))


class SlicedW1:
    """``sliced_wasserstein(x, exact, generator=seed)`` for ``len(x) == len(exact)``, with the same
    projections for every call and the exact side sorted once: for equal sizes the 1-D distance is
    the mean gap between sorted projections. The first call is checked against the library."""

    def __init__(self, exact, seed: int, num_projections: int = 256):
        self.exact, self.seed, self.checked = exact, seed, False
        dirs = torch.randn(exact.shape[1], num_projections, generator=torch.Generator().manual_seed(seed), dtype=F64)
        self.dirs = dirs / dirs.norm(dim=0, keepdim=True)
        self.sorted = (exact @ self.dirs).sort(dim=0).values

    def __call__(self, x) -> float:
        value = ((x.double() @ self.dirs).sort(dim=0).values - self.sorted).abs().mean().item()
        if not self.checked:
            library = sliced_wasserstein(x, self.exact, generator=torch.Generator().manual_seed(self.seed))
            assert abs(value - library) <= 1e-9 * max(1.0, library), (value, library)
            self.checked = True
        return value


def rms(a, b) -> float:
    return (a.double() - b.double()).pow(2).mean().sqrt().item()


# ------------------------------------------------------------------------------------ our side

def run_ours(gmm, z, sigmas, sampler, schedule):
    model = Counted(gmm)
    out = sample(model, z * float(sigmas[0]), sigmas, sampler, progress=False,
                 generator=1234 if sampler in STOCHASTIC else None, **schedule.sampler_options(sampler))
    assert model.calls == evaluations(sampler, len(sigmas) - 1), (sampler, model.calls)
    return out, model.calls


# ------------------------------------------------------------------------------- diffusers' side

def diffusers_configs(schedule: str):
    """(label, options label, factory) for every diffusers scheduler and spacing option that
    serves ``schedule``; the factory takes the number of inference steps."""
    import diffusers as d

    out = []
    if schedule in ("linear", "cosine"):
        ours = get_schedule(schedule)
        beta = {"beta_schedule": "squaredcos_cap_v2" if schedule == "cosine" else "linear",
                "beta_start": 0.0001, "beta_end": 0.02}
        spacing = [(sp, {"timestep_spacing": sp}) for sp in ("linspace", "leading", "trailing")]
        sigmas = [("karras", {"use_karras_sigmas": True}), ("exponential", {"use_exponential_sigmas": True}),
                  ("beta", {"use_beta_sigmas": True})]
        kinds = [("DDIM", d.DDIMScheduler, {"clip_sample": False}, spacing),
                 ("Euler", d.EulerDiscreteScheduler, {}, spacing + sigmas),
                 ("Heun", d.HeunDiscreteScheduler, {}, spacing + sigmas),
                 ("DPM++2M", d.DPMSolverMultistepScheduler, {}, spacing + sigmas + [("lu", {"use_lu_lambdas": True})]),
                 ("DPM++3M", d.DPMSolverMultistepScheduler, {"solver_order": 3},
                  spacing + sigmas + [("lu", {"use_lu_lambdas": True})]),
                 ("UniPC", d.UniPCMultistepScheduler, {}, spacing + sigmas)]
        for name, cls, base, options in kinds:
            for label, opt in options:
                def make(steps, cls=cls, kw={**beta, **base, **opt}):
                    sched = cls(**kw)
                    sched.alphas_cumprod = ours.alphas_cumprod.clone()  # float64, as ours
                    sched.set_timesteps(steps)
                    return sched
                family = "ddim" if name == "DDIM" else "k" if name in ("Euler", "Heun") else "vp"
                out.append((name, label, family, make))
    elif schedule == "edm":
        for label in ("karras", "exponential"):
            for name, cls, kw in [("EDMEuler", d.EDMEulerScheduler, {}),
                                  ("EDMDPM++2M", d.EDMDPMSolverMultistepScheduler, {}),
                                  ("EDMDPM++3M", d.EDMDPMSolverMultistepScheduler, {"solver_order": 3})]:
                def make(steps, cls=cls, kw={**kw, "sigma_schedule": label}):
                    sched = cls(**kw)
                    sched.set_timesteps(steps)
                    return sched
                out.append((name, label, "edm", make))
    elif schedule == "flow":
        flow = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
        kinds = [("FlowMatchEuler", d.FlowMatchEulerDiscreteScheduler, {}, "default"),
                 ("FlowMatchEuler", d.FlowMatchEulerDiscreteScheduler, {"use_karras_sigmas": True}, "karras"),
                 ("FlowMatchEuler", d.FlowMatchEulerDiscreteScheduler, {"use_exponential_sigmas": True}, "exponential"),
                 ("FlowMatchEuler", d.FlowMatchEulerDiscreteScheduler, {"use_beta_sigmas": True}, "beta"),
                 ("FlowMatchHeun", d.FlowMatchHeunDiscreteScheduler, {}, "default"),
                 ("DPM++2M", d.DPMSolverMultistepScheduler, flow, "flow sigmas"),
                 ("DPM++3M", d.DPMSolverMultistepScheduler, {**flow, "solver_order": 3}, "flow sigmas"),
                 ("UniPC", d.UniPCMultistepScheduler, flow, "flow sigmas")]
        for name, cls, kw, label in kinds:
            def make(steps, cls=cls, kw=kw):
                sched = cls(**kw)
                sched.set_timesteps(steps)
                return sched
            out.append((name, label, "flow", make))
    return out


def run_diffusers(gmm, z, sched, family: str):
    """Drive a diffusers scheduler with the exact model; return (output at sigma 0, model calls).

    ``family`` says how the scheduler's sample relates to our VE state at VE level s:
    vp / ddim: x / sqrt(1 + s^2), k and edm: x itself, flow: x / (1 + s); the model output is eps
    (vp, ddim, k), EDM's F_theta (edm) or the velocity eps - x0 (flow).
    """
    mean = (gmm.weights[:, None] * gmm.means).sum(0)
    sigma_data = getattr(sched.config, "sigma_data", 0.5)

    def level(i, t) -> float:
        if family == "ddim":
            a = float(sched.alphas_cumprod[int(t)])
            return math.sqrt((1 - a) / a)
        s = float(sched.sigmas[i])
        if family == "flow":
            return math.inf if s >= 1 else s / (1 - s)
        return s

    def to_native(x_ve, s):
        if family in ("vp", "ddim"):
            return x_ve / math.sqrt(1 + s * s)
        return x_ve / (1 + s) if family == "flow" else x_ve

    s0 = level(0, sched.timesteps[0])
    x = z.clone() if math.isinf(s0) else to_native(z * s0, s0)
    for i, t in enumerate(sched.timesteps):
        s = level(i, t)
        if hasattr(sched, "scale_model_input"):  # sets the step index of k-diffusion-style schedulers
            sched.scale_model_input(x, t)
        if math.isinf(s):  # flow at t = 1: E[x0 | pure noise] is the mean
            output = x - mean
        else:
            x_ve = x * math.sqrt(1 + s * s) if family in ("vp", "ddim") else x * (1 + s) if family == "flow" else x
            den = gmm(x_ve, torch.tensor(s, dtype=F64))
            if family == "edm":
                c_skip = sigma_data**2 / (s * s + sigma_data**2)
                c_out = s * sigma_data / math.sqrt(s * s + sigma_data**2)
                output = (den - c_skip * x_ve) / c_out
            elif family == "flow":
                output = (x_ve - den) / s - den
            else:
                output = (x_ve - den) / s
        x = sched.step(output, t, x).prev_sample
    return x, len(sched.timesteps)


# ------------------------------------------------------------------------------------ the sweep

def sweep(cfg, log) -> tuple[list[Run], dict, dict, dict]:
    runs, floors, checks, references = [], {}, {}, {}
    for pname, make_problem in PROBLEMS.items():
        gmm = make_problem()
        n = cfg["samples"][pname]
        z = torch.randn(n, gmm.dim, generator=torch.Generator().manual_seed(0), dtype=F64)
        exact = gmm.sample(n, torch.Generator().manual_seed(1))

        sw = SlicedW1(exact, seed=7)
        floors[pname] = sw(gmm.sample(n, torch.Generator().manual_seed(2)))
        for sname in cfg["schedules"]:
            schedule = get_schedule(sname)
            t0 = time.perf_counter()
            ref = exact_endpoint(gmm, z * schedule.sigma_max, schedule.sigma_max)
            sub = slice(0, min(64, n))
            tight = exact_endpoint(gmm, z[sub] * schedule.sigma_max, schedule.sigma_max, rtol=1e-12)
            checks[pname, sname] = (ref[sub] - tight).abs().max().item()
            references[pname, sname] = (gmm, z, ref, sw)
            log(f"{pname} {sname}: reference in {time.perf_counter() - t0:.0f}s, "
                f"max deviation from rtol 1e-12: {checks[pname, sname]:.1e}")
            for sampler in SAMPLERS:
                for spacing in SPACINGS:
                    for target in cfg["nfes"]:
                        sig = schedule.sigmas(steps_for(sampler, target), spacing, dtype=F64)
                        out, nfe = run_ours(gmm, z, sig, sampler, schedule)
                        err = None if sampler in STOCHASTIC else rms(out, ref)
                        runs.append(Run("mmdiff", pname, sname, sampler, spacing, target, nfe, err, sw(out)))
            for name, label, family, make in diffusers_configs(sname):
                for target in cfg["nfes"]:
                    try:
                        out, nfe = run_diffusers(gmm, z, make(steps_for(name, target)), family)
                        err, dist = rms(out, ref), sw(out)
                        if not math.isfinite(err):
                            raise FloatingPointError("non-finite output")
                    except Exception as e:  # a failing configuration is a result, not a crash
                        log(f"  diffusers {name} {label} NFE {target} on {sname}: {type(e).__name__}: {e}")
                        nfe, err, dist = steps_for(name, target), math.nan, math.nan
                    assert nfe <= target, (name, nfe, target)
                    runs.append(Run("diffusers", pname, sname, name, label, target, nfe, err, dist))
            log(f"{pname} {sname}: samplers done at {time.perf_counter() - t0:.0f}s")
    return runs, floors, checks, references


def optimized_runs(cfg, runs, references, log) -> tuple[list[Run], dict, str]:
    """Schedules optimised on a held-out 64-D mixture over the range of the schedule of the best
    fixed pair at NFE 10 on gmm-64d, evaluated on each problem."""
    name = best([r for r in runs if r.problem == "gmm-64d" and r.target == 10 and r.side == "mmdiff"]).schedule
    schedule = get_schedule(name)
    train = random_mixture(seed=1)

    def prior(n, g):
        return schedule.sigma_max * torch.randn(n, train.dim, generator=g, dtype=F64)

    schedules = {}
    for sampler in OPTIMIZED:
        t0 = time.perf_counter()
        for target in (5, 10):
            schedules[sampler, target] = optimize_sigmas(
                train, prior, sampler, steps_for(sampler, target), sigma_min=schedule.sigma_min,
                sigma_max=schedule.sigma_max, iterations=cfg["opt_iterations"], num_samples=cfg["opt_samples"],
                generator=0, **schedule.sampler_options(sampler))
        for target in cfg["nfes"]:
            if target not in (5, 10):  # AYS-style: interpolate the 10-NFE schedule in log-sigma
                schedules[sampler, target] = log_interpolate(schedules[sampler, 10], steps_for(sampler, target))
        log(f"optimised {sampler} in {time.perf_counter() - t0:.0f}s")
    out_runs = []
    for pname in PROBLEMS:
        gmm, z, ref, sw = references[pname, name]
        for (sampler, target), sig in schedules.items():
            out, nfe = run_ours(gmm, z, sig, sampler, schedule)
            out_runs.append(Run("mmdiff", pname, name, sampler, "optimized", target, nfe, rms(out, ref), sw(out)))
    return out_runs, schedules, name


# ------------------------------------------------------------------------------------ reporting

def best(runs, key=lambda r: r.error):
    valid = [r for r in runs if key(r) is not None and math.isfinite(key(r))]
    return min(valid, key=key) if valid else None


def fmt(v) -> str:
    if v is None:
        return "–"
    return "fail" if isinstance(v, float) and math.isnan(v) else f"{v:.3g}"


def headline(runs, nfes, floors) -> tuple[str, dict]:
    rows, sw_rows, ratios = [], [], {}
    for pname in PROBLEMS:
        for target in nfes:
            sel = [r for r in runs if r.problem == pname and r.target == target]
            ours = best([r for r in sel if r.side == "mmdiff" and r.spacing != "optimized"])
            theirs = best([r for r in sel if r.side == "diffusers"])
            opt = best([r for r in sel if r.side == "mmdiff"])
            ratios[pname, target] = (ours.error / theirs.error, opt.error / theirs.error)
            rows.append([pname, target, f"{ours.pair} (NFE {ours.nfe})", fmt(ours.error),
                         f"{theirs.pair} (NFE {theirs.nfe})", fmt(theirs.error), f"{ratios[pname, target][0]:.3f}",
                         f"{opt.pair}", fmt(opt.error), f"{ratios[pname, target][1]:.3f}"])
            so = best([r for r in sel if r.side == "mmdiff" and r.spacing != "optimized"], key=lambda r: r.sw)
            st = best([r for r in sel if r.side == "diffusers"], key=lambda r: r.sw)
            sw_rows.append([pname, target, fmt(floors[pname]), f"{so.pair}", fmt(so.sw), f"{st.pair}", fmt(st.sw)])
    text = table(["problem", "NFE", "ours, best fixed spacing", "error", "diffusers, best", "error", "ours / diffusers",
                  "ours incl. optimized schedules", "error", "ours / diffusers"], rows)
    text += "\n\nSliced Wasserstein (lower is better; the floor is exact samples against exact samples):\n\n"
    text += table(["problem", "NFE", "floor", "ours, best", "SW", "diffusers, best", "SW"], sw_rows)
    return text, ratios


def full_tables(runs, nfes, side) -> str:
    parts = []
    for pname in PROBLEMS:
        keyed = {}
        for r in runs:
            if r.problem == pname and r.side == side:
                keyed.setdefault((r.schedule, r.sampler, r.spacing), {})[r.target] = r
        rows = []
        for (sname, sampler, spacing), by in keyed.items():
            rows.append([sname, sampler, spacing] + [fmt(by[t].error) if t in by else "" for t in nfes]
                        + [fmt(by[t].sw) if t in by else "" for t in nfes]
                        + ["/".join(str(by[t].nfe) for t in nfes if t in by)])
        header = ["schedule", "sampler", "spacing"] + [f"err@{t}" for t in nfes] + [f"SW@{t}" for t in nfes] + ["NFE"]
        parts.append(f"**{pname}, {side}**\n\n" + table(header, rows))
    return "\n\n".join(parts)


def samplers_section(cfg, runs, floors, checks, seconds, command) -> tuple[str, dict]:
    nfes = cfg["nfes"]
    text, ratios = headline(runs, nfes, floors)
    worst_ref = max(checks.values())
    r10 = ", ".join(f"{p}: {ratios[p, 10][0]:.3f} (fixed spacings) / {ratios[p, 10][1]:.3f} (with an optimized "
                    f"schedule)" for p in PROBLEMS)
    return f"""## Samplers: quality per denoiser evaluation

`{command}` on {machine()}; {seconds / 60:.1f} min for both sections.

Exact Gaussian-mixture denoisers, so every error is the sampler's: **ring-2d** (`ring_mixture()`,
{cfg['samples']['ring-2d']} samples) and **gmm-64d** (8 components in 64-D with random means and
anisotropic covariances, eigenvalues log-uniform in [1e-3, 1]; {cfg['samples']['gmm-64d']} samples).
Every sampler starts from the same normal draw times its first level, which is the schedule's full
sigma_max for every grid except "leading" (charged for the start it skips). **error**: RMS per
coordinate between the output and the exact probability-flow ODE endpoint from sigma_max (scipy
DOP853 in log-sigma, rtol 1e-10; the largest deviation from an rtol-1e-12 solve on a subset is
{worst_ref:.1e}). Deterministic samplers only. **SW**: sliced Wasserstein distance to exact
samples (256 projections). NFE counts model calls; a budget buys the steps that fit (Heun:
2 steps - 1). diffusers' schedulers get our float64 `alphas_cumprod`, `clip_sample=False`, the
same model and noise, and their own spacing options (`timestep_spacing`, `use_karras_sigmas`,
`use_exponential_sigmas`, `use_beta_sigmas`, `use_lu_lambdas`; EDM and flow schedulers for
those schedules). "Optimized" schedules come from `optimize_sigmas` on a *different* 64-D
mixture (see step-schedules below).

Best pair per problem and NFE, by endpoint error:

{text}

**Ours / diffusers at NFE 10** (below 1 means ours is better): {r10}. With fixed spacings both
sides run the same solvers on grids that often coincide (our flow "trailing" grid is diffusers'
`use_flow_sigmas` grid, and our `heun` in flow time on the linspace grid reproduces
`FlowMatchHeun` to every printed digit), so ratios near 1 are expected there, except where one side
has a grid the other lacks (diffusers' `FlowMatchHeun` runs on its default grid only); beyond that,
what separates them is the optimized schedules (last three columns), fitted on another mixture.

<details><summary>Full tables (error and SW per NFE budget; "–": stochastic; "fail": diffusers raised)</summary>

{full_tables(runs, nfes, "mmdiff")}

{full_tables(runs, nfes, "diffusers")}

</details>
""", ratios


def step_section(cfg, runs, schedules, name, command) -> tuple[str, dict]:
    nfes = cfg["nfes"]
    rows, gains = [], {}
    for pname in PROBLEMS:
        for target in nfes:
            sel = [r for r in runs if r.problem == pname and r.target == target and r.side == "mmdiff"]
            fixed = best([r for r in sel if r.spacing != "optimized"])
            opt = best([r for r in sel if r.spacing == "optimized"])
            gains[pname, target] = opt.error / fixed.error
            rows.append([pname, target, fixed.pair, fmt(fixed.error), fmt(fixed.sw), opt.pair, fmt(opt.error),
                         fmt(opt.sw), f"{gains[pname, target]:.3f}"])
    per_sampler = []
    for pname in PROBLEMS:
        for sampler in OPTIMIZED:
            for target in nfes:
                sel = {r.spacing: r for r in runs if r.problem == pname and r.side == "mmdiff" and r.schedule == name
                       and r.sampler == sampler and r.target == target}
                fixed = best([r for sp, r in sel.items() if sp != "optimized"])
                per_sampler.append([pname, sampler, target, fmt(sel["karras"].error), fmt(sel["logsnr"].error),
                                    f"{fixed.spacing} {fmt(fixed.error)}", fmt(sel["optimized"].error),
                                    f"{sel['optimized'].error / fixed.error:.3f}"])
    ks = []
    for pname in PROBLEMS:
        for sname in cfg["schedules"]:
            for target in nfes:
                sel = {(r.sampler, r.spacing): r.error for r in runs if r.problem == pname and r.side == "mmdiff"
                       and r.schedule == sname and r.target == target and r.error is not None}
                ratios = [sel[s, "logsnr"] / sel[s, "karras"] for s in DETERMINISTIC]
                gm = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
                wins = sum(v < 1 for v in ratios)
                ks.append([pname, sname, target, f"{gm:.3f}", f"{wins}/{len(ratios)}"])
    listing = "\n".join(f"- `{s}` NFE {t}: `{[round(v, 4) for v in sig.tolist()]}`"
                        for (s, t), sig in schedules.items() if t in (5, 10))
    schedule = get_schedule(name)
    return f"""## Optimized step schedules

`{command}` (the same run as the samplers section).

`mmdiff.core.step_search.optimize_sigmas` (Align-Your-Steps-style, Sabour et al. 2024) picks the
levels of a short solve so that its endpoint agrees with a fine solve of the same model from the
same noise; it needs only the denoiser. Each schedule here is optimised for one sampler and one
NFE budget on a **held-out** 64-D mixture (same recipe as gmm-64d, another seed;
{cfg['opt_samples']} starts, {cfg['opt_iterations']} sweeps) over the sigma range of `{name}`
({schedule.sigma_min:.3g} to {schedule.sigma_max:.6g}), the schedule of the best fixed pair at
NFE 10 on gmm-64d. It is then evaluated on ring-2d and gmm-64d against the same references as
the fixed grids. NFE 20 and 50 reuse the 10-NFE schedule through `log_interpolate`.

Best optimized pair against the best fixed pair over every schedule, spacing and sampler
(ratio below 1: the optimized schedule is better):

{table(["problem", "NFE", "best fixed pair", "error", "SW", "best optimized pair", "error", "SW", "ratio"], rows)}

Per sampler on `{name}`: Karras, logSNR-uniform, the best of our five spacings, and the
optimized schedule:

{table(["problem", "sampler", "NFE", "karras", "logsnr", "best fixed", "optimized", "opt. / best fixed"], per_sampler)}

logSNR-uniform against Karras (rho 7): geometric mean over the deterministic samplers of the
error ratio logsnr / karras, and how many samplers logsnr wins:

<details><summary>logsnr / karras per schedule and NFE</summary>

{table(["problem", "schedule", "NFE", "logsnr / karras", "logsnr wins"], ks)}

</details>

<details><summary>The optimized schedules (sigma_max first, 0 last)</summary>

{listing}

</details>
""", gains


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; print, do not touch docs/")
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    # One thread: the tensors are small, and on a shared machine a second torch thread that
    # waits for its core makes every call tens of times slower.
    pin_threads(1)
    command = "python benchmarks/samplers.py" + (" --quick" if args.quick else "")
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    runs, floors, checks, references = sweep(cfg, log)
    opt_runs, schedules, name = optimized_runs(cfg, runs, references, log)
    runs += opt_runs
    seconds = time.perf_counter() - start
    samplers_md, ratios = samplers_section(cfg, runs, floors, checks, seconds, command)
    steps_md, gains = step_section(cfg, runs, schedules, name, command)
    print(samplers_md)
    print(steps_md)
    for (p, t), (fixed, opt) in ratios.items():
        print(f"{p} NFE {t}: ours/diffusers {fixed:.3f} fixed spacings, {opt:.3f} with optimized; "
              f"optimized/best fixed {gains[p, t]:.3f}")
    if not args.quick:
        update_section("samplers", samplers_md)
        update_section("step-schedules", steps_md)
    print(f"total {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
