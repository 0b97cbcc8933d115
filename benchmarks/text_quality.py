"""Continuous text diffusion vs the autoregressive baseline: sample quality and throughput.

    python benchmarks/text_quality.py markov --diffusion runs/text-markov/export --ar runs/text-markov-ar/export
    python benchmarks/text_quality.py docstrings --diffusion runs/text-docstrings/export \
        --ar runs/text-docstrings-ar/export
    python benchmarks/text_quality.py temperature --diffusion runs/text-docstrings/export \
        --ar runs/text-docstrings-ar/export
    python benchmarks/text_quality.py training \
        --diffusion runs/text-docstrings-shipped-2000,runs/text-docstrings-8k/export --ar runs/text-docstrings-ar/export
    python benchmarks/text_quality.py throughput --diffusion runs/text-docstrings/export \
        --ar runs/text-docstrings-ar/export
    python benchmarks/text_quality.py steps --diffusion runs/text-docstrings/export \
        --ar runs/text-docstrings-ar/export

``markov`` (exact): NLL per token of samples under the true chain vs its entropy rate, and the
samples' unigram entropy vs the data's, for 8-128 steps and four samplers, next to AR samples.
``docstrings``: held-out perplexity of the AR baseline; generative perplexity (under the AR
baseline) of diffusion and AR samples; unigram entropy and distinct-2/3 vs held-out text.
``temperature``: the same scores for colder sampling (both models), to compare at matching entropy.
``training``: several exports of the docstrings recipe (``--diffusion a,b``, shortest training
first): held-out denoising cross-entropy at fixed noise levels and sample scores, side by side.
``steps``: dpmpp_2m against euler at 4x its steps on python-docstrings, with the model's
self-conditioning and without it; other samplers and an optimised schedule at 16 steps.
``throughput``: training and sampling tokens/s at equal model size. Each part rewrites its own
block of the ``text-quality`` / ``text-throughput`` sections of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
import mmdiff
from mmdiff.data.markov import MarkovChain, markov_corpus
from mmdiff.training import keep_freed_memory, resolve_precision
from mmdiff.core.guidance import keep_known
from mmdiff.core.step_search import optimize_sigmas
from mmdiff.eval.tables import DOC, machine, median_time, pin_threads, table, update_section
from mmdiff.eval.text import generate, heldout, markov_scores, perplexity, text_scores

MARKOV_STEPS = (8, 16, 32, 64, 128)
SAMPLERS = ("euler", "heun", "dpmpp_2m", "unipc")
STOCHASTIC = ("euler_ancestral", "dpmpp_2m_sde")  # extra rows at 64 steps: the best samplers on text
GAP_SIGMAS = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 20.0)
TEMPERATURES = (1.0, 0.7, 0.5, 0.3)
TRAINING_SIGMAS = (1.0, 2.0, 3.0, 5.0, 10.0)
STEPS_PER_TIMING = 4
# the options a reported command repeats when a run changed them
OPTION_DEFAULTS = {"heldout_windows": 512, "seed": 0, "train_batch": 32, "sample_batch": 32, "sample_steps": 64,
                   "repeats": 6}


def command(part: str, args) -> str:
    threads = f"OMP_NUM_THREADS={torch.get_num_threads()} BENCH_THREADS={torch.get_num_threads()} "
    extra = "".join(f" --{k} {getattr(args, k)}" for k, default in OPTION_DEFAULTS.items()
                    if getattr(args, k) != default)
    return f"`{threads}python benchmarks/text_quality.py {part} --diffusion {args.diffusion} --ar {args.ar}{extra}`"


def shuffled(ids: torch.Tensor, lengths: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each window's real tokens after the first in a random order: the data's unigram statistics
    without its word order, a reference for how a word salad scores."""
    g = torch.Generator().manual_seed(seed)
    out = ids.clone()
    for row, n in zip(out, lengths.tolist()):
        row[1:n] = row[1:n][torch.randperm(n - 1, generator=g)]
    return out


def load(path):
    return mmdiff.pipeline("text", model=path)


def load_avg() -> str:
    return "load average {:.1f} / {:.1f} / {:.1f} (1/5/15 min) on {} cores".format(*os.getloadavg(), os.cpu_count())


