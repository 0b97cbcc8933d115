"""Text data for continuous text diffusion: two built-in corpora, local files and Hugging Face data sets.

* ``python-docstrings`` — the docstrings of the running interpreter's standard library: ~1.7 MB of
  real English prose that is always there, so nothing downloads at run time.
* ``markov`` — token sequences from a fixed random Markov chain whose entropy rate and sequence
  likelihood are known exactly, so a generative model can be scored exactly.
* ``.txt`` / ``.jsonl`` files or folders of them, and any ``datasets`` data set with a text column.

``build_text_corpus(data, split)`` resolves a name or path to a :class:`TextCorpus`. Anything that
would make a model train on nothing, or on the wrong thing, is a :class:`DataError` that names the
file and what was skipped.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import json
import os
import sysconfig
import warnings
from pathlib import Path

import torch

from . import DataError, check_split, stable_int
from .markov import markov_corpus

BUILTINS = ("markov", "python-docstrings")
VALIDATION_FRACTION = 0.05
TEXT_SUFFIXES = (".txt", ".jsonl")
UNITS = ("line", "document")
LAYOUT_SPLITS = ("train", "validation", "test")  # child names that mark a folder as already split
# Folders of the standard library that hold test code and fixtures (some not even Python 3), not docs.
STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})


@dataclasses.dataclass
class TextCorpus:
    """Examples as strings (``texts``) or, for token-level sources such as ``markov``, as a
    ``(N, L)`` LongTensor (``tokens``); ``skipped`` lists ``(path, reason)`` for what was left out."""
    texts: list[str] | None
    source: str
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    tokens: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.tokens)


# ----------------------------------------------------------------------------- deterministic splits

def _in_validation(key: str) -> bool:
    return stable_int(key) % 10_000 < VALIDATION_FRACTION * 10_000


def _select_split(keyed: list[tuple[str, str]], split: str) -> list[str]:
    """Texts of ``(key, text)`` pairs that fall in ``split``; the key alone decides."""
    check_split(split)
    if split == "all":
        return [text for _, text in keyed]
    want_validation = split == "validation"
    return [text for key, text in keyed if _in_validation(key) == want_validation]


# ----------------------------------------------------------------------------- python-docstrings

def python_docstrings(split: str = "train") -> list[str]:
    """Module, class and function docstrings of the running interpreter's standard library.

    A docstring is in ``validation`` (~5%) when the hash of ``"<relative path>::<qualified name>"``
    says so — a name, not a running index, so a docstring added above another in a new Python
    version does not move it between splits. Exact repeats are kept once (first occurrence in
    sorted-path, source order), so no text is in both splits. Extraction (~1.5 s) runs once per process.
    """
    return _select_split(list(_docstring_records()), split)


@functools.lru_cache(maxsize=1)
def _docstring_records() -> tuple[tuple[str, str], ...]:
    """``(key, docstring)`` for every distinct docstring of the standard library, in order."""
    root = sysconfig.get_paths()["stdlib"]
    seen, records = set(), []
    for rel in _stdlib_python_files(root):
        for qualname, doc in _file_docstrings(Path(root, rel), rel):
            if doc not in seen:
                seen.add(doc)
                records.append((f"{rel}::{qualname}", doc))
    return tuple(records)


def _stdlib_python_files(root: str) -> list[str]:
    """Sorted relative POSIX paths of ``.py`` files, pruning test and third-party folders while
    walking (site-packages alone can hold 10x more files than the stdlib)."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in STDLIB_SKIP_DIRS]
        rel_folder = Path(folder).relative_to(root)
        found += [(rel_folder / f).as_posix() for f in files if f.endswith(".py")]
    return sorted(found)


