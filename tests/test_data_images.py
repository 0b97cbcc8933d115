"""mmdiff.data.images: digits, image folders (mixed modes, corrupt files, errors), HF datasets, build."""
import warnings

import datasets
import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image

from mmdiff.data.images import (DataError, DigitsDataset, HFImageDataset, ImageFolderDataset,
                                build_image_dataset, digits_arrays)
from mmdiff.media import to_uint8

TRAIN_COUNTS = [142, 146, 142, 146, 145, 145, 145, 143, 139, 144]
TEST_COUNTS = [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]


def save(image, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def gray(value, size=(12, 10)):
    return Image.new("L", size, value)


def check_images(dataset, channels, resolution):
    for i in range(len(dataset)):
        x = dataset[i]["image"]
        assert x.shape == (channels, resolution, resolution) and x.dtype == torch.float32
        assert -1 <= x.min() and x.max() <= 1


# ----------------------------------------------------------------------------- digits

def test_digits_split_is_fixed_and_stratified():
    train_x, train_y = digits_arrays("train")
    test_x, test_y = digits_arrays("test")
    all_x, all_y = digits_arrays("all")
    assert train_x.shape == (1437, 8, 8) and test_x.shape == (360, 8, 8) and all_x.shape == (1797, 8, 8)
    assert train_x.dtype == np.float32 and train_y.dtype == np.int64
    assert train_x.min() == 0 and train_x.max() == 1
    assert np.bincount(train_y).tolist() == TRAIN_COUNTS and np.bincount(test_y).tolist() == TEST_COUNTS
    assert np.array_equal(digits_arrays("test")[0], test_x)  # same split every call
    with pytest.raises(ValueError, match="'val'"):
        digits_arrays("val")


def test_digits_dataset_items_and_resolution():
    ds = DigitsDataset("test", resolution=16)
    item = ds[0]
    assert item["image"].shape == (1, 16, 16) and item["label"].dtype == torch.int64 and item["label"].ndim == 0
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    assert images.min() == -1 and images.max() == 1
    assert torch.bincount(torch.stack([ds[i]["label"] for i in range(len(ds))])).tolist() == TEST_COUNTS
    assert (ds.num_classes, ds.channels, ds.resolution, len(ds)) == (10, 1, 16, 360)
    native = DigitsDataset("train")[3]["image"]
    assert torch.allclose(native[0], torch.from_numpy(digits_arrays("train")[0][3]) * 2 - 1)
    assert DigitsDataset("test", channels=3)[0]["image"].shape == (3, 8, 8)
    with pytest.raises(ValueError, match="mirrored"):
        DigitsDataset(random_flip=True)


# ----------------------------------------------------------------------------- image folders

@pytest.fixture
def mixed_folder(tmp_path):
    """Two classes; every PIL mode the loader must normalise, at different sizes."""
    root = tmp_path / "mixed"
    save(Image.new("RGB", (20, 10), (255, 0, 0)), root / "cat" / "rgb.png")
    save(Image.new("RGBA", (10, 10), (255, 255, 255, 0)), root / "cat" / "transparent.png")
    save(Image.new("P", (9, 15), 0), root / "cat" / "palette.bmp")
    save(gray(200), root / "dog" / "gray.jpg")
    save(Image.fromarray(np.full((10, 10), 65535, np.uint16)), root / "dog" / "sixteen.png")
    save(Image.new("RGB", (10, 10), (0, 0, 255)), root / "dog" / "nested" / "deep.webp")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_labels_modes_and_channels(mixed_folder):
    ds = ImageFolderDataset(mixed_folder, resolution=8)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2 and ds.channels == 3 and len(ds) == 6
    assert [int(ds[i]["label"]) for i in range(6)] == [0, 0, 0, 1, 1, 1]  # sorted class folders
    check_images(ds, 3, 8)
    by_name = {path.name: ds[i]["image"] for i, (path, _) in enumerate(ds.files)}
    assert by_name["rgb.png"][:, 4, 4].tolist() == [1, -1, -1]
    assert (by_name["transparent.png"] == -1).all()  # alpha composited onto black
    assert (by_name["sixteen.png"] == 1).all()  # 16-bit white stays white (PIL's convert would clip)
    assert by_name["gray.jpg"].std(dim=0).max() == 0  # gray replicated to 3 equal channels
    assert by_name["deep.webp"][:, 4, 4].tolist() == pytest.approx([-1, -1, 1], abs=0.02)


def test_gray_folder_is_one_channel_and_rgb_becomes_luma(tmp_path):
    root = tmp_path / "gray"
    save(gray(0), root / "a.png")
    save(Image.fromarray(np.full((6, 6), 32896, np.uint16)), root / "b.png")  # 128 * 257
    ds = ImageFolderDataset(root, resolution=6)
    assert ds.channels == 1 and ds.num_classes == 0 and ds.class_names == [] and "label" not in ds[0]
    assert to_uint8(ds[1]["image"]).unique().tolist() == [128]
    save(Image.new("RGB", (6, 6), (0, 255, 0)), root / "c.png")
    ds = ImageFolderDataset(root, resolution=6, channels=1)
    green = ds[2]["image"]
    assert green.shape == (1, 6, 6) and to_uint8(green).unique().tolist() == [150]  # 0.587 * 255


def test_resize_center_crop_and_flip(tmp_path):
    stripes = np.zeros((20, 40, 3), np.uint8)
    stripes[:, :10], stripes[:, 10:30, 1], stripes[:, 30:, 2] = 255, 255, 255  # white | green | blue
    save(Image.fromarray(stripes), tmp_path / "s" / "stripes.png")
    center = ImageFolderDataset(tmp_path / "s", resolution=10)[0]["image"]
    assert center.shape == (3, 10, 10)  # 20x40 -> 10x20 -> middle 10 columns: the green stripe
    assert torch.equal(center[:, :, 1:-1], torch.tensor([-1.0, 1, -1])[:, None, None].expand(3, 10, 8))
    half = np.zeros((8, 8), np.uint8)
    half[:, 4:] = 255
    save(Image.fromarray(half), tmp_path / "h" / "half.png")
    flip = ImageFolderDataset(tmp_path / "h", resolution=8, random_flip=True, crop="random")
    torch.manual_seed(0)
    left_pixels = {float(flip[0]["image"][0, 0, 0]) for _ in range(20)}
    assert left_pixels == {-1.0, 1.0}  # both orientations appear


def test_corrupt_files_are_skipped_at_scan_and_at_read(tmp_path):
    root = tmp_path / "corrupt"
    for i in range(4):
        save(gray(60 * i), root / "x" / f"ok{i}.png")
    good = (root / "x" / "ok0.png").read_bytes()
    (root / "x" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "x" / "text.jpg").write_text("definitely not a jpeg")
    with pytest.warns(UserWarning) as caught:
        ds = ImageFolderDataset(root, resolution=4)
    assert len(ds) == 4 and len(ds.skipped) == 2
    assert {path.split("/")[-1] for path, _ in ds.skipped} == {"truncated.png", "text.jpg"}
    assert sum("truncated.png" in str(w.message) for w in caught) == 1

    (root / "x" / "ok1.png").write_bytes(b"broken after the scan")  # fails only when read
    with pytest.warns(UserWarning, match="ok1.png"):
        epoch = [ds[i]["image"] for i in range(len(ds))]
    assert len(ds.skipped) == 3 and ds.skipped[-1][0].endswith("ok1.png")
    assert torch.equal(epoch[1], epoch[2])  # index 1 falls through to the next readable file, ok2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known-bad file is not re-read or re-warned
        assert torch.equal(ds[1]["image"], epoch[2])


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'missing'} does not exist.*png\\|jpg"):
        ImageFolderDataset(tmp_path / "missing", resolution=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'empty'}: the folder is empty.*<class_name>"):
        ImageFolderDataset(tmp_path / "empty", resolution=8)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"found 1 entries \(readme.txt\)"):
        ImageFolderDataset(tmp_path / "text", resolution=8)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"x")
    (tmp_path / "bad" / "b.png").write_bytes(b"y")
    with pytest.warns(UserWarning), pytest.raises(DataError, match=f"none of the 2 image files in {tmp_path / 'bad'}"):
        ImageFolderDataset(tmp_path / "bad", resolution=8)
    save(gray(1), tmp_path / "mixed" / "loose.png")
    save(gray(1), tmp_path / "mixed" / "cls" / "a.png")
    with pytest.raises(DataError, match="mixes 1 loose files"):
        ImageFolderDataset(tmp_path / "mixed", resolution=8)


