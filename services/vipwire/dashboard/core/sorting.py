"""Natural sort: names and addresses in the order a person reads them (svc-2 before svc-10)."""

from __future__ import annotations

import re
from typing import Final

_RUNS: Final = re.compile(r"(\d+)")

NaturalKey = tuple[tuple[int, int, str], ...]


def natural_key(text: str) -> NaturalKey:
    """A sort key that compares runs of digits as numbers and the rest case-insensitively.

    ``svc-2`` < ``svc-10`` < ``svc-100``; ``198.51.100.9`` < ``198.51.100.10``; a run of
    digits sorts before text at the same place; equal numbers with different leading
    zeros, and different case, are ordered by the text itself so the order is total.
    """
    key: list[tuple[int, int, str]] = []
    for i, part in enumerate(_RUNS.split(text)):
        if not part:
            continue
        if i % 2:  # a run of digits
            key.append((0, int(part), part))
        else:
            key.append((1, 0, part.lower()))
    key.append((2, 0, text))  # the tie-breaker: case and leading zeros
    return tuple(key)
