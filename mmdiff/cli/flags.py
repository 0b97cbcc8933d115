"""``SamplingOptions`` as command-line flags and back.

Every dataclass field is one flag named as the field (``--num_inference_steps``), typed from its
annotation and explained by its comment in ``options.py``, so a field added there is a flag here
without a change to this file. Flags that are not given are not passed at all, so the model's own
defaults (``pipeline.json``) apply exactly as in Python.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import types
import typing

import torch

from ..core.checkpoint import DTYPES
from ..core.samplers import SAMPLERS
from ..options import SamplingOptions

# Fields spelled differently in a shell. ``--dtype`` already names the weights' dtype, as
# ``mmdiff.pipeline(task, dtype=...)`` does, so the sampler state's dtype gets its own name.
RENAMED = {"generator": "seed", "dtype": "state_dtype"}
# Fields whose annotation (``Any``) does not say how to type them.
SPELLED = {
    "generator": dict(type=int, metavar="N", help="random seed: the same seed gives the same samples "
                                                  "(becomes generator=N; default: a random draw)"),
    "sigmas": dict(type=float, nargs="+", metavar="SIGMA"),
    "sampler": dict(choices=sorted(SAMPLERS)),
    "latents": dict(type=lambda path: _latents_file(path), metavar="FILE.safetensors",
                    help="initial noise, diffusers' latents= (unit normal, the sample's shape): the file's one "
                         "tensor or its 'latents' tensor, e.g. written by safetensors.torch.save_file"),
}
# a Python function: only the library and the web page pass one (latents come from a file)
SKIPPED = ("callback",)
COMMENT = re.compile(r"^\s+(\w+):[^#]*#\s*(.+)$")


def sampling_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(SamplingOptions) if f.name not in SKIPPED]


def flag_name(field: dataclasses.Field) -> str:
    return RENAMED.get(field.name, field.name)


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--<field>`` per ``SamplingOptions`` field (``--seed`` for ``generator``)."""
    group = parser.add_argument_group("sampling (SamplingOptions; unset flags keep the model's defaults)")
    hints = typing.get_type_hints(SamplingOptions)
    comments = _field_comments()
    for field in sampling_fields():
        spec = {**_typed(hints[field.name]), **SPELLED.get(field.name, {})}
        spec.setdefault("help", _help(field, comments.get(field.name)))
        group.add_argument(f"--{flag_name(field)}", dest=flag_name(field), default=argparse.SUPPRESS, **spec)


def sampling_options(args: argparse.Namespace) -> SamplingOptions:
    """The ``SamplingOptions`` the given flags spell; flags not given stay at the dataclass default."""
    given = {}
    for field in sampling_fields():
        if hasattr(args, flag_name(field)):
            given[field.name] = _value(getattr(args, flag_name(field)))
    return SamplingOptions(**given)


# ------------------------------------------------------------------------------ types

def _typed(hint) -> dict:
    """argparse keywords for a field's type: ``X | None`` reads as ``X``."""
    kind = _without_none(hint)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        return dict(action=argparse.BooleanOptionalAction)
    if kind in (int, float, str):
        return dict(type=kind)
    if kind is torch.dtype:
        return dict(type=_dtype, metavar="{" + ",".join(DTYPES) + "}")
    if origin is tuple:
        variadic = len(args) == 2 and args[1] is Ellipsis
        return dict(type=args[0], nargs="+" if variadic else len(args))
    if kind is dict or origin is dict:
        return dict(type=_key_value, nargs="+", metavar="KEY=VALUE")
    return dict(type=_literal)


def _without_none(hint):
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 else hint


def _value(value):
    """argparse's value as the field's: nargs lists become tuples, KEY=VALUE pairs a dict."""
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        return dict(value)
    return tuple(value) if isinstance(value, list) else value


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {name!r}; choose one of {list(DTYPES)}")
    return DTYPES[name]


def _latents_file(path: str) -> torch.Tensor:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as e:
        raise argparse.ArgumentTypeError(f"cannot read {path} as safetensors ({e})") from e
    if "latents" in tensors or len(tensors) == 1:
        return tensors.get("latents", next(iter(tensors.values())))
    raise argparse.ArgumentTypeError(f"{path} holds {sorted(tensors)}; name the noise tensor 'latents'")


def _literal(text: str):
    """A number, list or quoted string as Python reads it; anything else as the plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. eta=0.5), got {text!r}")
    return key, _literal(value)


# ------------------------------------------------------------------------------ help

def _field_comments() -> dict[str, str]:
    """The ``# comment`` after each field in ``options.py``: the documentation written once."""
    lines = inspect.getsource(SamplingOptions).splitlines()
    return {m[1]: m[2] for line in lines if (m := COMMENT.match(line))}


def _help(field: dataclasses.Field, comment: str | None) -> str:
    """The field's comment and its default, when it has one of its own (``None``: the model's)."""
    value = field.default_factory() if field.default is dataclasses.MISSING else field.default
    text = comment or field.name.replace("_", " ")
    if value is not None and value != {}:
        text += f" (default: {str(value).removeprefix('torch.')})"
    return text.replace("%", "%%")
