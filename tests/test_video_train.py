"""End to end (slow): the video recipe trains a moving-digits model from scratch in a few CPU
minutes; the held-out loss falls well below the untrained model's, the samples are read as the
requested digit clearly above chance by the reference classifier, and given first frames come back
exactly. The default recipe's own numbers (16 frames, a longer run) are in docs/benchmarks.md."""
import pytest
import torch

import mmdiff
from mmdiff.core.dit import DiT
from mmdiff.data.video import MovingDigitsDataset
from mmdiff.eval.digits import video_scores
from mmdiff.modalities.video import VideoArgs, VideoTask
from recipes.video_train import main

pytestmark = pytest.mark.slow
FRAMES, STEPS, SIZE = 4, 2400, 16  # the default recipe's geometry and model, shorter clips and run
# Measured on this run (2.5 CPU-minutes on one thread): held-out loss 1.93 -> 0.195, per-frame
# accuracy 0.545 (chance 0.1), 2.0 px/frame of motion (data: 2.0). The bars leave room for noise.
ACCURACY = 0.3
SHORT = ["--num_frames", str(FRAMES), "--max_steps", str(STEPS), "--learning_rate", "0.005",
         "--lr_warmup_steps", "50", "--checkpointing_steps", str(STEPS), "--validation_steps", "0",
         "--report_to", "none", "--progress", "false"]


def held_out_loss(task, model, batches: int = 8, batch_size: int = 32) -> float:
    """Mean training loss on fixed test-split clips (digits never trained on), fixed noise levels,
    noise and given frames."""
    data = MovingDigitsDataset("test", num_clips=batch_size * batches, num_frames=FRAMES, size=SIZE,
                               digit_size=SIZE // 2)
    torch.manual_seed(0)
    model.eval()
    losses = []
    with torch.no_grad():
        for b in range(batches):
            items = [data[i] for i in range(batch_size * b, batch_size * (b + 1))]
            batch = {k: torch.stack([it[k] for it in items]) for k in ("video", "label")}
            losses.append(task.loss(model, batch)[0].item())
    return sum(losses) / len(losses)


def test_short_training_run_learns_moving_digits(tmp_path):
    torch.set_num_threads(1)
    export = main(SHORT + ["--output_dir", str(tmp_path / "run")])
    pipe = mmdiff.pipeline("video", model=export)
    assert pipe.max_frames == FRAMES and pipe.latent_shape()[-1] == SIZE

    task = VideoTask(VideoArgs(num_frames=FRAMES, resolution=SIZE, num_clips=8))
    task.setup()  # the recipe's loss (flow, logit-normal noise, given frames for image-to-video)
    torch.manual_seed(0)
    untrained = DiT(pipe.model.config)
    before, after = held_out_loss(task, untrained), held_out_loss(task, pipe.model)
    assert after < 0.2 * before, (before, after)

    labels = torch.arange(10).repeat(5)
    videos = pipe(class_labels=labels.tolist(), num_inference_steps=15, sampler="dpmpp_2m", generator=0,
                  progress=False, output_type="pt")  # the sampler these bars were measured with
    scores = video_scores(videos, labels, box=SIZE // 2)
    assert scores["accuracy"] > ACCURACY, scores  # chance is 0.1
    assert scores["mean_speed"] > 0.5, scores  # the digits move

    first = MovingDigitsDataset("test", num_clips=4, num_frames=FRAMES, size=SIZE, digit_size=SIZE // 2)
    first = torch.stack([first[i]["video"][0] for i in range(4)])  # (4, 1, 16, 16)
    clips = pipe(first_frame=first, num_inference_steps=15, generator=0, progress=False, output_type="pt")
    assert clips.shape == (4, FRAMES, 1, SIZE, SIZE)
    assert torch.equal(clips[:, 0], first)


def test_image_to_video_without_a_label_copies_a_still_digit(tmp_path):
    """The given-frame path end to end: trained on still digits (``--max_speed 0``), the model
    continues an unlabelled held-out first frame with the same digit, the network alone (no label
    inference). Measured (400 steps, 30 s on one thread): 99.5% of 50 clips' frames read as the given digit's class, MSE to it 0.0036. With
    moving digits this copy needs motion compensation, which the default recipe has not learned
    (without the pipeline's label inference, image-to-video is at chance, docs/video.md)."""
    torch.set_num_threads(1)
    argv = ["--num_frames", str(FRAMES), "--max_steps", "400", "--max_speed", "0", "--checkpointing_steps", "400",
            "--validation_steps", "0", "--report_to", "none", "--progress", "false"]
    pipe = mmdiff.pipeline("video", model=main(argv + ["--output_dir", str(tmp_path / "run")]))
    data = MovingDigitsDataset("test", num_clips=50, num_frames=FRAMES, size=SIZE, digit_size=SIZE // 2, max_speed=0)
    real = torch.stack([data[i]["video"] for i in range(50)])
    labels = torch.stack([data[i]["label"] for i in range(50)])
    clips = pipe(first_frame=real[:, 0], num_inference_steps=25, sampler="dpmpp_2m", infer_label=False,
                 generator=[torch.Generator().manual_seed(i) for i in range(50)], progress=False, output_type="pt")
    scores = video_scores(clips, labels, box=SIZE // 2)
    assert scores["accuracy"] > 0.9, scores  # chance is 0.1; no label was given
    assert (clips[:, 1:] - real[:, :1]).pow(2).mean() < 0.02  # the very same digit, not just its class
    moving = MovingDigitsDataset("test", num_clips=4, num_frames=FRAMES, size=SIZE, digit_size=SIZE // 2)
    assert not torch.equal(moving[0]["video"][0], moving[0]["video"][-1])  # the default still moves
