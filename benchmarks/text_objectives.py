"""Equal compute: the autoregressive baseline, continuous (CDCD) and masked (MDLM) diffusion on the
same DiT, trained with the same recipe, parameter count and tokens, one after another.

    OMP_NUM_THREADS=1 python benchmarks/text_objectives.py train docstrings --steps 1500
    OMP_NUM_THREADS=1 python benchmarks/text_objectives.py score docstrings
    OMP_NUM_THREADS=1 python benchmarks/text_objectives.py train markov --steps 1500
    OMP_NUM_THREADS=1 python benchmarks/text_objectives.py score markov

``train`` runs the text recipe (``recipes/configs/text_<data>.yaml``, the shipped tokenizer on
docstrings) once per objective into ``runs/objectives/<data>/<objective>``, recording wall and
process CPU time; ``score`` measures, per model: the held-out likelihood (AR: exact NLL; masked:
the NELBO; continuous: the Gaussian diffusion ELBO bound, ``TextModel.continuous_nelbo``), samples
at 16/32/64/128 steps scored by the AR baseline of the same run (docstrings: generative
perplexity; markov: exact NLL under the true chain), unigram entropy, and training / sampling
tokens per second; it rewrites the ``text-objectives-<data>`` block of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

import mmdiff
from mmdiff.eval.tables import DOC, machine, table, update_section
from mmdiff.eval.text import generate, heldout, markov_scores, perplexity, text_scores
from mmdiff.modalities.text import TextArgs, TextTask
from mmdiff.training import TrainConfig, parse_config, run

ROOT = Path(__file__).resolve().parent.parent
OBJECTIVES = ("ar", "continuous", "masked")
STEPS = (16, 32, 64, 128)
TOKENIZER = ROOT / "mmdiff" / "assets" / "text-docstrings" / "tokenizer"


def folder(data: str, objective: str) -> Path:
    return ROOT / "runs" / "objectives" / data / objective


def train(args) -> None:
    for objective in args.objectives.split(","):
        out = folder(args.data, objective)
        argv = ["--config", str(ROOT / "recipes" / "configs" / f"text_{args.data}.yaml"), "--objective", objective,
                "--output_dir", str(out), "--max_steps", str(args.steps), "--checkpointing_steps", str(args.steps),
                "--validation_steps", "0", "--report_to", "none", "--progress", "false", "--seed", str(args.seed)]
        if args.data == "docstrings":
            argv += ["--tokenizer", str(TOKENIZER)]
        config, text_args = parse_config([TrainConfig, TextArgs], argv)
        wall, cpu = time.perf_counter(), time.process_time()
        run(TextTask(text_args, output_dir=out), config)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        tokens = args.steps * config.batch_size * text_args.max_length
        info = {"objective": objective, "steps": args.steps, "batch_size": config.batch_size,
                "max_length": text_args.max_length, "tokens": tokens, "wall_s": wall, "cpu_s": cpu,
                "threads": torch.get_num_threads(), "load": os.getloadavg()}
        (out / "timing.json").write_text(json.dumps(info, indent=2))
        print(json.dumps(info), flush=True)


def likelihood(pipe, ids, lengths) -> float:
    """Held-out NLL (AR, exact) or bound (diffusion) per token, bos excluded, in nats."""
    model = pipe.model.eval()
    valid = torch.arange(ids.shape[1])[None] < lengths[:, None]
    bos = pipe.tokenizer.bos_id
    given = torch.zeros_like(valid) if bos is None else (ids == bos) & (torch.arange(ids.shape[1])[None] == 0)
    g = torch.Generator().manual_seed(0)
    total, count = 0.0, 0
    for s in range(0, len(ids), 64):
        x, v, gv = ids[s:s + 64], valid[s:s + 64], given[s:s + 64]
        mask = None if bool(v.all()) else v
        n = (v & ~gv).sum(1)
        if model.config.objective == "ar":
            per_seq = (model.nll(x, mask) * (v & ~gv)).sum(1)
        elif model.config.objective == "masked":
            per_seq = model.nelbo(x, mask, gv, draws=8, generator=g) * n
        else:
            per_seq = model.continuous_nelbo(x, mask, gv, draws=8, generator=g) * n
        total, count = total + per_seq.sum().item(), count + int(n.sum())
    return total / count


def sample_kwargs(pipe, steps: int) -> dict:
    return {} if pipe.model.config.objective == "ar" else {"num_inference_steps": steps}


def score(args) -> str:
    pipes = {o: mmdiff.pipeline("text", model=folder(args.data, o) / "export") for o in OBJECTIVES}
    ar = pipes["ar"]
    data = "markov" if args.data == "markov" else "python-docstrings"
    ids, lengths = heldout(ar, data, args.heldout)
    rows, results = [], {}
    for objective, pipe in pipes.items():
        timing = json.loads((folder(args.data, objective) / "timing.json").read_text())
        params = sum(p.numel() for p in pipe.model.parameters())
        bound = likelihood(pipe, ids, lengths)
        for steps in (STEPS if objective != "ar" else ("-",)):
            t0, c0 = time.perf_counter(), time.process_time()
            sample = generate(pipe, args.num_samples, seed=args.seed, **sample_kwargs(pipe, steps))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if args.data == "markov":
                s = markov_scores(sample)
                quality = s["nll"]
            else:
                s = text_scores(sample, pipe, ar)
                quality = s["gen_ppl"]
            rows.append([objective, f"{params / 1e6:.2f}M", timing["tokens"], f"{timing['wall_s']:.0f} / {timing['cpu_s']:.0f}",
                         timing["tokens"] / timing["cpu_s"], bound, pipe.config.sampler if objective != "ar" else "ancestral",
                         steps, quality, s["entropy"], sample.numel() / cpu])
            results[f"{objective}-{steps}"] = {"quality": quality, "entropy": s["entropy"], "bound": bound,
                                               "sample_tokens_per_cpu_s": sample.numel() / cpu, "wall": wall}
            print(rows[-1], flush=True)
    (ROOT / "runs" / "objectives" / args.data / "scores.json").write_text(json.dumps(results, indent=2))
    return write(args, rows)


def write(args, rows) -> str:
    if args.data == "markov":
        from mmdiff.data.markov import MarkovChain
        rate = MarkovChain().entropy_rate()
        what = (f"exact NLL/token of the samples under the true chain (entropy rate {rate:.4f}; goal: within 10%, "
                f"<= {1.1 * rate:.4f})")
    else:
        what = "generative perplexity of the samples under the AR baseline of this table"
    header = ["objective", "parameters", "training tokens", "train wall / CPU s", "train tokens per CPU s",
              "held-out NLL or bound (nats/token)", "sampler", "steps", "sample quality", "unigram entropy",
              "sample tokens per CPU s"]
    md = (f"**{args.data}**, {args.num_samples} samples of 64 tokens per row, {rows[0][2] / 1e6:.1f}M training "
          f"tokens per model; sample "
          f"quality = {what}. Likelihood column: AR exact NLL, masked the MDLM NELBO, continuous the Gaussian "
          f"diffusion ELBO (upper bounds; 8 draws per window over {args.heldout} held-out windows, the leading "
          f"bos excluded).\n\n" + table(header, rows)
          + f"\n\n{machine()}, one torch thread (`OMP_NUM_THREADS=1`), runs one after another on a machine "
          f"shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end of scoring): wall time "
          f"includes time slices lost to them, CPU time does not.\n\nCommand: `OMP_NUM_THREADS=1 python "
          f"benchmarks/text_objectives.py train {args.data} --steps N; ... score {args.data}`")
    update_section(f"text-objectives-{args.data}", md)
    return md


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("train", "score"))
    parser.add_argument("data", choices=("docstrings", "markov"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--num_samples", type=int, default=128)
    parser.add_argument("--heldout", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(train(args) if args.part == "train" else score(args))


if __name__ == "__main__":
    main()
