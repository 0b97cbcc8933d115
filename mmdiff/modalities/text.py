"""The text modality: continuous diffusion over token embeddings (CDCD, Dieleman et al. 2022), on
the same core as images and video.

    pipe = mmdiff.pipeline("text")                                   # the shipped docstrings model
    pipe("The function returns", max_new_tokens=64)                  # a continuation (str)
    pipe(num_samples=4, length=64)                                   # unconditional samples
    pipe("Return the ____ of the ____.", infill_marker="____")       # infilling

A token sequence becomes a sequence of learned embeddings ``E[tokens]`` whose rows are kept at norm
``sqrt(embed_dim)``; noise is added in the core's VE form ``x = x0 + sigma * eps``. The core DiT sees
``[c_in(sigma) * x, x0_hat_prev]`` per token (self-conditioning) and predicts logits over the
vocabulary, trained with cross-entropy. The denoiser handed to the core samplers is the *score
interpolation* ``D(x, sigma) = softmax(logits) @ E``, so every core sampler runs unchanged; sampling
ends with the nearest embedding (= argmax token). Training noise levels follow CDCD's time warping:
a monotone piecewise-linear fit of the loss over log sigma whose slope is the sampling density.

Prompts and infilling are given tokens: clean embeddings held by ``core.guidance.keep_known`` and
flagged to the DiT by its learned given-embedding; training gives random prefixes and spans.
``objective="ar"`` builds the autoregressive baseline: the same DiT, causal, next-token CE.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import PartialState
from torch import nn

from ..core.checkpoint import PretrainedMixin, config_to_dict
from ..core.dit import DiT, DiTConfig
from ..core.parametrization import LevelMemo, append_dims, host_level, sample_training_sigmas
from ..core.patch import PatchConfig
from ..core.samplers import per_sample_generators
from ..core.schedules import EDMSchedule
from ..data.text import MARKOV_ALPHABET, DataError, build_text_corpus
from ..pipelines import Pipeline, PipelineConfig, register_component, register_pipeline
from .text_tokenizers import TOKENIZERS, AlphabetTokenizer, Tokenizer, load_tokenizer, train_sentencepiece

for _cls in TOKENIZERS:
    register_component(_cls)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
OBJECTIVES = ("diffusion", "ar")
NOISE_DISTRIBUTIONS = ("warp", "uniform", "lognormal", "loguniform")
Tensor = torch.Tensor


# ------------------------------------------------------------------------------------ time warp

class TimeWarp(nn.Module):
    """CDCD's time warping over ``u = (log sigma - log sigma_min) / (log sigma_max - log sigma_min)``.

    ``F(u) = offset + sum of bin heights below u`` (linear inside a bin, heights > 0) is fitted to
    the observed cross-entropy by least squares; training draws ``u`` with density proportional to
    ``F'(u)``, i.e. where the loss changes fastest, and sampling can space its steps the same way."""

    def __init__(self, bins: int, total: float):
        super().__init__()
        self.bins = bins
        # Start as a straight line from 0 to ``total`` (about log V), so the fit only learns the shape.
        self.logits = nn.Parameter(torch.full((bins,), math.log(math.expm1(total / bins))))
        self.offset = nn.Parameter(torch.zeros(()))

    def heights(self) -> Tensor:
        return F.softplus(self.logits.float()) + 1e-4  # (K,)

    def loss_curve(self, u: Tensor) -> Tensor:
        """``F(u)`` for ``u`` in [0, 1]."""
        h = self.heights()
        pos = u.float().clamp(0, 1) * self.bins
        idx = pos.floor().long().clamp(max=self.bins - 1)
        below = torch.cat([h.new_zeros(1), h.cumsum(0)])[idx]
        return self.offset + below + h[idx] * (pos - idx)

    @torch.no_grad()
    def inverse(self, q: Tensor) -> Tensor:
        """``u`` at which the normalised warp ``(F - offset) / total`` equals ``q`` in [0, 1], on
        ``q``'s device (the host, for sampling grids and training levels)."""
        h = self.heights().double().to(q.device)
        cdf = torch.cat([h.new_zeros(1), h.cumsum(0)]) / h.sum()
        q = q.double().clamp(0, 1)
        idx = (torch.searchsorted(cdf, q, right=True) - 1).clamp(0, self.bins - 1)
        frac = (q - cdf[idx]) / (cdf[idx + 1] - cdf[idx])
        return ((idx + frac) / self.bins).clamp(0, 1)

    def sample(self, n: int, generator=None) -> Tensor:
        return self.inverse(torch.rand(n, generator=generator, dtype=torch.float64))


# ------------------------------------------------------------------------------------ the model

def token_ce(logits: Tensor, tokens: Tensor) -> Tensor:
    """Cross-entropy per token (B, L) of logits (B, L, V), in float32."""
    # log_softmax converts to float32 as it reads: no separate float32 copy of the (B, L, V) logits
    logp = F.log_softmax(logits.flatten(0, 1), dim=-1, dtype=torch.float32)
    return F.nll_loss(logp, tokens.flatten(), reduction="none").view(tokens.shape)


