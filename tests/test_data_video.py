"""mmdiff.data.video: moving-digits, video folders (sampling, padding, corrupt files), HF video, build."""
import datasets
import numpy as np
import pytest
import torch

from mmdiff import media
from mmdiff.data.images import DataError
from mmdiff.data.video import (HFVideoDataset, MovingDigitsDataset, VideoFolderDataset, bounce,
                               build_video_dataset)


def counter_video(frames, size=(16, 16), channels=1):
    """Frame i is a flat gray level of 10 * i, so a decoded clip says which frames it holds."""
    levels = torch.arange(frames, dtype=torch.float32) * 10 / 127.5 - 1
    return levels.view(-1, 1, 1, 1).expand(frames, channels, *size).clone()


def levels(clip):
    """The gray level of each frame of a (T, C, H, W) clip in [-1, 1]."""
    return media.to_uint8(clip).flatten(1).float().mean(1).round().int().tolist()


def near(got, want, tol=2):
    """Lossy codecs (mp4, webm) move flat gray levels by a level or two."""
    return len(got) == len(want) and max(abs(a - b) for a, b in zip(got, want)) <= tol


# ----------------------------------------------------------------------------- moving-digits

def test_bounce_reflects_off_both_walls():
    x = np.array([0.0, 3.0, 10.0, 12.0, 20.0, 23.0, -2.0])
    assert bounce(x, 10).tolist() == [0, 3, 10, 8, 0, 3, 2]
    assert bounce(x, 0).tolist() == [0] * 7


def test_moving_digits_items_are_deterministic():
    a = MovingDigitsDataset("train", num_clips=64, num_frames=12, size=32, digit_size=16, seed=3)
    b = MovingDigitsDataset("train", num_clips=64, num_frames=12, size=32, digit_size=16, seed=3)
    item = a[7]
    assert item["video"].shape == (12, 1, 32, 32) and item["video"].dtype == torch.float32
    assert item["positions"].shape == (12, 2) and item["label"].dtype == torch.int64
    assert item["video"].min() == -1 and 0 < item["video"].max() <= 1
    for i in (0, 7, 63):
        assert all(torch.equal(a[i][k], b[i][k]) for k in ("video", "label", "positions"))
    other_seed = MovingDigitsDataset("train", num_clips=64, num_frames=12, seed=4)
    assert sum(torch.equal(a[i]["positions"], other_seed[i]["positions"]) for i in range(64)) == 0
    with pytest.raises(IndexError):
        a[64]


def test_moving_digits_stay_inside_and_move_at_bounded_speed():
    ds = MovingDigitsDataset("test", num_clips=200, num_frames=16, size=32, digit_size=16)
    assert len(ds.digits) == 360  # test clips draw from the 360 test digits only
    labels = []
    for i in range(len(ds)):
        item = ds[i]
        video, positions = item["video"][:, 0], item["positions"].long()
        assert positions.min() >= 0 and positions.max() <= 32 - 16  # reflections keep the box on the canvas
        steps = positions.diff(dim=0).float().norm(dim=1)
        assert steps.max() <= 3 + 2 ** 0.5 and steps.mean() >= 0.5  # 1-3 px/frame, +-0.5 px rounding per axis
        for frame, (top, left) in zip(video, positions.tolist()):
            box = frame[top:top + 16, left:left + 16]
            assert (frame == -1).sum() == 32 * 32 - 16 * 16 + (box == -1).sum()  # ink only inside the box
        first = video[0, positions[0, 0]:positions[0, 0] + 16, positions[0, 1]:positions[0, 1] + 16]
        matches = np.flatnonzero(np.abs(ds.digits - first.numpy()).max(axis=(1, 2)) < 1e-6)
        assert len(matches) and (ds.labels[matches] == int(item["label"])).all()
        labels.append(int(item["label"]))
    assert set(labels) == set(range(10))