# ----------------------------------------------------------------------------- Hugging Face datasets

def make_hf(tmp_path, name="hf", as_dict=False):
    images = [Image.new("L", (10, 10), 25 * i) for i in range(6)] + [Image.new("RGB", (12, 8), (9, 9, 9))]
    table = {"picture": images, "kind": [0, 1, 2, 0, 1, 2, 1], "caption": [f"c{i}" for i in range(7)]}
    features = datasets.Features({"picture": datasets.Image(), "kind": datasets.ClassLabel(names=["a", "b", "c"]),
                                  "caption": datasets.Value("string")})
    data = datasets.Dataset.from_dict(table, features=features)
    if as_dict:
        data = datasets.DatasetDict({"train": data.select(range(5)), "test": data.select(range(5, 7))})
    data.save_to_disk(str(tmp_path / name))
    return tmp_path / name


def test_hf_dataset_detects_columns(tmp_path):
    ds = build_image_dataset(str(make_hf(tmp_path)), resolution=8)
    assert isinstance(ds, HFImageDataset)
    assert (ds.image_column, ds.label_column, ds.class_names, ds.channels) == ("picture", "kind", ["a", "b", "c"], 3)
    assert [int(ds[i]["label"]) for i in range(7)] == [0, 1, 2, 0, 1, 2, 1]
    check_images(ds, 3, 8)
    assert to_uint8(ds[2]["image"]).unique().tolist() == [50]
    with pytest.raises(DataError, match="no column 'label'"):
        HFImageDataset(make_hf(tmp_path), label_column="label", resolution=8)


