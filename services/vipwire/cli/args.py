"""Argument types that refuse nonsense at parse time (exit 2, one line)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def integer(minimum: int) -> Callable[[str], int]:
    """An ``int`` argument type of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small: at least {minimum}")
        return value

    parse.__name__ = "integer"
    return parse


def seconds(text: str) -> float:
    """A duration in seconds, above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 seconds")
    return value
