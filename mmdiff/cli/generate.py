"""``mmdiff generate image|video|text``: one call of a pipeline, written to a file or printed.

Each task's flags are the keywords of its pipeline's ``__call__`` (``--class_labels``,
``--strength``, ``--first_frame``, ``--max_new_tokens``...); flags not given are not passed, so
the library's defaults apply. The sampling flags come from ``SamplingOptions`` (``flags.py``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from ..core.checkpoint import DTYPES
from ..media import read_video, save_image_grid
from .flags import add_sampling_flags, sampling_options
from .inputs import class_labels, fit_picture, load_pipeline, read_mask, read_picture


def _file(read):
    """An argparse type that reads a file at parse time, so a bad path is a usage error."""
    def parse(path: str):
        try:
            return read(path)
        except (OSError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e)) from e
    return parse


LABELS = ("--class_labels", dict(nargs="+", metavar="LABEL", help="class numbers or class names, one sample each"))
PICTURE = dict(type=_file(read_picture), metavar="PATH")
PICTURES = ("image", "first_frame")  # flags that read a picture for the pipeline


@dataclass(frozen=True)
class Task:
    help: str
    inputs: tuple[tuple[str, dict], ...]  # flags named as the pipeline's __call__ keywords
    output: str | None  # the default file; None: print
    write: Callable  # (pipe, keywords, options, args) -> what to print


def _write_image(pipe, keywords, options, args) -> str:
    images = pipe(**keywords, output_type="pt", options=options)
    path = save_image_grid(images, args.output, nrow=args.nrow, scale=1 if args.raw_size else None)
    width, height = Image.open(path).size
    return f"{path}: {len(images)} image(s), {width}x{height} px"


def _write_video(pipe, keywords, options, args) -> str:
    out = pipe(**keywords, options=options)
    path = out.save(args.output, fps=args.fps, scale=1 if args.raw_size else None, nrow=args.nrow)
    if path.suffix.lower() == ".png":
        width, height = Image.open(path).size
    else:
        height, width = read_video(path, num_frames=1).shape[1:3]
    count, frames = out.videos.shape[:2]
    return f"{path}: {count} video(s) x {frames} frames, {width}x{height} px, {args.fps or out.fps} fps"


def _write_text(pipe, keywords, options, args) -> str:
    text = pipe(**keywords, options=options)
    text = "\n\n".join(text) if isinstance(text, list) else text
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return text


TASKS = {
    "image": Task("pictures: class-conditional, prompted or unconditional; img2img (--image) and inpainting "
                  "(--image --mask)", (
        LABELS,
        ("--prompt", dict(nargs="+", metavar="TEXT", help="prompts, for a model trained with a text encoder")),
        ("--num_images", dict(type=int, help="how many, for an unconditional model")),
        ("--image", dict(**PICTURE, help="start from this picture (SDEdit) or, with --mask, inpaint it")),
        ("--strength", dict(type=float, help="how much of the picture is re-noised, 0..1 (default: 0.6)")),
        ("--mask", dict(type=_file(read_mask), metavar="PATH",
                        help="a picture: white is repainted, black kept")),
    ), "image.png", _write_image),
    "video": Task("clips: class-conditional, or image-to-video from --first_frame", (
        LABELS,
        ("--num_videos", dict(type=int, help="how many, for an unconditional model or one first frame")),
        ("--num_frames", dict(type=int, help="any length up to the trained one (default: the trained one)")),
        ("--first_frame", dict(**PICTURE, help="keep this picture as frame 0 and generate the rest")),
        ("--infer_label", dict(action=argparse.BooleanOptionalAction,
                               help="without labels, read the class off the first frame (default: yes)")),
    ), "video.mp4", _write_video),
    "text": Task("text: a continuation of a prompt (printed), unconditional samples, or infilling", (
        ("prompt", dict(nargs="?", help="the text to continue (none: unconditional samples)")),
        ("--max_new_tokens", dict(type=int, help="tokens to add to the prompt (default: 64)")),
        ("--num_samples", dict(type=int, help="unconditional samples (without a prompt)")),
        ("--length", dict(type=int, help="tokens per unconditional sample (default: the model's window)")),
        ("--infill_marker", dict(help="fill every occurrence of this marker in the prompt, e.g. ____")),
        ("--infill_tokens", dict(type=int, help="tokens per marker (default: 3)")),
        ("--temperature", dict(type=float, help="< 1 samples colder, 0 greedy (default: 1)")),
        ("--return_full_text", dict(action="store_true", help="print the prompt too")),
    ), None, _write_text),
}


def configure(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="task", required=True, metavar="{" + ",".join(TASKS) + "}")
    for name, task in TASKS.items():
        sub = tasks.add_parser(name, help=task.help, description=task.help)
        _add_common(sub, task)
        group = sub.add_argument_group(f"inputs (the keywords of mmdiff.pipeline('{name}')(...))")
        for flag, spec in task.inputs:
            group.add_argument(flag, default=argparse.SUPPRESS, **spec)
        add_sampling_flags(sub)
        sub.set_defaults(run=run, prog=sub.prog, keywords=[flag.lstrip("-") for flag, _ in task.inputs])


def _add_common(parser: argparse.ArgumentParser, task: Task) -> None:
    parser.add_argument("--model", help="a pipeline folder written by save_pretrained (default: the shipped one)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="the weights' dtype (default: float32)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1... (default: the GPU if there is one)")
    output = "a file to write as well as printing" if task.output is None else f"the file to write (default: {task.output})"
    parser.add_argument("--output", default=task.output, help=output)
    if task.output is None:
        return
    parser.add_argument("--nrow", type=int, help="pictures (videos) per row of the grid (default: a square)")
    parser.add_argument("--raw_size", action="store_true",
                        help="keep the model's pixel size (default: enlarged, nearest neighbour, to >= 256 px)")
    if task.output.endswith(".mp4"):
        parser.add_argument("--fps", type=int, help="frames per second (default: the model's)")


def run(args: argparse.Namespace) -> str:
    pipe = load_pipeline(args.task, args.model, args.dtype, args.device)
    keywords = {name: getattr(args, name) for name in args.keywords if hasattr(args, name)}
    if "class_labels" in keywords:
        keywords["class_labels"] = class_labels(keywords["class_labels"])
    for name in PICTURES:
        if name in keywords:
            keywords[name] = fit_picture(keywords[name], pipe)
    return TASKS[args.task].write(pipe, keywords, sampling_options(args), args)
