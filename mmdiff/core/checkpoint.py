"""Checkpoints: a config dataclass as JSON plus weights as safetensors, and nothing that unpickles.

A model folder holds ``config.json`` and ``model.safetensors``; the config is also stored in the
safetensors header so a lone weights file still says what it is. Loading checks every tensor name,
shape and dtype against a model built from the config and names the first thing that is wrong.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import checks

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}  # by option value


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be loaded as asked; the message says what and where."""


# ----------------------------------------------------------------------------- config dataclasses

def config_to_dict(config: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(config_class: type, data: dict, source: str = "config") -> Any:
    """Build ``config_class`` from a JSON dict: unknown keys are an error, lists become tuples where
    the field is a tuple, nested dataclasses are rebuilt."""
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CheckpointError(
            f"{source}: unknown option(s) {unknown} for {config_class.__name__}; "
            f"valid options are {sorted(fields)}")
    hints = typing.get_type_hints(config_class)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints.get(name), value)
        if not checks.fits(hints.get(name), kwargs[name]):
            raise CheckpointError(f"{source}: option '{name}' of {config_class.__name__} should be "
                                  f"{checks.type_name(hints.get(name))}, got {value!r}")
    try:
        return config_class(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: invalid {config_class.__name__}: {e}") from e


def shared_fields(source: Any, config_class: type) -> dict:
    """The values of ``source`` (another dataclass) for the fields ``config_class`` also has, by
    name, leaving out None (= the target's default): a config derived from another instead of
    copied field by field, so a field added to both needs no third change."""
    names = {f.name for f in dataclasses.fields(config_class)}
    return {f.name: getattr(source, f.name) for f in dataclasses.fields(source)
            if f.name in names and getattr(source, f.name) is not None}


def _coerce(hint, value):
    if value is None or hint is None:
        return value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X], X | None
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(args[0], value) if len(args) == 1 else value
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        inner = args[0] if args else None
        return tuple(_coerce(inner, v) for v in value)
    return value


def read_config_json(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    if not path.is_file():
        present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise CheckpointError(f"{path} is missing (the folder holds {present}); "
                              f"a model folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


# ----------------------------------------------------------------------------- tensors on disk

def atomic_write_dir(final: Path):
    """Context manager yielding a temporary sibling folder that replaces ``final`` only when the
    block finishes; a crash leaves ``final`` as it was."""
    return _AtomicDir(Path(final))


class _AtomicDir:
    def __init__(self, final: Path):
        self.final = final

    def __enter__(self) -> Path:
        _check_replaceable(self.final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.final.parent))
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the result should look like mkdir's
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        fsync_tree(self.tmp)
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        _fsync_dir(self.final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


# Files by which a folder is recognised as one that save_pretrained, a checkpoint or a cache
# wrote, and so may be replaced as a whole.
WRITTEN_MARKERS = (CONFIG_NAME, "pipeline.json", "manifest.json", "trainer_state.json", "index.json")


def _check_replaceable(final: Path) -> None:
    """Saving replaces the whole folder; anything but an empty folder or one we wrote is refused,
    so a mistyped path (a home folder, a data set) is never swept away."""
    if not final.exists():
        return
    if not final.is_dir():
        raise FileExistsError(f"{final} exists and is a file; choose a folder name to save to")
    entries = sorted(p.name for p in final.iterdir())
    if entries and not any(m in entries for m in WRITTEN_MARKERS):
        raise FileExistsError(f"refusing to replace {final}: it holds {entries[:5]}{' ...' if len(entries) > 5 else ''}"
                              f", not a folder mmdiff saved; save to a new or empty folder")


def fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None,
                 dtype: torch.dtype | None = None) -> None:
    """Write tensors as safetensors; floating tensors are cast to ``dtype`` when given. Tensors
    that share storage (tied weights) are cloned, since safetensors stores each once by name."""
    out, storages = {}, set()
    for name, t in tensors.items():
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in storages:
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        out[name] = t
    save_file(out, str(path), metadata=metadata or {})
    # safetensors creates the file 0600; an export should be as readable as any file the user writes
    # (a shared cluster's group reads a colleague's model)
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file; a missing, pickled, truncated or corrupt file is a CheckpointError
    that names the file."""
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: refusing to load a pickle-based file; mmdiff loads weights "
                              f"only from .safetensors (convert it with safetensors.torch.save_file)")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read as safetensors "
                              f"({e}); restore it or re-export the model") from e
    return tensors, metadata


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: str) -> None:
    missing = [k for k in expected if k not in found]
    if missing:
        raise CheckpointError(f"{source}: missing tensor '{missing[0]}' (expected shape "
                              f"{tuple(expected[missing[0]].shape)}); {len(missing)} missing in all")
    unexpected = [k for k in found if k not in expected]
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor '{unexpected[0]}' not in the model built "
                              f"from its config; {len(unexpected)} unexpected in all")
    for name, ref in expected.items():
        got = found[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise CheckpointError(f"{source}: tensor '{name}' has shape {tuple(got.shape)}, the config "
                                  f"implies {tuple(ref.shape)}")
        if got.is_floating_point() != ref.is_floating_point() or (
                not ref.is_floating_point() and got.dtype != ref.dtype):
            raise CheckpointError(f"{source}: tensor '{name}' has dtype {got.dtype}, expected "
                                  f"{'a floating dtype' if ref.is_floating_point() else ref.dtype}")
    check_finite(found, source)


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Weights with NaN or inf would sample NaN without a word: refused, naming the first tensor."""
    for name, t in tensors.items():
        if t.is_floating_point() and not t.is_meta and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{source}: tensor '{name}' holds {bad} NaN or infinite value(s) of "
                                  f"{t.numel()}: the weights are corrupt (a diverged run or a damaged file); "
                                  f"re-export them or load an earlier checkpoint")


