"""Scores of generated text: exact NLL on ``markov``, generative perplexity under an AR scorer,
unigram entropy and distinct-n, and held-out windows tokenized like the training data. Shared by
``recipes/text_eval.py``, the text benchmarks and the tests."""
from __future__ import annotations

import math
import re

import torch

from ..data.markov import MarkovChain, markov_corpus
from ..data.text import build_text_corpus
from ..data.windows import TokenWindows, pack_documents
from .metrics import distinct_n, unigram_entropy


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


def words(text: str) -> list[str]:
    """Lower-cased runs of letters: what counts as a word for ``word_share``."""
    return re.findall(r"[a-z]+", text.lower())


def word_share(texts: list[str], reference: list[str]) -> float:
    """Share of the words of ``texts`` that occur somewhere in ``reference`` (e.g. the training
    docstrings): 1 for text made of known words, low for invented ones ("diten")."""
    known = {w for t in reference for w in words(t)}
    found = [w for t in texts for w in words(t)]
    if not found:
        raise ValueError("word_share: the texts hold no words to score")
    return sum(w in known for w in found) / len(found)
