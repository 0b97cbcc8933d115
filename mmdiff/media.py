"""Media IO: tensors in [-1, 1] to images, grids and videos people can look at, and video decoding.

Conventions: float tensors are model space, ``(..., C, H, W)`` in [-1, 1]; uint8 arrays and tensors are
file space, ``(..., H, W, C)`` in 0..255. Encoding and decoding go through PyAV (FFmpeg).
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", ".png")
# Pictures people look at are enlarged by an integer nearest-neighbour factor until the shorter side
# has VIEW_SIZE pixels: an 8x8 digit or a 102x102 grid is otherwise a thumbnail on a screen. The
# longer side stops at MAX_VIEW_SIZE so a long strip of frames stays a file a viewer opens.
VIEW_SIZE = 256
MAX_VIEW_SIZE = 4096


# ----------------------------------------------------------------------------- images

def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float tensor in [-1, 1] to uint8 in 0..255, same shape; values outside [-1, 1] are clipped."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def to_pil(images: torch.Tensor) -> Image.Image | list[Image.Image]:
    """``(C, H, W)`` in [-1, 1] to one PIL image, ``(B, C, H, W)`` to a list; 1 channel is "L", 3 is "RGB"."""
    if images.ndim == 4:
        return [to_pil(image) for image in images]
    if images.ndim != 3 or images.shape[0] not in (1, 3):
        raise ValueError(f"to_pil expects (C, H, W) or (B, C, H, W) with C in (1, 3), got {tuple(images.shape)}")
    array = to_uint8(images).permute(1, 2, 0).numpy()  # (H, W, C)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def view_scale(height: int, width: int, size: int = VIEW_SIZE, max_size: int = MAX_VIEW_SIZE) -> int:
    """The integer factor that brings the shorter side to at least ``size`` pixels, or the largest
    one that keeps the longer side within ``max_size``; 1 for pictures that are large enough."""
    wanted = math.ceil(size / min(height, width))
    return max(1, min(wanted, max_size // max(height, width)))


def _scale(scale: int | None, height: int, width: int) -> int:
    if scale is None:
        return view_scale(height, width)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer (1 keeps the raw size) or None, got {scale!r}")
    return scale


def enlarge(image: Image.Image, scale: int | None = None) -> Image.Image:
    """``image`` scaled by an integer factor, nearest neighbour (every pixel becomes a square block,
    so the original is recovered exactly by averaging blocks); ``scale=None``: ``view_scale``."""
    scale = _scale(scale, image.height, image.width)
    return image if scale == 1 else image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def _grid(images: torch.Tensor, nrow: int | None, padding: int, pad_value: float) -> torch.Tensor:
    """Tile ``(B, C, H, W)`` into one ``(C, H', W')`` image in [-1, 1]; ``nrow`` is images per row."""
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=padding, pad_value=pad_value)
    return grid[: images.shape[1]]  # make_grid turns 1 channel into 3; keep grayscale grayscale


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2,
               pad_value: float = 1.0) -> Image.Image:
    """``(B, C, H, W)`` in [-1, 1] as one PIL image, ``nrow`` images per row (default: a square)."""
    return to_pil(_grid(images, nrow, padding, pad_value))


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, padding: int = 2,
                    pad_value: float = 1.0, scale: int | None = None) -> Path:
    """Save ``(B, C, H, W)`` in [-1, 1] as a PNG grid (white separators by default), enlarged to
    a viewable size (``enlarge``; ``scale=1`` keeps the raw size); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    enlarge(image_grid(images, nrow, padding, pad_value), scale).save(path)
    return path


# ----------------------------------------------------------------------------- writing videos