def component_folder(folder: Path, name, source: str) -> Path:
    """``folder / name`` for a component named in a pipeline's index, which must be a plain
    subfolder name that stays inside ``folder`` (symlinks resolved): a model folder is untrusted
    input, and ``"../x"``, an absolute path or a link out of it would load something else."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise CheckpointError(f"{source}: component {name!r} is not a subfolder name; every component must be a "
                              f"folder directly inside {folder}")
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise CheckpointError(f"{source}: component {name!r} resolves to {path}, outside {folder}; refusing to "
                              f"load it (a model folder may only use what is inside it)")
    return path


# What a Hub snapshot fetches: configs, safetensors weights and tokenizer files, never pickles.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt"]


def resolve_pretrained(path: str | os.PathLike, subfolder: str | None = None) -> Path:
    """A local folder, or a Hugging Face Hub repo id: from the local cache without any network call
    when it holds the repo (or HF_HUB_OFFLINE=1 is set), else fetched with huggingface_hub."""
    local = Path(path).expanduser()
    if not local.exists() and is_repo_id(path):
        local = hub_snapshot(str(path))
    if subfolder:
        local = local / subfolder
    if local.is_file() and local.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(f"{local} is a pickle file, which mmdiff never unpickles implicitly; an original DiT "
                              f"or SiT checkpoint converts explicitly: python -m mmdiff.convert {local} OUT_FOLDER")
    if not local.is_dir():
        raise CheckpointError(f"{local} is not a folder; pass the folder written by save_pretrained")
    return local.resolve()


def is_repo_id(path) -> bool:
    return isinstance(path, str) and path.count("/") == 1 and not path.startswith((".", "/", "~"))


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, not only when huggingface_hub was imported."""
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE") for k in ("HF_HUB_OFFLINE",
                                                                                     "TRANSFORMERS_OFFLINE"))


def hub_snapshot(repo_id: str) -> Path:
    """The cached snapshot of ``repo_id`` (no network call), or a download when it is not cached
    and the Hub may be reached. diffusers asks the Hub first even with everything cached
    (diffusers #8752, #7902); here the cache is read first."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except LocalEntryNotFoundError:
        if hub_offline():
            raise CheckpointError(f"'{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                                  f"download it once online, or pass a local folder") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # no network, no such repo, gated
        raise CheckpointError(f"'{repo_id}' is neither a local folder nor a reachable Hub repo "
                              f"({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------- the mixin

# Other libraries' model folders a class reads too, by their config's ``_class_name`` (diffusers
# writes one; mmdiff writes ``_class``): class name -> (our class, reader(folder, dtype=, device=)).
# Components register theirs (components.converters: diffusers' DiT classes -> DiT).
FOREIGN_MODELS: dict[str, tuple[type, Any]] = {}


class PretrainedMixin:
    """``save_pretrained``/``from_pretrained`` for an ``nn.Module`` built as ``cls(config)``."""

    config_class: type = None

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        folder = Path(folder)
        config = config_to_dict(self.config)
        header = {"config": json.dumps(config), "class": type(self).__name__, "format": "pt"}
        with atomic_write_dir(folder) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps({"_class": type(self).__name__, **config}, indent=2))
            save_tensors(self.state_dict(), tmp / WEIGHTS_NAME, metadata=header, dtype=dtype)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, subfolder: str | None = None,
                        dtype: torch.dtype | None = None, device: str | torch.device | None = None):
        folder = resolve_pretrained(folder, subfolder)
        for p in folder.iterdir():
            if p.suffix in PICKLE_SUFFIXES:
                raise CheckpointError(f"{p}: refusing a pickle-based file in a model folder; mmdiff "
                                      f"loads only {WEIGHTS_NAME}. An original DiT/SiT checkpoint converts with "
                                      f"python -m mmdiff.convert {p} OUT_FOLDER; remove anything else")
        raw = read_config_json(folder)
        target, reader = FOREIGN_MODELS.get(raw.get("_class_name"), (None, None))
        if reader is not None and issubclass(target, cls):
            return reader(folder, dtype=dtype, device=device)
        saved_class = raw.get("_class")
        if saved_class is not None and saved_class != cls.__name__:
            raise CheckpointError(f"{folder / CONFIG_NAME} describes a {saved_class}, not a {cls.__name__}")
        config = config_from_dict(cls.config_class, raw, source=str(folder / CONFIG_NAME))
        tensors, _ = load_tensors(folder / WEIGHTS_NAME)
        with torch.device("meta"):
            model = cls(config)
        check_state_dict(model.state_dict(), tensors, str(folder / WEIGHTS_NAME))
        model.load_state_dict(tensors, strict=True, assign=True)
        _rebuild_nonpersistent(model, config, cls)
        if dtype is not None or device is not None:
            model.to(device=device, dtype=dtype)
        return model.eval()


def _rebuild_nonpersistent(model, config, cls) -> None:
    """Buffers kept out of the state dict (fixed positional tables) were built on the meta device;
    rebuild them on the CPU from a fresh module's values."""
    meta_buffers = [n for n, b in model.named_buffers() if b.is_meta]
    if not meta_buffers:
        return
    fresh = cls(config)
    fresh_buffers = dict(fresh.named_buffers())
    for name in meta_buffers:
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        module._buffers[leaf] = fresh_buffers[name]
