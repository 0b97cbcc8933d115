"""Video data sets: the built-in ``moving-digits``, folders of video files, Hugging Face video datasets.

Every data set yields ``{"video": (T, C, R, R) float32 in [-1, 1], "label": int64 scalar}`` (no
"label" when unconditional) and has ``num_classes``, ``class_names``, ``channels``, ``resolution`` and
``num_frames``. ``build_video_dataset`` turns a string into one of them.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ..media import count_frames, read_video
from .images import (HFRows, SkipUnreadable, check_channels, check_remote_name, digits_arrays, hf_source,
                     is_saved_hf_dataset, make_transform, match_channels, open_hf_media, scan_media_folder,
                     select_split, to_model_range, verify_files)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".gif", ".avi")
CLIP_STARTS = ("random", "first", "center")
_SPLIT_IDS = {"train": 0, "test": 1, "all": 2}  # stable seeds; hash(split) changes between processes


# ----------------------------------------------------------------------------- moving-digits (built-in)

def bounce(x: np.ndarray, span: float) -> np.ndarray:
    """Fold free motion into ``[0, span]`` as if it reflected off both walls (a triangle wave)."""
    if span == 0:
        return np.zeros_like(x)
    phase = np.mod(x, 2 * span)
    return np.where(phase > span, 2 * span - phase, phase)


class MovingDigitsDataset(Dataset):
    """The built-in ``moving-digits``: one digit (from ``digits_arrays(split)``, upsampled to
    ``digit_size``) moving at a constant speed, uniform in ``[max_speed / 3, max_speed]`` px/frame
    (1-3 by default; 0 keeps it still), in a random direction on a black ``size x size`` canvas,
    reflecting off the walls. Each clip is generated on the fly from ``(seed, split, index)``
    alone, so two constructions give identical clips and workers need no shared RNG.

    Items also carry ``positions`` ``(T, 2)``: the (top, left) pixel of the digit box in each frame.
    """

    def __init__(self, split: str = "train", num_clips: int = 4096, num_frames: int = 16, size: int = 32,
                 digit_size: int = 16, seed: int = 0, channels: int | None = None, max_speed: float = 3.0):
        check_channels(channels)
        if not max_speed >= 0:
            raise ValueError(f"max_speed must be >= 0 px/frame, got {max_speed}")
        if not 0 < digit_size <= size:
            raise ValueError(f"need 0 < digit_size <= size, got digit_size={digit_size}, size={size}")
        images, labels = digits_arrays(split)
        digits = TF.resize(torch.from_numpy(images)[:, None], [digit_size, digit_size], antialias=True)
        self.digits = digits[:, 0].clamp(0, 1).numpy() * 2 - 1  # (N, d, d) in [-1, 1]
        self.labels = labels
        self.split, self.num_clips, self.num_frames, self.seed = split, num_clips, num_frames, seed
        self.max_speed = max_speed
        self.resolution, self.digit_size = size, digit_size
        self.channels = channels or 1
        self.num_classes, self.class_names = 10, [str(d) for d in range(10)]

    def __len__(self) -> int:
        return self.num_clips

    def trajectory(self, rng: np.random.Generator) -> np.ndarray:
        """Integer (top, left) per frame, ``(T, 2)``, always inside the canvas."""
        span = self.resolution - self.digit_size
        start = rng.uniform(0, span, size=2)
        speed, angle = rng.uniform(self.max_speed / 3, self.max_speed), rng.uniform(0, 2 * math.pi)
        velocity = speed * np.array([math.sin(angle), math.cos(angle)])  # (d_top, d_left) per frame
        free = start + np.arange(self.num_frames)[:, None] * velocity
        return np.rint(bounce(free, span)).astype(np.int64)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for {self.num_clips} clips")
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
        digit = int(rng.integers(len(self.labels)))
        positions = self.trajectory(rng)
        d = self.digit_size
        video = np.full((self.num_frames, 1, self.resolution, self.resolution), -1, np.float32)  # black
        for t, (top, left) in enumerate(positions.tolist()):
            video[t, 0, top:top + d, left:left + d] = self.digits[digit]
        return {"video": match_channels(torch.from_numpy(video), self.channels),
                "label": torch.tensor(self.labels[digit]),
                "positions": torch.from_numpy(positions).float()}


# ----------------------------------------------------------------------------- clips from files

def probe_video(source: str | Path | bytes) -> tuple[int, bool]:
    """``(frame count, is grayscale)``: opens the file and decodes its first frame, so a file that
    cannot be decoded fails here, when the folder is scanned, not in the middle of an epoch."""
    count = count_frames(source)
    first = read_video(source, num_frames=1).int()  # (1, H, W, 3)
    # yuv420p round trips of gray content can leave channels a level or two apart
    return count, bool((first.amax(-1) - first.amin(-1)).max() <= 2)


class VideoClips(SkipUnreadable):
    """Shared clip sampling for file-backed video data sets.

    A clip is ``num_frames`` frames, ``frame_stride`` apart, starting at a random frame (``start=
    "random"``, for training) or deterministically at the first frame or the centre. Videos shorter
    than ``(num_frames - 1) * frame_stride + 1`` frames are padded by repeating their last frame;
    ``short_videos`` counts them. Every frame of a clip gets the same resize, crop and flip.
    """
    kind = "video"

    def __init__(self, num_frames: int, frame_stride: int, resolution: int, channels: int | None, crop: str,
                 random_flip: bool, start: str):
        super().__init__()
        check_channels(channels)
        if start not in CLIP_STARTS:
            raise ValueError(f"start must be one of {CLIP_STARTS}, got {start!r}")
        if num_frames < 1 or frame_stride < 1:
            raise ValueError(f"need num_frames >= 1 and frame_stride >= 1, got {num_frames}, {frame_stride}")
        self.num_frames, self.frame_stride, self.start = num_frames, frame_stride, start
        self.span = (num_frames - 1) * frame_stride + 1  # frames a full clip covers
        self.resolution, self.channels = resolution, channels
        self.transform = make_transform(resolution, crop, random_flip)

    def _first_frame(self, count: int) -> int:
        last = max(count - self.span, 0)
        if self.start == "random":
            return int(torch.randint(last + 1, ()))  # torch RNG: DataLoader seeds it per worker
        return 0 if self.start == "first" else last // 2

    def _clip(self, source, count: int, label: int) -> dict:
        frames = read_video(source, self.num_frames, self.frame_stride, self._first_frame(count))
        frames = frames.permute(0, 3, 1, 2)  # (t, 3, H, W), t <= num_frames
        pad = frames[-1:].expand(self.num_frames - len(frames), -1, -1, -1)
        clip = match_channels(torch.cat([frames, pad]), self.channels)  # (T, C, H, W)
        item = {"video": to_model_range(self.transform(clip))}
        if label >= 0:
            item["label"] = torch.tensor(label)
        return item


class VideoFolderDataset(VideoClips):
    """``root/<class_name>/*.mp4|webm|mkv|mov|gif|avi`` (labels from sorted folder names) or a flat
    folder (unconditional), decoded with PyAV; a caption ``<video stem>.txt`` next to a video
    becomes the item's ``caption`` (text-to-video; "" for a video without one when any has one).
    Every file is probed when the folder is scanned;
    undecodable ones are skipped with a warning and listed in ``skipped``. ``channels=None`` means 1 if
    every video's first frame is gray, else 3. See ``VideoClips`` for sampling and padding.
    """

    def __init__(self, root: str | Path, num_frames: int = 16, frame_stride: int = 1, *, resolution: int,
                 channels: int | None = None, crop: str = "center", random_flip: bool = False,
                 start: str = "random"):
        super().__init__(num_frames, frame_stride, resolution, channels, crop, random_flip, start)
        self.root = Path(root)
        files, self.class_names = scan_media_folder(self.root, VIDEO_EXTENSIONS)
        good, skipped = verify_files(files, probe_video, self.kind, self.root)
        self.skipped.extend(skipped)
        self.files = [(path, label, count) for path, label, (count, _) in good]
        self.channels = channels or (1 if all(gray for *_, (_, gray) in good) else 3)
        self.num_classes = len(self.class_names)
        self.short_videos = sum(count < self.span for *_, count in self.files)
        self.has_captions = any(path.with_suffix(".txt").is_file() for path, *_ in self.files)

    def __len__(self) -> int:
        return len(self.files)

    def _name(self, index: int) -> str:
        return str(self.files[index][0])

    def _load(self, index: int) -> dict:
        path, label, count = self.files[index]
        item = self._clip(path, count, label)
        if self.has_captions:  # every item or none, so batches collate
            caption = path.with_suffix(".txt")
            item["caption"] = caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""
        return item


class HFVideoDataset(HFRows, VideoClips):
    """A Hugging Face ``datasets`` data set with a ``Video`` column (a ``save_to_disk`` folder or a hub
    name); decoded with PyAV from the stored bytes or path, so ``torchcodec`` is not needed.
    ``channels=None`` probes the first 16 videos.
    """

    def __init__(self, name_or_path: str | Path, split: str = "train", video_column: str | None = None,
                 label_column: str | None = None, *, num_frames: int = 16, frame_stride: int = 1,
                 resolution: int, channels: int | None = None, crop: str = "center",
                 random_flip: bool = False, start: str = "random"):
        import datasets

        super().__init__(num_frames, frame_stride, resolution, channels, crop, random_flip, start)
        self.where = f"{name_or_path}[{split}]"
        (self.dataset, self.video_column, self.label_column,
         self.class_names) = open_hf_media(name_or_path, split, datasets.Video, video_column, label_column, "video")
        self.num_classes = len(self.class_names)
        if channels is None:
            head = self.dataset.select(range(min(16, len(self.dataset))))[self.video_column]
            self.channels = 1 if all(probe_video(hf_source(v))[1] for v in head) else 3

    def _load(self, index: int) -> dict:
        row = self.dataset[index]
        source = hf_source(row[self.video_column])
        label = row[self.label_column] if self.label_column else -1
        return self._clip(source, count_frames(source), label)


# ----------------------------------------------------------------------------- from a string

BUILTIN_VIDEO_DATASETS = {"moving-digits": MovingDigitsDataset}


def build_video_dataset(data: str | Path, *, num_frames: int, resolution: int, channels: int | None = None,
                        split: str = "train", frame_stride: int = 1, **kw) -> Dataset:
    """Resolve ``data``: "moving-digits" (``digit_size`` defaults to ``resolution // 2``), a local folder
    of videos (split by train/ test/ subfolders when present) or ``save_to_disk`` data set, else a hub
    name. Extra keywords (crop, random_flip, start, num_clips, seed, ...) go to the data set class."""
    data = str(data)
    if data in BUILTIN_VIDEO_DATASETS:
        if frame_stride != 1:
            raise ValueError("moving-digits is generated one step per frame; frame_stride must be 1")
        kw.setdefault("digit_size", resolution // 2)
        return MovingDigitsDataset(split=split, num_frames=num_frames, size=resolution, channels=channels, **kw)
    clip = dict(num_frames=num_frames, frame_stride=frame_stride, resolution=resolution, channels=channels, **kw)
    path = Path(data).expanduser()
    if path.is_dir() and is_saved_hf_dataset(path):
        return HFVideoDataset(path, split, **clip)
    if path.exists():
        return VideoFolderDataset(select_split(path, split) if path.is_dir() else path, **clip)
    check_remote_name(data, BUILTIN_VIDEO_DATASETS)
    return HFVideoDataset(data, split, **clip)
