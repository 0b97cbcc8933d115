"""Encode a data set once, train on its latents many times.

``cache_latents`` runs an autoencoder over a data set and writes safetensors shards plus an
``index.json`` that records what made them (the autoencoder's class, config and weight
fingerprint, the data set's size and a probe of its first item). Running it again with the same
inputs reuses the cache; with another autoencoder it refuses, since latents of one autoencoder
are noise to another. ``LatentDataset`` reads the shards back memory-mapped.

Folder layout::

    out_dir/index.json
    out_dir/latents-00000.safetensors   # "latents" (n, *latent_shape), "labels" (n, ...) if any
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..components.autoencoders import Autoencoder
from ..core.checkpoint import atomic_write_dir, config_to_dict, save_tensors

INDEX_NAME = "index.json"
SHARD_NAME = "latents-{:05d}.safetensors"
CACHE_FORMAT = "mmdiff-latents/1"


class LatentCacheError(ValueError):
    """A latent cache that does not match what was asked for, or that cannot be read."""


# ----------------------------------------------------------------------------- writing

def cache_latents(dataset: Dataset, autoencoder: Autoencoder, out_dir: str | os.PathLike, *,
                  batch_size: int = 64, shard_size: int = 4096, key: str = "image", sample: bool = False,
                  seed: int = 0, num_workers: int = 0, overwrite: bool = False,
                  progress: bool = False) -> "LatentDataset":
    """Encode ``dataset[i][key]`` (images (C, H, W) or videos (T, C, H, W) in [-1, 1]) and its
    optional ``"label"`` into ``out_dir``; returns the cache as a ``LatentDataset``.

    ``sample=True`` stores one posterior sample per item, item i (frame t) drawn from its own
    generator seeded ``seed + i*T + t``, so the cache does not depend on ``batch_size``. An
    existing cache made from the same inputs is reused; one made otherwise raises
    ``LatentCacheError`` unless ``overwrite=True``. The folder appears only once complete."""
    out_dir = Path(out_dir)
    source = _describe_source(dataset, autoencoder, key, sample, seed)
    if (out_dir / INDEX_NAME).is_file() and not overwrite:
        _check_same_source(out_dir, source)
        return LatentDataset(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / INDEX_NAME).is_file():
        raise LatentCacheError(f"{out_dir} exists and is not a latent cache (no {INDEX_NAME}); "
                               f"pass a new or empty folder so nothing in it is replaced")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=functools.partial(_collate, key=key))
    with atomic_write_dir(out_dir) as tmp:
        writer = _ShardWriter(tmp, shard_size)
        frames_per_item = source["item_shape"][0] if len(source["item_shape"]) == 4 else 1
        with torch.inference_mode():
            for x, labels in tqdm(loader, disable=not progress, desc="caching latents"):
                first = writer.count * frames_per_item
                generators = _frame_generators(seed, first, x.shape[:-3].numel()) if sample else None
                writer.add(autoencoder.encode(x, generator=generators, sample=sample).cpu(), labels)
        shards = writer.close()
        index = {"format": CACHE_FORMAT, "count": writer.count, "shards": shards,
                 "latent_shape": writer.latent_shape, "latent_dtype": writer.latent_dtype,
                 "has_labels": writer.has_labels, "source": source}
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return LatentDataset(out_dir)


def _describe_source(dataset, autoencoder: Autoencoder, key: str, sample: bool, seed: int) -> dict:
    """What the cache depends on. Items are not hashed (that is a full pass over the data);
    the count and a hash of the first item catch a swapped data set."""
    if len(dataset) == 0:
        raise LatentCacheError("the data set is empty; nothing to cache")
    first = dataset[0]
    if key not in first:
        raise LatentCacheError(f"data set items have keys {sorted(first)}, no '{key}'; pass key=")
    x = first[key]
    if x.ndim not in (3, 4):
        raise LatentCacheError(f"'{key}' must be an image (C, H, W) or a video (T, C, H, W), got {tuple(x.shape)}")
    probe = hashlib.sha256(x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"count": len(dataset), "key": key, "item_shape": list(x.shape), "item_dtype": str(x.dtype),
            "first_item_sha256": probe.hexdigest(), "sample": sample, "seed": seed if sample else None,
            "autoencoder": {"class": type(autoencoder).__name__, "config": config_to_dict(autoencoder.config),
                            "fingerprint": autoencoder.fingerprint()}}


def _check_same_source(out_dir: Path, source: dict) -> None:
    cached = read_index(out_dir)["source"]
    if cached["autoencoder"] != source["autoencoder"]:
        was, now = cached["autoencoder"], source["autoencoder"]
        raise LatentCacheError(
            f"{out_dir} holds latents of another autoencoder ({was['class']} {was['fingerprint'][:12]}, "
            f"this one is {now['class']} {now['fingerprint'][:12]}); latents do not transfer between "
            f"autoencoders. Use another out_dir, or overwrite=True to re-encode")
    differ = sorted(k for k in source if cached.get(k) != source[k])
    if differ:
        details = ", ".join(f"{k}: cached {cached.get(k)!r}, now {source[k]!r}" for k in differ)
        raise LatentCacheError(f"{out_dir} was cached from different inputs ({details}); use another "
                               f"out_dir, or overwrite=True to re-encode")


def _collate(items: list[dict], key: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Only ``key`` and ``"label"`` are read, so other fields (captions, paths) cannot break batching."""
    x = torch.stack([item[key] for item in items])
    has_label = ["label" in item for item in items]
    if any(has_label) and not all(has_label):
        raise LatentCacheError("some items have a 'label' and some do not; labels must be all or none")
    labels = torch.stack([torch.as_tensor(item["label"]) for item in items]) if all(has_label) else None
    return x, labels