@dataclass
class TextModelConfig:
    vocab_size: int = 4096
    max_length: int = 64
    objective: str = "diffusion"  # "diffusion" | "ar" (causal next-token baseline, same DiT)
    embed_dim: int = 64
    hidden_size: int = 256
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    positions: str = "rope"  # "rope" | "learned" | "sincos"
    qk_norm: bool = False
    self_conditioning: bool = True
    self_cond_prob: float = 0.5  # share of training batches that see a previous estimate
    sigma_min: float = 1.0
    sigma_max: float = 300.0
    rho: float = 7.0
    noise_distribution: str = "warp"  # training noise levels: warp | uniform | lognormal | loguniform
    warp_bins: int = 64
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective '{self.objective}'; choose one of {OBJECTIVES}")
        if self.noise_distribution not in NOISE_DISTRIBUTIONS:
            raise ValueError(f"unknown noise_distribution '{self.noise_distribution}'; "
                             f"choose one of {NOISE_DISTRIBUTIONS}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")


class TextModel(PretrainedMixin, nn.Module):
    """Token embeddings + the core DiT over the token sequence.

    ``model(tokens, attention_mask=None, given=None)`` returns the training loss (a dict), so that
    accelerate's wrappers see the forward; ``denoise`` and ``ar_logits`` are the inference paths."""

    config_class = TextModelConfig

    def __init__(self, config: TextModelConfig):
        super().__init__()
        self.config = c = config
        self.diffusion = c.objective == "diffusion"
        # The AR model reads one extra row: the start symbol its first prediction is conditioned on.
        self.embedding = nn.Parameter(torch.randn(c.vocab_size + (0 if self.diffusion else 1), c.embed_dim))
        channels = c.embed_dim * (2 if self.diffusion and c.self_conditioning else 1)
        self.dit = DiT(DiTConfig(
            patch=PatchConfig("sequence", channels, (c.max_length,), positions=c.positions),
            out_channels=c.vocab_size, hidden_size=c.hidden_size, depth=c.depth, num_heads=c.num_heads,
            mlp_ratio=c.mlp_ratio, qk_norm=c.qk_norm, given_embedding=self.diffusion,
            attention="joint" if self.diffusion else "causal", gradient_checkpointing=c.gradient_checkpointing))
        self.warp = (TimeWarp(c.warp_bins, math.log(c.vocab_size))
                     if self.diffusion and c.noise_distribution == "warp" else None)
        self._levels = LevelMemo(self._level_inputs)

    @property
    def schedule(self) -> EDMSchedule:
        """VE noise levels over the embeddings; ``alpha`` is c_in = 1 / sqrt(1 + sigma^2) (unit
        variance per dimension)."""
        c = self.config
        return EDMSchedule(sigma_lo=c.sigma_min, sigma_hi=c.sigma_max, rho=c.rho, sigma_data=1.0)

    def embeddings(self) -> Tensor:
        """(V, D) rows of norm sqrt(D): the fixed norm is a reparametrisation, not a penalty."""
        c = self.config
        return F.normalize(self.embedding[: c.vocab_size].float(), dim=-1) * math.sqrt(c.embed_dim)

    # -------------------------------------------------------------------------- diffusion
    def logits(self, x: Tensor, sigma: Tensor, self_cond: Tensor | None = None, given: Tensor | None = None,
               attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, L, V) for noisy embeddings ``x`` (B, L, D) at VE levels ``sigma`` (B,).
        ``given`` (B, L) or (B, L, D), 1 = a clean given token, which is not input-scaled."""
        _, (c_in, timestep) = self._levels(sigma, x)
        timestep = timestep.expand(x.shape[0])
        g = None
        if given is not None:
            g = (given.amax(-1) if given.ndim == 3 else given).to(x.device, torch.float32)[..., None]  # (B, L, 1)
        x_in = x.float() * c_in if g is None else torch.lerp(x.float() * c_in, x.float(), g)
        if self.config.self_conditioning:
            prev = torch.zeros_like(x_in) if self_cond is None else self_cond.float()
            x_in = torch.cat([x_in, prev if g is None else torch.lerp(prev, x.float(), g)], dim=-1)
        dtype = self.embedding.dtype
        return self.dit(x_in.to(dtype), timestep, given=g, attention_mask=attention_mask)

    def _level_inputs(self, sigma: Tensor, ndim: int) -> tuple[Tensor, Tensor]:
        """``(c_in (n, 1, 1), timestep (n,))`` float32 on sigma's device, computed in float64 there."""
        s, sched = sigma.double(), self.schedule
        c_in, timestep = (v.to(sigma.device, torch.float32) for v in (sched.alpha(s), sched.timestep(s)))
        return append_dims(c_in, ndim), timestep

    def score_interpolation(self, logits: Tensor, temperature: float = 1.0) -> Tensor:
        """``x0_hat = softmax(logits / temperature) @ E`` (B, L, D) in float32; temperature 0: the
        argmax token's embedding."""
        if temperature == 0:
            return self.embeddings()[logits.argmax(-1)]
        scaled = logits if temperature == 1 else logits.float() / temperature
        return torch.softmax(scaled, dim=-1, dtype=torch.float32) @ self.embeddings()

    def denoise(self, x: Tensor, sigma: Tensor, self_cond: Tensor | None = None, temperature: float = 1.0,
                **cond) -> tuple[Tensor, Tensor]:
        """``(x0_hat, logits)``; ``cond``: ``given``, ``attention_mask``."""
        logits = self.logits(x, sigma, self_cond, **cond)
        return self.score_interpolation(logits, temperature), logits

    def training_sigmas(self, n: int, device) -> tuple[Tensor, Tensor]:
        """Noise levels (n,) for a batch and their warp coordinate ``u``."""
        c, sched = self.config, self.schedule
        lo, hi = math.log(c.sigma_min), math.log(c.sigma_max)
        if c.noise_distribution == "warp":
            u = self.warp.sample(n)
            sigma = (lo + u * (hi - lo)).exp()
        elif c.noise_distribution == "loguniform":
            sigma = (lo + torch.rand(n, dtype=torch.float64) * (hi - lo)).exp()
        else:  # the core's: uniform over the schedule's time, or EDM's lognormal
            mean = 0.5 * (lo + hi) if c.noise_distribution == "lognormal" else None
            sigma = sample_training_sigmas(sched, n, c.noise_distribution, mean=mean, std=(hi - lo) / 4).double()
        u = (sigma.log() - lo) / (hi - lo)
        return sigma.float().to(device), u.float().to(device)

    def diffusion_loss(self, tokens: Tensor, attention_mask: Tensor | None = None, given: Tensor | None = None,
                       sigma: Tensor | None = None, noise: Tensor | None = None) -> dict:
        """Cross-entropy of the tokens that are neither given nor padding, at random noise levels;
        plus the time warp's least-squares fit to the per-sequence loss."""
        B, L = tokens.shape
        E = self.embeddings()
        x0 = E[tokens]  # (B, L, D)
        valid = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        g = torch.zeros_like(valid) if given is None else given.bool()
        if sigma is None:
            sigma, u = self.training_sigmas(B, tokens.device)
        else:
            u = None
        noise = torch.randn_like(x0) if noise is None else noise
        x = x0 + sigma[:, None, None] * noise * (~g)[..., None]  # given tokens stay clean
        cond = {"given": g if given is not None else None, "attention_mask": attention_mask}
        self_cond = None
        if self.config.self_conditioning and torch.rand(()) < self.config.self_cond_prob:
            with torch.no_grad():
                self_cond = self.score_interpolation(self.logits(x, sigma, None, **cond))
        logits = self.logits(x, sigma, self_cond, **cond)  # (B, L, V)
        target = valid & ~g
        ce = token_ce(logits, tokens)  # (B, L)
        per_seq = (ce * target).sum(1) / target.sum(1).clamp(min=1)
        loss = (ce * target).sum() / target.sum().clamp(min=1)
        logs = {"ce": loss.detach()}
        if self.warp is not None and u is not None:
            has = target.any(1)
            warp_loss = ((self.warp.loss_curve(u) - per_seq.detach()) ** 2 * has).sum() / has.sum().clamp(min=1)
            loss = loss + warp_loss
            logs["warp_mse"] = warp_loss.detach()
        return {"loss": loss, "logs": logs, "per_sequence": per_seq.detach(), "sigma": sigma}

    def warp_sigmas(self, steps: int) -> Tensor:
        """``steps`` levels equally spaced in the learned warp (CDCD samples this way), then 0."""
        c = self.config
        u = self.warp.inverse(torch.linspace(1, 0, steps, dtype=torch.float64))
        lo, hi = math.log(c.sigma_min), math.log(c.sigma_max)
        sig = (lo + u * (hi - lo)).exp()
        return torch.cat([sig, sig.new_zeros(1)]).float()

    # ------------------------------------------------------------------------- autoregressive
    def ar_logits(self, tokens: Tensor) -> Tensor:
        """(B, L, V) logits where position t predicts ``tokens[:, t]`` from ``tokens[:, :t]``."""
        start = torch.full_like(tokens[:, :1], self.config.vocab_size)
        inputs = torch.cat([start, tokens[:, :-1]], dim=1)
        E = F.normalize(self.embedding.float(), dim=-1) * math.sqrt(self.config.embed_dim)
        x = E[inputs].to(self.embedding.dtype)  # (B, L, D)
        # Right padding never reaches a real position under causal attention, so no mask is needed
        # (SDPA takes either a mask or is_causal, not both).
        return self.dit(x, torch.zeros(tokens.shape[0], device=tokens.device))

    def ar_loss(self, tokens: Tensor, attention_mask: Tensor | None = None) -> dict:
        ce = token_ce(self.ar_logits(tokens), tokens)  # (B, L)
        valid = torch.ones_like(ce, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        loss = (ce * valid).sum() / valid.sum().clamp(min=1)
        return {"loss": loss, "logs": {"ce": loss.detach()},
                "per_sequence": (ce * valid).sum(1) / valid.sum(1).clamp(min=1)}

    @torch.no_grad()
    def nll(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Per-token negative log-likelihood (B, L) of an AR model (0 at padded positions)."""
        if self.diffusion:
            raise ValueError("exact likelihoods come from the autoregressive model (objective 'ar')")
        ce = token_ce(self.ar_logits(tokens), tokens)
        return ce if attention_mask is None else ce * attention_mask

    def forward(self, tokens: Tensor, attention_mask: Tensor | None = None, given: Tensor | None = None) -> dict:
        """The training loss of a batch: ``{"loss", "logs", "per_sequence"}``."""
        if self.diffusion:
            return self.diffusion_loss(tokens, attention_mask, given)
        return self.ar_loss(tokens, attention_mask)


register_component(TextModel)


class ScoreInterpolation:
    """The denoiser the core samplers call: ``D(x, sigma) = softmax(logits) @ E``.

    Self-conditioning needs the previous estimate and samplers are stateless, so it lives here.
    Every sampler calls at non-increasing levels, so a call at a higher (tagged) level than the last
    one starts a new solve and forgets the old estimate: one object serves many solves (a step
    search). ``last_logits`` is kept for callers that want token probabilities."""

    def __init__(self, model: TextModel):
        self.model, self.prev, self.last_logits, self.level = model, None, None, None

    def __call__(self, x: Tensor, sigma: Tensor, self_conditioning: bool = True, **cond) -> Tensor:
        use = self_conditioning and self.model.config.self_conditioning
        level = host_level(sigma)
        if level is not None and self.level is not None and level > self.level:
            self.prev = None
        self.level = level
        prev = self.prev if use and self.prev is not None and self.prev.shape == x.shape else None
        x0, self.last_logits = self.model.denoise(x, sigma, prev, **cond)
        if use:
            self.prev = x0
        return x0.to(x.dtype)


# ------------------------------------------------------------------------------------ data

def pack_documents(docs: list[list[int]], length: int, bos: int | None, eos: int | None) -> tuple[Tensor, Tensor]:
    """The stream ``[bos] doc [eos] [bos] doc [eos] ...`` (int32) and the window starts (int64).

    A window of ``length`` tokens starts at every document start (so a model learns how documents
    begin, and sampling can start from ``bos``) and every ``length`` tokens inside a longer document;
    it runs on into the next documents."""
    pieces, starts, offset = [], [], 0
    for doc in docs:
        piece = ([bos] if bos is not None else []) + list(doc) + ([eos] if eos is not None else [])
        starts.append(torch.arange(offset, offset + max(len(piece) - 1, 1), length))
        pieces.append(torch.tensor(piece, dtype=torch.int32))
        offset += len(piece)
    return torch.cat(pieces), torch.cat(starts)


class TokenWindows(torch.utils.data.Dataset):
    """Windows ``stream[start : start + length]`` (padded with ``pad`` at the end of the stream).
    The stream may be a memory-mapped array, so a corpus need not fit in memory as windows."""

    def __init__(self, stream: Tensor | np.ndarray, starts: Tensor, length: int, pad: int):
        self.stream, self.starts, self.length, self.pad = stream, starts, length, pad

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        s = int(self.starts[i])
        window = torch.from_numpy(np.asarray(self.stream[s: s + self.length]).astype(np.int64))
        n = len(window)
        if n < self.length:
            window = torch.cat([window, window.new_full((self.length - n,), self.pad)])
        return {"tokens": window, "length": torch.tensor(n)}

    @property
    def tokens(self) -> Tensor:
        """All windows (N, length): for small corpora and tests."""
        return torch.stack([self[i]["tokens"] for i in range(len(self))])


def random_given(tokens: Tensor, lengths: Tensor, prefix_prob: float, infill_prob: float,
                 bos: int | None = None, generator=None) -> Tensor:
    """Given-token masks (B, L) for training: a random prefix (``prefix_prob``), or everything but
    1-3 random spans (``infill_prob``), else nothing; a leading ``bos`` is always given."""
    B, L = tokens.shape
    pos = torch.arange(L)
    r = torch.rand(B, generator=generator)
    cut = (torch.rand(B, generator=generator) * (lengths - 1).clamp(min=1)).long() + 1  # 1..len-1
    given = (r < prefix_prob)[:, None] & (pos[None] < cut[:, None])
    # Infilling: cut points at random positions, alternating given / to generate.
    n_cuts = 2 * torch.randint(1, 4, (B,), generator=generator)
    cuts = (torch.rand(B, 6, generator=generator) * lengths[:, None]).long()
    cuts = torch.where(torch.arange(6)[None] < n_cuts[:, None], cuts, L)  # unused cuts are never crossed
    crossings = (pos[None, None, :] >= cuts[:, :, None]).sum(1)  # (B, L)
    infill = (r >= prefix_prob) & (r < prefix_prob + infill_prob)
    given |= infill[:, None] & (crossings % 2 == 0)
    if bos is not None:
        given[:, 0] |= tokens[:, 0] == bos
    return given & (pos[None] < lengths[:, None])


# ------------------------------------------------------------------------------------ the task

@dataclass
class TextArgs:
    """Options of ``recipes/text_train.py`` (plus the Trainer's ``TrainConfig``)."""

    data: str = field(default="python-docstrings", metadata={
        "help": "python-docstrings | markov | a .txt/.jsonl file or folder | a Hugging Face data set"})
    objective: str = field(default="diffusion", metadata={"help": "diffusion | ar (the causal baseline)"})
    tokenizer: str = field(default="sentencepiece", metadata={
        "help": "sentencepiece | bpe (trained on the data), or a folder: ours or a transformers tokenizer"})
    vocab_size: int = field(default=2048, metadata={"help": "pieces of a trained tokenizer"})
    max_length: int = field(default=64, metadata={"help": "tokens per training window"})
    embed_dim: int = 32
    hidden_size: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    positions: str = field(default="rope", metadata={"help": "rope | learned | sincos"})
    qk_norm: bool = False
    self_conditioning: bool = True
    sigma_min: float = 1.0
    sigma_max: float = 300.0
    noise_distribution: str = field(default="warp", metadata={"help": "warp | uniform | lognormal | loguniform"})
    warp_bins: int = 64
    prefix_prob: float = field(default=0.25, metadata={"help": "share of training windows with a given prefix"})
    infill_prob: float = field(default=0.25, metadata={"help": "share with given spans around gaps"})
    short_prob: float = field(default=0.1, metadata={"help": "share cut to a random length (padding masks)"})
    sampler: str = field(default="dpmpp_2m", metadata={"help": "validation and export default"})
    sample_steps: int = 64
    spacing: str = field(default="warp", metadata={"help": "warp (the learned time warp) | karras | logsnr | linspace"})
    export_dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 weights in the export"})
    num_validation_samples: int = 8


def tokenizer_for(args: TextArgs, texts: list[str] | None, cache: Path | None = None) -> Tokenizer:
    """The tokenizer a run uses: trained on ``texts`` (cached in ``cache`` by the main process,
    which the others wait for, so every rank and every resume uses the same one) or loaded."""
    if texts is None:  # token-level data (markov): ids are the data
        return AlphabetTokenizer(MARKOV_ALPHABET[: args.vocab_size])
    if args.tokenizer not in ("sentencepiece", "bpe"):
        return load_tokenizer(args.tokenizer)
    model_type = "bpe" if args.tokenizer == "bpe" else "unigram"
    with PartialState().main_process_first():
        if cache is not None and (cache / "config.json").is_file():
            tok = load_tokenizer(cache)
            if tok.config.trained_with == f"{model_type}:{args.vocab_size}":
                return tok
        tok = train_sentencepiece(texts, args.vocab_size, model_type)
        if cache is not None and PartialState().is_main_process:
            tok.save_pretrained(cache)
    return tok


class TextTask:
    """What the one Trainer drives for text (see ``mmdiff.modalities.base.Task``)."""

    modality = "text"

    def __init__(self, args: TextArgs, output_dir: str | os.PathLike | None = None):
        self.args = args
        self.output_dir = Path(output_dir) if output_dir else None
        self.dataset = self.model = self.tokenizer = None

    def model_config(self) -> TextModelConfig:
        a = self.args
        return TextModelConfig(
            vocab_size=self.tokenizer.vocab_size, max_length=a.max_length, objective=a.objective,
            embed_dim=a.embed_dim, hidden_size=a.hidden_size, depth=a.depth, num_heads=a.num_heads,
            mlp_ratio=a.mlp_ratio, positions=a.positions, qk_norm=a.qk_norm, self_conditioning=a.self_conditioning,
            sigma_min=a.sigma_min, sigma_max=a.sigma_max, noise_distribution=a.noise_distribution,
            warp_bins=a.warp_bins)

    def setup(self) -> None:
        corpus = build_text_corpus(self.args.data, "train")
        if corpus.skipped:
            print(f"{corpus.source}: skipped {len(corpus.skipped)} item(s), e.g. {corpus.skipped[0]}")
        cache = self.output_dir / "tokenizer" if self.output_dir else None
        self.tokenizer = tokenizer_for(self.args, corpus.texts, cache)
        self.dataset = self.build_dataset(corpus)
        self.model = TextModel(self.model_config())

    def check_init_from(self, export: Path) -> None:
        """Fine-tuning (``--init_from``) needs the export's tokenizer: the same vocabulary size with
        other pieces would silently map every id to another token's embedding."""
        folder = Path(export) / "tokenizer"
        if not folder.is_dir() or (self.tokenizer.config.digest and
                                   load_tokenizer(folder).config.digest == self.tokenizer.config.digest):
            return
        raise ValueError(f"--init_from {export}: its tokenizer is not the one this run uses "
                         f"(--tokenizer {self.args.tokenizer}); pass --tokenizer {folder}")

    def build_dataset(self, corpus) -> TokenWindows:
        L, tok = self.args.max_length, self.tokenizer
        if corpus.tokens is not None:  # token-level data (markov): one window per sequence
            tokens = corpus.tokens[:, :L]
            if tokens.max() >= tok.vocab_size:
                raise DataError(f"{corpus.source}: token ids reach {int(tokens.max())}, beyond --vocab_size "
                                f"{tok.vocab_size}")
            return TokenWindows(tokens.flatten(), torch.arange(len(tokens)) * tokens.shape[1], tokens.shape[1],
                                tok.pad_id)
        stream, starts = self._tokenized(corpus.texts)
        return TokenWindows(stream, starts, L, tok.pad_id)

    def _tokenized(self, texts: list[str]) -> tuple[Tensor | np.ndarray, Tensor]:
        """Tokenize once: cached as ``.npy`` in the run folder (memory-mapped when read back), written
        by the main process while the others wait."""
        tok, L = self.tokenizer, self.args.max_length
        if self.output_dir is None:
            return pack_documents(tok.encode_batch(texts), L, tok.bos_id, tok.eos_id)
        key = hashlib.sha256(f"{self.args.data}|{tok.config.digest}|{L}|{len(texts)}".encode()).hexdigest()[:16]
        stream_file, starts_file = (self.output_dir / f"tokens-{key}-{n}.npy" for n in ("stream", "starts"))
        with PartialState().main_process_first():
            if not (stream_file.is_file() and starts_file.is_file()):
                stream, starts = pack_documents(tok.encode_batch(texts), L, tok.bos_id, tok.eos_id)
                if PartialState().is_main_process:
                    self.output_dir.mkdir(parents=True, exist_ok=True)
                    for file, t in ((stream_file, stream), (starts_file, starts)):
                        np.save(file.with_suffix(".tmp.npy"), t.numpy())
                        os.replace(file.with_suffix(".tmp.npy"), file)
                return stream, starts
        return np.load(stream_file, mmap_mode="r"), torch.from_numpy(np.load(starts_file))

    def collate(self, items: list[dict]) -> dict:
        return {"tokens": torch.stack([it["tokens"] for it in items]),
                "lengths": torch.stack([it["length"] for it in items])}

    def training_windows(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor | None]:
        """Cut ``short_prob`` of the windows to a random length (so padding masks are trained) and
        draw the given prefixes/spans. Drawn here, in the step, not in ``collate``: the loader
        prefetches a batch ahead, and a checkpoint must not fall between a batch's draws and its use."""
        B, L = tokens.shape
        short = torch.rand(B) < self.args.short_prob
        lengths = torch.where(short, torch.minimum(lengths, torch.randint(2, L + 1, (B,))), lengths)
        given = None
        if self.args.objective == "diffusion":
            given = random_given(tokens, lengths, self.args.prefix_prob, self.args.infill_prob, self.tokenizer.bos_id)
        return lengths, given

    def loss(self, model: nn.Module, batch: dict):
        device = next(model.parameters()).device
        lengths, given = self.training_windows(batch["tokens"].cpu(), batch["lengths"].cpu())
        tokens, lengths = batch["tokens"].to(device), lengths.to(device)
        mask = torch.arange(tokens.shape[1], device=device)[None] < lengths[:, None]
        out = model(tokens, attention_mask=None if bool(mask.all()) else mask,
                    given=None if given is None else given.to(device))
        return out["loss"], out["logs"]

    def pipeline(self, model: nn.Module) -> "TextPipeline":
        a = self.args
        spacing = "karras" if a.spacing == "warp" and getattr(model, "warp", None) is None else a.spacing
        config = PipelineConfig(prediction="x0", sigma_data=1.0, sampler=a.sampler, steps=a.sample_steps,
                                spacing=spacing, extra={"data": a.data, "denoiser": "score_interpolation"})
        return TextPipeline({"model": model, "tokenizer": self.tokenizer}, model.schedule, config)

    def validation(self, model: nn.Module, step: int, folder: Path) -> dict:
        """Samples (and, for markov, their exact NLL per token) written to ``samples/step-N.txt``."""
        pipe = self.pipeline(model)
        n = self.args.num_validation_samples
        ids = pipe.generate_ids(num_samples=n, length=self.args.max_length, generator=0, progress=False)
        lines = [f"step {step}, {pipe.describe()}"]
        if self.args.data == "markov":
            from ..data.text import MarkovChain
            chain = MarkovChain()
            nll = chain.nll_per_token(ids).mean().item()
            lines.append(f"exact NLL/token of samples {nll:.3f} (entropy rate {chain.entropy_rate():.3f})")
        lines += ["-" * 40 + "\n" + pipe.tokenizer.decode(row) for row in ids.tolist()]
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"step-{step:08d}.txt").write_text("\n".join(lines) + "\n")
        print("\n".join(lines[:2]))
        return {}

    def export(self, model: nn.Module, folder: Path) -> Path:
        dtype = {"float32": None, "bfloat16": torch.bfloat16}[self.args.export_dtype]
        return self.pipeline(model).save_pretrained(folder, dtype=dtype)

    def signature(self) -> dict:
        return {"modality": self.modality, "model": config_to_dict(self.model.config),
                "tokenizer": self.tokenizer.config.digest, "data": self.args.data}

    def config(self) -> dict:
        return dataclasses.asdict(self.args)


# ------------------------------------------------------------------------------------ pipeline

@register_pipeline("text")
class TextPipeline(Pipeline):
    """Text generation with a diffusion model (any core sampler, any step count) or with the
    autoregressive baseline (``objective="ar"``: ancestral sampling, prompts only)."""

    @classmethod
    def default(cls, **kwargs):
        path = ASSETS / "text-docstrings"
        if not (path / "pipeline.json").is_file():
            raise FileNotFoundError(f"the shipped text model is missing from {path}; reinstall mmdiff or "
                                    f"pass model=PATH")
        return cls.from_pretrained(path, **kwargs)

    @classmethod
    def from_pretrained(cls, folder, *, device=None, dtype=None):
        # Weights may be stored in bfloat16 to keep the file small; compute in float32 unless asked.
        return super().from_pretrained(folder, device=device, dtype=dtype or torch.float32)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.components["tokenizer"]

    @property
    def max_length(self) -> int:
        return self.model.config.max_length

    def describe(self) -> str:
        c = self.model.config
        return (f"{c.objective} {c.depth}x{c.hidden_size}, vocab {c.vocab_size}, "
                + (f"{self.config.sampler} {self.config.steps} steps" if c.objective == "diffusion" else "sampled"))

    def denoiser(self) -> ScoreInterpolation:
        return ScoreInterpolation(self.model)

    def sigmas(self, steps: int | None = None, spacing: str | None = None) -> Tensor:
        spacing = spacing or self.config.spacing
        if spacing == "warp":
            if self.model.warp is None:
                raise ValueError("spacing='warp' needs a model trained with noise_distribution='warp'")
            return self.model.warp_sigmas(steps or self.config.steps)
        return super().sigmas(steps, spacing)

    # ------------------------------------------------------------------------------ tokens
    @torch.no_grad()
    def generate_ids(self, ids: Tensor | None = None, given: Tensor | None = None, lengths: Tensor | None = None,
                     *, num_samples: int | None = None, length: int | None = None,
                     num_inference_steps: int | None = None, sampler: str | None = None,
                     spacing: str | None = None, generator=None, temperature: float = 1.0,
                     self_conditioning: bool = True, progress: bool = False, **sampler_options) -> Tensor:
        """Token ids (B, L): positions where ``given`` is true keep ``ids``; rows are ``lengths``
        long (attention-masked beyond). Without ``ids``: ``num_samples`` rows of ``length`` tokens,
        starting with the tokenizer's ``bos`` when it has one. ``temperature`` < 1 samples colder:
        the AR model's token draws, or the diffusion denoiser's score interpolation
        ``softmax(logits / temperature) @ E`` (0: greedy / the argmax token's embedding).
        ``self_conditioning=False`` gives a self-conditioned model zeros in place of its previous
        estimate at every step, as on the training steps without it (an ablation: docs/text.md)."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if ids is None:
            n, L = num_samples or 1, length or self.max_length
            ids = torch.full((n, L), self.tokenizer.pad_id, dtype=torch.long)
            given = torch.zeros(n, L, dtype=torch.bool)
            if self.tokenizer.bos_id is not None:
                ids[:, 0], given[:, 0] = self.tokenizer.bos_id, True
        B, L = ids.shape
        if L > self.max_length:
            raise ValueError(f"{L} tokens is more than the {self.max_length} this model was trained on")
        given = torch.zeros_like(ids, dtype=torch.bool) if given is None else given.bool()
        lengths = torch.full((B,), L) if lengths is None else torch.as_tensor(lengths)
        ids, given = ids.to(self.device), given.to(self.device)
        mask = (torch.arange(L)[None] < lengths[:, None]).to(self.device)
        if self.model.config.objective == "ar":
            return self._autoregress(ids, given, mask, generator, temperature, progress)
        E = self.model.embeddings()
        cond = {} if bool(mask.all()) else {"attention_mask": mask}
        if temperature != 1.0:
            cond["temperature"] = temperature
        if not self_conditioning:
            cond["self_conditioning"] = False
        keep = {}
        if bool(given.any()):
            keep = dict(known=E[ids], mask=given[..., None].expand(B, L, E.shape[1]).float(), mask_kwarg="given")
        x = self.solve((B, L, E.shape[1]), cond=cond, num_inference_steps=num_inference_steps, sampler=sampler,
                       spacing=spacing, generator=generator, progress=progress, **keep, **sampler_options)
        out = (x.float() @ E.T).argmax(-1)  # nearest embedding: every row of E has the same norm
        return torch.where(mask, out, self.tokenizer.pad_id)

    def _autoregress(self, ids, given, mask, generator, temperature, progress) -> Tensor:
        """Left to right: every position that is not given is drawn from the model (Gumbel-max with
        per-sample generators, so a sample does not depend on its batch)."""
        B, L = ids.shape
        gens = per_sample_generators(generator, B)
        V = self.model.config.vocab_size
        for t in range(L):
            if bool(given[:, t].all()):
                continue
            logits = self.model.ar_logits(ids[:, : t + 1])[:, t].float()  # (B, V)
            if temperature == 0:
                draw = logits.argmax(-1)
            else:
                u = torch.stack([torch.rand(V, generator=g) for g in gens]) if gens else torch.rand(B, V)
                gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-7)))
                draw = (logits / temperature + gumbel.to(logits.device)).argmax(-1)
            ids[:, t] = torch.where(given[:, t], ids[:, t], draw)
        return torch.where(mask, ids, self.tokenizer.pad_id)

    @torch.no_grad()
    def nll(self, ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Per-sequence NLL per token (B,) under this pipeline's AR model (generative perplexity =
        exp of the mean)."""
        mask = None if lengths is None else (torch.arange(ids.shape[1])[None] < torch.as_tensor(lengths)[:, None])
        per_tok = self.model.nll(ids.to(self.device), None if mask is None else mask.to(self.device))
        count = ids.shape[1] if mask is None else mask.sum(1).to(self.device)
        return per_tok.sum(1) / count

    # ------------------------------------------------------------------------------ strings
    def _encode_prompt(self, text: str, infill_marker: str | None, infill_tokens: int) -> tuple[list, list]:
        """(ids, given flags) of a prompt, blanks at every ``infill_marker`` (``infill_tokens`` each)."""
        tok = self.tokenizer
        ids = [tok.bos_id] if tok.bos_id is not None else []
        given = [True] * len(ids)
        parts = text.split(infill_marker) if infill_marker else [text]
        for k, part in enumerate(parts):
            if k:
                ids += [tok.pad_id] * infill_tokens
                given += [False] * infill_tokens
            part = part.rstrip(" ") if k < len(parts) - 1 else part  # the blank's first piece carries the space
            piece = tok.encode(part, document_start=k == 0) if part else []
            ids += piece
            given += [True] * len(piece)
        return ids, given

    def _stop(self, new: list[int]) -> list[int]:
        eos = self.tokenizer.eos_id
        return new[: new.index(eos)] if eos is not None and eos in new else new

    def __call__(self, prompt: str | list[str] | None = None, *, max_new_tokens: int = 64,
                 num_samples: int | None = None, length: int | None = None, infill_marker: str | None = None,
                 infill_tokens: int = 3, num_inference_steps: int | None = None, sampler: str | None = None,
                 spacing: str | None = None, generator=None, return_full_text: bool = False,
                 progress: bool = False, **options):
        """``pipe("The function returns", max_new_tokens=64)`` -> the continuation (str), stopped at
        the end-of-sequence token; a list of prompts -> a list. ``pipe(num_samples=4, length=64)``
        -> unconditional samples. With ``infill_marker``, every marker in the prompt becomes
        ``infill_tokens`` generated tokens and the whole filled text is returned."""
        if num_inference_steps is not None and num_inference_steps <= 0:
            raise ValueError(f"num_inference_steps must be positive, got {num_inference_steps}")
        kw = dict(num_inference_steps=num_inference_steps, sampler=sampler, spacing=spacing, generator=generator,
                  progress=progress, **options)
        if prompt is None:
            L = length or self.max_length
            ids = self.generate_ids(num_samples=num_samples or 1, length=L, **kw)
            return [self.tokenizer.decode(self._stop(row[1:] if self.tokenizer.bos_id is not None else row))
                    for row in ids.tolist()]
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        encoded = [self._encode_prompt(p, infill_marker, infill_tokens) for p in prompts]
        new = 0 if infill_marker else max_new_tokens
        if infill_marker:
            out = self._fill(encoded, 0, kw)
            texts = [self.tokenizer.decode(ids) for ids, _ in out]
        else:
            out = self._continue(encoded, new, kw)
            texts = []
            for (ids, _), (p_ids, _) in zip(out, encoded):
                cont = self._stop(ids[len(p_ids):])
                full = self.tokenizer.decode(p_ids + cont)
                texts.append(full if return_full_text else full[len(self.tokenizer.decode(p_ids)):])
        return texts[0] if isinstance(prompt, str) else texts

    def _fill(self, encoded, new, kw):
        """One solve over rows ``prompt + new`` tokens long (padded to the longest and masked)."""
        rows = [(ids + [self.tokenizer.pad_id] * new, given + [False] * new) for ids, given in encoded]
        L = max(len(r[0]) for r in rows)
        if L > self.max_length:
            raise ValueError(f"the prompt needs {L} tokens, more than the model's {self.max_length}; shorten it")
        ids = torch.tensor([r[0] + [self.tokenizer.pad_id] * (L - len(r[0])) for r in rows])
        given = torch.tensor([r[1] + [False] * (L - len(r[1])) for r in rows])
        lengths = torch.tensor([len(r[0]) for r in rows])
        out = self.generate_ids(ids, given, lengths, **kw).tolist()
        return [(o[:n], g) for o, n, (_, g) in zip(out, lengths.tolist(), rows)]

    def _continue(self, encoded, max_new_tokens, kw):
        """Continue each prompt by ``max_new_tokens``; beyond the model's window, block by block with
        the latest tokens as the given prefix. Stops early once every row has produced ``eos``."""
        L, eos = self.max_length, self.tokenizer.eos_id
        done = [list(ids) for ids, _ in encoded]
        start = [len(ids) for ids in done]
        while True:
            remaining = [max_new_tokens - (len(d) - s) for d, s in zip(done, start)]
            finished = [r <= 0 or (eos is not None and eos in d[s:]) for d, s, r in zip(done, start, remaining)]
            if all(finished):
                return [(d, None) for d in done]
            blocks = []
            for d, r in zip(done, remaining):
                r = max(r, 1)
                ctx = d if len(d) + r <= L else d[len(d) - (L - min(r, L // 2)):]  # keep the latest tokens
                blocks.append((ctx, [True] * len(ctx), min(r, L - len(ctx))))
            steps = max(b[2] for b in blocks)
            filled = self._fill([(c, g) for c, g, _ in blocks], steps, kw)
            for k, ((ctx, _, n), (ids, _)) in enumerate(zip(blocks, filled)):
                if not finished[k]:
                    done[k] += ids[len(ctx): len(ctx) + n]


__all__ = ["TextModel", "TextModelConfig", "TextTask", "TextArgs", "TextPipeline", "ScoreInterpolation", "TimeWarp",
           "pack_documents", "random_given"]
