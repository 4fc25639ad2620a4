"""When each Service is reconciled: bursts absorbed, at most one write per window.

Pure: the shell marks Services dirty as events arrive and asks which are due
(passing the time); this module only keeps the schedule.

Rules, per key, with ``window`` the coalescing window and ``quiet`` (at most
the window) the pause that ends a burst:

- A key is reconciled by one flush at a time; marks arriving meanwhile are
  kept for the next flush, which starts no sooner than one window after the
  previous flush ended. So a key is written at most once per window, however
  many events arrive, of whatever kind.
- A plain mark (node or endpoint event) waits for its burst to end: it is due
  once no further mark arrived for ``quiet``, but never later than one window
  after the burst's first mark. A rolling update is so one write, and events
  that never pause still reach the appliance once per window.
- An urgent mark (an assignment, a failover, a drift repair) is due at once,
  subject to the spacing above; later plain marks never postpone it.
- A failed flush is due again after a backoff delay the shell chooses,
  sooner if new marks arrive (a new event may be what fixes it).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
C = TypeVar("C")

#: Causes kept per flush (for trace links); the rest are counted only.
MAX_CAUSES = 8


@dataclass(frozen=True)
class Flush(Generic[C]):
    """One reconcile of a key, standing for every mark it absorbed."""

    #: The cause it answers to: the latest forcing mark if any, else the latest mark.
    cause: C
    #: The most recent causes, oldest first, ``cause`` among them (at most MAX_CAUSES).
    causes: tuple[C, ...]
    #: A mark asked for the outcome to be reported even if unchanged.
    force: bool
    #: Marks absorbed (events that would each have been a write without coalescing).
    events: int


@dataclass
class _Entry(Generic[C]):
    due: float
    first: float  # the burst's first mark
    fixed: bool  # urgent or a retry: plain marks may bring it forward, never postpone it
    cause: C
    force: bool
    causes: list[C] = field(default_factory=list)
    events: int = 0

    def add(self, cause: C, *, force: bool, events: int = 1) -> None:
        if force or not self.force:
            self.cause = cause
        self.force = self.force or force
        if not self.causes or self.causes[-1] is not cause:
            self.causes.append(cause)
            del self.causes[:-MAX_CAUSES]
        self.events += events

    def flush(self) -> Flush[C]:
        return Flush(
            cause=self.cause, causes=tuple(self.causes), force=self.force, events=self.events
        )


class Coalescer(Generic[K, C]):
    """The reconcile schedule of many keys (Services)."""

    def __init__(self, window: float, *, quiet: float | None = None) -> None:
        if window < 0 or (quiet is not None and quiet < 0):
            raise ValueError("window and quiet must be >= 0")
        self.window = window
        self.quiet = window if quiet is None else min(window, quiet)
        self._pending: dict[K, _Entry[C]] = {}
        self._running: set[K] = set()
        self._forgotten: set[K] = set()
        self._last_done: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()

    # --- questions ---------------------------------------------------------------

    def pending(self, key: K) -> bool:
        """Marked and not yet flushed."""
        return key in self._pending

    def running(self, key: K) -> bool:
        """A flush of it is in progress."""
        return key in self._running

    def busy(self, key: K) -> bool:
        return key in self._pending or key in self._running

    def pending_count(self) -> int:
        return len(self._pending)

    def running_count(self) -> int:
        return len(self._running)

    def next_due(self) -> float | None:
        """When the earliest pending key not being flushed falls due (None: none)."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    # --- changes -----------------------------------------------------------------

    def mark(
        self, key: K, now: float, cause: C, *, force: bool = False, urgent: bool = False
    ) -> float:
        """Note that ``key`` needs reconciling because of ``cause``; returns when it is due."""
        self._forgotten.discard(key)
        entry = self._pending.get(key)
        if entry is None:
            due = self._earliest(key, now if urgent else now + self.quiet)
            entry = self._pending[key] = _Entry(
                due=due, first=now, fixed=urgent, cause=cause, force=force
            )
            entry.add(cause, force=force)
            self._schedule(key, entry)
            return entry.due
        entry.add(cause, force=force)
        if urgent:
            entry.fixed = True
            due = min(entry.due, self._earliest(key, now))
        elif entry.fixed:
            due = min(entry.due, self._earliest(key, now + self.quiet))
        else:
            quiet = min(now + self.quiet, entry.first + self.window)
            due = max(entry.due, self._earliest(key, quiet))
        if due != entry.due:
            entry.due = due
            self._schedule(key, entry)
        return entry.due

    def take_due(self, now: float, limit: int | None = None) -> list[tuple[K, Flush[C]]]:
        """Every key due by ``now`` and not being flushed (the first ``limit`` of them, in
        the order they fell due); they are now being flushed. The others stay due."""
        taken: list[tuple[K, Flush[C]]] = []
        while self._heap and self._heap[0][0] <= now and (limit is None or len(taken) < limit):
            due, _, key = heapq.heappop(self._heap)
            entry = self._pending.get(key)
            if entry is None or entry.due != due or key in self._running:
                continue  # superseded by a later push, or parked until the flush ends
            del self._pending[key]
            self._running.add(key)
            taken.append((key, entry.flush()))
        return taken

    def done(self, key: K, now: float) -> None:
        """The flush of ``key`` ended (whatever the outcome)."""
        self._running.discard(key)
        if key in self._forgotten:
            self._forgotten.discard(key)
            self._last_done.pop(key, None)
        else:
            self._last_done[key] = now
        entry = self._pending.get(key)
        if entry is not None:
            entry.due = self._earliest(key, entry.due)
            self._schedule(key, entry)

    def retry(self, key: K, now: float, delay: float, flush: Flush[C]) -> float:
        """After a failed flush (and :meth:`done`): flush again ``delay`` seconds from now,
        or sooner if it is marked again in the meantime. Returns when it is due."""
        earliest = self._earliest(key, now + delay)
        entry = self._pending.get(key)
        if entry is None:
            entry = _Entry(
                due=earliest, first=now, fixed=True, cause=flush.cause, force=flush.force
            )
            entry.causes.extend(flush.causes)
            self._pending[key] = entry
            self._schedule(key, entry)
            return entry.due
        # Newer marks are already waiting: they decide when; keep what the failed flush owed.
        if flush.force and not entry.force:
            entry.force = True
            entry.cause = flush.cause
        return entry.due

    def requeue(self, key: K, now: float, delay: float, cause: C) -> float:
        """After a flush that asked to be looked at again (and :meth:`done`): flush
        ``delay`` seconds from now, sooner if marked in the meantime, and never
        sooner than the window allows. Returns when it is due."""
        earliest = self._earliest(key, now + delay)
        entry = self._pending.get(key)
        if entry is None:
            entry = self._pending[key] = _Entry(
                due=earliest, first=now, fixed=True, cause=cause, force=False
            )
            entry.add(cause, force=False)
            self._schedule(key, entry)
            return entry.due
        if earliest < entry.due:
            entry.due = earliest
            entry.fixed = True
            self._schedule(key, entry)
        return entry.due

    def forget(self, key: K) -> None:
        """Drop everything about ``key`` (the Service is gone)."""
        self._pending.pop(key, None)
        self._last_done.pop(key, None)
        if key in self._running:
            self._forgotten.add(key)

    # --- internals ---------------------------------------------------------------

    def _earliest(self, key: K, when: float) -> float:
        last = self._last_done.get(key)
        if last is not None and self.window > 0:
            return max(when, last + self.window)
        return when

    def _schedule(self, key: K, entry: _Entry[C]) -> None:
        if key not in self._running:
            heapq.heappush(self._heap, (entry.due, next(self._seq), key))

    def _drop_stale(self) -> None:
        while self._heap:
            due, _, key = self._heap[0]
            entry = self._pending.get(key)
            if entry is not None and entry.due == due and key not in self._running:
                return
            heapq.heappop(self._heap)
