"""End to end through the one Trainer: the text recipe trains a small diffusion model on markov and
its samples are scored exactly under the true chain."""
from pathlib import Path

import pytest
import torch

import mmdiff
from mmdiff.data.markov import MarkovChain, markov_corpus

from mmdiff.eval.text import generate
from recipes.text_train import main as train_main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_markov_diffusion_beats_unigram_and_uniform(tmp_path):
    export = train_main(["--config", str(ROOT / "recipes" / "configs" / "text_markov.yaml"),
                         "--output_dir", str(tmp_path / "run"), "--max_steps", "600", "--batch_size", "32",
                         "--depth", "3", "--learning_rate", "0.003", "--lr_warmup_steps", "50",
                         "--validation_steps", "0", "--checkpointing_steps", "1000",
                         "--report_to", "none", "--progress", "false"])
    pipe = mmdiff.pipeline("text", model=export)
    assert pipe.model.config.objective == "continuous" and pipe.tokenizer.vocab_size == 32
    ids = generate(pipe, 64, num_inference_steps=32, sampler="dpmpp_2m")
    chain = MarkovChain()
    nll = chain.nll_per_token(ids).mean().item()
    # Exact NLL per transition of samples from a unigram model (tokens drawn independently from the
    # stationary distribution) and from a uniform one, under the same chain.
    logp, pi = chain.transition.log(), chain.stationary
    unigram = -(pi[:, None] * pi[None, :] * logp).sum().item()
    uniform = -logp.mean().item()
    print(f"NLL/token of samples {nll:.3f}; entropy rate {chain.entropy_rate():.3f}; unigram samples "
          f"{unigram:.3f}, uniform samples {uniform:.3f}")
    assert nll < unigram - 2.0 and nll < uniform - 2.0
    data = markov_corpus("validation")
    # Prompts hold: a given prefix comes back exactly.
    prompt = data[:4, :16]
    given = torch.zeros(4, 64, dtype=torch.bool)
    given[:, :16] = True
    ids = torch.zeros(4, 64, dtype=torch.long)
    ids[:, :16] = prompt
    out = pipe.generate_ids(ids, given, num_inference_steps=16, generator=0)
    assert torch.equal(out[:, :16], prompt)
