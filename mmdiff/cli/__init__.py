"""The ``mmdiff`` command: ``mmdiff generate image|video|text ...``, ``mmdiff convert`` and ``mmdiff serve``.

    mmdiff generate image --class_labels 3 7 --output digits.png
    mmdiff generate video --class_labels 4 --num_inference_steps 20 --output four.mp4
    mmdiff generate text "The function returns"
    mmdiff convert DiT-XL-2-256x256.pt dit-xl-2-256
    mmdiff serve --port 7860

A subcommand is one entry of ``COMMANDS``: its help and a ``configure(parser)`` that adds its
arguments and sets ``run`` (``args -> what to print``). Errors that are the user's to fix (bad
values, missing files, folders that are not pipelines) print one line on stderr and exit 1;
usage errors print one line and exit 2.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from .. import convert
from . import generate, serve
from .inputs import USER_ERRORS, one_line


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line like every other error; the usage is one --help away
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class Command:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]


COMMANDS = {
    "generate": Command("sample images, videos or text from a shipped model or a pipeline folder",
                        generate.configure),
    "convert": Command("turn an original DiT or SiT .pt checkpoint into a pipeline folder (safetensors)",
                       convert.configure),
    "serve": Command("start the local web page (gradio) with a tab per modality", serve.configure),
}


def build_parser() -> Parser:
    parser = Parser(prog="mmdiff", description="Diffusion models for images, video and text.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        sub.set_defaults(prog=sub.prog)
        command.configure(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        printed = args.run(args)
    except USER_ERRORS as e:
        print(f"{args.prog}: error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if printed:
        print(printed)
    return 0
