"""The text network: token embeddings + the core DiT, trained with cross-entropy (continuous
diffusion over embeddings, masked diffusion over token ids, or the autoregressive baseline), and
its denoisers for the core samplers.

A token sequence becomes a sequence of learned embeddings ``E[tokens]`` whose rows are kept at norm
``sqrt(embed_dim)``; noise is added in the core's VE form ``x = x0 + sigma * eps``. The core DiT sees
``[c_in(sigma) * x, x0_hat_prev]`` per token (self-conditioning) and predicts logits over the
vocabulary. The denoiser handed to the core samplers is the *score interpolation*
``D(x, sigma) = softmax(logits) @ E`` (``ScoreInterpolation``). Training noise levels follow CDCD's
time warping (``TimeWarp``).

``objective="masked"`` is MDLM (``core.masked``): the same DiT reads token ids with an extra
[MASK] row in the embedding table (no time input) and predicts ``x0`` under SUBS; the loss is the
continuous-time NELBO.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...core.checkpoint import PretrainedMixin
from ...core.dit import DiT, DiTConfig
from ...core.masked import MaskSchedule, corrupt, nelbo_terms, subs_log_probs, training_times
from ...core.parametrization import LevelMemo, append_dims, host_level, sample_training_sigmas
from ...core.patch import PatchConfig
from ...core.schedules import EDMSchedule
from ...registry import register_component

OBJECTIVES = ("continuous", "masked", "ar")
LEGACY_OBJECTIVES = {"diffusion": "continuous"}  # the name configs and exports used before "masked" existed
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
    objective: str = "continuous"  # "continuous" | "masked" | "ar" (causal next-token baseline, same DiT)
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
    mask_schedule: str = "loglinear"  # masked: alpha(t), the share of clean tokens (core.masked.MaskSchedule)
    gradient_checkpointing: bool = False

    def __post_init__(self):
        self.objective = LEGACY_OBJECTIVES.get(self.objective, self.objective)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective '{self.objective}'; choose one of {OBJECTIVES}")
        if self.noise_distribution not in NOISE_DISTRIBUTIONS:
            raise ValueError(f"unknown noise_distribution '{self.noise_distribution}'; "
                             f"choose one of {NOISE_DISTRIBUTIONS}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")


@register_component
class TextModel(PretrainedMixin, nn.Module):
    """Token embeddings + the core DiT over the token sequence.

    ``model(tokens, attention_mask=None, given=None)`` returns the training loss (a dict), so that
    accelerate's wrappers see the forward; ``denoise`` and ``ar_logits`` are the inference paths."""

    config_class = TextModelConfig

    def __init__(self, config: TextModelConfig):
        super().__init__()
        self.config = c = config
        self.diffusion = c.objective == "continuous"
        self.masked = c.objective == "masked"
        # One extra row: the AR model's start symbol, or the masked model's [MASK] (id vocab_size).
        self.embedding = nn.Parameter(torch.randn(c.vocab_size + (0 if self.diffusion else 1), c.embed_dim))
        channels = c.embed_dim * (2 if self.diffusion and c.self_conditioning else 1)
        self.dit = DiT(DiTConfig(
            patch=PatchConfig("sequence", channels, (c.max_length,), positions=c.positions),
            out_channels=c.vocab_size, hidden_size=c.hidden_size, depth=c.depth, num_heads=c.num_heads,
            mlp_ratio=c.mlp_ratio, qk_norm=c.qk_norm, given_embedding=self.diffusion,
            attention="causal" if c.objective == "ar" else "joint", gradient_checkpointing=c.gradient_checkpointing))
        self.warp = (TimeWarp(c.warp_bins, math.log(c.vocab_size))
                     if self.diffusion and c.noise_distribution == "warp" else None)
        self._levels = LevelMemo(self._level_inputs)
        self.mask_schedule = MaskSchedule(c.mask_schedule)

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

    def _estimate(self, x: Tensor, sigma: Tensor, **cond) -> tuple[Tensor, Tensor]:
        """``denoise`` after one pass that feeds the model its own estimate (as sampling does):
        still a function of ``(x, sigma)`` alone."""
        x0, logits = self.denoise(x, sigma, None, **cond)
        return self.denoise(x, sigma, x0, **cond) if self.config.self_conditioning else (x0, logits)

    @torch.no_grad()
    def continuous_nelbo(self, tokens: Tensor, attention_mask: Tensor | None = None, given: Tensor | None = None,
                         draws: int = 16, generator=None) -> Tensor:
        """Per-sequence upper bound on the NLL per token (B,) of a continuous model, in nats: the
        Gaussian diffusion ELBO in VE form (VDM's continuous time, SNR = 1 / sigma^2) over
        [sigma_min, sigma_max] with the prior N(0, sigma_max^2 + 1) that sampling starts from and
        the logits at sigma_min as decoder: ``-log p(w | x_min) + log(sigma_max / sigma_min) *
        E_u ||x0 - D(x, sigma)||^2 / sigma^2`` (log sigma ~ U) ``+ D / 2 log(1 + 1 / sigma_max^2)``."""
        c, E = self.config, self.embeddings()
        x0 = E[tokens]  # (B, L, D)
        valid = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        g = torch.zeros_like(valid) if given is None else given.bool()
        cond = {"given": g if given is not None else None, "attention_mask": attention_mask}
        lo, hi = math.log(c.sigma_min), math.log(c.sigma_max)
        B, target, total = len(tokens), valid & ~g, 0.0

        def noisy(sigma):
            eps = torch.randn(x0.shape, generator=generator).to(x0.device)
            return x0 + sigma[:, None, None] * eps * (~g)[..., None]

        for _ in range(draws):
            sigma = (lo + torch.rand(B, generator=generator, dtype=torch.float64) * (hi - lo)).exp().float()
            sigma = sigma.to(x0.device)
            den, _ = self._estimate(noisy(sigma), sigma, **cond)
            diffusion = (hi - lo) * ((x0 - den.float()) ** 2).sum(-1) / sigma[:, None] ** 2  # (B, L)
            floor = torch.full_like(sigma, c.sigma_min)
            reconstruction = token_ce(self._estimate(noisy(floor), floor, **cond)[1], tokens)
            total = total + ((diffusion + reconstruction) * target).sum(1)
        prior = 0.5 * c.embed_dim * math.log1p(1 / c.sigma_max**2)
        return total / draws / target.sum(1).clamp(min=1) + prior

    def warp_sigmas(self, steps: int) -> Tensor:
        """``steps`` levels equally spaced in the learned warp (CDCD samples this way), then 0."""
        c = self.config
        u = self.warp.inverse(torch.linspace(1, 0, steps, dtype=torch.float64))
        lo, hi = math.log(c.sigma_min), math.log(c.sigma_max)
        sig = (lo + u * (hi - lo)).exp()
        return torch.cat([sig, sig.new_zeros(1)]).float()

    # ------------------------------------------------------------------------- masked (MDLM)
    def input_embeddings(self) -> Tensor:
        """(V + 1, D) rows of norm sqrt(D), the extra row included (AR and masked inputs)."""
        return F.normalize(self.embedding.float(), dim=-1) * math.sqrt(self.config.embed_dim)

    @property
    def mask_id(self) -> int:
        return self.config.vocab_size

    def masked_log_probs(self, x: Tensor, attention_mask: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """SUBS ``log p(x0 | x)`` (B, L, V) for ids ``x`` (B, L) holding ``mask_id`` where masked.
        No time input: the masked ids say how much is left (so an unchanged ``x`` may be cached)."""
        h = self.input_embeddings()[x].to(self.embedding.dtype)  # (B, L, D)
        logits = self.dit(h, torch.zeros(x.shape[0], device=x.device), attention_mask=attention_mask)
        return subs_log_probs(logits if temperature == 1 else logits.float() / temperature, x, self.mask_id)

    def masked_loss(self, tokens: Tensor, attention_mask: Tensor | None = None, given: Tensor | None = None,
                    t: Tensor | None = None, generator=None) -> dict:
        """The NELBO per token to generate (neither given nor padding): one draw of ``t`` per sequence."""
        valid = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        keep = ~valid if given is None else (~valid | given.bool())
        t = training_times(tokens.shape[0], generator=generator) if t is None else t
        x, masked = corrupt(tokens, t, self.mask_schedule, self.mask_id, keep, generator)
        logp = self.masked_log_probs(x, attention_mask)
        per_seq = nelbo_terms(logp, tokens, masked, t, self.mask_schedule)  # (B,) nats
        count = (~keep).sum(1)
        loss = per_seq.sum() / count.sum().clamp(min=1)
        return {"loss": loss, "logs": {"nelbo": loss.detach()}, "per_sequence": per_seq.detach() / count.clamp(min=1),
                "count": count}

    @torch.no_grad()
    def nelbo(self, tokens: Tensor, attention_mask: Tensor | None = None, given: Tensor | None = None,
              draws: int = 16, generator=None) -> Tensor:
        """Per-sequence NELBO per token (B,) (an upper bound on the NLL, in nats), averaged over
        ``draws`` Monte-Carlo draws of ``t`` and the mask."""
        if not self.masked:
            raise ValueError("nelbo is the masked objective's bound (objective 'masked')")
        total = sum(self.masked_loss(tokens, attention_mask, given, generator=generator)["per_sequence"]
                    for _ in range(draws))
        return total / draws

    # ------------------------------------------------------------------------- autoregressive
    def ar_logits(self, tokens: Tensor) -> Tensor:
        """(B, L, V) logits where position t predicts ``tokens[:, t]`` from ``tokens[:, :t]``."""
        start = torch.full_like(tokens[:, :1], self.config.vocab_size)
        inputs = torch.cat([start, tokens[:, :-1]], dim=1)
        x = self.input_embeddings()[inputs].to(self.embedding.dtype)  # (B, L, D)
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
        if self.config.objective != "ar":
            raise ValueError("exact likelihoods come from the autoregressive model (objective 'ar')")
        ce = token_ce(self.ar_logits(tokens), tokens)
        return ce if attention_mask is None else ce * attention_mask

    def forward(self, tokens: Tensor, attention_mask: Tensor | None = None, given: Tensor | None = None) -> dict:
        """The training loss of a batch: ``{"loss", "logs", "per_sequence"}``."""
        if self.diffusion:
            return self.diffusion_loss(tokens, attention_mask, given)
        if self.masked:
            return self.masked_loss(tokens, attention_mask, given)
        return self.ar_loss(tokens, attention_mask)



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

