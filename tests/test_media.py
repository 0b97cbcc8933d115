"""mmdiff.media: tensor <-> image conversions, grids, and video round trips through every format."""
import av
import numpy as np
import pytest
import torch
from PIL import Image

from mmdiff import media

T, S = 16, 32


def moving_square(frames=T, size=S, channels=1):
    """A white 8x8 square moving one pixel down-right per frame on black, (T, C, H, W) in [-1, 1]."""
    video = torch.full((frames, channels, size, size), -1.0)
    for t in range(frames):
        video[t, :, 4 + t:12 + t, 2 + t:10 + t] = 1.0
    return video


def psnr(a, b):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def as_uint8(video):
    """(T, C, H, W) in [-1, 1] -> (T, H, W, 3) uint8, the layout read_video returns."""
    return media.to_uint8(video).permute(0, 2, 3, 1).expand(-1, -1, -1, 3).numpy()


def test_to_uint8_maps_range_ends_and_clips():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    assert media.to_uint8(x).tolist() == [0, 0, 128, 191, 255, 255]
    assert media.to_uint8(x).dtype == torch.uint8


def test_to_pil_modes_values_and_batches():
    gray = torch.full((1, 4, 6), 1.0)
    rgb = torch.stack([torch.full((4, 6), v) for v in (-1.0, 0.0, 1.0)])
    assert media.to_pil(gray).mode == "L" and media.to_pil(gray).size == (6, 4)
    assert media.to_pil(rgb).getpixel((0, 0)) == (0, 128, 255)
    batch = media.to_pil(torch.zeros(5, 3, 4, 4))
    assert len(batch) == 5 and all(im.mode == "RGB" for im in batch)
    with pytest.raises(ValueError, match=r"C in \(1, 3\)"):
        media.to_pil(torch.zeros(2, 4, 4))


