"""Training text: a corpus, its tokenizer (trained once and cached in the run folder, or given),
packed token windows, random given prefixes and spans (prompting and infilling), and the model."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from torch import nn

from ...components.tokenizers import AlphabetTokenizer, Tokenizer, load_tokenizer, train_sentencepiece
from ...core import checks
from ...core.checkpoint import DTYPES, config_to_dict, shared_fields
from ...core.masked import MASKED_SAMPLERS, MaskSchedule
from ...core.samplers import SAMPLERS
from ...data.markov import MARKOV_ALPHABET, MarkovChain
from ...data.text import DataError, build_text_corpus
from ...data.windows import TokenWindows, pack_documents, random_given
from ...registry import PipelineConfig
from ...options import MAX_STEPS
from .model import LEGACY_OBJECTIVES, NOISE_DISTRIBUTIONS, OBJECTIVES, TextModel, TextModelConfig
from .pipeline import TextPipeline

Tensor = torch.Tensor

@dataclass
class TextArgs:
    """Options of ``recipes/text_train.py`` (plus the Trainer's ``TrainConfig``)."""

    data: str = field(default="python-docstrings", metadata={
        "help": "python-docstrings | markov | a .txt/.jsonl file or folder | a Hugging Face data set"})
    objective: str = field(default="continuous", metadata={
        "help": "continuous (embedding diffusion) | masked (MDLM) | ar (the causal baseline)"})
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
    sampler: str = field(default="dpmpp_2m", metadata={"help": "continuous: validation and export default"})
    mask_sampler: str = field(default="ancestral", metadata={"help": "masked: ancestral | confident | semi_ar"})
    mask_schedule: str = field(default="loglinear", metadata={"help": "masked: loglinear | cosine"})
    sample_steps: int = 64
    spacing: str = field(default="warp", metadata={"help": "warp (the learned time warp) | karras | logsnr | linspace"})
    export_dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 weights in the export"})
    num_validation_samples: int = 8

    def __post_init__(self):
        checks.check_fields(self)
        self.objective = LEGACY_OBJECTIVES.get(self.objective, self.objective)
        checks.choice("--objective", self.objective, OBJECTIVES)
        checks.integer("--vocab_size", self.vocab_size, low=2)
        checks.integer("--max_length", self.max_length, low=2)
        for name in ("embed_dim", "hidden_size", "depth", "num_heads", "warp_bins", "num_validation_samples"):
            checks.integer(f"--{name}", getattr(self, name), low=1)
        checks.integer("--sample_steps", self.sample_steps, low=1, high=MAX_STEPS)
        checks.number("--mlp_ratio", self.mlp_ratio, low=0, open_low=True)
        checks.choice("--positions", self.positions, ("rope", "learned", "sincos"))
        checks.number("--sigma_min", self.sigma_min, low=0, open_low=True)
        checks.number("--sigma_max", self.sigma_max, low=self.sigma_min, open_low=True)
        checks.choice("--noise_distribution", self.noise_distribution, NOISE_DISTRIBUTIONS)
        for name in ("prefix_prob", "infill_prob", "short_prob"):
            checks.probability(f"--{name}", getattr(self, name))
        if self.prefix_prob + self.infill_prob > 1:
            checks.fail("--prefix_prob + --infill_prob", "at most 1 (shares of the training windows)",
                        self.prefix_prob + self.infill_prob)
        checks.choice("--spacing", self.spacing, TextPipeline.spacings)
        checks.choice("--export_dtype", self.export_dtype, DTYPES)
        if self.objective == "continuous":
            checks.choice("--sampler", self.sampler, SAMPLERS)
        checks.choice("--mask_sampler", self.mask_sampler, MASKED_SAMPLERS)
        checks.choice("--mask_schedule", self.mask_schedule, MaskSchedule.names)
        for name in ("data", "tokenizer"):
            if not getattr(self, name):
                checks.fail(f"--{name}", "a name or a path", getattr(self, name))


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
    """What the one Trainer drives for text (see ``mmdiff.training.task.Task``)."""

    modality = "text"

    def __init__(self, args: TextArgs, output_dir: str | os.PathLike | None = None):
        self.args = args
        self.output_dir = Path(output_dir) if output_dir else None
        self.dataset = self.model = self.tokenizer = None

    def model_config(self) -> TextModelConfig:
        # every model option of the recipe by name; the vocabulary is the tokenizer's
        return TextModelConfig(**{**shared_fields(self.args, TextModelConfig), "vocab_size": self.tokenizer.vocab_size})

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
        if self.args.objective != "ar":
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
        if a.objective == "masked":  # the Gaussian schedule in pipeline.json is unused: the model has its own
            config = PipelineConfig(prediction="x0", sampler=a.mask_sampler, steps=a.sample_steps, spacing="linspace",
                                    extra={"data": a.data, "denoiser": "subs"})
            return TextPipeline({"model": model, "tokenizer": self.tokenizer}, model.schedule, config)
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
        return self.pipeline(model).save_pretrained(folder, dtype=DTYPES[self.args.export_dtype])

    def signature(self) -> dict:
        return {"modality": self.modality, "model": config_to_dict(self.model.config),
                "tokenizer": self.tokenizer.config.digest, "data": self.args.data}

    def config(self) -> dict:
        return dataclasses.asdict(self.args)
