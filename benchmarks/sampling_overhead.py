"""Sampling overhead: our samplers against diffusers' schedulers per step, and DiT-S/2 sampling
latency end to end against diffusers' DiTPipeline.

    python benchmarks/sampling_overhead.py          # rewrites the sampling-overhead section
    python benchmarks/sampling_overhead.py --quick  # fewer repeats, batch 2, prints only
    python benchmarks/sampling_overhead.py --device cuda  # the same on a GPU, plus DiT-XL/2 end to
                                                          # end; rewrites sampling-overhead-gpu

Per step: a solve of 50 steps on a (2, 4, 8, 8) tensor with a trivial eps network (``0.1 * x``),
so almost all time is the solver's own Python and tensor bookkeeping. Ours is
``samplers.sample`` over ``Denoiser(net, linear schedule, "eps")`` (the eps -> x0 conversion
diffusers' ``step`` does inside); "bare" is the sampler alone over a plain ``D(x, sigma)``.
diffusers' loop is the documented one: ``set_timesteps``, then ``scale_model_input``, the network
and ``step`` per timestep. Reported per network evaluation (Heun: 2 steps - 1).

End to end: DiT-S/2, random init, 32x32x4 latents, batch 8 with classifier-free guidance at
scale 4 (one forward of 16 per step), labels from 10 classes, DPM-Solver++(2M), 25 steps, DDPM
linear schedule, eps prediction, no learned sigma. Both models have the 1000-class table (+ null):
DiTPipeline hard-codes 1000 as the null label. Decoding is excluded on both sides: DiTPipeline
gets an identity VAE (scaling factor 1), ours returns latents. On a GPU every timed call ends with
``torch.cuda.synchronize``; both sides run float32 with torch's defaults (no TF32 matmuls).
"""
from __future__ import annotations

import argparse
import os
import statistics
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from diffusers import (DDIMScheduler, DiTPipeline, DiTTransformer2DModel, DPMSolverMultistepScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, UniPCMultistepScheduler)

from mmdiff.eval.tables import (CLOCKS, add_clock_option, chosen_clock, diffusers_dit_options, machine, paired_times,
                                pin_threads, synchronize, table, update_section)
from mmdiff.core.dit import DiT
from mmdiff.core.guidance import cfg
from mmdiff.core.parametrization import Denoiser
from mmdiff.core.samplers import evaluations, sample
from mmdiff.core.schedules import get_schedule

SCHEDULERS = {
    "euler": EulerDiscreteScheduler,
    "dpmpp_2m": lambda **kw: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **kw),
    "unipc": UniPCMultistepScheduler,
    "heun": HeunDiscreteScheduler,
    "ddim": DDIMScheduler,
}
STEPS, SHAPE = 50, (2, 4, 8, 8)
CPU_NOTE = ("Times are CPU time of one thread: the two cores were shared with other jobs; CPU time is "
            "not inflated by time slices lost to them.\n\n")
clock = CLOCKS["wall"]
device = torch.device("cpu")


def synced(fn):
    """``fn`` followed by a wait for the GPU, so that a host clock times its work."""
    if device.type != "cuda":
        return fn

    def run():
        out = fn()
        synchronize(device)
        return out
    return run


def trivial_net(x, timestep, **cond):
    return 0.1 * x



# ------------------------------------------------------------------------------- per step

def ours_solve(name: str, denoiser):
    schedule = get_schedule("linear")
    x = torch.randn(SHAPE, device=device)

    def run():
        sigmas = schedule.sigmas(STEPS)
        return sample(denoiser, x * float(sigmas[0]), sigmas, name, progress=False)
    return synced(run)


def diffusers_solve(name: str):
    scheduler = SCHEDULERS[name](num_train_timesteps=1000, beta_schedule="linear")
    x = torch.randn(SHAPE, device=device)

    def run():
        scheduler.set_timesteps(STEPS, device=device)
        latents = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            eps = trivial_net(scheduler.scale_model_input(latents, t), t)
            latents = scheduler.step(eps, t, latents).prev_sample
        return latents
    timed = synced(run)
    timed.evaluations = lambda: len(scheduler.timesteps)
    return timed


class CountOps(TorchDispatchMode):
    """ATen ops that compute (each a kernel launch on a GPU) and reads of a value back to Python."""
    VIEWS = {"view", "expand", "select", "slice", "alias", "detach", "unsqueeze", "squeeze", "t", "unbind"}

    def __init__(self):
        super().__init__()
        self.compute = self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.reads += name == "_local_scalar_dense"
        self.compute += name not in self.VIEWS and name != "_local_scalar_dense"
        return func(*args, **(kwargs or {}))


def ops_per_evaluation(fn, evaluations: int) -> tuple[float, float]:
    fn()  # warm: memos filled, as in the timed rounds
    with CountOps() as count:
        fn()
    return count.compute / evaluations, count.reads / evaluations


def per_step(repeats: int) -> list[list]:
    rows = []
    for name in SCHEDULERS:
        fns = {"ours": ours_solve(name, Denoiser(trivial_net, get_schedule("linear"), "eps")),
               "bare": ours_solve(name, lambda x, sigma: 0.5 * x),
               "diffusers": diffusers_solve(name)}
        times = paired_times(fns, repeats, clock=clock)
        ours_evals, theirs_evals = evaluations(name, STEPS), fns["diffusers"].evaluations()
        us = {k: 1e6 * statistics.median(v) / (theirs_evals if k == "diffusers" else ours_evals)
              for k, v in times.items()}
        ops, reads = ops_per_evaluation(fns["ours"], ours_evals)
        ops_d, reads_d = ops_per_evaluation(fns["diffusers"], theirs_evals)
        rows.append([name, ours_evals, theirs_evals, us["ours"], us["bare"], us["diffusers"],
                     f"**{us['diffusers'] / us['ours']:.2f}x**", f"{us['diffusers'] / us['bare']:.2f}x",
                     f"{ops:.1f} / {ops_d:.1f}", f"{reads:.2f} / {reads_d:.2f}"])
        print(rows[-1], flush=True)
    return rows


