"""Tokenizers for the text modality, behind one small interface and saved with the checkpoint.

    tok = train_sentencepiece(texts, vocab_size=4096)         # unigram (or model_type="bpe")
    tok = load_tokenizer("path/to/hf-tokenizer")              # any local ``transformers`` tokenizer
    tok = AlphabetTokenizer("abc...")                         # one character per id (markov)
    ids = tok.encode("Return the sum."); tok.decode(ids)      # exact round trip

Every tokenizer has ``vocab_size``, ``bos_id`` / ``eos_id`` / ``pad_id`` (None when it has none),
``encode(text, document_start=True)``, ``decode(ids)`` and ``save_pretrained`` /
``from_pretrained`` on a folder holding ``config.json`` plus the tokenizer's own files (a
SentencePiece ``tokenizer.model`` protobuf, or the ``transformers`` JSON files); no pickle.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..core.checkpoint import CONFIG_NAME, CheckpointError, atomic_write_dir, config_from_dict, config_to_dict
from ..registry import register_component

SP_FILE = "tokenizer.model"
KINDS = ("sentencepiece", "transformers", "alphabet")


@dataclass
class TokenizerConfig:
    kind: str = "sentencepiece"
    vocab_size: int = 0
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    alphabet: str = ""  # kind "alphabet": the character of each id
    digest: str = ""  # sha256 of the tokenizer's files, so a resumed run can tell it is the same one
    trained_with: str = ""  # "unigram:4096" for a SentencePiece model trained by mmdiff


class Tokenizer(ABC):
    """Base class: subclasses implement ``_encode``/``_decode`` and the files they save."""

    config: TokenizerConfig

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def bos_id(self) -> int | None:
        return self.config.bos_id

    @property
    def eos_id(self) -> int | None:
        return self.config.eos_id

    @property
    def pad_id(self) -> int:
        """Id written at padded positions (they are masked, so any id works when there is none)."""
        return self.config.pad_id if self.config.pad_id is not None else (self.config.eos_id or 0)

    @property
    def special_ids(self) -> set[int]:
        return {i for i in (self.config.bos_id, self.config.eos_id, self.config.pad_id) if i is not None}

    def encode(self, text: str, document_start: bool = True) -> list[int]:
        """Token ids of ``text`` without special tokens; ``document_start=False`` for a piece that
        continues earlier text (an infilling segment)."""
        return self._encode(text, document_start)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self._encode(t, True) for t in texts]

    def decode(self, ids, skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in self.special_ids]
        return self._decode(ids)

    @abstractmethod
    def _encode(self, text: str, document_start: bool) -> list[int]:
        ...

    @abstractmethod
    def _decode(self, ids: list[int]) -> str:
        ...

    @abstractmethod
    def _save_files(self, folder: Path) -> None:
        ...

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        with atomic_write_dir(folder) as tmp:
            self._save_files(tmp)
            (tmp / CONFIG_NAME).write_text(json.dumps({"_class": "Tokenizer", **config_to_dict(self.config)},
                                                      indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "Tokenizer":
        return load_tokenizer(folder)

    def __repr__(self) -> str:
        c = self.config
        return f"{type(self).__name__}(vocab_size={c.vocab_size}, bos={c.bos_id}, eos={c.eos_id}, pad={c.pad_id})"


# ------------------------------------------------------------------------------ sentencepiece

class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (unigram or BPE) with identity normalisation and byte fallback, so any
    UTF-8 text round-trips exactly, newlines and indentation included.

    SentencePiece marks a word start with a leading space ("▁the"). Words at the start of a
    document or a line have none, so "The" there and " The" elsewhere would be different pieces; we
    encode ``" " + text.replace("\\n", "\\n ")`` (a space before every line, the per-line version of
    SentencePiece's ``add_dummy_prefix``) and undo it when decoding.
    """

    def __init__(self, proto: bytes, config: TokenizerConfig | None = None):
        import sentencepiece as spm

        self.proto = proto
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        ids = {"bos_id": self.sp.bos_id(), "eos_id": self.sp.eos_id(), "pad_id": self.sp.pad_id()}
        self.config = config or TokenizerConfig(
            "sentencepiece", self.sp.get_piece_size(), **{k: (v if v >= 0 else None) for k, v in ids.items()},
            digest=hashlib.sha256(proto).hexdigest())

    def _encode(self, text, document_start):
        return self.sp.encode((" " if document_start else "") + text.replace("\n", "\n "))

    def encode_batch(self, texts):
        return self.sp.encode([" " + t.replace("\n", "\n ") for t in texts], num_threads=os.cpu_count() or 1)

    def _decode(self, ids):
        text = self.sp.decode(ids)
        return text.removeprefix(" ").replace("\n ", "\n")

    def _save_files(self, folder):
        (folder / SP_FILE).write_bytes(self.proto)