def _file_docstrings(path: Path, rel: str) -> list[tuple[str, str]]:
    """``(qualified name, cleaned docstring)`` in source order; ``[]`` for files that do not parse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old stdlib modules
            tree = ast.parse(path.read_bytes(), filename=rel)
    except (SyntaxError, ValueError, OSError):
        return []
    found = []
    _collect_docstrings(tree, "<module>", found)
    return found


def _collect_docstrings(node: ast.AST, qualname: str, found: list[tuple[str, str]]) -> None:
    doc = ast.get_docstring(node, clean=True)
    if doc:
        found.append((qualname, doc))
    prefix = "" if isinstance(node, ast.Module) else qualname + "."
    for child in _defs_below(node):
        _collect_docstrings(child, prefix + child.name, found)


def _defs_below(node: ast.AST) -> list[ast.AST]:
    """Classes and functions nested directly in ``node`` (also inside if/try/with/match blocks), in
    source order. Only statement lists are searched: a def cannot sit inside an expression."""
    defs = []
    for field in ("body", "handlers", "cases", "orelse", "finalbody"):
        for child in getattr(node, field, ()):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                defs.append(child)
            elif isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
                defs += _defs_below(child)
    return defs


# ----------------------------------------------------------------------------- local files

def load_text_files(path: str | os.PathLike, *, jsonl_field: str = "text", unit: str = "line") -> TextCorpus:
    """Examples from a ``.txt`` or ``.jsonl`` file, or every such file under a folder (sorted paths).

    ``.txt``: one example per line (``unit="line"``) or per file (``unit="document"``). ``.jsonl``:
    one example per line, the string in field ``jsonl_field``. Skipped and listed in
    ``TextCorpus.skipped``: empty files, blank lines, empty or null fields, files of other types in a
    folder, and files that are not UTF-8 (also a warning with the byte offset). A malformed JSON line
    is a ``DataError`` naming ``file:line``, not a skip: it means a truncated or wrongly formatted
    file, and skipping it would hide that. Nothing left is a ``DataError`` listing what was skipped.
    """
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; expected one of {list(UNITS)}")
    root = Path(path)
    if not root.exists():
        raise DataError(f"{path}: no such file or folder")
    if root.is_file() and root.suffix not in TEXT_SUFFIXES:
        raise DataError(f"{path}: expected a .txt or .jsonl file or a folder of them")
    files = _files_under(root) if root.is_dir() else [root]
    texts, skipped = [], []
    for file in files:
        texts += _read_file(file, jsonl_field, unit, skipped)
    if not texts:
        raise DataError(_nothing_left(str(path), len(files), skipped))
    return TextCorpus(texts, source=str(path), skipped=skipped)


def _files_under(root: Path) -> list[Path]:
    """Every file below ``root``, sorted by relative POSIX path so the order is the same on every OS."""
    return sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def _read_file(file: Path, jsonl_field: str, unit: str, skipped: list) -> list[str]:
    text = _decode(file, skipped)
    if text is None:
        return []
    if file.suffix == ".jsonl":
        return _jsonl_texts(text, file, jsonl_field, skipped)
    if unit == "document":
        if text.strip():
            return [text]
        skipped.append((str(file), "only whitespace"))
        return []
    lines = _lines(text)
    texts = [line for line in lines if line.strip()]
    _count_skip(skipped, file, len(lines) - len(texts), "blank line")
    return texts


def _decode(file: Path, skipped: list) -> str | None:
    """The file as text, or ``None`` (recorded in ``skipped``) if it is not a non-empty UTF-8 text file."""
    if file.suffix not in TEXT_SUFFIXES:
        skipped.append((str(file), "not a .txt or .jsonl file"))
        return None
    data = file.read_bytes()
    if not data:
        skipped.append((str(file), "empty file"))
        return None
    try:
        text = data.decode("utf-8")  # not utf-8-sig: its error offsets do not count the BOM
    except UnicodeDecodeError as e:
        reason = f"not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start}"
        warnings.warn(f"skipping {file}: {reason}", stacklevel=4)
        skipped.append((str(file), reason))
        return None
    return text.removeprefix("\ufeff")  # BOM written by some Windows editors


def _lines(text: str) -> list[str]:
    """Lines without their ending, split at "\\n" only: ``str.splitlines`` also splits at U+2028 and
    form feeds, which may sit inside a JSON string, and would shift ``file:line`` numbers."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _jsonl_texts(text: str, file: Path, field: str, skipped: list) -> list[str]:
    texts, blank, empty = [], 0, 0
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            blank += 1
            continue
        value = _jsonl_value(line, f"{file}:{number}", field)
        if value is None or not value.strip():
            empty += 1
        else:
            texts.append(value)
    _count_skip(skipped, file, blank, "blank line")
    _count_skip(skipped, file, empty, "record", f" with empty or null {field!r}")
    return texts


def _jsonl_value(line: str, where: str, field: str) -> str | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}:{e.colno}: not valid JSON: {e.msg}; fix or remove this line") from e
    if not isinstance(record, dict) or field not in record:
        keys = f"keys {sorted(record)}" if isinstance(record, dict) else f"a JSON {type(record).__name__}"
        raise DataError(f"{where}: expected an object with field {field!r}, got {keys}; "
                        f"pass jsonl_field= to read another field")
    value = record[field]
    if value is not None and not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} is a {type(value).__name__}, expected a string")
    return value


def _count_skip(skipped: list, file, count: int, noun: str, detail: str = "") -> None:
    if count:
        skipped.append((str(file), f"{count} {noun}{'s' if count > 1 else ''}{detail}"))