def write_block(name: str, markdown: str) -> None:
    """Rewrite block ``name`` inside its section, creating the section skeleton when missing."""
    section = name.rsplit("-", 1)[0]
    blocks = {"text-quality": ("text-quality-markov", "text-quality-docstrings", "text-quality-temperature",
                               "text-quality-training", "text-quality-steps"),
              "text-throughput": ("text-throughput-numbers",)}[section]
    if f"<!-- BEGIN {section} -->" not in (DOC.read_text() if DOC.exists() else ""):
        title = {"text-quality": "## Text: continuous diffusion vs autoregressive (quality)",
                 "text-throughput": "## Text: training and sampling throughput"}[section]
        update_section(section, title + "\n\n" + "\n\n".join(f"<!-- BEGIN {b} -->\n(not run yet)\n<!-- END {b} -->"
                                                            for b in blocks))
    update_section(name, markdown)


def exact_twin(pipe):
    """The same pipeline with its denoiser replaced by the chain's Bayes-optimal one over the
    model's own embeddings: what the samplers reach when the model is perfect."""
    twin = copy.copy(pipe)
    denoise = MarkovChain().denoiser(pipe.model.embeddings().detach())
    twin.denoiser = lambda: denoise
    return twin


@torch.no_grad()
def denoising_ce(model, tokens: torch.Tensor, sigma: float, g: torch.Generator):
    """Cross-entropy of ``tokens`` from the model's logits at noise level ``sigma`` (the model
    sees its own previous estimate once, as when sampling), and the noisy input."""
    E = model.embeddings().detach()
    x = E[tokens] + sigma * torch.randn(*tokens.shape, E.shape[1], generator=g)
    s = torch.full((len(tokens),), float(sigma))
    x0, logits = model.denoise(x, s, None)
    if model.config.self_conditioning:
        x0, logits = model.denoise(x, s, x0)
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten()).item(), x


def denoising_gap(pipe, sigmas=GAP_SIGMAS, num: int = 256, seed: int = 0) -> list[list]:
    """Cross-entropy of held-out tokens from the model's logits vs from the exact posterior, at
    fixed noise levels."""
    chain, model = MarkovChain(), pipe.model.eval()
    E, tokens = model.embeddings().detach(), markov_corpus("validation")[:num]
    g = torch.Generator().manual_seed(seed)
    rows = []
    for sigma in sigmas:
        ce_model, x = denoising_ce(model, tokens, sigma, g)
        post = chain.token_posterior(x, E, sigma)
        ce_exact = -post.gather(-1, tokens[..., None]).log().mean().item()
        rows.append([sigma, ce_model, ce_exact, ce_model - ce_exact])
    return rows


def markov(args) -> str:
    diff, ar = load(args.diffusion), load(args.ar)
    exact = exact_twin(diff)
    n = args.num_samples
    rows = []
    t0 = time.time()
    ids = generate(ar, n, seed=args.seed)
    s = markov_scores(ids)
    rate, data_h = s["entropy_rate"], s["data_entropy"]
    rows.append(["AR baseline (ancestral)", "-", "-", s["nll"], s["nll_ratio"], s["entropy"], s["entropy"] / data_h,
                 time.time() - t0])
    grid = [(sampler, steps) for sampler in SAMPLERS for steps in MARKOV_STEPS] + [(sa, 64) for sa in STOCHASTIC]
    for name, pipe in (("diffusion", diff), ("exact denoiser, same E", exact)):
        for sampler, steps in grid:
            t0 = time.time()
            ids = generate(pipe, n, seed=args.seed, num_inference_steps=steps, sampler=sampler)
            s = markov_scores(ids)
            rows.append([name, sampler, steps, s["nll"], s["nll_ratio"], s["entropy"], s["entropy"] / data_h,
                         time.time() - t0])
            print(rows[-1], flush=True)
    md = (f"**markov** (exact): {n} samples of 64 tokens per row; entropy rate of the chain {rate:.4f} "
          f"nats/token, unigram entropy of held-out data {data_h:.4f} nats (the held-out data's own NLL is "
          f"{s['data_nll']:.4f}). Goal: NLL within 10% of the entropy rate at 64 steps with sample entropy "
          f"within 5% of the data's. The last rows of each model are stochastic samplers (extra). The "
          f"\"exact denoiser\" rows run the same samplers on the chain's Bayes-optimal denoiser "
          f"(forward-backward over the model's own embeddings, `MarkovChain.denoiser`): the part of the "
          f"gap that is the sampler's. Models: `{args.diffusion}` ({diff.describe()}), `{args.ar}` "
          f"({ar.describe()}).\n\n"
          + table(["model", "sampler", "steps", "NLL/token", "NLL / entropy rate", "unigram entropy",
                   "entropy / data's", "seconds"], rows)
          + "\n\nWhere the model falls short of the exact denoiser: cross-entropy (nats/token) of 256 "
            "held-out sequences from the model's logits and from the exact posterior, at fixed noise levels.\n\n"
          + table(["sigma", "model CE", "exact CE", "model - exact"], denoising_gap(diff))
          + f"\n\n{machine()}; {load_avg()} at the end of the run.\n\n"
          f"Command: {command('markov', args)}")
    write_block("text-quality-markov", md)
    return md