def test_hf_dataset_dict_splits(tmp_path):
    path = make_hf(tmp_path, "hfdict", as_dict=True)
    train = build_image_dataset(path, resolution=8, split="train")
    test = build_image_dataset(path, resolution=8, split="test")
    assert (len(train), len(test), train.channels, test.channels) == (5, 2, 1, 3)
    with pytest.raises(DataError, match=r"has splits \['train', 'test'\], not 'validation'"):
        build_image_dataset(path, resolution=8, split="validation")


# ----------------------------------------------------------------------------- build_image_dataset

def test_build_resolves_builtins_folders_and_splits(tmp_path):
    digits = build_image_dataset("digits", resolution=12, split="test")
    assert isinstance(digits, DigitsDataset) and len(digits) == 360 and digits[0]["image"].shape == (1, 12, 12)
    save(gray(0), tmp_path / "split" / "train" / "a" / "1.png")
    save(gray(0), tmp_path / "split" / "train" / "b" / "1.png")
    save(gray(0), tmp_path / "split" / "test" / "a" / "1.png")
    assert build_image_dataset(tmp_path / "split", resolution=8).class_names == ["a", "b"]
    assert build_image_dataset(tmp_path / "split", resolution=8, split="test").class_names == ["a"]
    save(gray(0), tmp_path / "plain" / "1.png")
    assert len(build_image_dataset(tmp_path / "plain", resolution=8)) == 1
    with pytest.raises(DataError, match="only serves split 'train' or 'all', not 'test'"):
        build_image_dataset(tmp_path / "plain", resolution=8, split="test")


def test_build_errors_for_unknown_names(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"unknown data set 'digitz'.*built-in \(digits\)"):
        build_image_dataset("digitz", resolution=8)
    with pytest.raises(DataError, match="./nope/images does not exist"):
        build_image_dataset("./nope/images", resolution=8)
    # fail fast instead of five retries against an unreachable hub
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="'nobody-xyz/no-such-set' does not exist locally and could not be loaded"):
        build_image_dataset("nobody-xyz/no-such-set", resolution=8)
