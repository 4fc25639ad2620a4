"""A set of integers kept as sorted, disjoint, inclusive intervals.

A /16 pool is 65 536 addresses, an IPv6 /64 is 2**64: the allocator cannot
hold them one by one, nor scan them per allocation. Free space is mostly a
few long runs, so it is kept as runs; every operation is a binary search plus
at most one list insert or delete.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator


class IntervalSet:
    """Mutable set of ints stored as ``[lo, hi]`` runs."""

    __slots__ = ("_hi", "_lo", "count")

    def __init__(self, runs: Iterable[tuple[int, int]] = ()) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []
        self.count = 0
        for lo, hi in merge(runs):
            self._lo.append(lo)
            self._hi.append(hi)
            self.count += hi - lo + 1

    def __contains__(self, value: int) -> bool:
        i = bisect_right(self._lo, value) - 1
        return i >= 0 and value <= self._hi[i]

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def runs(self) -> Iterator[tuple[int, int]]:
        return zip(self._lo, self._hi, strict=True)

    def discard(self, value: int) -> bool:
        """Remove ``value``; False if it was not there."""
        i = bisect_right(self._lo, value) - 1
        if i < 0 or value > self._hi[i]:
            return False
        lo, hi = self._lo[i], self._hi[i]
        if lo == hi:
            del self._lo[i], self._hi[i]
        elif value == lo:
            self._lo[i] = lo + 1
        elif value == hi:
            self._hi[i] = hi - 1
        else:
            self._hi[i] = value - 1
            self._lo.insert(i + 1, value + 1)
            self._hi.insert(i + 1, hi)
        self.count -= 1
        return True

    def add(self, value: int) -> bool:
        """Add ``value``, merging it with adjacent runs; False if it was there."""
        i = bisect_right(self._lo, value)  # first run starting after value
        if i > 0 and value <= self._hi[i - 1]:
            return False
        joins_left = i > 0 and self._hi[i - 1] == value - 1
        joins_right = i < len(self._lo) and self._lo[i] == value + 1
        if joins_left and joins_right:
            self._hi[i - 1] = self._hi[i]
            del self._lo[i], self._hi[i]
        elif joins_left:
            self._hi[i - 1] = value
        elif joins_right:
            self._lo[i] = value
        else:
            self._lo.insert(i, value)
            self._hi.insert(i, value)
        self.count += 1
        return True

    def next_from(self, value: int) -> int | None:
        """The smallest member ``>= value``, else (wrapping) the smallest member."""
        if not self._lo:
            return None
        i = bisect_right(self._lo, value) - 1
        if i >= 0 and value <= self._hi[i]:
            return value
        if i + 1 < len(self._lo):
            return self._lo[i + 1]
        return self._lo[0]


def merge(runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and coalesce overlapping or touching runs."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(runs):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def subtract(
    runs: Iterable[tuple[int, int]], holes: Iterable[tuple[int, int]]
) -> list[tuple[int, int]]:
    """``runs`` minus ``holes``, both as inclusive runs."""
    out: list[tuple[int, int]] = []
    cut = merge(holes)
    j = 0
    for lo, hi in merge(runs):
        start = lo
        while j < len(cut) and cut[j][1] < start:
            j += 1
        k = j
        while k < len(cut) and cut[k][0] <= hi:
            if cut[k][0] > start:
                out.append((start, cut[k][0] - 1))
            start = max(start, cut[k][1] + 1)
            k += 1
        if start <= hi:
            out.append((start, hi))
    return out
