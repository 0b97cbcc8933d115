"""The catalogue of bad inputs (docs/errors.md, "The catalogue"): every public argument of the three
pipelines, the three recipes, their configs and the model folders, given a wrong type, an empty
or out-of-range value, or a hostile file. Each case checks the error type, that the message names
the argument, and that nothing on disk changed (sha256 of every file before and after)."""
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

import mmdiff
from mmdiff.core.checkpoint import CheckpointError
from mmdiff.data import DataError
from mmdiff.pipelines import ASSETS
from recipes import image_train, text_train, video_train

ROOT = Path(__file__).resolve().parent.parent
QUIET = ["--report_to", "none", "--progress", "false", "--validation_steps", "0"]
TINY = ["--patch_size", "2", "--hidden_size", "32", "--depth", "1", "--num_heads", "2", "--sample_steps", "2",
        "--batch_size", "8", "--max_steps", "2", "--checkpointing_steps", "2", *QUIET]


def digest(*folders: Path) -> dict[str, str]:
    out = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@dataclass
class Case:
    name: str
    call: Callable  # of the fixtures' dict
    error: type
    message: str  # a regex that names the argument


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The shipped pipelines, a finished tiny image run, and a copy of the shipped image folder to
    break in place."""
    root = tmp_path_factory.mktemp("world")
    image_train.main(["--output_dir", str(root / "run"), *TINY])
    finished = root / "finished"  # a finished run whose checkpoints were deleted
    shutil.copytree(root / "run", finished)
    shutil.rmtree(finished / "checkpoints")
    return {"root": root, "image": mmdiff.pipeline("image"), "video": mmdiff.pipeline("video"),
            "text": mmdiff.pipeline("text"), "run": root / "run", "finished": finished}


def img(w, *args, **kw):
    return w["image"](*args, **{"num_inference_steps": 2, "progress": False, **kw})


def vid(w, *args, **kw):
    return w["video"](*args, **{"num_inference_steps": 2, "num_frames": 2, "progress": False, **kw})


def txt(w, *args, **kw):
    return w["text"](*args, **{"num_inference_steps": 2, **kw})


PIPELINE_CASES = [
    # --- image: labels and counts
    Case("labels out of range", lambda w: img(w, class_labels=[3, 12]), ValueError, r"class label out of range: got \[3, 12\]"),
    Case("labels empty", lambda w: img(w, class_labels=[]), ValueError, "class_labels must be a non-empty list"),
    Case("labels float", lambda w: img(w, class_labels=[1.5]), ValueError, "class_labels must be an integer >= 0, got 1.5"),
    Case("labels bool", lambda w: img(w, class_labels=[True]), ValueError, "class_labels must be an integer >= 0, got True"),
    Case("labels negative", lambda w: img(w, class_labels=[-1]), ValueError, "class_labels must be an integer >= 0, got -1"),
    Case("labels unknown name", lambda w: img(w, class_labels=["cat"]), ValueError,
         r"unknown class name 'cat'; this model's classes are \['0', '1'"),
    Case("labels nested", lambda w: img(w, class_labels=[[1, 2]]), TypeError, r"class_labels must be an integer >= 0, got \[1, 2\]"),
    Case("labels 2-D tensor", lambda w: img(w, class_labels=torch.ones(2, 2, dtype=torch.long)), TypeError,
         r"class_labels must be one value or a 1-D sequence, got 'a tensor of shape \(2, 2\)'"),
    Case("labels float tensor", lambda w: img(w, class_labels=torch.tensor([0.5])), ValueError,
         "class_labels must be an integer >= 0, got 0.5"),
    Case("labels missing", lambda w: img(w), ValueError, "this model is class-conditional: pass class_labels"),
    Case("labels and prompt", lambda w: img(w, class_labels=[1], prompt="a one"), ValueError,
         "pass class_labels or prompt, not both"),
    Case("prompt without encoder", lambda w: img(w, prompt="a three"), ValueError,
         "not trained with a text encoder: pass class_labels, not prompt"),
    Case("num_images zero", lambda w: img(w, class_labels=[1], num_images=0), ValueError,
         "num_images must be a positive integer, got 0"),
    # --- sampling options (the same checks serve every modality: tests/test_options.py)
    Case("steps zero", lambda w: img(w, class_labels=[1], num_inference_steps=0), ValueError,
         r"num_inference_steps must be an integer in \[1, 10000\], got 0"),
    Case("steps ten million", lambda w: w["image"](class_labels=[1], num_inference_steps=10**7, progress=False),
         ValueError, r"num_inference_steps must be an integer in \[1, 10000\], got 10000000"),
    Case("steps string", lambda w: w["image"](class_labels=[1], num_inference_steps="10", progress=False), TypeError,
         r"num_inference_steps must be an integer in \[1, 10000\], got '10'"),
    Case("sampler unknown", lambda w: img(w, class_labels=[1], sampler="dpm"), ValueError,
         r"unknown sampler 'dpm'; choose one of \["),
    Case("sampler not a name", lambda w: img(w, class_labels=[1], sampler=3), TypeError, "sampler must be a sampler name, got 3"),
    Case("spacing unknown", lambda w: img(w, class_labels=[1], spacing="cosine"), ValueError, r"unknown spacing 'cosine'"),
    Case("guidance nan", lambda w: img(w, class_labels=[1], guidance_scale=math.nan), ValueError,
         "guidance_scale must be a finite number >= 0, got nan"),
    Case("guidance negative", lambda w: img(w, class_labels=[1], guidance_scale=-2.0), ValueError,
         "guidance_scale must be a finite number >= 0, got -2.0"),
    Case("guidance string", lambda w: img(w, class_labels=[1], guidance_scale="4"), TypeError,
         "guidance_scale must be a finite number >= 0, got '4'"),
    Case("rescale above 1", lambda w: img(w, class_labels=[1], guidance_rescale=2.0), ValueError,
         r"guidance_rescale must be a finite number in \[0.0, 1.0\], got 2.0"),
    Case("interval reversed", lambda w: img(w, class_labels=[1], guidance_scale=2.0, guidance_interval=(5.0, 1.0)),
         ValueError, r"guidance_interval\[1\] must be a finite number > 5.0, got 1.0"),
    Case("interval not a pair", lambda w: img(w, class_labels=[1], guidance_interval=3.0), TypeError,
         r"guidance_interval must be a pair \(lo, hi\) of noise levels, got 3.0"),
    Case("generator string", lambda w: img(w, class_labels=[1], generator="seed"), TypeError,
         "generator must be None, an int seed, a torch.Generator or a list with one per sample, got 'seed'"),
    Case("generator negative", lambda w: img(w, class_labels=[1], generator=-1), ValueError,
         "generator must be an integer in"),
    Case("generators too few", lambda w: img(w, class_labels=[1, 2], generator=[torch.Generator()]), ValueError,
         "got 1 generators for a batch of 2"),
    Case("option of another sampler", lambda w: img(w, class_labels=[1], sampler="euler", eta=0.5), ValueError,
         r"sampler 'euler' has no option\(s\) \['eta'\]"),
    Case("misspelt keyword", lambda w: img(w, class_labels=[1], num_inference_step=5), ValueError,
         r"has no option\(s\) \['num_inference_step'\]"),
    Case("sampler option negative", lambda w: img(w, class_labels=[1], sampler="ddim", eta=-1.0), ValueError,
         "eta must be a finite number >= 0, got -1.0"),
    Case("sampler option wrong type", lambda w: img(w, class_labels=[1], sampler="dpmpp_2m_sde", solver_type=2),
         TypeError, r"solver_type must be a str \(option of sampler 'dpmpp_2m_sde'\), got 2"),
    Case("sigmas increasing", lambda w: w["image"](class_labels=[1], sigmas=[1.0, 2.0, 0.0], progress=False),
         ValueError, "sigmas: sigmas must be strictly decreasing"),
    Case("sigmas and steps", lambda w: w["image"](class_labels=[1], sigmas=[1.0, 0.0], num_inference_steps=3,
                                                  progress=False), ValueError, "either sigmas .* or num_inference_steps"),
    Case("sigmas not numbers", lambda w: w["image"](class_labels=[1], sigmas="abc", progress=False), TypeError,
         "sigmas must be a decreasing sequence of noise levels, got 'abc'"),
    Case("dtype not floating", lambda w: img(w, class_labels=[1], dtype=torch.int32), TypeError,
         "dtype must be a floating torch.dtype"),
    Case("callback not callable", lambda w: img(w, class_labels=[1], callback=3), TypeError, "callback must be a function"),
    Case("options wrong type", lambda w: img(w, class_labels=[1], options={"sampler": "euler"}), TypeError,
         "options must be a SamplingOptions, got dict"),
    Case("output_type unknown", lambda w: img(w, class_labels=[1], output_type="np"), ValueError,
         "output_type must be 'pil', 'pt' or 'latent', got 'np'"),
    # --- image: pictures to edit
    Case("image wrong size", lambda w: img(w, class_labels=[1], image=torch.zeros(1, 1, 16, 16)), ValueError,
         "image must be 8x8 pixels, the size this model generates, got '16x16'"),
    Case("image 0..255", lambda w: img(w, class_labels=[1], image=torch.full((1, 1, 8, 8), 255.0)), ValueError,
         r"image must be in \[-1, 1\], got 'values in \[255, 255\]'; pixels 0..255 become image / 127.5 - 1"),
    Case("image uint8", lambda w: img(w, class_labels=[1], image=torch.zeros(1, 1, 8, 8, dtype=torch.uint8)),
         TypeError, r"image must be a float tensor in \[-1, 1\], got 'a torch.uint8 tensor'"),
    Case("image a path", lambda w: img(w, class_labels=[1], image="three.png"), TypeError,
         "image must be a PIL image, a list of them, or a float tensor in"),
    Case("image 5-D", lambda w: img(w, class_labels=[1], image=torch.zeros(1, 1, 1, 8, 8)), ValueError,
         r"image must be shaped \(C, H, W\) or \(B, C, H, W\)"),
    Case("images for another batch", lambda w: img(w, class_labels=[1, 2, 3], image=torch.zeros(2, 1, 8, 8)),
         ValueError, "image holds 2 pictures for a batch of 3; pass one or 3"),
    Case("strength zero", lambda w: img(w, class_labels=[1], image=torch.zeros(1, 8, 8), strength=0.0), ValueError,
         r"strength must be a finite number in \(0, 1\], got 0.0"),
    Case("strength above 1", lambda w: img(w, class_labels=[1], image=torch.zeros(1, 8, 8), strength=1.5), ValueError,
         r"strength must be a finite number in \(0, 1\], got 1.5"),
    Case("mask without image", lambda w: img(w, class_labels=[1], mask=torch.ones(8, 8)), ValueError,
         "mask needs the image to inpaint: pass image= too"),
    Case("mask out of range", lambda w: img(w, class_labels=[1], image=torch.zeros(1, 8, 8), mask=torch.full((8, 8), 2.0)),
         ValueError, r"mask must be in \[0, 1\] \(1 = repaint\)"),
    Case("classify wrong size", lambda w: w["image"].classify(torch.zeros(2, 1, 16, 16)), ValueError,
         "images must be 8x8 pixels"),
    # --- video
    Case("frames beyond training", lambda w: vid(w, class_labels=[1], num_frames=99), ValueError,
         "num_frames must be between 1 and 16 .*got 99"),
    Case("frames float", lambda w: vid(w, class_labels=[1], num_frames=2.5), ValueError,
         "num_frames must be an integer, got 2.5"),
    Case("given frame outside", lambda w: vid(w, class_labels=[1], given_frames={5: torch.zeros(1, 16, 16)}), ValueError,
         "given frame 5 is outside the 2 frames being generated"),
    Case("given frames a list", lambda w: vid(w, class_labels=[1], given_frames=[torch.zeros(1, 16, 16)]), TypeError,
         "given_frames must be a dict {frame index: image}, got 'list'"),
    Case("given frame index a string", lambda w: vid(w, class_labels=[1], given_frames={"0": torch.zeros(1, 16, 16)}),
         TypeError, "given_frames index must be an integer, got '0'"),
    Case("first frame wrong size", lambda w: vid(w, first_frame=torch.zeros(1, 1, 8, 8)), ValueError,
         "first_frame must be 16x16 pixels"),
    Case("first frames for another batch", lambda w: vid(w, class_labels=[1, 2, 3], first_frame=torch.zeros(2, 1, 16, 16)),
         ValueError, "first_frame holds 2 pictures for a batch of 3"),
    Case("first frame 0..1 range", lambda w: vid(w, first_frame=torch.full((1, 16, 16), 3.0)), ValueError,
         r"first_frame must be in \[-1, 1\]"),
    Case("num_videos negative", lambda w: vid(w, class_labels=None, num_videos=-1), ValueError,
         "num_videos must be a positive integer, got -1"),
    Case("video labels out of range", lambda w: vid(w, class_labels=[3, 10]), ValueError, "class label out of range"),
    Case("video guidance inf", lambda w: vid(w, class_labels=[1], guidance_scale=math.inf), ValueError,
         "guidance_scale must be a finite number >= 0, got inf"),
    Case("video output_type", lambda w: vid(w, class_labels=[1], output_type="gif"), ValueError, "output_type must be"),
    # --- text
    Case("max_new_tokens negative", lambda w: txt(w, "The function", max_new_tokens=-1), ValueError,
         "max_new_tokens must be a positive integer, got -1"),
    Case("prompt an int", lambda w: txt(w, 3), TypeError, "prompt must be a string or a non-empty list of strings, got 3"),
    Case("prompt empty list", lambda w: txt(w, []), TypeError, r"prompt must be a string or a non-empty list of strings, got \[\]"),
    Case("prompt list of ints", lambda w: txt(w, [1, 2]), TypeError, "prompt must be a string or a non-empty list"),
    Case("num_samples zero", lambda w: txt(w, num_samples=0), ValueError, "num_samples must be a positive integer, got 0"),
    Case("length beyond window", lambda w: txt(w, num_samples=1, length=1000), ValueError,
         r"length must be an integer in \[1, 64\], got 1000"),
    Case("temperature negative", lambda w: txt(w, "Return", temperature=-1.0), ValueError,
         "temperature must be a finite number >= 0, got -1.0"),
    Case("temperature nan", lambda w: txt(w, "Return", temperature=math.nan), ValueError,
         "temperature must be a finite number >= 0, got nan"),
    Case("infill marker absent", lambda w: txt(w, "Return the value.", infill_marker="____"), ValueError,
         "prompt must be text with the infill_marker '____'"),
    Case("infill tokens zero", lambda w: txt(w, "Return the ____.", infill_marker="____", infill_tokens=0), ValueError,
         "infill_tokens must be a positive integer, got 0"),
    Case("self_conditioning not a bool", lambda w: txt(w, "Return", self_conditioning="no"), TypeError,
         "self_conditioning must be True or False, got 'no'"),
    Case("text steps zero", lambda w: w["text"]("Return", num_inference_steps=0), ValueError,
         r"num_inference_steps must be an integer in \[1, 10000\], got 0"),
    Case("text spacing unknown", lambda w: txt(w, "Return", spacing="cos"), ValueError, r"unknown spacing 'cos'"),
]


@pytest.mark.parametrize("case", PIPELINE_CASES, ids=[c.name for c in PIPELINE_CASES])
def test_pipelines_refuse_bad_arguments_clearly(world, case):
    before = digest(ASSETS, world["root"])
    with pytest.raises(case.error, match=case.message):
        case.call(world)
    assert digest(ASSETS, world["root"]) == before


def test_a_prompt_longer_than_the_window_is_cut_with_a_warning(world):
    long = " ".join(["Return the value of the attribute"] * 20)
    with pytest.warns(UserWarning, match=r"the prompt is \d+ tokens long; the model's window of 64 tokens leaves 32"):
        out = txt(world, long, max_new_tokens=40, generator=0)
    assert isinstance(out, str) and out


def test_labels_may_be_one_int_or_name(world):
    """Not errors: one label stands for a batch of one, by index or by class name."""
    a = img(world, class_labels=3, generator=0, output_type="pt")
    b = img(world, class_labels=["3"], generator=0, output_type="pt")
    assert a.shape == (1, 1, 8, 8) and torch.equal(a, b)


# ----------------------------------------------------------------------------- model folders

def broken_copy(tmp_path, task="image-digits"):
    folder = tmp_path / "copy"
    shutil.copytree(ASSETS / task, folder)
    return folder


def edit_index(folder, **changes):
    path = folder / "pipeline.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def hostile_component(tmp_path, name):
    folder = broken_copy(tmp_path)
    outside = tmp_path / "elsewhere"
    shutil.copytree(folder / "model", outside)
    index = json.loads((folder / "pipeline.json").read_text())
    index["components"] = {**{k: v for k, v in index["components"].items() if k != "model"}, name: "DiT"}
    (folder / "pipeline.json").write_text(json.dumps(index))
    return folder


def symlinked_component(tmp_path):
    folder = broken_copy(tmp_path)
    shutil.move(folder / "model", tmp_path / "outside")
    os.symlink(tmp_path / "outside", folder / "model")
    return folder


def nan_weights(tmp_path):
    folder = broken_copy(tmp_path)
    weights = folder / "model" / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["final_layer.linear.weight"] = torch.full_like(tensors["final_layer.linear.weight"], math.nan)
    save_file(tensors, str(weights))
    return folder


def truncated_weights(tmp_path):
    folder = broken_copy(tmp_path)
    weights = folder / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    return folder


def config_edit(tmp_path, **changes):
    folder = broken_copy(tmp_path)
    path = folder / "model" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return folder


def pickle_beside(tmp_path):
    folder = broken_copy(tmp_path)
    torch.save({"w": torch.zeros(1)}, folder / "model" / "diffusion_pytorch_model.bin")
    return folder


def index_is(tmp_path, text):
    folder = broken_copy(tmp_path)
    (folder / "pipeline.json").write_text(text)
    return folder


FOLDER_CASES = [
    Case("component climbs out", lambda t: hostile_component(t, "../elsewhere"), CheckpointError,
         r"component '../elsewhere' is not a subfolder name"),
    Case("component absolute path", lambda t: hostile_component(t, str(t / "elsewhere")), CheckpointError,
         "is not a subfolder name"),
    Case("component a symlink out", symlinked_component, CheckpointError, r"component 'model' resolves to .*outside"),
    Case("index a JSON list", lambda t: index_is(t, "[1, 2]"), CheckpointError,
         "expected an object with a 'components' mapping"),
    Case("index not JSON", lambda t: index_is(t, "{components:"), CheckpointError, "pipeline.json is not valid JSON"),
    Case("index components a list", lambda t: index_is(t, json.dumps({"components": ["model"]})), CheckpointError,
         "expected an object with a 'components' mapping"),
    Case("unknown component class", lambda t: (f := broken_copy(t), edit_index(f, components={"model": "UNet"}))[0],
         CheckpointError, r"unknown component class 'UNet' for 'model'; known: \["),
    Case("index steps a string", lambda t: (f := broken_copy(t), edit_index(f, steps="25"))[0], CheckpointError,
         "option 'steps' of PipelineConfig should be int, got '25'"),
    Case("index of another task", lambda t: broken_copy(t, "video-moving-digits"), CheckpointError,
         r"holds a 'video' pipeline, not 'image'; use mmdiff.pipeline\('video'"),
    Case("config depth float", lambda t: config_edit(t, depth=2.5), CheckpointError,
         "option 'depth' of DiTConfig should be int, got 2.5"),
    Case("config depth negative", lambda t: config_edit(t, depth=-1), CheckpointError,
         "depth must be a positive integer, got -1"),
    Case("config unknown option", lambda t: config_edit(t, dropout=0.1), CheckpointError, r"unknown option\(s\) \['dropout'\]"),
    Case("weights NaN", nan_weights, CheckpointError,
         "tensor 'final_layer.linear.weight' holds 512 NaN or infinite value\\(s\\) of 512"),
    Case("weights truncated", truncated_weights, CheckpointError, "is truncated or corrupt"),
    Case("pickle beside the weights", pickle_beside, CheckpointError, "refusing a pickle-based file"),
    Case("not a pipeline folder", lambda t: (f := broken_copy(t), (f / "pipeline.json").unlink())[0], CheckpointError,
         "pipeline.json is missing"),
]


@pytest.mark.parametrize("case", FOLDER_CASES, ids=[c.name for c in FOLDER_CASES])
def test_model_folders_are_untrusted_input(tmp_path, case):
    folder = case.call(tmp_path)
    before = digest(tmp_path, ASSETS)
    with pytest.raises(case.error, match=case.message):
        mmdiff.pipeline("image", model=folder)
    assert digest(tmp_path, ASSETS) == before


def test_saving_never_sweeps_away_a_folder_it_did_not_write(world, tmp_path):
    (tmp_path / "notes.txt").write_text("my notes")
    before = digest(tmp_path)
    with pytest.raises(FileExistsError, match=r"refusing to replace .*: it holds \['notes.txt'\], not a folder mmdiff saved"):
        world["image"].save_pretrained(tmp_path)
    assert digest(tmp_path) == before
    world["image"].save_pretrained(tmp_path / "fresh")  # a new folder, then the same one again, are fine
    world["image"].save_pretrained(tmp_path / "fresh")
    assert mmdiff.pipeline("image", model=tmp_path / "fresh").config == world["image"].config


# ----------------------------------------------------------------------------------- recipes

def recipe_case(name, recipe, argv, error, message, folder="new"):
    return Case(name, lambda w: (recipe, argv, folder), error, message)


RECIPE_CASES = [
    recipe_case("max_steps negative", image_train, ["--max_steps", "-1"], ValueError, "--max_steps must be a positive integer, got -1"),
    recipe_case("checkpointing every 0", image_train, ["--checkpointing_steps", "0"], ValueError,
                "--checkpointing_steps must be a positive integer, got 0"),
    recipe_case("batch size 0", image_train, ["--batch_size", "0"], ValueError, "--batch_size must be a positive integer"),
    recipe_case("learning rate nan", image_train, ["--learning_rate", "nan"], ValueError, "--learning_rate must be a finite number"),
    recipe_case("precision unknown", image_train, ["--mixed_precision", "fp64"], ValueError, r"unknown --mixed_precision 'fp64'"),
    recipe_case("lr schedule unknown", image_train, ["--lr_schedule", "step"], ValueError, r"unknown --lr_schedule 'step'"),
    recipe_case("tracker unknown", image_train, ["--report_to", "mlflow"], ValueError, r"unknown --report_to 'mlflow'"),
    recipe_case("ema decay above 1", image_train, ["--ema_decay", "1.5"], ValueError, r"--ema_decay must be a finite number in"),
    recipe_case("preset unknown", image_train, ["--model", "DiT-XXL/2"], ValueError, r"unknown --model 'DiT-XXL/2'"),
    recipe_case("recipe sampler unknown", image_train, ["--sampler", "dpm"], ValueError, r"unknown --sampler 'dpm'"),
    recipe_case("label dropout 1.5", image_train, ["--class_dropout", "1.5"], ValueError, "--class_dropout must be a finite number in"),
    recipe_case("resolution 0", image_train, ["--resolution", "0"], ValueError, "--resolution must be a positive integer, got 0"),
    recipe_case("channels 2", image_train, ["--channels", "2"], ValueError, r"unknown --channels 2; choose one of \[1, 3\]"),
    recipe_case("schedule unknown", image_train, ["--schedule", "sigmoid"], ValueError, r"unknown --schedule 'sigmoid'"),
    recipe_case("prediction unknown", image_train, ["--prediction", "score"], ValueError, r"unknown --prediction 'score'"),
    recipe_case("guidance nan recipe", image_train, ["--guidance_scale", "nan"], ValueError, "--guidance_scale must be a finite number"),
    recipe_case("data mistyped with overwrite", image_train, ["--data", "/no/such/digits", "--overwrite_output_dir"],
                DataError, "/no/such/digits does not exist", folder="run"),
    recipe_case("another run in the folder", image_train, [], FileExistsError, "already holds a run", folder="run"),
    recipe_case("resume a finished run without checkpoints", image_train, ["--resume_from_checkpoint", "latest"],
                FileNotFoundError, "holds a finished run .* but no checkpoint to resume", folder="finished"),
    recipe_case("resume a missing checkpoint", image_train, ["--resume_from_checkpoint", "/no/such/step-1"],
                FileNotFoundError, "--resume_from_checkpoint /no/such/step-1: no such checkpoint folder", folder="run"),
    recipe_case("init from nothing", image_train, ["--init_from", "/no/such/export"], FileNotFoundError,
                "--init_from /no/such/export: no model.safetensors"),
    recipe_case("frames not a multiple", video_train, ["--num_frames", "4", "--temporal_patch", "3"], ValueError,
                "--num_frames must be a multiple of --temporal_patch 3, got 4"),
    recipe_case("given frames share 2", video_train, ["--given_frames_prob", "2"], ValueError, "--given_frames_prob must be"),
    recipe_case("export dtype int8", video_train, ["--export_dtype", "int8"], ValueError, r"unknown --export_dtype 'int8'"),
    recipe_case("attention unknown", video_train, ["--attention", "sparse"], ValueError, r"unknown --attention 'sparse'"),
    recipe_case("fps 0", video_train, ["--fps", "0"], ValueError, "--fps must be a positive integer, got 0"),
    recipe_case("objective unknown", text_train, ["--objective", "gan"], ValueError, r"unknown --objective 'gan'"),
    recipe_case("shares above 1", text_train, ["--prefix_prob", "0.8", "--infill_prob", "0.5"], ValueError,
                r"--prefix_prob \+ --infill_prob must be at most 1"),
    recipe_case("text spacing unknown", text_train, ["--spacing", "cosine"], ValueError, r"unknown --spacing 'cosine'"),
    recipe_case("window of 1", text_train, ["--max_length", "1"], ValueError, "--max_length must be an integer >= 2, got 1"),
    recipe_case("sigma range reversed", text_train, ["--sigma_min", "5", "--sigma_max", "2"], ValueError,
                "--sigma_max must be a finite number > 5.0, got 2.0"),
    recipe_case("text export dtype", text_train, ["--export_dtype", "int4"], ValueError, r"unknown --export_dtype 'int4'"),
]


@pytest.mark.parametrize("case", RECIPE_CASES, ids=[c.name for c in RECIPE_CASES])
def test_recipes_refuse_bad_options_before_touching_a_run(world, tmp_path, case):
    recipe, argv, folder = case.call(world)
    out = tmp_path / "new" if folder == "new" else world[folder]
    before = digest(world["run"], world["finished"])
    with pytest.raises(case.error, match=case.message):
        recipe.main(["--output_dir", str(out), *QUIET, *argv])
    assert digest(world["run"], world["finished"]) == before
    assert folder != "new" or not (out / "run.json").exists()


def test_a_recipe_reports_bad_input_in_one_line(tmp_path):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, str(ROOT / "recipes" / "image_train.py"), "--max_steps", "-1",
                             "--output_dir", str(tmp_path / "x"), *QUIET], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --max_steps must be a positive integer, got -1"


# ----------------------------------------------------------------------------------- configs

CONFIG_CASES = [
    ("a YAML list", "- 1\n- 2\n", SystemExit, "expected a mapping of option: value, found a YAML list"),
    ("a float depth", "depth: 2.5\n", SystemExit, r"option 'depth' should be int \| None, got 2.5"),
    ("a string step count", "max_steps: many\n", SystemExit, "option 'max_steps' should be int, got 'many'"),
    ("an unknown key", "epochs: 3\n", SystemExit, r"unknown option\(s\) \['epochs'\]"),
    ("broken YAML", "depth: [1, 2\n", SystemExit, "is not valid YAML"),
    ("a negative value", "num_heads: -2\n", ValueError, "--num_heads must be a positive integer, got -2"),
]


@pytest.mark.parametrize("text, error, message", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_config_files_are_checked_like_flags(tmp_path, text, error, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(error, match=message):
        image_train.main(["--config", str(path), "--output_dir", str(tmp_path / "run"), *QUIET])
    assert not (tmp_path / "run").exists()


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(SystemExit, match="--config .*nope.yaml: no such file"):
        image_train.main(["--config", str(tmp_path / "nope.yaml")])


def test_the_catalogue_is_large_enough():
    assert len(PIPELINE_CASES) + len(FOLDER_CASES) + len(RECIPE_CASES) + len(CONFIG_CASES) >= 100
