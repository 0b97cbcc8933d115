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
import math
import time
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

import mmdiff
from mmdiff.data.text import MarkovChain, build_text_corpus, markov_corpus
from mmdiff.eval.metrics import distinct_n, unigram_entropy
from mmdiff.modalities.text import TokenWindows, pack_documents


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


def generate(pipe, num: int, length: int | None = None, seed: int = 0, batch_size: int = 64, **kw) -> torch.Tensor:
    """(num, length) token ids; sample i always uses generator ``seed * 1_000_003 + i``."""
    out = []
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(n)]
        out.append(pipe.generate_ids(num_samples=n, length=length or pipe.max_length, generator=gens, **kw))
    return torch.cat(out).cpu()


def markov_scores(ids: torch.Tensor) -> dict:
    """Exact NLL per token of samples under the true chain, and unigram entropies (nats)."""
    chain = MarkovChain()
    data = markov_corpus("validation")
    nll = chain.nll_per_token(ids).mean().item()
    rate = chain.entropy_rate()
    return {"nll": nll, "entropy_rate": rate, "nll_ratio": nll / rate, "entropy": unigram_entropy(ids),
            "data_entropy": unigram_entropy(data), "data_nll": chain.nll_per_token(data).mean().item()}


def heldout(pipe, data: str, max_windows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation windows (ids, lengths) tokenized like the training data."""
    corpus = build_text_corpus(data, "validation")
    tok, L = pipe.tokenizer, pipe.max_length
    if corpus.tokens is not None:
        return corpus.tokens[:max_windows, :L], torch.full((min(max_windows, len(corpus.tokens)),), L)
    stream, starts = pack_documents(tok.encode_batch(corpus.texts), L, tok.bos_id, tok.eos_id)
    windows = TokenWindows(stream, starts, L, tok.pad_id)
    items = [windows[i] for i in range(min(max_windows, len(windows)))]
    return torch.stack([it["tokens"] for it in items]), torch.stack([it["length"] for it in items])


def perplexity(scorer, ids: torch.Tensor, lengths: torch.Tensor | None = None, batch_size: int = 64) -> float:
    """exp(mean NLL per token) under an AR pipeline, over all real tokens."""
    total, count = 0.0, 0
    for s in range(0, len(ids), batch_size):
        chunk = ids[s: s + batch_size]
        n = torch.full((len(chunk),), chunk.shape[1]) if lengths is None else lengths[s: s + batch_size]
        total += (scorer.nll(chunk, n).cpu() * n).sum().item()
        count += int(n.sum())
    return math.exp(total / count)


def for_scorer(ids: torch.Tensor, pipe, scorer) -> torch.Tensor:
    """Samples in the scorer's tokens: as they are when both share a tokenizer, else re-encoded."""
    if pipe.tokenizer.config.digest == scorer.tokenizer.config.digest:
        return ids
    L = scorer.max_length
    rows = [scorer.tokenizer.encode(pipe.tokenizer.decode(r))[:L] for r in ids.tolist()]
    rows = [r + [scorer.tokenizer.pad_id] * (L - len(r)) for r in rows]
    return torch.tensor(rows)


def text_scores(ids: torch.Tensor, pipe, scorer=None) -> dict:
    """Unigram entropy and distinct-2/3 of the samples' tokens (and generative perplexity)."""
    special = pipe.tokenizer.special_ids
    rows = [[t for t in r if t not in special] for r in ids.tolist()]
    out = {"entropy": unigram_entropy(rows), "distinct2": distinct_n(rows, 2), "distinct3": distinct_n(rows, 3)}
    if scorer is not None:
        out["gen_ppl"] = perplexity(scorer, for_scorer(ids, pipe, scorer))
    return out


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
