"""Image data sets: the built-in ``digits``, folders of image files, and Hugging Face image datasets.

Every data set yields ``{"image": (C, R, R) float32 in [-1, 1], "label": int64 scalar}`` (no "label"
when unconditional) and has ``num_classes``, ``class_names``, ``channels`` and ``resolution``.
``build_image_dataset`` turns a string (built-in name, local path, hub name) into one of them.

The folder scanning, skip-unreadable and transform helpers here are shared with ``video.py``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
import io
import re
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from . import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DIGITS_SPLITS = ("train", "test", "all")
SPLIT_FOLDERS = ("train", "test", "val", "validation")
LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 weights, as in PIL's convert("L")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B")


# ----------------------------------------------------------------------------- shared helpers

def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 to float32 in [-1, 1] (the inverse of ``mmdiff.media.to_uint8``)."""
    return x.float() / 127.5 - 1


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``(..., C, H, W)`` with C in (1, 3) to ``channels``: gray is repeated, RGB becomes luma (ITU-R 601)."""
    if x.shape[-3] == channels:
        return x
    if channels == 1 and x.shape[-3] == 3:
        # own weighted sum: torchvision's rgb_to_grayscale truncates uint8 results (up to a level darker)
        luma = (x.float() * LUMA.view(3, 1, 1)).sum(-3, keepdim=True)
        return luma.round().to(x.dtype) if x.dtype == torch.uint8 else luma
    if channels == 3 and x.shape[-3] == 1:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    raise ValueError(f"cannot convert {x.shape[-3]} channels to {channels}; channels must be 1 or 3")


def make_transform(resolution: int, crop: str = "center", random_flip: bool = False) -> v2.Compose:
    """Resize the shorter side to ``resolution``, crop a square, optionally flip.

    Works on ``(C, H, W)`` and on clips ``(T, C, H, W)``, where every frame gets the same crop and flip.
    """
    if crop not in ("center", "random"):
        raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
    steps = [v2.Resize(resolution, antialias=True),
             v2.CenterCrop(resolution) if crop == "center" else v2.RandomCrop(resolution)]
    if random_flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def check_channels(channels: int | None) -> None:
    """``channels`` is None (decided by the data), 1 or 3."""
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None (auto), 1 or 3, got {channels!r}")


# ----------------------------------------------------------------------------- digits (built-in)

def digits_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits: images float32 ``(N, 8, 8)`` in [0, 1], labels int64 ``(N,)``.

    "train"/"test" is a fixed stratified 80/20 split (1437/360 images); "all" is all 1,797.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in DIGITS_SPLITS:
        raise ValueError(f"digits split must be one of {DIGITS_SPLITS}, got {split!r}")
    digits = load_digits()
    images, labels = (digits.images / 16).astype(np.float32), digits.target.astype(np.int64)
    if split == "all":
        return images, labels
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=0)
    return (train_x, train_y) if split == "train" else (test_x, test_y)


class DigitsDataset(Dataset):
    """The built-in ``digits``: 10 classes of 8x8 grayscale digits, upsampled to ``resolution``.

    Held in memory (a few MB even at 64x64). No flips: a mirrored digit is not the same class.
    """

    def __init__(self, split: str = "train", resolution: int = 8, channels: int | None = None,
                 random_flip: bool = False):
        check_channels(channels)
        if random_flip:
            raise ValueError("digits does not support random_flip: a mirrored 2 or 7 is not the same class")
        images, labels = digits_arrays(split)
        x = torch.from_numpy(images)[:, None] * 2 - 1  # (N, 1, 8, 8)
        if resolution != 8:
            x = TF.resize(x, [resolution, resolution], antialias=True).clamp(-1, 1)
        self.images = match_channels(x, channels or 1)
        self.labels = torch.from_numpy(labels)
        self.split, self.resolution, self.channels = split, resolution, channels or 1
        self.class_names = [str(d) for d in range(10)]
        self.num_classes = 10

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": self.labels[index]}


# ----------------------------------------------------------------------------- folders of files

def _media_files(folder: Path, extensions: tuple[str, ...], recursive: bool) -> list[Path]:
    paths = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in paths
                  if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith("."))


def _layout(root: Path, extensions: tuple[str, ...]) -> str:
    ext = "|".join(e.lstrip(".") for e in extensions)
    return (f"expected {root}/<class_name>/*.{{{ext}}} (one subfolder per class) "
            f"or {root}/*.{{{ext}}} (unconditional)")


def _describe(root: Path) -> str:
    entries = sorted(p.name for p in root.iterdir())
    if not entries:
        return "the folder is empty"
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    return f"found {len(entries)} entries ({shown}) but no files with an accepted extension"


def scan_media_folder(root: str | Path, extensions: tuple[str, ...]) -> tuple[list[tuple[Path, int]], list[str]]:
    """List ``(path, label)`` for ``root/<class>/**`` (labels from sorted class names) or ``root/*``
    (label -1: unconditional). Returns the files and the class names; raises ``DataError`` when the
    folder is missing, empty, or mixes loose files with class subfolders.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"{root} {what}; {_layout(root, extensions)}")
    classes = {d.name: _media_files(d, extensions, recursive=True)
               for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    classes = {name: files for name, files in classes.items() if files}  # folders without media are no class
    loose = _media_files(root, extensions, recursive=False)
    if classes and loose:
        raise DataError(f"{root} mixes {len(loose)} loose files (e.g. {loose[0].name}) with class subfolders "
                        f"{list(classes)}; {_layout(root, extensions)}")
    if loose:
        return [(p, -1) for p in loose], []
    if not classes:
        raise DataError(f"no usable files in {root}: {_describe(root)}; {_layout(root, extensions)}")
    files = [(p, label) for label, paths in enumerate(classes.values()) for p in paths]
    return files, list(classes)


def verify_files(files: list[tuple[Path, int]], verify: Callable[[Path], object], kind: str,
                 root: Path) -> tuple[list[tuple[Path, int, object]], list[tuple[str, str]]]:
    """Run ``verify`` on every file; keep ``(path, label, info)`` for the good ones, warn about the bad
    ones and return them as ``(path, reason)``. Raises ``DataError`` when none is readable."""
    good, skipped = [], []
    for path, label in files:
        try:
            good.append((path, label, verify(path)))
        except Exception as e:  # decoders raise many types (OSError, SyntaxError, av errors, ...)
            skipped.append((str(path), f"{type(e).__name__}: {e}"))
            warnings.warn(f"skipping unreadable {kind} {path}: {skipped[-1][1]}", stacklevel=3)
    if not good:
        raise DataError(f"none of the {len(files)} {kind} files in {root} could be read; "
                        f"first: {skipped[0][0]} ({skipped[0][1]})")
    return good, skipped


def select_split(root: Path, split: str) -> Path:
    """``root/<split>`` when the folder has train/test subfolders; otherwise the whole folder is the
    training data, and asking it for another split is an error rather than a silent train/test leak."""
    present = [name for name in SPLIT_FOLDERS if (root / name).is_dir()]
    if present:
        if (root / split).is_dir():
            return root / split
        raise DataError(f"{root} has split folders {present} but no {split!r} folder")
    if split in ("train", "all"):
        return root
    raise DataError(f"{root} has no split subfolders ({'/'.join(SPLIT_FOLDERS)}), so it only serves "
                    f"split 'train' or 'all', not {split!r}; put held-out data in {root}/{split}/")


class SkipUnreadable(Dataset, ABC):
    """Base for file-backed data sets: an item that fails to load is warned about once, recorded in
    ``skipped`` as ``(name, reason)`` and replaced by the next readable item, so one bad file never
    ends an epoch. Subclasses call ``super().__init__(skipped)`` and implement ``_load``/``_name``.

    With DataLoader workers, ``skipped`` grows in the worker processes; the warnings still show.
    """
    kind = "file"

    def __init__(self, skipped: list[tuple[str, str]] | None = None):
        self.skipped = list(skipped or [])
        self._failed: set[int] = set()

    @abstractmethod
    def _load(self, index: int) -> dict:
        ...

    @abstractmethod
    def _name(self, index: int) -> str:
        ...

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        for offset in range(n):
            i = (index + offset) % n
            if i in self._failed:
                continue
            try:
                return self._load(i)
            except Exception as e:  # any decode failure; the warning says which file and why
                self._failed.add(i)
                self.skipped.append((self._name(i), f"{type(e).__name__}: {e}"))
                warnings.warn(f"skipping unreadable {self.kind} {self.skipped[-1][0]}: {self.skipped[-1][1]}",
                              stacklevel=2)
        raise DataError(f"none of the {n} items could be read; last failure: {self.skipped[-1]}")


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """Any PIL mode to uint8 ``(1, H, W)`` for grayscale modes or ``(3, H, W)`` otherwise.

    16-bit gray is rescaled (PIL's own convert clips it to 255); alpha is composited onto black so
    transparent pixels do not show whatever colour happens to be stored under them.
    """
    gray = image.mode in GRAY_MODES
    if image.mode.startswith("I"):
        array = np.asarray(image, dtype=np.float32) / 257  # 0..65535 -> 0..255
        image = Image.fromarray(array.clip(0, 255).round().astype(np.uint8))
    elif image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        image = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image.convert("RGBA"))
    array = np.asarray(image.convert("L" if gray else "RGB"))
    x = torch.from_numpy(array.copy())
    return x[None] if gray else x.permute(2, 0, 1)


def _image_mode(source: str | Path | bytes) -> str:
    """Mode from the header, then a full-file check (``verify`` reads chunks and CRCs, no decoding)."""
    with open_image(source) as image:
        mode = image.mode
        image.verify()
    return mode


class ImageFolderDataset(SkipUnreadable):
    """``root/<class_name>/*.png|jpg|jpeg|webp|bmp`` (labels from sorted folder names) or a flat
    folder of images (unconditional: no "label", ``num_classes == 0``).

    Files are verified when the folder is scanned; unreadable ones are skipped with a warning and
    listed in ``skipped``. ``channels=None`` means 1 if every image is grayscale, else 3.
    """
    kind = "image"

    def __init__(self, root: str | Path, resolution: int, channels: int | None = None,
                 crop: str = "center", random_flip: bool = False):
        check_channels(channels)
        self.root = Path(root)
        files, self.class_names = scan_media_folder(self.root, IMAGE_EXTENSIONS)
        good, skipped = verify_files(files, _image_mode, self.kind, self.root)
        super().__init__(skipped)
        self.files = [(path, label) for path, label, _ in good]
        self.channels = channels or (1 if all(mode in GRAY_MODES for *_, mode in good) else 3)
        self.num_classes = len(self.class_names)
        self.resolution = resolution
        self.transform = make_transform(resolution, crop, random_flip)

    def __len__(self) -> int:
        return len(self.files)

    def _name(self, index: int) -> str:
        return str(self.files[index][0])

    def _load(self, index: int) -> dict:
        path, label = self.files[index]
        with Image.open(path) as image:
            x = match_channels(pil_to_tensor(image), self.channels)
        item = {"image": to_model_range(self.transform(x))}
        if label >= 0:
            item["label"] = torch.tensor(label)
        return item


# ----------------------------------------------------------------------------- Hugging Face datasets

def is_saved_hf_dataset(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def load_hf_split(name_or_path: str | Path, split: str):
    """A ``datasets.Dataset``: from a ``save_to_disk`` folder, a local data folder or the hub."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError("Hugging Face data sets need the `datasets` package: "
                          "pip install 'mmdiff[datasets]'") from e
    path = Path(name_or_path).expanduser()
    if path.is_dir() and is_saved_hf_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        if not isinstance(loaded, datasets.DatasetDict):
            select_split_of_single(path, split)
            return loaded
        if split not in loaded:
            raise DataError(f"{path} has splits {list(loaded)}, not {split!r}")
        return loaded[split]
    try:
        return datasets.load_dataset(str(name_or_path), split=split)
    except Exception as e:  # hub and builder errors have no common base class
        where = (f"{path} exists but could not be loaded by datasets.load_dataset" if path.exists() else
                 f"{name_or_path!r} does not exist locally and could not be loaded from the Hugging Face "
                 "hub (offline, private, or no such dataset)")
        raise DataError(f"{where}: {type(e).__name__}: {e}") from e


def select_split_of_single(path: Path, split: str) -> None:
    """A saved single ``Dataset`` has no splits: like a plain folder it only serves "train"/"all"."""
    if split not in ("train", "all"):
        raise DataError(f"{path} is a single saved Dataset, so it only serves split 'train' or 'all', "
                        f"not {split!r}; save a DatasetDict with a {split!r} split")


def find_column(dataset, feature_type: type, wanted: str | None, what: str) -> str | None:
    """``wanted`` if given (checked), else the one column whose feature is ``feature_type``, or None."""
    columns = dataset.features
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"no column {wanted!r} for {what}; columns are {list(columns)}")
        return wanted
    matches = [name for name, feature in columns.items() if isinstance(feature, feature_type)]
    if len(matches) > 1:
        raise DataError(f"several {what} columns {matches}; pass {what}_column= to choose one")
    return matches[0] if matches else None


def open_hf_media(name_or_path, split: str, feature: type, column: str | None, label_column: str | None,
                  what: str):
    """A HF split reduced to its media column (``feature``: ``datasets.Image`` or ``Video``, left
    undecoded so that a bad file is skipped like in a folder instead of raising inside datasets)
    and its label column: ``(dataset, column, label_column, class_names)``."""
    import datasets

    dataset = load_hf_split(name_or_path, split)
    column = find_column(dataset, feature, column, what)
    if column is None:
        raise DataError(f"{name_or_path}[{split}] has no {feature.__name__} column; columns are "
                        f"{dict(dataset.features)}; pass {what}_column=")
    label_column = find_column(dataset, datasets.ClassLabel, label_column, "label")
    columns = [c for c in (column, label_column) if c]
    dataset = dataset.select_columns(columns).cast_column(column, feature(decode=False))
    return dataset, column, label_column, hf_labels(dataset, label_column)


def hf_labels(dataset, label_column: str | None) -> list[str]:
    """Class names: from a ``ClassLabel`` feature, else ``0..max`` of an integer column."""
    if label_column is None:
        return []
    names = getattr(dataset.features[label_column], "names", None)
    return list(names) if names else [str(i) for i in range(int(max(dataset[label_column])) + 1)]


def hf_source(value: dict) -> bytes | str:
    """The bytes, else the path, of an undecoded ``Image``/``Video`` cell ``{"bytes": ..., "path": ...}``."""
    return value.get("bytes") or value["path"]


def open_image(source: str | Path | bytes) -> Image.Image:
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


class HFRows:
    """Rows of a Hugging Face data set, named for messages by where they come from (``where``)."""

    def __len__(self) -> int:
        return len(self.dataset)

    def _name(self, index: int) -> str:
        return f"{self.where} row {index}"


class HFImageDataset(HFRows, SkipUnreadable):
    """Any Hugging Face ``datasets`` image data set: a ``save_to_disk`` folder, a local data folder or a
    hub name. The image column is the ``Image`` feature and the label column the ``ClassLabel``
    feature unless named. ``channels=None`` looks at the first 256 image headers.
    """
    kind = "image"

    def __init__(self, name_or_path: str | Path, split: str = "train", image_column: str | None = None,
                 label_column: str | None = None, *, resolution: int, channels: int | None = None,
                 crop: str = "center", random_flip: bool = False):
        import datasets

        check_channels(channels)
        self.where = f"{name_or_path}[{split}]"
        (self.dataset, self.image_column, self.label_column,
         self.class_names) = open_hf_media(name_or_path, split, datasets.Image, image_column, label_column, "image")
        self.num_classes = len(self.class_names)
        super().__init__()
        self.channels = channels or self._auto_channels()
        self.resolution = resolution
        self.transform = make_transform(resolution, crop, random_flip)

    def _auto_channels(self) -> int:
        head = self.dataset.select(range(min(256, len(self.dataset))))[self.image_column]
        return 1 if all(_image_mode(hf_source(value)) in GRAY_MODES for value in head) else 3

    def _load(self, index: int) -> dict:
        row = self.dataset[index]
        with open_image(hf_source(row[self.image_column])) as image:
            x = match_channels(pil_to_tensor(image), self.channels)
        item = {"image": to_model_range(self.transform(x))}
        if self.label_column:
            item["label"] = torch.tensor(row[self.label_column], dtype=torch.int64)
        return item


# ----------------------------------------------------------------------------- from a string

BUILTIN_IMAGE_DATASETS = {"digits": DigitsDataset}


def check_remote_name(data: str, builtins: dict) -> None:
    """Fail fast, without a network round trip, for strings that cannot be hub names ("owner/name")."""
    if re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", data):
        return
    if "/" in data or "\\" in data or data.startswith((".", "~")):
        raise DataError(f"{data} does not exist (no such file or folder)")
    raise DataError(f"unknown data set {data!r}: not a built-in ({', '.join(builtins)}), not an existing "
                    "path, and Hugging Face hub data sets are named 'owner/name' (e.g. 'ylecun/mnist')")


def build_image_dataset(data: str | Path, *, resolution: int, channels: int | None = None,
                        split: str = "train", **kw) -> Dataset:
    """Resolve ``data``: a built-in name ("digits"), a local folder (images, or a ``save_to_disk``
    data set; a folder with train/ test/ subfolders is split by them), else a hub name. Extra
    keywords (crop, random_flip, image_column, ...) go to the data set class."""
    data = str(data)
    if data in BUILTIN_IMAGE_DATASETS:
        return BUILTIN_IMAGE_DATASETS[data](split=split, resolution=resolution, channels=channels, **kw)
    path = Path(data).expanduser()
    if path.exists():
        if path.is_dir() and is_saved_hf_dataset(path):
            return HFImageDataset(path, split, resolution=resolution, channels=channels, **kw)
        root = select_split(path, split) if path.is_dir() else path
        return ImageFolderDataset(root, resolution, channels, **kw)
    check_remote_name(data, BUILTIN_IMAGE_DATASETS)
    return HFImageDataset(data, split, resolution=resolution, channels=channels, **kw)