def docstrings(args) -> str:
    diff, ar = load(args.diffusion), load(args.ar)
    n = args.num_samples
    ref_ids, ref_len = heldout(ar, "python-docstrings", args.heldout_windows)
    heldout_ppl = perplexity(ar, ref_ids, ref_len)
    ref = text_scores(ref_ids[:n], ar)  # distinct-n depends on the token count: compare like with like
    rows = [[f"held-out text ({n} windows)", "-", "-", perplexity(ar, ref_ids[:n], ref_len[:n]), ref["entropy"],
             ref["distinct2"], ref["distinct3"], "-"]]
    mixed = shuffled(ref_ids[:n], ref_len[:n], args.seed)
    s = text_scores(mixed, ar)
    rows.append(["same windows, tokens shuffled (word salad)", "-", "-", perplexity(ar, mixed, ref_len[:n]),
                 s["entropy"], s["distinct2"], s["distinct3"], "-"])
    t0 = time.time()
    s = text_scores(generate(ar, n, seed=args.seed), ar, ar)
    rows.append(["AR baseline (ancestral)", "-", "-", s["gen_ppl"], s["entropy"], s["distinct2"], s["distinct3"],
                 time.time() - t0])
    ar_ppl = s["gen_ppl"]
    # dpmpp_2m at a quarter of euler's steps, row for row (4 vs 16, 16 vs 64, 64 vs 256).
    grid = [("euler", st) for st in (16, 64, 256)] + [("dpmpp_2m", st) for st in (4, 16, 64)]
    grid += [(sa, 64) for sa in STOCHASTIC]
    for sampler, steps in grid:
        t0 = time.time()
        ids = generate(diff, n, seed=args.seed, num_inference_steps=steps, sampler=sampler)
        s = text_scores(ids, diff, ar)
        rows.append(["diffusion", sampler, steps, s["gen_ppl"], s["entropy"], s["distinct2"], s["distinct3"],
                     time.time() - t0])
        print(rows[-1], flush=True)
    # the same samples drawn with bf16 weights (scored by the float32 AR baseline): sampling's fast path
    for name, path, kw in (("diffusion, bf16 weights", args.diffusion, {"num_inference_steps": 64, "sampler": "dpmpp_2m"}),
                           ("AR baseline, bf16 weights", args.ar, {})):
        t0, fast = time.time(), load(path).to(dtype=torch.bfloat16)
        s = text_scores(generate(fast, n, seed=args.seed, **kw), fast, ar)
        rows.append([name, kw.get("sampler", "-"), kw.get("num_inference_steps", "-"), s["gen_ppl"], s["entropy"],
                     s["distinct2"], s["distinct3"], time.time() - t0])
        print(rows[-1], flush=True)
    sample = diff(num_samples=2, length=diff.max_length, generator=0, num_inference_steps=64, sampler="dpmpp_2m")
    cont = diff("The function returns", max_new_tokens=32, generator=0, num_inference_steps=64, sampler="dpmpp_2m")
    md = (f"**python-docstrings**: {n} samples of {diff.max_length} tokens per row (starting at a document "
          f"start), scored by the AR baseline; held-out perplexity of the AR baseline: **{heldout_ppl:.2f}** over "
          f"{int(ref_len.sum())} validation tokens. Goal: diffusion generative perplexity within 1.5x of the AR "
          f"samples' ({1.5 * ar_ppl:.1f}) at matching entropy, and dpmpp_2m matching euler in 4x fewer steps "
          f"(the last rows: stochastic samplers, extra). "
          f"Models: `{args.diffusion}` ({diff.describe()}), `{args.ar}` ({ar.describe()}).\n\n"
          + table(["samples", "sampler", "steps", "gen. perplexity", "unigram entropy", "distinct-2", "distinct-3",
                   "seconds"], rows)
          + "\n\nDiffusion samples (dpmpp_2m, 64 steps):\n\n"
          + "\n".join(f"    {t!r}" for t in sample)
          + f"\n\n`pipe(\"The function returns\", max_new_tokens=32)` -> `{cont!r}`\n\n"
          f"{machine()}; {load_avg()} at the end of the run.\n\n"
          f"Command: {command('docstrings', args)}")
    write_block("text-quality-docstrings", md)
    return md


