"""Recorded history, indexed for the checks: positions, per-subject versions, time windows.

A *position* is an index into :attr:`History.events` (stream order). A check
asks "what was the latest version of this input before position p" and, to
allow for a consumer that had not seen the very latest message yet, "which
versions of this input were current at any moment within ``lag`` before p".
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, TypeVar

from vipwire.contracts import MalformedMessage, Message, Subject
from vipwire.replay.record import Record

T = TypeVar("T")


class Event(NamedTuple):
    pos: int
    seq: int
    time: str
    time_ns: int
    subject: Subject
    message: Message


class History:
    """Every decodable message of a history, in stream order."""

    def __init__(self, records: Iterable[Record]) -> None:
        self.events: list[Event] = []
        self.malformed: list[Record] = []
        self.first_seq: int | None = None
        #: Sequence numbers missing between the first and the last (a filtered slice).
        self.gaps = 0
        last_seq: int | None = None
        self._clock: list[int] = []  # non-decreasing time per position
        self.by_subject: dict[str, list[int]] = {}
        for record in records:
            if self.first_seq is None:
                self.first_seq = record.seq
            if last_seq is not None and record.seq != last_seq + 1:
                self.gaps += 1
            last_seq = record.seq
            parsed = record.parsed()
            message = record.decoded()
            if parsed is None or isinstance(message, MalformedMessage):
                self.malformed.append(record)
                continue
            pos = len(self.events)
            self.events.append(Event(pos, record.seq, record.time, record.time_ns, parsed, message))
            last = self._clock[-1] if self._clock else record.time_ns
            self._clock.append(max(last, record.time_ns))
            self.by_subject.setdefault(parsed.raw, []).append(pos)

    @property
    def complete(self) -> bool:
        """It holds every message from the stream's first one on (no input is unknown)."""
        return self.first_seq == 1 and not self.gaps

    @property
    def end_ns(self) -> int:
        return self._clock[-1] if self._clock else 0

    def clock(self, pos: int) -> int:
        return self._clock[pos]

    def window_start(self, pos: int, lag_ns: int) -> int:
        """The last position before ``pos`` at least ``lag_ns`` older than it (-1: none)."""
        return bisect_right(self._clock, self._clock[pos] - lag_ns, 0, pos) - 1

    def positions(self, subject: str) -> list[int]:
        return self.by_subject.get(subject, [])


def latest(positions: Sequence[int], pos: int) -> int | None:
    """The last of ``positions`` before ``pos``."""
    i = bisect_left(positions, pos)
    return positions[i - 1] if i else None


def following(positions: Sequence[int], pos: int) -> int | None:
    """The first of ``positions`` after ``pos``."""
    i = bisect_right(positions, pos)
    return positions[i] if i < len(positions) else None


def between(positions: Sequence[int], start: int, end: int) -> Sequence[int]:
    """``positions`` strictly between ``start`` and ``end``."""
    return positions[bisect_right(positions, start) : bisect_left(positions, end)]


def candidates(
    history: History,
    positions: Sequence[int],
    start: int,
    pos: int,
    state: Callable[[Event], T | None],
) -> list[T | None]:
    """The versions of one input current at some moment in ``(start, pos)``.

    The one current at ``start`` (None if there was none yet), then every
    later one before ``pos``. ``state`` maps an event to the input's value
    (None where the event removes it).
    """
    first = latest(positions, start + 1) if start >= 0 else None
    out: list[T | None] = [state(history.events[first]) if first is not None else None]
    out.extend(state(history.events[p]) for p in between(positions, start, pos))
    return out