def train_sentencepiece(texts: list[str], vocab_size: int = 4096, model_type: str = "unigram",
                        max_sentences: int = 300_000, max_chars: int = 20_000) -> SentencePieceTokenizer:
    """Train a SentencePiece model on ``texts`` (deterministic for the same texts and options).

    ids 0-3 are ``<unk>``, ``<s>`` (bos), ``</s>`` (eos) and ``<pad>``; "\\n" is its own piece, and
    unknown characters fall back to bytes. At most ``max_sentences`` examples of at most
    ``max_chars`` characters are used (the first ones, for a large corpus). ``vocab_size`` is an
    upper bound: a corpus too small to support it gets fewer pieces (at least the 261 fixed ones)."""
    import sentencepiece as spm

    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    sample = [(" " + t.replace("\n", "\n "))[:max_chars] for t in texts[:max_sentences]]
    if not sample:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            split_digits=True, user_defined_symbols=["\n"], byte_fallback=True, character_coverage=0.9995,
            hard_vocab_limit=False,
            allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
            max_sentence_length=max_chars + 16, shuffle_input_sentence=False, num_threads=1, minloglevel=2)
    except RuntimeError as e:
        raise ValueError(f"SentencePiece could not train a {vocab_size}-piece {model_type} model on "
                         f"{len(sample)} texts ({e}); choose a --vocab_size that suits the corpus: above its "
                         f"distinct characters plus the 261 byte and special pieces") from e
    tok = SentencePieceTokenizer(buf.getvalue())
    tok.config.trained_with = f"{model_type}:{vocab_size}"
    return tok


# ------------------------------------------------------------------------------ transformers

class TransformersTokenizer(Tokenizer):
    """Any ``transformers`` tokenizer from a local folder (``AutoTokenizer.from_pretrained``)."""

    def __init__(self, tokenizer, config: TokenizerConfig | None = None, digest: str = ""):
        self.tok = tokenizer
        self.config = config or TokenizerConfig(
            "transformers", len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
            tokenizer.pad_token_id, digest=digest)

    def _encode(self, text, document_start):
        return self.tok.encode(text, add_special_tokens=False)

    def _decode(self, ids):
        return self.tok.decode(ids, clean_up_tokenization_spaces=False)

    def _save_files(self, folder):
        self.tok.save_pretrained(str(folder))


def _load_transformers(folder: Path, config: TokenizerConfig | None = None) -> TransformersTokenizer:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: not a transformers tokenizer folder ({e})") from e
    return TransformersTokenizer(tok, config, digest=_folder_digest(folder))


def _folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in (".json", ".txt", ".model"):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------ alphabet

class AlphabetTokenizer(Tokenizer):
    """One character per id and no special tokens: token-level data such as ``markov``."""

    def __init__(self, alphabet: str, config: TokenizerConfig | None = None):
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise ValueError("an alphabet tokenizer needs distinct characters")
        self.index = {c: i for i, c in enumerate(alphabet)}
        self.config = config or TokenizerConfig("alphabet", len(alphabet), alphabet=alphabet,
                                                digest=hashlib.sha256(alphabet.encode()).hexdigest())

    def _encode(self, text, document_start):
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(f"characters {unknown[:10]} are not in this tokenizer's alphabet "
                             f"{self.config.alphabet!r}")
        return [self.index[c] for c in text]

    def _decode(self, ids):
        return "".join(self.config.alphabet[i] for i in ids)

    def _save_files(self, folder):
        pass


# ------------------------------------------------------------------------------ loading

def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A folder written by ``save_pretrained`` (ours), or a local ``transformers`` tokenizer folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{path}: no such tokenizer folder (pass a folder holding {CONFIG_NAME} and "
                              f"{SP_FILE}, or a local transformers tokenizer)")
    raw = json.loads((folder / CONFIG_NAME).read_text()) if (folder / CONFIG_NAME).is_file() else {}
    if raw.get("_class") != "Tokenizer":  # a plain transformers folder
        return _load_transformers(folder)
    config = config_from_dict(TokenizerConfig, raw, source=str(folder / CONFIG_NAME))
    if config.kind == "sentencepiece":
        if not (folder / SP_FILE).is_file():
            raise CheckpointError(f"{folder / SP_FILE} is missing")
        return SentencePieceTokenizer((folder / SP_FILE).read_bytes(), config)
    if config.kind == "transformers":
        return _load_transformers(folder, config)
    if config.kind == "alphabet":
        return AlphabetTokenizer(config.alphabet, config)
    raise CheckpointError(f"{folder / CONFIG_NAME}: unknown tokenizer kind {config.kind!r}; known: {KINDS}")


TOKENIZERS = tuple(map(register_component, (SentencePieceTokenizer, TransformersTokenizer, AlphabetTokenizer)))