def _frames_to_array(frames) -> np.ndarray:
    """Any accepted frame format to uint8 ``(T, H, W, 3)``.

    The dtype says the layout: float tensors are ``(T, C, H, W)`` in [-1, 1], uint8 arrays/tensors are
    ``(T, H, W, C)``; a list of PIL images is stacked.
    """
    if isinstance(frames, (list, tuple)) and frames and isinstance(frames[0], Image.Image):
        array = np.stack([np.asarray(frame.convert("RGB")) for frame in frames])
    elif isinstance(frames, torch.Tensor) and frames.is_floating_point():
        if frames.ndim != 4:
            raise ValueError(f"float video frames must be (T, C, H, W) in [-1, 1], got {tuple(frames.shape)}")
        array = to_uint8(frames).permute(0, 2, 3, 1).numpy()
    else:
        array = np.asarray(frames)
        if array.dtype != np.uint8 or array.ndim != 4:
            raise ValueError("video frames must be a float tensor (T, C, H, W) in [-1, 1], a uint8 array "
                             f"(T, H, W, C) or a list of PIL images; got {array.dtype} {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.shape[-1] != 3:
        raise ValueError(f"video frames must have 1 or 3 channels, got shape {array.shape}")
    return np.ascontiguousarray(array)


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """yuv420p stores chroma at half resolution, so H and W must be even: pad one black row/column."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))


def _encode(frames: np.ndarray, path: Path, fps: int, codec: str, options: dict) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "pal8" if codec == "gif" else "yuv420p"
        for array in frames:
            frame = _gif_frame(array) if codec == "gif" else av.VideoFrame.from_ndarray(array, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush the encoder's buffered frames


def _gif_frame(array: np.ndarray) -> av.VideoFrame:
    """An adaptive 256-colour palette per frame (exact for grayscale); FFmpeg's own rgb8 is 3-3-2 bits."""
    quantized = Image.fromarray(array).quantize(256)
    palette = np.zeros((256, 4), np.uint8)
    rgb = np.asarray(quantized.getpalette(), np.uint8).reshape(-1, 3)[:256]
    palette[:, 0] = 255  # PyAV wants ARGB
    palette[: len(rgb), 1:] = rgb
    return av.VideoFrame.from_ndarray((np.asarray(quantized), palette), format="pal8")


def _mp4_codec() -> tuple[str, dict]:
    if "libx264" in av.codecs_available:
        return "libx264", {"crf": "18", "preset": "medium"}
    # FFmpeg builds without GPL x264: fixed quantiser 2 (`-q:v 2`); 118 is FFmpeg's FF_QP2LAMBDA
    return "mpeg4", {"flags": "+qscale", "global_quality": str(2 * 118)}


def save_video(frames, path: str | Path, fps: int = 8, scale: int | None = None) -> Path:
    """Write frames to ``.mp4`` (H.264, else MPEG-4), ``.webm`` (VP9), ``.gif`` or ``.png`` (a strip).

    ``frames``: float tensor ``(T, C, H, W)`` in [-1, 1], uint8 ``(T, H, W, C)`` or a list of PIL
    images. ``scale`` upsamples by nearest neighbour; the default (``view_scale``) makes a frame's
    shorter side at least 256 px, ``scale=1`` keeps the raw size. mp4/webm pad odd sizes with one
    black row/column (yuv420p needs even sizes). Returns the path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"save_video: unsupported suffix {suffix!r} in {path}; use one of {VIDEO_SUFFIXES}")
    array = _frames_to_array(frames)
    scale = _scale(scale, *array.shape[1:3])
    if scale != 1:
        array = array.repeat(scale, axis=1).repeat(scale, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        Image.fromarray(np.concatenate(list(array), axis=1)).save(path)
    elif suffix == ".gif":
        _encode(array, path, fps, "gif", {})
    elif suffix == ".webm":
        _encode(_pad_to_even(array), path, fps, "libvpx-vp9",
                {"crf": "20", "b": "0", "deadline": "good", "cpu-used": "4"})
    else:
        _encode(_pad_to_even(array), path, fps, *_mp4_codec())
    return path


def save_video_grid(videos: torch.Tensor, path: str | Path, nrow: int | None = None, fps: int = 8,
                    scale: int | None = None, padding: int = 2, pad_value: float = 1.0) -> Path:
    """Tile ``(B, T, C, H, W)`` in [-1, 1] into one video, ``nrow`` videos per row; see ``save_video``."""
    if videos.ndim != 5:
        raise ValueError(f"save_video_grid expects (B, T, C, H, W), got {tuple(videos.shape)}")
    frames = torch.stack([_grid(videos[:, t], nrow, padding, pad_value) for t in range(videos.shape[1])])
    return save_video(frames, path, fps=fps, scale=scale)


# ----------------------------------------------------------------------------- reading videos

def _open(source: str | Path | BinaryIO | bytes) -> av.container.InputContainer:
    """A path, an open binary file, or the file's bytes (as stored in Hugging Face datasets)."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    return av.open(source if hasattr(source, "read") else str(source))


def _video_stream(container, source) -> av.VideoStream:
    if not container.streams.video:
        raise ValueError(f"{_label(source)} has no video stream")
    return container.streams.video[0]


def _label(source) -> str:
    return "<bytes>" if isinstance(source, bytes) else str(getattr(source, "name", source))


def read_video(path: str | Path | BinaryIO | bytes, num_frames: int | None = None, frame_stride: int = 1,
               start: int = 0) -> torch.Tensor:
    """Decode frames ``start, start + stride, ...`` as uint8 ``(T, H, W, 3)``.

    Returns fewer than ``num_frames`` frames when the video ends first (callers decide how to pad);
    decoding stops as soon as the last wanted frame is read. Raises ``ValueError`` when nothing decodes.
    """
    if frame_stride < 1 or start < 0:
        raise ValueError(f"read_video: need frame_stride >= 1 and start >= 0, got {frame_stride}, {start}")
    last = None if num_frames is None else start + (num_frames - 1) * frame_stride
    frames = []
    with _open(path) as container:
        stream = _video_stream(container, path)
        # One thread for the decoder and for the YUV->RGB scaler: starting FFmpeg's thread pools costs
        # more than a short clip takes to decode (2.5x and 15x slower at 32x32); parallel loading comes
        # from DataLoader workers.
        stream.codec_context.thread_count = 1
        for index, frame in enumerate(container.decode(stream)):
            if index >= start and (index - start) % frame_stride == 0:
                frames.append(frame.to_ndarray(format="rgb24", threads=1))
            if last is not None and index >= last:
                break
    if not frames:
        raise ValueError(f"read_video: no frames decoded from {_label(path)} at start={start}")
    return torch.from_numpy(np.stack(frames))


def count_frames(path: str | Path | BinaryIO | bytes) -> int:
    """Frame count from the container, or by counting packets (no decoding) when it does not say."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        if stream.frames > 0:
            return stream.frames
        return sum(1 for packet in container.demux(stream) if packet.size > 0)
