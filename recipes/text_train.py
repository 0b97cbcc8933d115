"""Train a continuous text diffusion model (CDCD-style), a masked one (MDLM-style) or their
autoregressive baseline.

    accelerate launch recipes/text_train.py                               # python-docstrings, CPU, minutes
    accelerate launch recipes/text_train.py --objective ar --output_dir runs/text-docstrings-ar
    accelerate launch recipes/text_train.py --objective masked --output_dir runs/text-docstrings-masked
    accelerate launch recipes/text_train.py --config recipes/configs/text_markov.yaml
    accelerate launch --multi_gpu recipes/text_train.py --config recipes/configs/text_owt_plaid.yaml

Without ``--config`` the options come from ``recipes/configs/text_docstrings.yaml``; flags override
any file. ``--help`` lists every option with its default. See docs/text.md.
"""
from pathlib import Path

from mmdiff.modalities.text import TextArgs, TextTask
from mmdiff.training import TrainConfig, describe_outputs, parse_config, run, run_command

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "text_docstrings.yaml"


def main(argv=None):
    train, args = parse_config([TrainConfig, TextArgs], argv, default_config=DEFAULT_CONFIG)
    export = run(TextTask(args, output_dir=train.output_dir), train)
    print(describe_outputs(train, export))
    return export


if __name__ == "__main__":
    raise SystemExit(run_command(main))
