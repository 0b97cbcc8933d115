"""What the command line and the web page both take from a person and hand to a pipeline: a
pipeline by (task, model, dtype, device), loaded once and kept warm; class labels typed as text;
pictures and masks; and the errors that are the person's to fix, shown as one line."""
from __future__ import annotations

import functools
import re
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..core.checkpoint import DTYPES, CheckpointError
from ..registry import pipeline

# Bad input, a missing file or a folder that is not a pipeline: the library says what is wrong
# in its message (CheckpointError is a ValueError; named for the reader).
USER_ERRORS = (ValueError, TypeError, OSError, CheckpointError)
# Pipelines kept in memory: the three shipped ones plus a few folders; the least recently used
# goes when another is loaded, so a server that is asked for many models stays bounded.
WARM_PIPELINES = 6
_loading = threading.Lock()


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(task: str, model: str | None = None, dtype: str = "float32", device: str | None = None):
    """The pipeline for ``task`` from ``model`` (a folder; ``None`` or blank: the shipped default),
    its weights in ``dtype`` on ``device`` (default: the GPU if there is one), loaded once per key."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {list(DTYPES)}")
    model = (model or "").strip() or None
    with _loading:  # two requests for a model not yet loaded load it once
        return _load(task, model, dtype, device or default_device())


@functools.lru_cache(maxsize=WARM_PIPELINES)
def _load(task: str, model: str | None, dtype: str, device: str):
    return pipeline(task, model=model, dtype=DTYPES[dtype], device=device)


def class_labels(values) -> list[int | str] | None:
    """Labels typed as ``"3 7"``, ``"3, 7"`` or a list of words: numbers become ints, other words
    stay class names; ``None`` when nothing was typed. The pipeline checks both against its model."""
    words = values.replace(",", " ").split() if isinstance(values, str) else [str(v) for v in values or []]
    return [int(word) if re.fullmatch(r"-?\d+", word) else word for word in words] or None


def read_picture(path: str | Path) -> Image.Image:
    """A picture file as an RGB image (a grayscale model reads its first channel)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except UnidentifiedImageError as e:
        raise ValueError(f"{path} is not a picture PIL can read (PNG, JPEG, WebP, ...)") from e


def fit_picture(image: Image.Image | None, pipe) -> Image.Image | None:
    """A picture enlarged by an integer factor, as mmdiff saves them, back at the model's size by
    averaging each block: exact, where the pipeline's resampling filter would blend neighbours."""
    size = pipe.config.extra.get("resolution")
    if image is None or not size or image.size != (image.width, image.width) or image.width % size:
        return image
    return image.reduce(image.width // size)


def mask_tensor(image: Image.Image) -> torch.Tensor:
    """A mask picture as (H, W) in {0, 1}: white (>= 128) is repainted, black kept."""
    return torch.from_numpy(np.asarray(image.convert("L")) >= 128).float()


def read_mask(path: str | Path) -> torch.Tensor:
    return mask_tensor(read_picture(path))
