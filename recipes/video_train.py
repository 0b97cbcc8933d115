"""Train a class-conditional (or prompt-conditioned), image-to-video latent DiT with frame attention
on video clips.

    accelerate launch recipes/video_train.py                      # built-in moving digits, CPU, minutes
    accelerate launch recipes/video_train.py --attention joint --num_frames 8 --max_steps 200
    accelerate launch recipes/video_train.py --text_encoder ~/models/clip-text \
        --prompt_template "a video of the digit {label}"          # text-to-video (captions: clip.txt)
    accelerate launch --multi_gpu recipes/video_train.py --config recipes/configs/video_ucf101_latte.yaml

Without ``--config`` the options come from ``recipes/configs/video_moving_digits.yaml``; flags
override any file. ``--help`` lists every option with its default.
"""
from pathlib import Path

from mmdiff.modalities.video import VideoArgs, VideoTask
from mmdiff.training import TrainConfig, describe_outputs, parse_config, run, run_command

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "video_moving_digits.yaml"


def main(argv=None):
    train, args = parse_config([TrainConfig, VideoArgs], argv, default_config=DEFAULT_CONFIG)
    export = run(VideoTask(args), train)
    print(describe_outputs(train, export))
    return export


if __name__ == "__main__":
    raise SystemExit(run_command(main))
