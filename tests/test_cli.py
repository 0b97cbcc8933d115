"""The ``mmdiff`` command as a user runs it: the files it writes (PNG grids of the asked digits,
MP4 clips, printed text), its flags (derived from SamplingOptions), and one-line errors."""
import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from mmdiff.cli import build_parser, flags, main
from mmdiff.eval.digits import classify, video_scores
from mmdiff.media import read_video
from mmdiff.options import SamplingOptions

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--num_inference_steps", "10", "--guidance_scale", "2", "--seed", "0", "--no-progress"]


def mmdiff_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mmdiff.cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def grid_tiles(path, count: int, nrow: int, size: int = 8, padding: int = 2) -> tuple[torch.Tensor, int]:
    """The pictures of a saved grid, (count, 1, size, size) in [-1, 1], and the factor it was enlarged by."""
    grid = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    rows = -(-count // nrow)
    scale = grid.shape[0] // (rows * (size + padding) + padding)
    raw = F.avg_pool2d(torch.from_numpy(grid)[None, None], scale)[0, 0] / 127.5 - 1  # undo nearest neighbour
    step = size + padding
    tiles = [raw[padding + r * step: padding + r * step + size, padding + c * step: padding + c * step + size]
             for r, c in (divmod(i, nrow) for i in range(count))]
    return torch.stack(tiles)[:, None], scale


def test_the_console_script_is_declared_and_resolves_to_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["mmdiff"].partition(":")
    assert getattr(__import__(module, fromlist=[name]), name) is main


def test_the_package_and_the_command_never_need_gradio(monkeypatch, capsys):
    code = "import sys, mmdiff, mmdiff.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'gradio'))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120).stdout.strip() == "[]"
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the ui extra were not installed
    with pytest.raises(SystemExit, match=r"needs gradio .*pip install 'mmdiff\[ui\]'"):
        main(["serve"])


def test_generate_image_writes_an_enlarged_png_grid_of_the_asked_digits(tmp_path):
    result = mmdiff_cli("generate", "image", "--class_labels", 3, 7, 1, "--nrow", 3, "--output", tmp_path / "d.png", *FAST)
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "d.png").size == (22 * 32, 22 * 12)  # 3 x 8 px + 4 x 2 px borders, x22
    assert result.stdout.strip() == f"{tmp_path / 'd.png'}: 3 image(s), 704x264 px"
    digits, scale = grid_tiles(tmp_path / "d.png", 3, nrow=3)
    assert scale == 22 and classify(digits).tolist() == [3, 7, 1]
    assert main(["generate", "image", "--class_labels", "3", "7", "1", "--nrow", "3", "--output",
                 str(tmp_path / "r.png"), "--raw_size", *FAST]) == 0
    assert Image.open(tmp_path / "r.png").size == (32, 12)
    assert torch.equal(grid_tiles(tmp_path / "r.png", 3, nrow=3)[0], digits)  # the same pixels, enlarged


def test_generate_video_writes_an_mp4_whose_frames_are_the_asked_digits(tmp_path):
    result = mmdiff_cli("generate", "video", "--class_labels", 4, "--output", tmp_path / "four.mp4", *FAST)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{tmp_path / 'four.mp4'}: 1 video(s) x 16 frames, 256x256 px, 8 fps"
    frames = read_video(tmp_path / "four.mp4")  # (16, 256, 256, 3): 16x16 frames enlarged 16x
    assert frames.shape == (16, 256, 256, 3)
    clip = F.avg_pool2d(frames[..., 0].float()[:, None], 16) / 127.5 - 1  # (16, 1, 16, 16)
    scores = video_scores(clip[None], torch.tensor([4]), box=8)
    assert scores["accuracy"] >= 0.9 and scores["mean_speed"] > 0.5  # a 4 in every frame, and it moves


def test_generate_text_prints_the_continuation_and_seeds_repeat(capsys):
    args = ["generate", "text", "The function returns", "--max_new_tokens", "12", "--num_inference_steps", "16"]
    result = mmdiff_cli(*args, "--seed", 0)
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert len(words) >= 3 and sum(w.strip(".,:'\"()").isalpha() for w in words) >= len(words) // 2
    assert main([*args, "--seed", "0"]) == 0 and capsys.readouterr().out == result.stdout  # the seed decides
    assert main([*args, "--seed", "1", "--return_full_text"]) == 0
    other = capsys.readouterr().out
    assert other.startswith("The function returns") and other != "The function returns" + result.stdout


def test_img2img_and_inpainting_from_picture_files(tmp_path, capsys):
    assert main(["generate", "image", "--class_labels", "3", "--output", str(tmp_path / "three.png"), *FAST]) == 0
    three = Image.open(tmp_path / "three.png")  # 256x256: one enlarged picture
    Image.new("L", three.size, 0).save(tmp_path / "keep.png")
    Image.new("L", three.size, 255).save(tmp_path / "redo.png")
    for mask, label in (("keep.png", "3"), ("redo.png", "8")):
        assert main(["generate", "image", "--class_labels", "8", "--image", str(tmp_path / "three.png"),
                     "--mask", str(tmp_path / mask), "--output", str(tmp_path / f"out-{mask}"), *FAST]) == 0
    kept = np.asarray(Image.open(tmp_path / "out-keep.png"), dtype=np.int16)
    assert np.abs(kept - np.asarray(three, dtype=np.int16)).max() <= 1  # a black mask keeps every pixel
    redone, _ = grid_tiles(tmp_path / "out-redo.png", 1, nrow=1)
    assert classify(redone).item() == 8  # a white mask repaints all of it, as the asked class
    assert main(["generate", "image", "--class_labels", "8", "--image", str(tmp_path / "three.png"),
                 "--strength", "0.9", "--output", str(tmp_path / "sdedit.png"), *FAST]) == 0
    assert classify(grid_tiles(tmp_path / "sdedit.png", 1, nrow=1)[0]).item() == 8
    assert "1 image(s), 256x256 px" in capsys.readouterr().out