# ---------------------------------------------------------------------------- end to end

def dit_pair(preset: str = "DiT-S/2", seed: int = 0):
    torch.manual_seed(seed)
    with device:
        ours = DiT.from_preset(preset, in_channels=4, input_size=32, num_classes=1000).eval()
        theirs = DiTTransformer2DModel(**diffusers_dit_options(preset, out_channels=4)).eval()
    return ours, theirs


class IdentityVAE(torch.nn.Module):
    """What DiTPipeline needs of a VAE, decoding to the latents themselves."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(scaling_factor=1.0)
        self.device, self.dtype = device, torch.float32

    def decode(self, latents):
        return SimpleNamespace(sample=latents)


def end_to_end(batch: int, steps: int, repeats: int, preset: str = "DiT-S/2") -> dict:
    ours_model, theirs_model = dit_pair(preset)
    labels = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(0)).to(device)
    schedule = get_schedule("linear")
    guided = cfg(Denoiser(ours_model, schedule, "eps"), 4.0, {"class_labels": labels},
                 {"class_labels": torch.full_like(labels, ours_model.null_class)})

    def ours():
        sigmas = schedule.sigmas(steps)
        x = torch.randn(batch, 4, 32, 32, device=device) * (1 + float(sigmas[0]) ** 2) ** 0.5
        return sample(guided, x, sigmas, "dpmpp_2m", progress=False)

    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear")
    pipe = DiTPipeline(transformer=theirs_model, vae=IdentityVAE(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)

    def theirs():
        return pipe(class_labels=labels.tolist(), guidance_scale=4.0, num_inference_steps=steps,
                    output_type="pt").images

    warmup = int(device.type == "cuda")  # kernels' first-call set-up is not sampling
    times = paired_times({"ours": synced(ours), "diffusers": synced(theirs)}, repeats, warmup=warmup, clock=clock)
    result = {k: statistics.median(v) for k, v in times.items()}
    result["ratio"] = statistics.median(a / b for a, b in zip(times["diffusers"], times["ours"]))
    print(result, flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", help="cuda: the GPU tables (sampling-overhead-gpu section)")
    add_clock_option(parser)
    args = parser.parse_args()
    threads, load = pin_threads(), os.getloadavg()[0]
    global clock, device
    clock = chosen_clock(parser, args, threads)
    device = torch.device(args.device)
    rows = per_step(5 if args.quick else 21)
    batch, steps = (2, 5) if args.quick else (8, 25)
    presets = ["DiT-S/2", "DiT-XL/2"] if device.type == "cuda" else ["DiT-S/2"]
    e2e = {p: end_to_end(batch, steps, 1 if args.quick else 3, p) for p in presets}
    if args.quick:
        return
    gpu = device.type == "cuda"
    command = (f"python benchmarks/sampling_overhead.py --device {args.device}" if gpu else
               f"BENCH_THREADS={threads} python benchmarks/sampling_overhead.py --clock {args.clock}")
    per_step_table = table(["sampler", "our evaluations", "diffusers evaluations", "ours us/eval",
                            "ours bare sampler us/eval", "diffusers us/eval", "overhead diffusers/ours",
                            "diffusers/ours bare", "ops/eval ours / diffusers",
                            "reads/eval ours / diffusers"], rows)
    e2e_table = table(["", "ours s", "diffusers DiTPipeline s", "latency diffusers/ours"],
                      [[f"{p}, batch {batch}, CFG 4, {steps} steps", r["ours"], r["diffusers"],
                        f"**{r['ratio']:.2f}x**"] for p, r in e2e.items()])
    machine_line = f"Machine: {machine()}" + ("" if gpu else f"; load average {load:.1f} when the run started")
    update_section("sampling-overhead-gpu" if gpu else "sampling-overhead",
                   f"{machine_line}.\n\nCommand: `{command}`\n\n" + CPU_NOTE * (args.clock == "cpu") +
                   f"**Per network evaluation**, {STEPS} steps on a {tuple(SHAPE)} tensor, trivial eps network "
                   f"(median of paired rounds):\n\n{per_step_table}\n\n"
                   "\"ours\" includes the `Denoiser` (eps -> x0, the conversion diffusers' `step` does "
                   "inside); \"bare\" is the sampler over a plain `D(x, sigma)`. diffusers' loop is "
                   "`set_timesteps`, then `scale_model_input`, network, `step` per timestep. "
                   "*ops/eval*: ATen ops of one solve that compute (not views), per evaluation, "
                   "counted with a `TorchDispatchMode`, the network's one `mul` included: on a GPU "
                   "each is a kernel launch, the bulk of the per-step cost. *reads/eval*: values "
                   "read back to Python (`item`, `float`): on a GPU each waits for the device.\n\n"
                   f"**End to end** (decoding excluded on both sides: identity VAE for DiTPipeline, "
                   f"latents for ours; random-init DiT, 32x32x4, labels from 10 classes of the "
                   f"1000-class table DiTPipeline requires, DPM-Solver++(2M), linear schedule"
                   f"{', float32 without TF32, every call ends with a device synchronize' if gpu else ''}):"
                   f"\n\n{e2e_table}")


if __name__ == "__main__":
    main()