def temperature(args) -> str:
    """Colder sampling on python-docstrings: generative perplexity against unigram entropy for the
    diffusion model (the score interpolation's softmax temperature) and the AR baseline (its
    sampling temperature), so the two can be compared at matching entropy."""
    diff, ar = load(args.diffusion), load(args.ar)
    rows = []
    for tau in TEMPERATURES:
        for name, pipe, kw in (("diffusion", diff, {"num_inference_steps": args.sample_steps, "sampler": "dpmpp_2m"}),
                               ("AR baseline", ar, {})):
            s = text_scores(generate(pipe, args.num_samples, seed=args.seed, temperature=tau, **kw), pipe, ar)
            rows.append([name, tau, s["gen_ppl"], s["entropy"], s["distinct2"]])
            print(rows[-1], flush=True)
    md = (f"**Temperature** (python-docstrings): {args.num_samples} samples of {diff.max_length} tokens per row, "
          f"diffusion with dpmpp_2m {args.sample_steps} steps, scored by the AR baseline. Models: `{args.diffusion}`, "
          f"`{args.ar}`.\n\n"
          + table(["samples", "temperature", "gen. perplexity", "unigram entropy", "distinct-2"], rows)
          + f"\n\n{machine()}; {load_avg()} at the end of the run.\n\nCommand: {command('temperature', args)}")
    write_block("text-quality-temperature", md)
    return md


def training(args) -> str:
    """The same recipe trained for longer (``--diffusion a,b,...``, the exports in order of
    training length) on python-docstrings: held-out denoising cross-entropy at fixed noise levels
    (full-sequence windows, no tokens given) and the samples' generative perplexity and entropy."""
    ar = load(args.ar)
    rows = []
    for path in args.diffusion.split(","):
        diff = load(path)
        model = diff.model.eval()
        ids, lengths = heldout(diff, "python-docstrings", args.heldout_windows)
        full = ids[lengths == diff.max_length][:256]
        g = torch.Generator().manual_seed(args.seed)
        ces = [denoising_ce(model, full, sigma, g)[0] for sigma in TRAINING_SIGMAS]  # no_grad inside
        for sampler in ("dpmpp_2m", "dpmpp_2m_sde"):
            ids = generate(diff, args.num_samples, seed=args.seed, num_inference_steps=args.sample_steps,
                           sampler=sampler)
            s = text_scores(ids, diff, ar)
            rows.append([f"`{path}`", *ces, sampler, s["gen_ppl"], s["entropy"], s["distinct2"]])
            print(rows[-1], flush=True)
    md = (f"**Training length** (python-docstrings): held-out cross-entropy (nats/token) of "
          f"{len(full)} full 64-token validation windows from the model's logits at fixed noise levels, and "
          f"{args.num_samples} samples per row ({args.sample_steps} steps) scored by the AR baseline `{args.ar}`.\n\n"
          + table(["model", *(f"CE at sigma {s:g}" for s in TRAINING_SIGMAS), "sampler", "gen. perplexity",
                   "unigram entropy", "distinct-2"], rows)
          + f"\n\n{machine()}; {load_avg()} at the end of the run.\n\nCommand: {command('training', args)}")
    write_block("text-quality-training", md)
    return md


def search_sigmas(pipe, steps: int, num: int, seed: int) -> torch.Tensor:
    """A dpmpp_2m schedule for ``pipe`` from ``optimize_sigmas``, started from the warp spacing too,
    on unconditional solves from ``bos`` as the pipeline runs them."""
    E, c = pipe.model.embeddings(), pipe.model.config
    L, D = pipe.max_length, E.shape[1]
    known, mask = torch.zeros(num, L, D), torch.zeros(num, L, D)
    known[:, 0], mask[:, 0] = E[pipe.tokenizer.bos_id], 1
    den = keep_known(pipe.denoiser(), known, mask, mask_kwarg="given")
    return optimize_sigmas(den, lambda n, g: c.sigma_max * torch.randn(n, L, D, generator=g), "dpmpp_2m", steps,
                           sigma_min=c.sigma_min, sigma_max=c.sigma_max, iterations=4, num_samples=num,
                           reference_sampler="dpmpp_2m", reference_steps=256, init=pipe.sigmas(steps, "warp"),
                           generator=seed)


