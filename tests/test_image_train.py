"""End to end (slow): the digits recipe trains from scratch, its samples read as the requested
digits, and the shipped default model scores what docs/benchmarks.md reports."""
import json
from pathlib import Path

import pytest
import torch

import mmdiff
from mmdiff.eval.digits import digits_scores, real_floor
from recipes.image_train import main

pytestmark = pytest.mark.slow


def class_samples(pipe, per_class: int, **kw):
    labels = torch.arange(10).repeat_interleave(per_class)
    images = pipe(class_labels=labels.tolist(), generator=0, progress=False, output_type="pt", **kw)
    return digits_scores(images, labels)


def test_short_digits_run_learns_the_classes(tmp_path):
    out = tmp_path / "run"
    export = main(["--output_dir", str(out), "--max_steps", "400", "--validation_steps", "400",
                   "--checkpointing_steps", "400", "--report_to", "tensorboard", "--progress", "false"])
    assert (out / "samples" / "step-00000400.png").is_file() and any((out / "logs").rglob("events.out.tfevents*"))
    pipe = mmdiff.pipeline("image", model=export)
    scores = class_samples(pipe, 20)
    print(scores, "floor", real_floor(200))
    assert scores["accuracy"] > 0.85, scores  # chance is 0.1
    assert scores["frechet"] < 3 * real_floor(200), scores


def test_shipped_model_scores_as_documented():
    pipe = mmdiff.pipeline("image")
    scores = class_samples(pipe, 30)  # the export's defaults: dpmpp_2m, 25 steps, no guidance
    print(scores, "floor", real_floor(300))
    assert scores["accuracy"] >= 0.97, scores
    assert scores["frechet"] <= 2 * real_floor(300), scores
    record = json.loads((Path(mmdiff.__file__).parent / "assets" / "image-digits" / "pipeline.json").read_text())
    assert record["guidance_scale"] == 1.0 and record["steps"] == 25
