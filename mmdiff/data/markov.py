"""The built-in ``markov`` text data: token sequences from a fixed random Markov chain whose
entropy rate and sequence likelihood are known exactly, so a generative model can be scored
exactly (and its Bayes-optimal denoiser is closed form)."""
from __future__ import annotations

import string

import numpy as np
import torch

from . import check_split, stable_int

MARKOV_SIZES = {"train": 4096, "validation": 256}
MARKOV_LENGTH = 64
MARKOV_ALPHABET = string.ascii_lowercase + string.ascii_uppercase + string.digits


class MarkovChain:
    """A fixed random first-order Markov chain over ``vocab_size`` token ids, scored exactly.

    Row ``i`` of ``transition`` is ``(1 - smoothing) * Dirichlet(concentration) + smoothing / V``.
    The sparse Dirichlet gives each state a handful of likely successors (3.6 of 32 cover 90% of the
    mass at the defaults); the small uniform part makes every transition possible, so the NLL of any
    generated sequence is finite and the chain has one stationary distribution. The defaults give
    1.250 nats/token (uniform: log 32 = 3.466). The matrix depends only on the arguments (and on
    numpy's ``Generator.dirichlet``, whose stream numpy may change between releases).
    """

    def __init__(self, vocab_size: int = 32, seed: int = 0, concentration: float = 0.05,
                 smoothing: float = 0.01):
        if vocab_size < 2 or concentration <= 0 or not 0 < smoothing <= 1:
            raise ValueError(f"need vocab_size >= 2, concentration > 0 and 0 < smoothing <= 1; got "
                             f"{vocab_size=}, {concentration=}, {smoothing=}")
        rows = np.random.default_rng(seed).dirichlet(np.full(vocab_size, concentration), vocab_size)
        self.vocab_size = vocab_size
        self.transition = (1 - smoothing) * torch.from_numpy(rows) + smoothing / vocab_size  # (V, V)
        self.transition /= self.transition.sum(1, keepdim=True)  # exact row sums after rounding
        self.stationary = _stationary(self.transition)  # (V,)

    def entropy_rate(self) -> float:
        """``H = -sum_i pi_i sum_j P_ij log P_ij`` in nats per token."""
        return -(self.stationary[:, None] * torch.special.xlogy(self.transition, self.transition)).sum().item()

    def log_prob(self, tokens: torch.Tensor) -> torch.Tensor:
        """Exact log-likelihood ``(B,)`` (float64) of ``(B, L)`` token ids, the first drawn from ``stationary``."""
        tokens = self._check_tokens(tokens)
        first = self.stationary.log()[tokens[:, 0]]  # (B,)
        steps = self.transition.log()[tokens[:, :-1], tokens[:, 1:]]  # (B, L-1)
        return first + steps.sum(1)

    def nll_per_token(self, tokens: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per token ``(B,)``; averages to ``entropy_rate()`` on the chain's own samples."""
        return -self.log_prob(tokens) / tokens.shape[1]

    def sample(self, num: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(num, length)`` LongTensor started from the stationary distribution."""
        tokens = torch.empty(num, length, dtype=torch.long)
        tokens[:, 0] = torch.multinomial(self.stationary.expand(num, -1), 1, generator=generator)[:, 0]
        for t in range(1, length):
            tokens[:, t] = torch.multinomial(self.transition[tokens[:, t - 1]], 1, generator=generator)[:, 0]
        return tokens

    def posterior(self, log_evidence: torch.Tensor) -> torch.Tensor:
        """Exact marginals ``p(token_i = v | evidence)`` ``(B, L, V)`` by forward-backward, for
        independent per-position evidence ``log p(y_i | token_i = v)`` ``(B, L, V)`` (float64 inside)."""
        ev = log_evidence.double()
        logp, alpha, beta = self.transition.log(), torch.empty_like(ev), torch.zeros_like(ev)
        alpha[:, 0] = self.stationary.log() + ev[:, 0]
        for t in range(1, ev.shape[1]):
            alpha[:, t] = torch.logsumexp(alpha[:, t - 1, :, None] + logp, 1) + ev[:, t]
        for t in range(ev.shape[1] - 2, -1, -1):
            beta[:, t] = torch.logsumexp(logp + (ev[:, t + 1] + beta[:, t + 1])[:, None, :], 2)
        return torch.softmax(alpha + beta, -1)

    def token_posterior(self, x: torch.Tensor, embeddings: torch.Tensor, sigma) -> torch.Tensor:
        """``p(token_i = v | x)`` ``(B, L, V)`` for noisy embeddings ``x = E[tokens] + sigma * eps``
        ``(B, L, D)``; ``embeddings`` ``(V, D)`` must have rows of equal norm; ``sigma`` a number or ``(B,)``."""
        E = embeddings.detach().double()
        s2 = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1) ** 2
        # log N(x; E_v, s2) up to terms constant in v (all rows of E have the same norm)
        return self.posterior((x.double() @ E.T) / s2)

    def denoiser(self, embeddings: torch.Tensor):
        """The Bayes-optimal score-interpolation denoiser ``D(x, sigma) = E[E_token | x]`` for
        sequences of this chain embedded by ``embeddings`` under VE noise: the closed-form
        reference a trained text model approximates, so sampler error and model error can be
        measured apart."""
        E = embeddings.detach().double()

        def denoise(x: torch.Tensor, sigma: torch.Tensor, **_) -> torch.Tensor:
            return (self.token_posterior(x, E, sigma) @ E).to(x.dtype)
        return denoise

    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.shape[1] == 0 or tokens.dtype.is_floating_point:
            raise ValueError(f"expected integer token ids of shape (B, L) with L >= 1, got "
                             f"{tuple(tokens.shape)} {tokens.dtype}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got "
                             f"[{tokens.min().item()}, {tokens.max().item()}]")
        return tokens.long()


def _stationary(transition: torch.Tensor) -> torch.Tensor:
    """Exact stationary distribution: solve ``pi P = pi`` with one equation replaced by ``sum(pi) = 1``."""
    size = transition.shape[0]
    system = transition.T - torch.eye(size, dtype=transition.dtype)
    system[-1] = 1.0
    rhs = torch.zeros(size, dtype=transition.dtype)
    rhs[-1] = 1.0
    return torch.linalg.solve(system, rhs)


def markov_corpus(split: str = "train", num_sequences: int | None = None, length: int = MARKOV_LENGTH,
                  seed: int = 0, chain: MarkovChain | None = None) -> torch.Tensor:
    """``(num_sequences, length)`` token ids sampled from ``chain`` (default ``MarkovChain()``).

    Each ``(seed, split)`` pair has its own random stream, so the same call always gives the same
    tensor and train and validation differ. ``num_sequences`` defaults to ``MARKOV_SIZES[split]``.
    """
    check_split(split, ("train", "validation"))
    chain = chain or MarkovChain()
    generator = torch.Generator().manual_seed(stable_int(f"markov/{seed}/{split}"))
    return chain.sample(num_sequences or MARKOV_SIZES[split], length, generator)


def render_tokens(tokens: torch.Tensor) -> list[str]:
    """Token ids ``(B, L)`` as strings of letters (0 -> 'a', 26 -> 'A', 52 -> '0') for display."""
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= len(MARKOV_ALPHABET)):
        raise ValueError(f"render_tokens shows ids in [0, {len(MARKOV_ALPHABET)}), got "
                         f"[{tokens.min().item()}, {tokens.max().item()}]")
    return ["".join(MARKOV_ALPHABET[i] for i in row) for row in tokens.tolist()]
