"""Sampling text: continuations, unconditional samples and infilling with a continuous diffusion
model (any core sampler, any step count), a masked diffusion model (the ``core.masked`` samplers)
or the autoregressive baseline.

    pipe = mmdiff.pipeline("text")                                   # the shipped docstrings model
    pipe("The function returns", max_new_tokens=64)                  # a continuation (str)
    pipe(num_samples=4, length=64)                                   # unconditional samples
    pipe("Return the ____ of the ____.", infill_marker="____")       # infilling

Prompts and infilling are given tokens: for continuous models clean embeddings held by
``core.guidance.keep_known`` and flagged to the DiT by its learned given-embedding, sampling ending
with the nearest embedding (= the argmax token); for masked models tokens that start unmasked,
which SUBS carries through unchanged.
"""
from __future__ import annotations

import warnings

import torch

from ...components.tokenizers import Tokenizer
from ...core import checks
from ...core.masked import MASKED_SAMPLERS
from ...core.samplers import SAMPLERS, per_sample_generators
from ...core.schedules import SPACINGS
from ...pipelines import ASSETS, Given, Pipeline
from ...registry import register_pipeline
from .model import ScoreInterpolation

Tensor = torch.Tensor

@register_pipeline("text")
class TextPipeline(Pipeline):
    """Text generation with a diffusion model (any core sampler, any step count) or with the
    autoregressive baseline (``objective="ar"``: ancestral sampling, prompts only)."""

    default_model = "text-docstrings"
    # ``pipeline("text", objective=...)``: the shipped folder of each objective
    default_models = {"continuous": "text-docstrings", "masked": "text-docstrings-masked"}
    spacings = SPACINGS + ("warp",)  # the learned time warp
    progress = False  # a continuation is many short solves

    @classmethod
    def default(cls, objective: str | None = None, **kwargs) -> "TextPipeline":
        """The shipped docstrings model; ``objective`` picks the shipped one of that objective."""
        if objective is None:
            return super().default(**kwargs)
        checks.choice("objective", objective, sorted(cls.default_models), fix="these objectives ship a model")
        return cls.from_pretrained(ASSETS / cls.default_models[objective],
                                   objective=objective, **kwargs)

    @classmethod
    def from_pretrained(cls, folder, *, objective: str | None = None, **kwargs) -> "TextPipeline":
        """Load a folder; its model's config says the objective (``objective`` only checks it)."""
        pipe = super().from_pretrained(folder, **kwargs)
        if objective is not None and pipe.model.config.objective != objective:
            raise ValueError(f"objective={objective!r}, but {folder} holds a {pipe.model.config.objective!r} model; "
                             f"drop objective= or load a {objective} model")
        return pipe

    @property
    def sampler_registry(self) -> dict:
        return MASKED_SAMPLERS if self.model.config.objective == "masked" else SAMPLERS
    @property
    def tokenizer(self) -> Tokenizer:
        return self.components["tokenizer"]

    @property
    def max_length(self) -> int:
        return self.model.config.max_length

    def describe(self) -> str:
        c = self.model.config
        return (f"{c.objective} {c.depth}x{c.hidden_size}, vocab {c.vocab_size}, "
                + (f"{self.config.sampler} {self.config.steps} steps" if c.objective != "ar" else "sampled"))

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
                     *, num_samples: int | None = None, length: int | None = None, temperature: float = 1.0,
                     self_conditioning: bool = True, options=None, **sampling) -> Tensor:
        """Token ids (B, L): positions where ``given`` is true keep ``ids``; rows are ``lengths``
        long (attention-masked beyond). Without ``ids``: ``num_samples`` rows of ``length`` tokens,
        starting with the tokenizer's ``bos`` when it has one. ``temperature`` < 1 samples colder:
        the AR model's token draws, or the diffusion denoiser's score interpolation
        ``softmax(logits / temperature) @ E`` (0: greedy / the argmax token's embedding).
        ``self_conditioning=False`` gives a self-conditioned model zeros in place of its previous
        estimate at every step, as on the training steps without it (an ablation: docs/text.md).
        ``sampling``: the ``SamplingOptions`` fields and the sampler's own options."""
        opts = self.options(options, **sampling)
        checks.number("temperature", temperature, low=0, fix="0 is greedy, 1 the model's own distribution")
        checks.flag("self_conditioning", self_conditioning)
        if ids is None:
            ids, given = self._blank(self._count(num_samples), self._length(length))
        B, L = ids.shape
        if L > self.max_length:
            raise ValueError(f"{L} tokens is more than the {self.max_length} this model was trained on")
        given = torch.zeros_like(ids, dtype=torch.bool) if given is None else given.bool()
        lengths = torch.full((B,), L) if lengths is None else torch.as_tensor(lengths)
        ids, given = ids.to(self.device), given.to(self.device)
        mask = (torch.arange(L)[None] < lengths[:, None]).to(self.device)
        if self.model.config.objective == "ar":
            return self._autoregress(ids, given, mask, opts, temperature)
        if self.model.config.objective == "masked":
            return self._unmask(ids, given, mask, opts, temperature)
        E = self.model.embeddings()
        cond = {} if bool(mask.all()) else {"attention_mask": mask}
        if temperature != 1.0:
            cond["temperature"] = temperature
        if not self_conditioning:
            cond["self_conditioning"] = False
        held = None
        if bool(given.any()):
            held = Given(E[ids], given[..., None].expand(B, L, E.shape[1]).float(), mask_kwarg="given")
        x = self.solve((B, L, E.shape[1]), opts, cond=cond, given=held)
        out = (x.float() @ E.T).argmax(-1)  # nearest embedding: every row of E has the same norm
        return torch.where(mask, out, self.tokenizer.pad_id)

    def _blank(self, n: int, length: int) -> tuple[Tensor, Tensor]:
        """Rows of padding to generate, starting with a given ``bos`` when the tokenizer has one."""
        ids = torch.full((n, length), self.tokenizer.pad_id, dtype=torch.long)
        given = torch.zeros(n, length, dtype=torch.bool)
        if self.tokenizer.bos_id is not None:
            ids[:, 0], given[:, 0] = self.tokenizer.bos_id, True
        return ids, given

    def _unmask(self, ids, given, mask, options, temperature) -> Tensor:
        """Masked diffusion: every position that is neither given nor padding starts as [MASK]; the
        options' sampler (``core.masked.MASKED_SAMPLERS``) unmasks them over
        ``num_inference_steps`` steps of the model's mask schedule. Temperature 0 is the argmax."""
        model = self.model
        if options.sigmas is not None:
            raise ValueError("sigmas are noise levels of continuous models; a masked model takes num_inference_steps")
        x = torch.where(given | ~mask, ids, model.mask_id)
        cond = {} if bool(mask.all()) else {"attention_mask": mask}
        tau = max(temperature, 1e-4)  # the CDF draw of a near one-hot distribution is its argmax

        def denoiser(x):
            return model.masked_log_probs(x, temperature=tau, **cond).exp()

        sampler = self.sampler_registry[options.sampler]
        out = sampler(denoiser, x, model.mask_schedule.alphas(options.num_inference_steps), model.mask_id,
                      generator=per_sample_generators(options.generator, x.shape[0]), callback=options.callback,
                      progress=options.progress, **options.sampler_options)
        return torch.where(mask, out, self.tokenizer.pad_id)

    def _autoregress(self, ids, given, mask, options, temperature) -> Tensor:
        """Left to right: every position that is not given is drawn from the model (Gumbel-max with
        per-sample generators, so a sample does not depend on its batch)."""
        B, L = ids.shape
        gens = per_sample_generators(options.generator, B)
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
                 infill_tokens: int = 3, temperature: float = 1.0, self_conditioning: bool = True,
                 return_full_text: bool = False, options=None, **sampling):
        """``pipe("The function returns", max_new_tokens=64)`` -> the continuation (str), stopped at
        the end-of-sequence token; a list of prompts -> a list. ``pipe(num_samples=4, length=64)``
        -> unconditional samples. With ``infill_marker``, every marker in the prompt becomes
        ``infill_tokens`` generated tokens and the whole filled text is returned. ``sampling``: the
        ``SamplingOptions`` fields and the sampler's own options."""
        kw = dict(temperature=temperature, self_conditioning=self_conditioning, options=self.options(options, **sampling))
        if prompt is None:
            ids = self.generate_ids(num_samples=self._count(num_samples), length=self._length(length), **kw)
            return [self.tokenizer.decode(self._stop(row[1:] if self.tokenizer.bos_id is not None else row))
                    for row in ids.tolist()]
        prompts = self._prompts(prompt, infill_marker)
        checks.integer("max_new_tokens", max_new_tokens, low=1)
        checks.integer("infill_tokens", infill_tokens, low=1)
        encoded = [self._encode_prompt(p, infill_marker, infill_tokens) for p in prompts]
        if not infill_marker:
            self._warn_if_cut(encoded, max_new_tokens)
        if infill_marker:
            texts = [self.tokenizer.decode(ids) for ids, _ in self._fill(encoded, 0, kw)]
        else:
            texts = [self._continuation(ids, p_ids, return_full_text)
                     for (ids, _), (p_ids, _) in zip(self._continue(encoded, max_new_tokens, kw), encoded)]
        return texts[0] if isinstance(prompt, str) else texts

    def _count(self, num_samples) -> int:
        return 1 if num_samples is None else checks.integer("num_samples", num_samples, low=1)

    def _length(self, length) -> int:
        if length is None:
            return self.max_length
        return checks.integer("length", length, low=1, high=self.max_length, fix="the model's window is its limit")

    @staticmethod
    def _prompts(prompt, infill_marker) -> list[str]:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            checks.fail("prompt", "a string or a non-empty list of strings", prompt, error=TypeError)
        if infill_marker is not None:
            if not isinstance(infill_marker, str) or not infill_marker:
                checks.fail("infill_marker", "a non-empty string", infill_marker, error=TypeError)
            missing = [p for p in prompts if infill_marker not in p]
            if missing:
                checks.fail("prompt", f"text with the infill_marker {infill_marker!r} where tokens are to be filled",
                            missing[0])
        return list(prompts)

    def _warn_if_cut(self, encoded, max_new_tokens: int) -> None:
        """A prompt longer than the window leaves for it is cut at the front (``_continue``): say so."""
        room = self.max_length - min(max_new_tokens, self.max_length // 2)
        longest = max(len(ids) for ids, _ in encoded)
        if longest + max_new_tokens > self.max_length and longest > room:
            warnings.warn(f"the prompt is {longest} tokens long; the model's window of {self.max_length} tokens "
                          f"leaves {room} for it, so the continuation is conditioned on its last {room} tokens only")

    def _continuation(self, ids: list[int], prompt_ids: list[int], full: bool) -> str:
        text = self.tokenizer.decode(prompt_ids + self._stop(ids[len(prompt_ids):]))
        return text if full else text[len(self.tokenizer.decode(prompt_ids)):]

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