def test_every_sampling_field_is_a_flag_and_a_new_field_becomes_one(monkeypatch, tmp_path):
    names = {f.name for f in dataclasses.fields(SamplingOptions)} - {"callback"}
    noise = torch.randn(1, 1, 8, 8)
    save_file({"latents": noise}, tmp_path / "noise.safetensors")
    options = flags.sampling_options(build_parser().parse_args(
        ["generate", "image", "--sampler", "ddim", "--num_inference_steps", "7", "--guidance_scale", "2.5",
         "--guidance_interval", "0.5", "3", "--seed", "4", "--state_dtype", "bfloat16", "--no-progress",
         "--sampler_options", "eta=0.5", "--spacing", "karras", "--guidance_rescale", "0.7",
         "--latents", str(tmp_path / "noise.safetensors")]))
    assert torch.equal(options.latents, noise)
    options = dataclasses.replace(options, latents="given")  # a tensor field does not compare with ==
    assert options == SamplingOptions(latents="given", sampler="ddim", num_inference_steps=7, guidance_scale=2.5,
                                      guidance_interval=(0.5, 3.0), generator=4, dtype=torch.bfloat16,
                                      progress=False, sampler_options={"eta": 0.5}, spacing="karras",
                                      guidance_rescale=0.7)
    assert {f.name for f in dataclasses.fields(options) if getattr(options, f.name) != getattr(SamplingOptions(), f.name)} \
        == names - {"sigmas"}  # every field but sigmas was set by a flag (sigmas excludes steps)
    assert flags.sampling_options(build_parser().parse_args(
        ["generate", "text", "--sigmas", "80", "2", "0"])).sigmas == (80.0, 2.0, 0.0)
    assert flags.sampling_options(build_parser().parse_args(["generate", "text"])) == SamplingOptions()

    @dataclasses.dataclass
    class Extended(SamplingOptions):
        churn: float = 0.0  # extra noise per step

    monkeypatch.setattr(flags, "SamplingOptions", Extended)
    args = build_parser().parse_args(["generate", "video", "--churn", "0.25"])
    assert flags.sampling_options(args) == Extended(churn=0.25)


def test_help_on_every_subcommand(capsys):
    pages = {}
    for command in ("", "generate", "generate image", "generate video", "generate text", "convert", "serve"):
        with pytest.raises(SystemExit) as exit:
            main([*command.split(), "--help"])
        assert exit.value.code == 0
        pages[command] = capsys.readouterr().out
    assert "{generate,convert,serve}" in pages[""] and "{image,video,text}" in pages["generate"]
    for flag in ("--class_labels", "--num_inference_steps", "--sampler", "--guidance_scale", "--spacing",
                 "--seed", "--dtype", "--output", "--raw_size", "--image", "--mask", "--strength"):
        assert flag in pages["generate image"], flag
    assert "--first_frame" in pages["generate video"] and "--max_new_tokens" in pages["generate text"]
    assert "--kind {dit,sit}" in pages["convert"] and "--num_heads" in pages["convert"]
    assert "--port" in pages["serve"] and "--max_queue" in pages["serve"]
    assert "Lin et al. 2023" in pages["generate text"]  # the field's comment in options.py is its help


@pytest.mark.parametrize("args, code, message", [
    (["generate", "image", "--class_labels", "12"], 1, "class label out of range: got [12], the model knows 0..9"),
    (["generate", "image", "--class_labels", "seven"], 1, "unknown class name 'seven'; this model's classes are"),
    (["generate", "image", "--class_labels", "3", "--num_inference_steps", "0"], 1,
     "num_inference_steps must be an integer in [1, 10000], got 0"),
    (["generate", "image", "--class_labels", "3", "--sampler_options", "eta=0.5"], 1, "has no option(s) ['eta']"),
    (["generate", "image", "--class_labels", "3", "--model", "/no/such/folder"], 1, "/no/such/folder is not a folder"),
    (["generate", "video", "--class_labels", "3", "--num_frames", "40"], 1, "num_frames must be between 1 and 16"),
    (["generate", "text", "--guidance_scale", "3"], 1, "guidance_scale != 1 needs an unconditional input"),
    (["generate", "image", "--image", "/no/such.png"], 2, "argument --image: [Errno 2] No such file"),
    (["generate", "image", "--sampler", "fast"], 2, "argument --sampler: invalid choice: 'fast'"),
    (["generate", "image", "--dtype", "int8"], 2, "argument --dtype: invalid choice: 'int8'"),
    (["generate", "sound"], 2, "invalid choice: 'sound' (choose from 'image', 'video', 'text')"),
    (["serve", "--max_queue", "0"], 1, "--max_queue must be at least 1, got 0"),
])
def test_errors_are_one_line_naming_the_problem(capsys, args, code, message):
    try:
        status = main(args)
    except SystemExit as e:  # usage errors: argparse exits
        status = e.code
    err = capsys.readouterr().err
    assert status == code and err.count("\n") == 1 and message in err and "Traceback" not in err, err


def test_a_failing_command_prints_one_line_and_exits_non_zero(tmp_path):
    result = mmdiff_cli("generate", "image", "--class_labels", "3", "--model", tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"mmdiff generate image: error: {tmp_path}/pipeline.json is missing: {tmp_path} is " \
                            f"neither a pipeline folder written by save_pretrained nor a diffusers one (model_index" \
                            f".json, or a model's config.json with _class_name); it holds []\n"
