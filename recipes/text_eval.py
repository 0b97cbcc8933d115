"""Score exported text pipelines (diffusion or the autoregressive baseline).

    python recipes/text_eval.py --model runs/text-markov/export              # markov: exact NLL of samples
    python recipes/text_eval.py --model runs/text-docstrings/export --scorer runs/text-docstrings-ar/export
    python recipes/text_eval.py --model runs/text-docstrings-ar/export       # + held-out perplexity (AR)

On ``markov`` the samples are scored exactly: NLL per token under the true chain (its entropy rate
is the floor a perfect sampler reaches on average) and their unigram entropy next to the data's.
On text, the generative perplexity of samples is ``exp`` of their mean NLL per token under an AR
scorer, reported with the samples' unigram entropy and distinct-2/3 next to held-out text's.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from transformers import HfArgumentParser

import mmdiff
from mmdiff.eval.text import generate, heldout, markov_scores, perplexity, text_scores


@dataclass
class EvalArgs:
    model: str | None = field(default=None, metadata={"help": "exported pipeline (default: the shipped one)"})
    scorer: str | None = field(default=None, metadata={"help": "AR pipeline for generative perplexity"})
    data: str | None = field(default=None, metadata={"help": "held-out data (default: what the model trained on)"})
    num_samples: int = 64
    length: int | None = field(default=None, metadata={"help": "tokens per sample (default: the model's window)"})
    steps: int | None = None
    sampler: str | None = None
    seed: int = 0
    batch_size: int = 64
    heldout_windows: int = 512


def main(args: EvalArgs) -> dict:
    pipe = mmdiff.pipeline("text", model=args.model)
    data = args.data or pipe.config.extra.get("data", "python-docstrings")
    scorer = mmdiff.pipeline("text", model=args.scorer) if args.scorer else None
    kw = {} if pipe.model.config.objective == "ar" else {"num_inference_steps": args.steps, "sampler": args.sampler}
    t0 = time.time()
    ids = generate(pipe, args.num_samples, args.length, args.seed, args.batch_size, **kw)
    result = {"model": args.model or "shipped", "objective": pipe.model.config.objective, **{
        k: v for k, v in kw.items() if v is not None}, "seconds": time.time() - t0}
    if data == "markov":
        result.update(markov_scores(ids))
    else:
        result.update(text_scores(ids, pipe, scorer))
        ref_ids, ref_len = heldout(pipe, data, args.heldout_windows)
        result["heldout"] = text_scores(ref_ids[: args.num_samples], pipe)  # as many windows as samples
        ar = pipe if pipe.model.config.objective == "ar" else scorer
        if ar is not None:
            ref_ids, ref_len = heldout(ar, data, args.heldout_windows)
            result["heldout"]["ppl"] = perplexity(ar, ref_ids, ref_len)
    print(json.dumps(result, indent=2))
    print("samples:\n" + "\n---\n".join(pipe.tokenizer.decode(r) for r in ids[:3].tolist()))
    return result


if __name__ == "__main__":
    main(HfArgumentParser(EvalArgs).parse_args_into_dataclasses()[0])
