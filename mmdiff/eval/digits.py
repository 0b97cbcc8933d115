"""Scores for generated digits: a small reference classifier trained by our own code on the
built-in digits data (scikit-learn's ``load_digits``), its features for a Fréchet distance, and
helpers that read moving digits out of video frames.

The classifier plays the role Inception plays for FID: ``classify`` gives conditional accuracy,
``features`` (the 128-d penultimate layer) gives ``frechet``. Its weights ship in
``mmdiff/assets/digits_classifier.safetensors`` with the training settings and held-out accuracy
in the file header; ``train_digits_classifier`` reproduces them.

Images are tensors (N, 1, H, W) in [-1, 1]; anything not 8x8 is resized with antialiasing.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.checkpoint import check_state_dict, config_from_dict, config_to_dict, load_tensors, save_tensors
from ..data.images import digits_arrays
from .metrics import frechet_from_stats, gaussian_stats, wasserstein_1d

WEIGHTS_PATH = Path(__file__).resolve().parent.parent / "assets" / "digits_classifier.safetensors"
SIZE = 8  # load_digits resolution; the classifier reads only this
NUM_CLASSES = 10


# ----------------------------------------------------------------------------- data

def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 1, 8, 8) float32 in [-1, 1], labels (N,) int64) of the one digits split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = digits_arrays(split)
    return (images * 2 - 1).astype(np.float32)[:, None], labels.astype(np.int64)


def _digits_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _digits(split)
    return torch.from_numpy(images).clone(), torch.from_numpy(labels).clone()


# ----------------------------------------------------------------------------- model

@dataclasses.dataclass
class DigitsClassifierConfig:
    channels: tuple[int, int] = (32, 64)
    feature_dim: int = 128
    num_classes: int = NUM_CLASSES


@dataclasses.dataclass
class DigitsTrainingConfig:
    seed: int = 0
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_shift: float = 1.0  # pixels of random translation, so off-centre generated digits still read


class DigitsClassifier(nn.Module):
    def __init__(self, config: DigitsClassifierConfig = DigitsClassifierConfig()):
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.penultimate = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * (SIZE // 2) ** 2, config.feature_dim), nn.ReLU())
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)  # (N, c2, 4, 4)
        return self.penultimate(x)  # (N, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (N, num_classes)


# ----------------------------------------------------------------------------- training

def train_digits_classifier(seed: int = 0, epochs: int = DigitsTrainingConfig.epochs,
                            config: DigitsClassifierConfig = DigitsClassifierConfig()) -> DigitsClassifier:
    """Train the reference classifier on the train split. Every random draw comes from ``seed``
    (initialisation, shuffling, shifts) and nothing uses dropout, so a run is repeatable and
    works under ``torch.use_deterministic_algorithms(True)``."""
    training = DigitsTrainingConfig(seed=seed, epochs=epochs)
    images, labels = _digits_tensors("train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier(config)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(images) / training.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, training.lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=gen).split(training.batch_size):
            x = _random_shift(images[idx], training.max_shift, gen)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def _random_shift(images: torch.Tensor, max_shift: float, gen: torch.Generator) -> torch.Tensor:
    # Sub-pixel shifts: a digit cropped out of a larger canvas and downsampled lands between
    # pixels and comes out slightly blurred, and bilinear resampling teaches exactly that.
    corners = (torch.rand(len(images), 2, generator=gen) * 2 - 1) * max_shift
    return _window(images, corners, images.shape[-2:])


def evaluate_accuracy(model: DigitsClassifier, split: str = "test") -> float:
    """Fraction of ``split`` that ``model`` labels correctly."""
    images, labels = _digits_tensors(split)
    return (classify(images, model) == labels).double().mean().item()


def save_digits_classifier(model: DigitsClassifier, training: DigitsTrainingConfig,
                           path: Path = WEIGHTS_PATH, **report) -> None:
    """Write weights plus model config, training config and ``report`` (accuracy, timing) into the
    safetensors header, so the shipped file says how it was made and what it scores."""
    header = {"model": config_to_dict(model.config), "training": config_to_dict(training), **report}
    save_tensors(model.state_dict(), Path(path), metadata={"digits_classifier": json.dumps(header)})


def read_digits_classifier_header(path: Path = WEIGHTS_PATH) -> dict:
    """The header written by ``save_digits_classifier``: model, training, test_accuracy, ..."""
    _, metadata = load_tensors(Path(path))
    return json.loads(metadata["digits_classifier"])


@functools.cache
def load_digits_classifier(path: Path = WEIGHTS_PATH) -> DigitsClassifier:
    """The shipped classifier in eval mode with frozen weights, loaded once per process."""
    tensors, metadata = load_tensors(Path(path))
    header = json.loads(metadata["digits_classifier"])
    model = DigitsClassifier(config_from_dict(DigitsClassifierConfig, header["model"], source=str(path)))
    check_state_dict(model.state_dict(), tensors, str(path))
    model.load_state_dict(tensors)
    return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- image scores

def to_classifier_size(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) in [-1, 1] -> (N, 1, 8, 8) float32, antialiased when downsampling.

    Area averaging is the antialiasing filter because it is how load_digits itself was made
    (32x32 bitmaps, on-pixels counted in 4x4 blocks): a digit drawn at 16x16 or 32x32 comes back
    as the classifier knows it, and measured crop accuracy is higher than with a bilinear filter."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected grayscale images (N, 1, H, W) in [-1, 1], got shape {tuple(images.shape)}")
    images = images.float()
    if images.shape[-2:] != (SIZE, SIZE):
        images = F.interpolate(images, size=(SIZE, SIZE), mode="area")
    return images


@torch.no_grad()
def _run(images: torch.Tensor, model: DigitsClassifier | None, method: str, batch_size: int = 1024):
    model = model or load_digits_classifier()
    device = next(model.parameters()).device
    images = to_classifier_size(images)
    outs = [getattr(model, method)(chunk.to(device)).cpu() for chunk in images.split(batch_size)]
    return torch.cat(outs)


def classify(images: torch.Tensor, model: DigitsClassifier | None = None) -> torch.Tensor:
    """Predicted class (N,) int64 for images (N, 1, H, W) in [-1, 1]."""
    return _run(images, model, "forward").argmax(dim=-1)


def features(images: torch.Tensor, model: DigitsClassifier | None = None) -> torch.Tensor:
    """Penultimate-layer features (N, 128) for images (N, 1, H, W) in [-1, 1]."""
    return _run(images, model, "features")


@functools.cache
def _test_stats() -> tuple[np.ndarray, np.ndarray]:
    return gaussian_stats(features(_digits_tensors("test")[0]))


def _frechet_to_test(images: torch.Tensor) -> float:
    return frechet_from_stats(*gaussian_stats(features(images)), *_test_stats())


def digits_scores(images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """accuracy: fraction of images generated for class ``labels[i]`` that the classifier reads as
    that class. frechet: Fréchet distance of classifier features against the held-out test split
    (360 images). The estimate is biased upwards for small N: compare it with
    ``real_floor(len(images))``, the score of as many real images."""
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != images.shape[:1]:
        raise ValueError(f"need one label per image: {len(images)} images, labels of shape {tuple(labels.shape)}")
    accuracy = (classify(images) == labels).double().mean().item()
    return {"accuracy": accuracy, "frechet": _frechet_to_test(images)}


@functools.cache
def real_floor(num_samples: int | None = None, seed: int = 0) -> float:
    """Fréchet distance between real train images and the test split: what a perfect generator
    scores. The estimate grows as the sample shrinks (7.1 at all 1437, 11-20 at 360, 28-49 at 100
    depending on the subset), so pass the number of generated images to get the floor at the same
    sample size; a random subset of that many train images (drawn from ``seed``) stands in."""
    images, _ = _digits_tensors("train")
    if num_samples is not None:
        if not 2 <= num_samples <= len(images):
            raise ValueError(f"num_samples must be between 2 and {len(images)} (the train split), got {num_samples}")
        images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:num_samples]]
    return _frechet_to_test(images)


# ----------------------------------------------------------------------------- moving digits

def locate_digit(frames: torch.Tensor) -> torch.Tensor:
    """Centroids (B, T, 2) as (row, col) in pixels of frames (B, T, 1, H, W) in [-1, 1], weighted
    by the positive part so the black background and faint noise do not pull it. A frame with no
    positive pixel gets the canvas centre."""
    _check_video(frames)
    h, w = frames.shape[-2:]
    weight = frames.float().clamp(min=0)[:, :, 0]  # (B, T, H, W)
    mass = weight.sum(dim=(-2, -1))
    rows = torch.arange(h, dtype=torch.float32, device=frames.device)
    cols = torch.arange(w, dtype=torch.float32, device=frames.device)
    cy = (weight.sum(-1) * rows).sum(-1) / mass.clamp(min=1e-12)
    cx = (weight.sum(-2) * cols).sum(-1) / mass.clamp(min=1e-12)
    centroids = torch.stack([cy, cx], dim=-1)  # (B, T, 2)
    centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], device=frames.device)
    return torch.where((mass > 0)[..., None], centroids, centre)


def crop_digits(frames: torch.Tensor, box: int = 16, centroids: torch.Tensor | None = None) -> torch.Tensor:
    """A box x box window around each frame's digit, resized to 8x8: (B, T, 1, H, W) ->
    (B, T, 1, 8, 8). Outside the canvas counts as background (-1)."""
    _check_video(frames)
    b, t = frames.shape[:2]
    centroids = locate_digit(frames) if centroids is None else centroids
    corners = centroids.reshape(b * t, 2).float().cpu() - (box - 1) / 2
    crops = _window(frames.reshape(b * t, *frames.shape[2:]).float().cpu(), corners, (box, box))
    return to_classifier_size(crops).reshape(b, t, 1, SIZE, SIZE)


def video_scores(videos: torch.Tensor, labels: torch.Tensor, box: int = 16) -> dict[str, float]:
    """accuracy: fraction of frames whose digit reads as the video's label. identity_consistency:
    fraction of videos whose frames all read as one class (right or wrong), i.e. the digit does
    not morph. mean_speed: mean centroid displacement per frame in pixels (0 = frozen video)."""
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != videos.shape[:1]:
        raise ValueError(f"need one label per video: {len(videos)} videos, labels of shape {tuple(labels.shape)}")
    centroids = locate_digit(videos)
    crops = crop_digits(videos, box, centroids)
    predicted = classify(crops.flatten(0, 1)).reshape(videos.shape[:2])  # (B, T)
    return {
        "accuracy": (predicted == labels[:, None]).double().mean().item(),
        "identity_consistency": (predicted == predicted[:, :1]).all(dim=1).double().mean().item(),
        "mean_speed": _velocities(centroids).norm(dim=-1).mean().item(),
    }


def motion_distance(centroids_a: torch.Tensor, centroids_b: torch.Tensor, kind: str = "speed") -> float:
    """How differently two sets of videos move, from their centroids (B, T, 2) (``locate_digit``).
    kind="speed": 1-D Wasserstein distance between the distributions of frame-to-frame centroid
    speed, in pixels per frame. kind="velocity": mean over the row and column axes of the 1-D
    Wasserstein distance between signed per-axis velocities, which also sees direction."""
    va, vb = _velocities(centroids_a), _velocities(centroids_b)  # (B, T-1, 2)
    if kind == "speed":
        return wasserstein_1d(va.norm(dim=-1).flatten(), vb.norm(dim=-1).flatten()).item()
    if kind == "velocity":
        return wasserstein_1d(va.flatten(0, 1).T, vb.flatten(0, 1).T).mean().item()
    raise ValueError(f"kind must be 'speed' or 'velocity', got {kind!r}")


def _velocities(centroids: torch.Tensor) -> torch.Tensor:
    if centroids.ndim != 3 or centroids.shape[-1] != 2 or centroids.shape[1] < 2:
        raise ValueError(f"expected centroids (B, T, 2) with T >= 2, got shape {tuple(centroids.shape)}")
    return centroids.double().diff(dim=1).cpu()


def _check_video(frames: torch.Tensor) -> None:
    if frames.ndim != 5 or frames.shape[2] != 1:
        raise ValueError(f"expected grayscale frames (B, T, 1, H, W) in [-1, 1], got shape {tuple(frames.shape)}")


def _window(images: torch.Tensor, corners: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-image windows (N, 1, *size) whose top-left pixel sits at corners[i] = (row, col), which
    may be fractional (bilinear). Pixels outside the image are background (-1). Shared by the
    shift augmentation and digit cropping."""
    n, _, h, w = images.shape
    rows = corners[:, :1].float() + torch.arange(size[0])  # (N, size[0]) source pixel rows
    cols = corners[:, 1:].float() + torch.arange(size[1])  # (N, size[1])
    # grid_sample with align_corners=False puts pixel i's centre at (2i + 1) / extent - 1.
    gy = ((2 * rows + 1) / h - 1)[:, :, None].expand(n, size[0], size[1])
    gx = ((2 * cols + 1) / w - 1)[:, None, :].expand(n, size[0], size[1])
    grid = torch.stack([gx, gy], dim=-1).to(images.device)  # (N, size[0], size[1], 2) as (x, y)
    # zeros padding on images + 1 is padding with background -1.
    out = F.grid_sample(images + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out - 1


def main() -> None:
    """Retrain and rewrite the shipped weights: ``OMP_NUM_THREADS=1 python -m mmdiff.eval.digits``."""
    training = DigitsTrainingConfig()
    start = time.perf_counter()
    model = train_digits_classifier(training.seed, training.epochs)
    seconds = time.perf_counter() - start
    accuracy = evaluate_accuracy(model)
    save_digits_classifier(model, training, test_accuracy=accuracy, train_seconds=round(seconds, 1),
                           torch_version=torch.__version__)
    print(f"held-out accuracy {accuracy:.4f}, trained in {seconds:.1f} s -> {WEIGHTS_PATH}")


if __name__ == "__main__":
    main()
