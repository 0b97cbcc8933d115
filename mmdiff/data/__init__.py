"""Built-in and user data sets for every modality."""
import hashlib


class DataError(ValueError):
    """Data that cannot be used as asked, raised while building a data set (before training starts);
    the message names the path, what was found and what is accepted."""


def stable_int(key: str) -> int:
    """A 63-bit integer from ``key`` that is the same in every process and Python version
    (the built-in ``hash`` is salted per process): deterministic splits and seeds."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1


SPLITS = ("train", "validation", "all")


def check_split(split: str, allowed: tuple[str, ...] = SPLITS) -> None:
    if split not in allowed:
        raise ValueError(f"unknown split {split!r}; expected one of {list(allowed)}")