def test_moving_digits_speed_option():
    kw = dict(num_clips=50, num_frames=16, size=32, digit_size=16)
    default, slow, still = (MovingDigitsDataset("test", **kw, **extra)
                            for extra in ({}, {"max_speed": 1}, {"max_speed": 0}))
    assert torch.equal(default[7]["video"], MovingDigitsDataset("test", **kw, max_speed=3)[7]["video"])

    def mean_step(ds):
        return torch.cat([ds[i]["positions"].diff(dim=0).norm(dim=1) for i in range(50)]).mean()
    assert 1.5 < mean_step(default) < 2.5 and 0.3 < mean_step(slow) < 0.9  # speeds uniform in [max/3, max]
    for i in range(50):
        assert (still[i]["video"] == still[i]["video"][:1]).all()  # every frame is the first
    with pytest.raises(ValueError, match="max_speed must be >= 0"):
        MovingDigitsDataset("test", max_speed=-1)


# ----------------------------------------------------------------------------- video folders

@pytest.fixture
def video_folder(tmp_path):
    root = tmp_path / "videos"
    media.save_video(counter_video(16), root / "up" / "a.gif")
    media.save_video(counter_video(16, size=(24, 40)), root / "up" / "b.mp4")
    media.save_video(counter_video(5), root / "down" / "short.webm")
    (root / "down" / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(200))
    (root / "down" / "text.mkv").write_text("not a video")
    return root


def test_video_folder_scan_labels_and_skips(video_folder):
    with pytest.warns(UserWarning) as caught:
        ds = VideoFolderDataset(video_folder, num_frames=8, resolution=16, start="first")
    assert [str(w.message).split(":")[0].split("/")[-1] for w in caught] == ["garbage.mp4", "text.mkv"]
    assert ds.class_names == ["down", "up"] and ds.num_classes == 2 and len(ds) == 3
    assert sorted(p.split("/")[-1] for p, _ in ds.skipped) == ["garbage.mp4", "text.mkv"]
    assert ds.channels == 1 and ds.short_videos == 1
    for i, label in enumerate([0, 1, 1]):
        item = ds[i]
        assert item["video"].shape == (8, 1, 16, 16) and int(item["label"]) == label
        assert -1 <= item["video"].min() and item["video"].max() <= 1


def test_clip_start_stride_and_padding(video_folder):
    def clip(index, **kw):
        ds = VideoFolderDataset(video_folder, resolution=16, **kw)
        return levels(ds[index]["video"])
    with pytest.warns(UserWarning):
        assert clip(1, num_frames=4, frame_stride=2, start="first") == [0, 20, 40, 60]  # a.gif, exact
        assert clip(1, num_frames=4, frame_stride=2, start="center") == [40, 60, 80, 100]  # starts (16 - 7) // 2
        assert near(clip(0, num_frames=8, start="first"), [0, 10, 20, 30, 40, 40, 40, 40])  # 5 frames + last repeated
        assert near(clip(2, num_frames=3, frame_stride=5, start="first"), [0, 50, 100])  # b.mp4
        ds = VideoFolderDataset(video_folder, num_frames=4, frame_stride=3, resolution=16)
    torch.manual_seed(0)
    starts = set()
    for _ in range(30):
        got = levels(ds[1]["video"])
        starts.add(got[0] // 10)
        assert got == [got[0] + 30 * k for k in range(4)]
    assert starts == set(range(16 - 9 - 1 + 1))  # random starts 0..6 for a 16-frame video and a 10-frame span


def test_loads_in_dataloader_workers_after_the_parent_decoded(video_folder):
    # the scan decodes in the parent; FFmpeg thread pools made before fork once hung the workers
    with pytest.warns(UserWarning):
        ds = VideoFolderDataset(video_folder, num_frames=4, resolution=16, start="first")
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, timeout=60)
    batches = list(loader)
    assert len(batches) == 1 and batches[0]["video"].shape == (3, 4, 1, 16, 16)
    assert batches[0]["label"].tolist() == [0, 1, 1]