def steps(args) -> str:
    """Why dpmpp_2m does not match euler at a quarter of its steps on python-docstrings: the same
    comparison with self-conditioning switched off, which makes the denoiser a function of
    (x, sigma) alone again; then other samplers, spacings and a searched schedule at 16 steps."""
    diff, ar = load(args.diffusion), load(args.ar)
    n, rows, ppl = args.num_samples, [], {}

    def row(label, sampler, count, **kw):
        t0 = time.time()
        s = text_scores(generate(diff, n, seed=args.seed, num_inference_steps=count, sampler=sampler, **kw), diff, ar)
        ppl[label, sampler, count] = s["gen_ppl"]
        count = count or len(kw["sigmas"]) - 1
        rows.append([label, sampler, count, s["gen_ppl"], s["entropy"], s["distinct2"], time.time() - t0])
        print(rows[-1], flush=True)

    for label, sc in (("self-conditioned (default)", True), ("self-conditioning off", False)):
        for sampler, counts in (("euler", (16, 64, 256)), ("dpmpp_2m", (4, 16, 64))):
            for count in counts:
                row(label, sampler, count, self_conditioning=sc)
    for sampler in ("unipc", "dpmpp_2m_sde", "euler_ancestral"):
        row("self-conditioned, 16 steps", sampler, 16)
    for spacing in ("karras", "logsnr"):
        row(f"self-conditioned, `{spacing}` spacing", "dpmpp_2m", 16, spacing=spacing)
    t0 = time.time()
    searched = search_sigmas(diff, 16, 64, args.seed)
    search_s = time.time() - t0
    row("self-conditioned, searched schedule", "dpmpp_2m", None, sigmas=searched)
    ratios = "; ".join(f"{label}: " + ", ".join(
        f"dpmpp_2m {k} / euler {4 * k} = {ppl[label, 'dpmpp_2m', k] / ppl[label, 'euler', 4 * k]:.2f}"
        for k in (4, 16, 64)) for label in ("self-conditioned (default)", "self-conditioning off"))
    md = (f"**Steps** (python-docstrings): {n} samples of {diff.max_length} tokens per row, `warp` spacing unless "
          f"named, scored by the AR baseline. Generative perplexity ratios, {ratios}. Searched schedule: "
          f"`optimize_sigmas` for dpmpp_2m at 16 steps (endpoint distance to a 256-step solve on 64 starts, 4 "
          f"sweeps from the best of Karras, logSNR, flow-time and the warp spacing; {search_s:.0f} s): "
          f"{[round(v, 3) for v in searched.tolist()]}. Models: `{args.diffusion}` ({diff.describe()}), "
          f"`{args.ar}`.\n\n"
          + table(["denoiser", "sampler", "steps", "gen. perplexity", "unigram entropy", "distinct-2", "seconds"], rows)
          + f"\n\n{machine()}; {load_avg()} at the end of the run.\n\nCommand: {command('steps', args)}")
    write_block("text-quality-steps", md)
    return md