def _nothing_left(source: str, num_files: int, skipped: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{path} ({reason})" for path, reason in skipped[:10])
    more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    return f"{source}: no text found in {num_files} file(s); skipped: {shown or 'nothing'}{more}"


# ----------------------------------------------------------------------------- Hugging Face datasets

def load_hf_text(name_or_path: str, split: str = "train", column: str | None = None) -> TextCorpus:
    """The text column of a ``datasets`` data set: a local ``save_to_disk`` folder or a hub name.

    ``column=None`` picks the only string column, else the string column named ``"text"``; anything
    else is a ``DataError`` listing the columns. Empty or null values are skipped and counted.
    """
    dataset = _load_hf_split(name_or_path, split)
    column = _text_column(dataset.features, column, f"{name_or_path} [{split}]")
    values = dataset[column]
    texts = [v for v in values if v is not None and v.strip()]
    source = f"{name_or_path} [{split}] column {column!r}"
    skipped = []
    _count_skip(skipped, source, len(values) - len(texts), "empty or null value")
    if not texts:
        raise DataError(_nothing_left(source, 1, skipped))
    return TextCorpus(texts, source=source, skipped=skipped)


def _load_hf_split(name_or_path: str, split: str):
    try:
        import datasets  # optional dependency: pip install 'mmdiff[datasets]'
    except ImportError as e:
        raise ImportError("loading a Hugging Face data set needs `pip install 'mmdiff[datasets]'`") from e
    if Path(name_or_path).exists():
        return _split_of_saved(datasets.load_from_disk(name_or_path), name_or_path, split)
    try:
        return datasets.load_dataset(name_or_path, split=split)
    except (OSError, ValueError) as e:  # ConnectionError, DatasetNotFoundError, unknown split ...
        raise DataError(
            f"{name_or_path!r} does not exist locally and could not be loaded from the Hugging Face hub "
            f"({type(e).__name__}: {e}); built-in data sets are {list(BUILTINS)}. Offline, set "
            f"HF_HUB_OFFLINE=1 to fail fast instead of retrying.") from e


def _split_of_saved(saved, path: str, split: str):
    """``split`` of a ``save_to_disk`` folder; a lone Dataset only serves its own split (default train),
    so validation never silently reuses the training data."""
    if hasattr(saved, "keys"):  # DatasetDict
        if split not in saved:
            raise DataError(f"{path}: no split {split!r}; the saved DatasetDict has {list(saved)}")
        return saved[split]
    own = str(saved.split) if saved.split else "train"
    if split != own:
        raise DataError(f"{path} holds a single Dataset (split {own!r}) and cannot serve split {split!r}; "
                        f"save a DatasetDict with a {split!r} split")
    return saved


def _text_column(features, column: str | None, source: str) -> str:
    strings = [name for name, f in features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    listed = ", ".join(f"{name} ({getattr(f, 'dtype', type(f).__name__)})" for name, f in features.items())
    if column is not None:
        if column not in strings:
            raise DataError(f"{source}: column {column!r} is not a string column; columns: {listed}")
        return column
    if len(strings) == 1:
        return strings[0]
    if "text" in strings:
        return "text"
    raise DataError(f"{source}: cannot tell which column holds the text ({len(strings)} string columns); "
                    f"pass column=; columns: {listed}")


# ----------------------------------------------------------------------------- one entry point

def build_text_corpus(data: str, split: str = "train") -> TextCorpus:
    """Resolve ``data`` — a built-in name, a local path, else a hub name — to the ``split`` corpus.

    Local files and folders without split layout are split like ``python-docstrings``, by a hash of
    each example's text (~5% validation, repeats never straddle); a folder with children named
    ``train``/``validation``/``test`` (folders or ``.txt``/``.jsonl`` files) uses those instead.
    Hugging Face data sets keep their own splits.
    """
    if data == "python-docstrings":
        return TextCorpus(python_docstrings(split), source=f"python-docstrings [{split}]")
    if data == "markov":
        return TextCorpus(None, source=f"markov [{split}]", tokens=markov_corpus(split))
    path = Path(data)
    if path.exists():
        return _local_corpus(path, split)
    near = difflib.get_close_matches(data, BUILTINS, n=1, cutoff=0.6)
    if near and "/" not in data:
        raise DataError(f"{data!r} is not a built-in data set (did you mean {near[0]!r}?; built-ins are "
                        f"{list(BUILTINS)}) and not an existing path")
    return load_hf_text(data, split)


def _local_corpus(path: Path, split: str) -> TextCorpus:
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():  # save_to_disk folders
        return load_hf_text(str(path), split)
    layout = _split_layout(path)
    if layout and split != "all":
        if split not in layout:
            raise DataError(f"{path}: has split folders/files {sorted(layout)} but none named {split!r}")
        return load_text_files(layout[split])
    corpus = load_text_files(path)
    if layout or split == "all":
        return corpus
    check_split(split)
    texts = _select_split([(text, text) for text in corpus.texts], split)
    if not texts:
        raise DataError(f"{path}: the {split!r} share of its {len(corpus.texts)} examples is empty; "
                        f"add more text, or use a folder holding train.txt and {split}.txt")
    return dataclasses.replace(corpus, texts=texts, source=f"{corpus.source} [{split}: hash split]")


def _split_layout(path: Path) -> dict[str, Path]:
    """Children of folder ``path`` named after a split (``train/``, ``validation.txt``, ``test.jsonl``)."""
    if not path.is_dir():
        return {}
    named = [p for p in path.iterdir() if p.name in LAYOUT_SPLITS
             or (p.suffix in TEXT_SUFFIXES and p.stem in LAYOUT_SPLITS)]
    layout = {}
    for child in sorted(named):
        name = child.stem if child.is_file() else child.name
        if name in layout:
            raise DataError(f"{path}: both {layout[name].name} and {child.name} claim split {name!r}")
        layout[name] = child
    return layout