def test_image_grid_layout_padding_and_grayscale(tmp_path):
    images = torch.stack([torch.full((1, 8, 8), -1 + 2 * i / 5) for i in range(6)])  # 6 gray levels
    path = media.save_image_grid(images, tmp_path / "sub" / "grid.png", nrow=3, padding=2, scale=1)
    grid = Image.open(path)
    assert path.exists() and grid.mode == "L"
    assert grid.size == (3 * 8 + 4 * 2, 2 * 8 + 3 * 2)  # (W, H)
    array = np.asarray(grid)
    assert array[0, 0] == 255 and array[11, 5] == 255  # white separators
    for i in range(6):
        top, left = 2 + (i // 3) * 10, 2 + (i % 3) * 10
        assert (array[top:top + 8, left:left + 8] == round(i / 5 * 255)).all()
    assert media.image_grid(images).size == (3 * 8 + 4 * 2, 2 * 8 + 3 * 2)  # default nrow: ceil(sqrt(6)) = 3


def test_pictures_people_look_at_are_enlarged_by_an_integer_factor(tmp_path):
    digits = torch.rand(100, 1, 8, 8) * 2 - 1
    raw = np.asarray(media.image_grid(digits, nrow=10))  # 10 x 8 px + 11 x 2 px separators
    grid = np.asarray(Image.open(media.save_image_grid(digits, tmp_path / "grid.png", nrow=10)))
    assert raw.shape == (102, 102) and grid.shape == (306, 306)  # x3: the shorter side reaches 256
    assert (grid == raw.repeat(3, 0).repeat(3, 1)).all()  # nearest neighbour: 3x3 blocks
    assert Image.open(media.save_image_grid(digits, tmp_path / "raw.png", nrow=10, scale=1)).size == (102, 102)
    assert media.enlarge(Image.new("L", (8, 8))).size == (256, 256)
    assert media.view_scale(8, 8) == 32 and media.view_scale(300, 400) == 1
    assert media.view_scale(36, 546) == 7  # 8 would reach 256 but make the strip 4368 px long
    clip = media.read_video(media.save_video(moving_square(4), tmp_path / "big.gif"))
    assert clip.shape == (4, 256, 256, 3) and (clip[:, ::8, ::8].numpy() == as_uint8(moving_square(4))).all()
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        media.save_video(moving_square(4), tmp_path / "zero.gif", scale=0)


@pytest.mark.parametrize("suffix, min_psnr", [(".mp4", 30), (".webm", 30), (".gif", float("inf"))])
def test_save_read_video_round_trip(tmp_path, suffix, min_psnr):
    video = moving_square()
    path = media.save_video(video, tmp_path / f"square{suffix}", fps=8, scale=1)
    frames = media.read_video(path)
    assert frames.shape == (T, S, S, 3) and frames.dtype == torch.uint8
    assert media.count_frames(path) == T
    assert psnr(frames, as_uint8(video)) >= min_psnr  # gif is exact for grayscale


def test_png_strip_is_exact(tmp_path):
    video = moving_square()
    strip = np.asarray(Image.open(media.save_video(video, tmp_path / "strip.png", scale=1)))
    assert strip.shape == (S, T * S, 3)
    frames = np.stack(np.split(strip, T, axis=1))
    assert (frames == as_uint8(video)).all()


def test_mpeg4_fallback_without_libx264(tmp_path, monkeypatch):
    monkeypatch.setattr(media.av, "codecs_available", set(av.codecs_available) - {"libx264"})
    video = moving_square()
    path = media.save_video(video, tmp_path / "fallback.mp4", scale=1)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert psnr(media.read_video(path), as_uint8(video)) > 30


def test_gif_rgb_with_few_colours_is_exact(tmp_path):
    video = moving_square(channels=3)
    video[:, 0] = video[:, 0].clamp(max=0.2)  # a coloured square: (153, 255, 255) on (0, 0, 0)
    frames = media.read_video(media.save_video(video, tmp_path / "rgb.gif", scale=1))
    assert (frames.numpy() == media.to_uint8(video).permute(0, 2, 3, 1).numpy()).all()


def test_odd_sizes_are_padded_and_scale_upsamples(tmp_path):
    odd = torch.rand(4, 3, 15, 17) * 2 - 1
    assert media.read_video(media.save_video(odd, tmp_path / "odd.mp4", scale=1)).shape == (4, 16, 18, 3)
    big = media.read_video(media.save_video(moving_square(4), tmp_path / "big.gif", scale=3))
    assert big.shape == (4, 3 * S, 3 * S, 3)
    assert (big[:, ::3, ::3].numpy() == as_uint8(moving_square(4))).all()  # nearest neighbour


def test_frame_formats_agree(tmp_path):
    video = moving_square(4)
    array = as_uint8(video)
    from_float = media.read_video(media.save_video(video, tmp_path / "a.gif"))
    from_array = media.read_video(media.save_video(array, tmp_path / "b.gif"))
    from_pil = media.read_video(media.save_video([Image.fromarray(f) for f in array], tmp_path / "c.gif"))
    assert torch.equal(from_float, from_array) and torch.equal(from_float, from_pil)
    with pytest.raises(ValueError, match="unsupported suffix '.avi'"):
        media.save_video(video, tmp_path / "x.avi")
    with pytest.raises(ValueError, match=r"\(T, C, H, W\)"):
        media.save_video(torch.zeros(3, 8, 8), tmp_path / "x.gif")


def test_read_video_start_stride_and_short_reads(tmp_path):
    path = media.save_video(moving_square(), tmp_path / "square.gif")
    every = media.read_video(path)
    clip = media.read_video(path, num_frames=4, frame_stride=3, start=2)
    assert torch.equal(clip, every[[2, 5, 8, 11]])
    assert len(media.read_video(path, num_frames=10, frame_stride=2, start=6)) == 5  # frames 6, 8, ..., 14
    assert torch.equal(media.read_video(path.read_bytes(), num_frames=2), every[:2])  # from bytes
    with pytest.raises(ValueError, match="no frames decoded"):
        media.read_video(path, start=T)


def test_save_video_grid_tiles_each_frame(tmp_path):
    videos = torch.stack([moving_square(6, 8) * (1 - b / 4) for b in range(4)])  # (4, 6, 1, 8, 8), 4 brightnesses
    frames = media.read_video(media.save_video_grid(videos, tmp_path / "grid.gif", nrow=2, padding=2, scale=1)).numpy()
    assert frames.shape == (6, 22, 22, 3)
    for b in range(4):
        top, left = 2 + (b // 2) * 10, 2 + (b % 2) * 10
        assert (frames[:, top:top + 8, left:left + 8] == as_uint8(videos[b])).all()
