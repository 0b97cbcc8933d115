"""Checks of public arguments, with one message shape everywhere: the argument's name, what was
expected, what was found, and the fix where there is one ("num_inference_steps must be a positive
integer, got 0"). A wrong type is a ``TypeError``, a wrong value a ``ValueError``; every check
returns the value so a caller can check and assign in one line."""
from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Iterable


def fail(name: str, expected: str, found, fix: str = "", error: type = ValueError):
    raise error(f"{name} must be {expected}, got {found!r}" + (f"; {fix}" if fix else ""))


def integer(name: str, value, *, low: int | None = None, high: int | None = None, fix: str = "") -> int:
    """A whole number (not a bool, not a float) in [low, high]."""
    expected = _range("an integer", low, high)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fail(name, expected, value, fix, TypeError if not isinstance(value, numbers.Real) else ValueError)
    if (low is not None and value < low) or (high is not None and value > high):
        fail(name, expected, value, fix)
    return int(value)


def number(name: str, value, *, low: float | None = None, high: float | None = None, open_low: bool = False,
           fix: str = "") -> float:
    """A finite real number in [low, high] (``open_low``: in (low, high])."""
    expected = _range("a finite number", low, high, open_low)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        fail(name, expected, value, fix, TypeError)
    if not math.isfinite(value) or (low is not None and (value <= low if open_low else value < low)) or (
            high is not None and value > high):
        fail(name, expected, value, fix)
    return float(value)


def probability(name: str, value, fix: str = "") -> float:
    return number(name, value, low=0.0, high=1.0, fix=fix)


def choice(name: str, value, choices: Iterable, fix: str = ""):
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {choices}" + (f"; {fix}" if fix else ""))
    return value


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        fail(name, "True or False", value, error=TypeError)
    return value


def _range(kind: str, low, high, open_low: bool = False) -> str:
    if low is not None and high is not None:
        return f"{kind} in {'(' if open_low else '['}{low}, {high}]"
    if low == 1 and kind == "an integer":
        return "a positive integer"
    if low is not None:
        return f"{kind} {'>' if open_low else '>='} {low}"
    if high is not None:
        return f"{kind} <= {high}"
    return kind


def check_fields(config, prefix: str = "--") -> None:
    """Every field of a config dataclass against its annotation (a YAML file or Python code can
    pass ``depth: 2.5``; the command line converts types itself)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not fits(hints.get(f.name), value):
            fail(f"{prefix}{f.name}", type_name(hints.get(f.name)), value, error=TypeError)


def fits(hint, value) -> bool:
    """Shallow type check of a JSON value against a simple annotation (int, float, str, bool,
    their Optional forms, tuples and lists); anything richer passes."""
    if hint is None:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(a, value) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        return isinstance(value, (tuple, list))
    return True


def type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
