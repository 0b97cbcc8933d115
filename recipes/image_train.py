"""Train a class-conditional latent DiT on images.

    accelerate launch recipes/image_train.py                      # built-in digits, CPU, minutes
    accelerate launch recipes/image_train.py --config recipes/configs/image_digits.yaml --max_steps 500
    accelerate launch --multi_gpu recipes/image_train.py --config recipes/configs/image_imagenet256_dit_xl2.yaml

Every option (``--help``) can also come from ``--config``; flags override the file.
"""
from mmdiff.modalities.image import ImageArgs, ImageTask
from mmdiff.training import TrainConfig, describe_outputs, parse_config, run

# The built-in default: digits in pixel space, sized to train well within minutes on a CPU.
DEFAULTS = {"output_dir": "runs/image-digits"}


def main(argv=None):
    train, args = parse_config([TrainConfig, ImageArgs], argv, defaults=DEFAULTS)
    export = run(ImageTask(args), train)
    print(describe_outputs(train, export))


if __name__ == "__main__":
    main()