def _frame_generators(seed: int, first: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + first + i) for i in range(n)]


class _ShardWriter:
    """Collects encoded batches and writes a shard each time ``shard_size`` items are pending."""

    def __init__(self, folder: Path, shard_size: int):
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.folder, self.shard_size = folder, shard_size
        self.latents, self.labels, self.shards = [], [], []
        self.count = 0  # items received
        self.has_labels = None

    def add(self, latents: torch.Tensor, labels: torch.Tensor | None) -> None:
        if self.has_labels is None:
            self.has_labels = labels is not None
            self.latent_shape, self.latent_dtype = list(latents.shape[1:]), str(latents.dtype)
        if (labels is not None) != self.has_labels:
            raise LatentCacheError("some items have a 'label' and some do not; labels must be all or none")
        self.latents.append(latents)
        if labels is not None:
            self.labels.append(labels)
        self.count += len(latents)
        while self._pending() >= self.shard_size:
            self._write(self.shard_size)

    def close(self) -> list[dict]:
        if self._pending():
            self._write(self._pending())
        return self.shards

    def _pending(self) -> int:
        return sum(len(t) for t in self.latents)

    def _write(self, n: int) -> None:
        tensors = {"latents": torch.cat(self.latents)}
        if self.has_labels:
            tensors["labels"] = torch.cat(self.labels)
        name = SHARD_NAME.format(len(self.shards))
        save_tensors({k: t[:n] for k, t in tensors.items()}, self.folder / name)
        self.latents = [tensors["latents"][n:]]
        self.labels = [tensors["labels"][n:]] if self.has_labels else []
        self.shards.append({"file": name, "count": n})


# ----------------------------------------------------------------------------- reading

def read_index(folder: str | os.PathLike) -> dict:
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise LatentCacheError(f"{path} is missing; {folder} is not a latent cache written by cache_latents")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LatentCacheError(f"{path} is not valid JSON: {e}") from e
    if index.get("format") != CACHE_FORMAT:
        raise LatentCacheError(f"{path} has format {index.get('format')!r}; this mmdiff reads {CACHE_FORMAT!r}")
    return index


class LatentDataset(Dataset):
    """Items ``{"latents": (*latent_shape), "label": ...}`` (``"label"`` only if cached), read
    memory-mapped from the shards; safe to use with DataLoader workers."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        self.latent_shape = tuple(self.index["latent_shape"])
        self.autoencoder = self.index["source"]["autoencoder"]  # class, config, fingerprint
        self._starts = [0]
        for shard in self.index["shards"]:
            if not (self.folder / shard["file"]).is_file():
                raise LatentCacheError(f"{self.folder / shard['file']} listed in {INDEX_NAME} is missing; "
                                       f"re-create the cache with cache_latents(..., overwrite=True)")
            self._starts.append(self._starts[-1] + shard["count"])
        self._open = {}  # shard number -> safe_open handle, opened lazily in each process

    def __len__(self) -> int:
        return self.index["count"]

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} cached items")
        i %= len(self)
        shard = bisect.bisect_right(self._starts, i) - 1
        row = i - self._starts[shard]
        f = self._shard(shard)
        item = {"latents": f.get_slice("latents")[row:row + 1][0]}
        if self.index["has_labels"]:
            item["label"] = f.get_slice("labels")[row:row + 1][0]
        return item

    def _shard(self, n: int):
        if n not in self._open:
            self._open[n] = safe_open(str(self.folder / self.index["shards"][n]["file"]), framework="pt")
        return self._open[n]

    def __getstate__(self):  # file handles do not travel to DataLoader worker processes
        return {**self.__dict__, "_open": {}}