def throughput(args) -> str:
    """Training step (forward, backward, AdamW) and sampling, diffusion vs AR, alternated so that
    both see the same machine load."""
    diff, ar = load(args.diffusion), load(args.ar)
    keep_freed_memory()  # as the Trainer does on a CPU
    rows = []
    L, B = diff.max_length, args.train_batch
    tokens = torch.randint(4, diff.model.config.vocab_size, (B, L))
    # fp32, and bf16 autocast where the Trainer's `--mixed_precision auto` picks it (this CPU's default)
    precisions = ["fp32"] + (["bf16"] if resolve_precision("auto") == "bf16" else [])
    fns = {}
    for name, pipe in (("diffusion", diff), ("AR", ar)):
        model = pipe.model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)  # as the Trainer
        for precision in precisions:
            def steps(model=model, opt=opt, bf16=precision == "bf16"):
                for _ in range(STEPS_PER_TIMING):  # diffusion: half the steps add a self-conditioning pass
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        out = model(tokens)
                    out["loss"].backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            fns[name, precision] = steps
    times = {key: [] for key in fns}
    for _ in range(args.repeats):
        for key, fn in fns.items():
            times[key].append(median_time(fn, warmup=1, repeats=1) / STEPS_PER_TIMING)
    for (name, precision), ts in times.items():
        sec = sorted(ts)[len(ts) // 2]
        rows.append([f"{name} training step, {precision}", f"{B} x {L}", sec, B * L / sec])
    for precision in precisions:  # the ratio of each alternated round, then the median
        ratios = sorted(d / a for d, a in zip(times["diffusion", precision], times["AR", precision]))
        rows.append([f"diffusion / AR step time, {precision} (median of per-round ratios)", "-",
                     ratios[len(ratios) // 2], "-"])
    # sampling with float32 weights, and bf16 weights where the CPU computes bf16 natively
    pipes = {("diffusion", "fp32"): diff, ("AR", "fp32"): ar}
    if "bf16" in precisions:
        pipes["diffusion", "bf16"] = load(args.diffusion).to(dtype=torch.bfloat16)
        pipes["AR", "bf16"] = load(args.ar).to(dtype=torch.bfloat16)
    for pipe in pipes.values():
        pipe.model.eval()
    n = args.sample_batch
    kw = {"diffusion": {"num_inference_steps": args.sample_steps, "sampler": "dpmpp_2m"}, "AR": {}}
    samp = {key: [] for key in pipes}
    for _ in range(max(1, args.repeats // 2)):
        for (name, precision), pipe in pipes.items():
            t0 = time.perf_counter()
            generate(pipe, n, seed=0, **kw[name])
            samp[name, precision].append(time.perf_counter() - t0)
    for name, precision in pipes:
        sec = sorted(samp[name, precision])[len(samp[name, precision]) // 2]
        what = f"dpmpp_2m {args.sample_steps} steps" if name == "diffusion" else "ancestral, no KV cache"
        rows.append([f"{name} sampling ({what}), {precision} weights", f"{n} x {L}", sec, n * L / sec])
    c = diff.model.config
    params = {name: sum(p.numel() for p in pipe.model.parameters()) for name, pipe in (("diffusion", diff), ("AR", ar))}
    md = (f"Both models {c.depth} x {c.hidden_size} (diffusion {params['diffusion'] / 1e6:.2f}M parameters, AR "
          f"{params['AR'] / 1e6:.2f}M), vocabulary {c.vocab_size}, training in float32 and under bf16 autocast "
          f"(the Trainer's CPU default where the CPU computes bf16 natively), sampling with float32 and with bf16 "
          f"weights (`mmdiff.pipeline(\"text\", dtype=torch.bfloat16)`), freed memory "
          f"kept as the Trainer keeps it (`keep_freed_memory`). A diffusion training step includes the "
          f"self-conditioning forward on half of the batches and the time-warp fit. Training: median over "
          f"{args.repeats} alternated rounds of {STEPS_PER_TIMING} steps each; sampling: median of "
          f"{max(1, args.repeats // 2)} alternated runs.\n\n"
          + table(["what", "batch", "seconds", "tokens/s"], rows)
          + f"\n\n{machine()}; {load_avg()} at the end of the run (shared machine: absolute numbers move with "
          f"the load, the ratios less so).\n\n"
          f"Command: {command('throughput', args)}")
    write_block("text-throughput-numbers", md)
    return md


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["markov", "docstrings", "temperature", "training", "steps", "throughput"])
    parser.add_argument("--diffusion", required=True)
    parser.add_argument("--ar", required=True)
    parser.add_argument("--num_samples", type=int, default=None)
    parser.add_argument("--heldout_windows", type=int, default=OPTION_DEFAULTS["heldout_windows"])
    parser.add_argument("--seed", type=int, default=OPTION_DEFAULTS["seed"])
    parser.add_argument("--train_batch", type=int, default=OPTION_DEFAULTS["train_batch"])
    parser.add_argument("--sample_batch", type=int, default=OPTION_DEFAULTS["sample_batch"])
    parser.add_argument("--sample_steps", type=int, default=OPTION_DEFAULTS["sample_steps"])
    parser.add_argument("--repeats", type=int, default=OPTION_DEFAULTS["repeats"])
    args = parser.parse_args(argv)
    args.num_samples = args.num_samples or {"markov": 128, "docstrings": 64, "temperature": 64, "training": 64,
                                           "steps": 192, "throughput": 0}[args.part]
    pin_threads()
    parts = {"markov": markov, "docstrings": docstrings, "temperature": temperature, "training": training,
             "steps": steps, "throughput": throughput}
    print(parts[args.part](args))


if __name__ == "__main__":
    main()
