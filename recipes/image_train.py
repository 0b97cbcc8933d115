"""Train a class-conditional latent DiT on images.

    accelerate launch recipes/image_train.py                      # built-in digits, CPU, minutes
    accelerate launch recipes/image_train.py --data path/to/folder --resolution 64 --max_steps 20000
    accelerate launch --multi_gpu recipes/image_train.py --config recipes/configs/image_imagenet256_dit_xl2.yaml

Without ``--config`` the options come from ``recipes/configs/image_digits.yaml``; flags override
any file. ``--help`` lists every option with its default.
"""
from pathlib import Path

from mmdiff.modalities.image import ImageArgs, ImageTask
from mmdiff.training import TrainConfig, describe_outputs, parse_config, run, run_command

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "image_digits.yaml"


def main(argv=None):
    train, args = parse_config([TrainConfig, ImageArgs], argv, default_config=DEFAULT_CONFIG)
    export = run(ImageTask(args), train)
    print(describe_outputs(train, export))
    return export


if __name__ == "__main__":
    raise SystemExit(run_command(main))