def test_every_frame_gets_the_same_crop_and_flip(tmp_path):
    video = torch.full((6, 1, 16, 24), -1.0)
    video[..., 12:] = 1.0  # static: black left half, white right half
    media.save_video(video, tmp_path / "v" / "halves.gif")
    ds = VideoFolderDataset(tmp_path / "v", num_frames=6, resolution=8, crop="random", random_flip=True)
    torch.manual_seed(0)
    left_columns = set()
    for _ in range(20):
        clip = ds[0]["video"]  # 16x24 -> 8x12 -> a random 8x8 window, maybe mirrored
        assert all(torch.equal(frame, clip[0]) for frame in clip)
        left_columns.add(float(clip[0, 0, 0, 0]))
    assert left_columns == {-1.0, 1.0}


def test_color_video_read_failure_and_errors(tmp_path):
    color = counter_video(6, channels=3)
    color[:, 0] = 1.0  # red channel on: not gray
    media.save_video(color, tmp_path / "rgb" / "c.gif")
    media.save_video(counter_video(6), tmp_path / "rgb" / "g.gif")
    ds = VideoFolderDataset(tmp_path / "rgb", num_frames=2, resolution=8, start="first")
    assert ds.channels == 3 and ds.num_classes == 0 and "label" not in ds[0]
    assert media.to_uint8(ds[0]["video"])[:, 0].unique().tolist() == [255]
    (tmp_path / "rgb" / "c.gif").write_bytes(b"GIF89a broken after the scan")
    with pytest.warns(UserWarning, match="c.gif"):
        fallback = ds[0]
    assert torch.equal(fallback["video"], ds[1]["video"]) and len(ds.skipped) == 1

    with pytest.raises(DataError, match=f"{tmp_path / 'none'} does not exist.*mp4\\|webm"):
        VideoFolderDataset(tmp_path / "none", resolution=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="the folder is empty"):
        VideoFolderDataset(tmp_path / "empty", resolution=8)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.webm").write_bytes(b"nope")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="none of the 1 video files"):
        VideoFolderDataset(tmp_path / "bad", resolution=8)


# ----------------------------------------------------------------------------- HF and build

def test_hf_video_dataset_from_saved_bytes(tmp_path):
    files = [media.save_video(counter_video(n), tmp_path / f"v{n}.mp4") for n in (6, 10, 12)]
    features = datasets.Features({"clip": datasets.Video(decode=False),
                                  "motion": datasets.ClassLabel(names=["slow", "fast"])})
    table = {"clip": [f.read_bytes() for f in files], "motion": [0, 1, 1]}
    datasets.Dataset.from_dict(table, features=features).save_to_disk(str(tmp_path / "hf"))
    ds = build_video_dataset(tmp_path / "hf", num_frames=4, frame_stride=2, resolution=8, start="first")
    assert isinstance(ds, HFVideoDataset) and (ds.video_column, ds.label_column) == ("clip", "motion")
    assert ds.class_names == ["slow", "fast"] and ds.channels == 1 and len(ds) == 3
    item = ds[0]
    assert item["video"].shape == (4, 1, 8, 8) and int(item["label"]) == 0
    assert near(levels(item["video"]), [0, 20, 40, 40])  # frames 0, 2, 4 of 6, then frame 4 repeated


def test_build_video_dataset_resolves_names(tmp_path):
    digits = build_video_dataset("moving-digits", num_frames=6, resolution=24, split="test", num_clips=10)
    assert isinstance(digits, MovingDigitsDataset) and digits.digit_size == 12 and len(digits) == 10
    assert digits[0]["video"].shape == (6, 1, 24, 24)
    with pytest.raises(ValueError, match="frame_stride must be 1"):
        build_video_dataset("moving-digits", num_frames=6, resolution=24, frame_stride=2)
    with pytest.raises(DataError, match=r"not a built-in \(moving-digits\)"):
        build_video_dataset("moving-mnist", num_frames=6, resolution=24)
    media.save_video(counter_video(4), tmp_path / "f" / "train" / "x.gif")
    media.save_video(counter_video(4), tmp_path / "f" / "test" / "y.gif")
    test = build_video_dataset(tmp_path / "f", num_frames=2, resolution=8, split="test")
    assert isinstance(test, VideoFolderDataset) and test.files[0][0].name == "y.gif"
