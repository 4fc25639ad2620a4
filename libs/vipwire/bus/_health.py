"""A consumer's health: where to resume it, when it is lost or stalled, and what to report.

A JetStream consumer lives on one server (an ephemeral one is R1), or on a raft
group whose leader moves (a durable one inherits the stream's replicas). When that
server dies the pull requests it held die with it, silently. The consumer notices
by the missing idle heartbeats and asks the cluster about its consumer: a durable
one gets a new leader and is asked again; an ephemeral one, or any consumer the
server no longer knows, is created anew from the first stream sequence it has not
finished (:class:`Progress`), so nothing is skipped and nothing it already handled
is handed over again. A consumer that hears heartbeats but is handed nothing while
the server holds messages for it is stalled, and is created anew too.

The decisions here are pure (time is passed in); :class:`ConsumerHealth` keeps
the state, the per-consumer metrics and the one log line per state change.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter
from typing import Literal

from vipwire.metrics import Registry

log = logging.getLogger("vipwire.bus.consumer")

State = Literal["connected", "lost", "stalled"]


class Progress:
    """Which stream sequences a consumer has finished, to resume it without gap or replay.

    A sequence is *received* when it arrives, *finished* once its verdict is final
    (acknowledged or terminated), or stays open while it waits for a redelivery
    (a ``Retry``). The resume point is the lowest open sequence, else one past the
    highest received; a finished sequence above it (handled out of order in another
    lane) is remembered until the resume point passes it, so a copy delivered again
    by the consumer's new incarnation is recognised and only acknowledged.
    """

    __slots__ = (
        "_done_above",
        "_floor",
        "_held",
        "_held_order",
        "_max_seen",
        "_recent",
        "_retrying",
        "_shared",
    )

    #: Finished sequences remembered one by one (a durable consumer's copies).
    RECENT = 16384

    def __init__(self, *, shared: bool = False) -> None:
        """``shared``: a durable consumer other replicas may pull from too. What they
        handle is not ours: a sequence below our floor may be theirs, redelivered
        to us after they died, so only sequences finished here count as done."""
        self._shared = shared
        self._recent: dict[int, None] = {}  # finished here, oldest first (bounded)
        self._held: Counter[int] = Counter()  # received, verdict not final yet
        # The held sequences as a min-heap (entries no longer held are dropped when
        # they reach the top): the floor is read per message, and a prefetched batch
        # holds hundreds, so not a min() over all of them each time.
        self._held_order: list[int] = []
        self._retrying: set[int] = set()  # handed back for a redelivery
        self._done_above: set[int] = set()  # finished, above the floor
        self._floor = 0  # every sequence up to it is finished (or not ours)
        self._max_seen = 0

    def start_after(self, seq: int) -> None:
        """The consumer starts after stream sequence ``seq`` (its creation's delivered
        or ack floor): a new incarnation created before anything arrived resumes
        there, not by its policy (``new`` would skip what came meanwhile)."""
        if self._max_seen == 0 and seq > 0:
            self._max_seen = self._floor = seq

    def received(self, seq: int) -> None:
        if seq not in self._held:
            heapq.heappush(self._held_order, seq)
        self._held[seq] += 1
        self._max_seen = max(self._max_seen, seq)

    def finished(self, seq: int) -> None:
        """Its verdict is final: it is never to be handled again."""
        self._release(seq)
        self._retrying.discard(seq)
        if self._shared:
            self._recent[seq] = None
            if len(self._recent) > self.RECENT:
                del self._recent[next(iter(self._recent))]
        elif seq > self._floor:
            self._done_above.add(seq)
        self._advance()

    def retrying(self, seq: int) -> None:
        """Handed back (``Retry``): the server delivers it again; resume no later than it."""
        self._release(seq)
        self._retrying.add(seq)
        self._advance()

    def done(self, seq: int) -> bool:
        """Whether ``seq`` was finished already (a copy of it needs only an acknowledgement)."""
        if self._shared:
            return seq in self._recent
        return seq in self._done_above or (seq <= self._floor and seq not in self._retrying)

    @property
    def resume_seq(self) -> int:
        """The first stream sequence a new incarnation must deliver (0: nothing seen yet)."""
        return 0 if self._max_seen == 0 else self._floor + 1

    def _release(self, seq: int) -> None:
        count = self._held.get(seq, 0)
        if count <= 1:
            self._held.pop(seq, None)
        else:
            self._held[seq] = count - 1

    def _advance(self) -> None:
        order = self._held_order
        while order and order[0] not in self._held:
            heapq.heappop(order)
        lowest = order[0] if order else None
        if self._retrying:
            retry = min(self._retrying)
            lowest = retry if lowest is None or retry < lowest else lowest
        floor = lowest - 1 if lowest is not None else self._max_seen
        if floor > self._floor:
            self._floor = floor
            if self._done_above:
                self._done_above = {s for s in self._done_above if s > floor}


def silent(*, now: float, last_heard: float, outstanding: int, heartbeat_s: float) -> bool:
    """Whether our open pull requests went unanswered for longer than idle heartbeats allow.

    Silence only means something while a request is open: with every credit in a
    slow handler the server has nothing to say to us.
    """
    return outstanding > 0 and now - last_heard > 2.5 * heartbeat_s


def stall_check_due(
    *,
    now: float,
    last_delivery: float,
    last_check: float,
    outstanding: int,
    stall_after_s: float,
) -> bool:
    """Whether to ask the server if it holds messages it does not hand us.

    Only when requests are open yet nothing arrived for ``stall_after_s``, and at
    most once per ``stall_after_s``: a busy consumer costs no request.
    """
    return (
        stall_after_s > 0
        and outstanding > 0
        and now - last_delivery >= stall_after_s
        and now - last_check >= stall_after_s
    )


def stalled(*, num_pending: int, delivered_since_check: bool) -> bool:
    """The server holds messages for us, our requests are open, and none arrived."""
    return num_pending > 0 and not delivered_since_check


class ConsumerHealth:
    """One consumer's state as an operator sees it: a log line per change, three gauges."""

    def __init__(self, label: str, metrics: Registry) -> None:
        self.label = label
        self.state: State = "connected"
        self.detail = ""
        self.since = time.monotonic()
        self._connected = metrics.gauge(
            "bus_consumer_connected",
            "1 while a consumer is served by a NATS server that delivers to it, else 0",
            ["consumer"],
        )
        self._pending = metrics.gauge(
            "bus_consumer_pending",
            "Messages the stream holds for a consumer that it has not delivered yet",
            ["consumer"],
        )
        self._progress = metrics.gauge(
            "bus_consumer_last_progress_seconds",
            "When a consumer last finished a message (Unix seconds)",
            ["consumer"],
        )
        self._connected.set(1, consumer=label)
        self._pending.set(0, consumer=label)
        self._progress.set(time.time(), consumer=label)

    @property
    def problem(self) -> str | None:
        """Why this consumer is not getting its messages now; None: it is."""
        if self.state == "connected":
            return None
        for_s = time.monotonic() - self.since
        return f"bus consumer {self.label} {self.state} for {for_s:.0f}s: {self.detail}"

    def change(self, state: State, detail: str) -> None:
        """Enter ``state``; logs once per change (a repeated state only updates the detail)."""
        self.detail = detail
        if state == self.state:
            return
        now = time.monotonic()
        was, spent = self.state, now - self.since
        self.state, self.since = state, now
        self._connected.set(1 if state == "connected" else 0, consumer=self.label)
        if state == "connected":
            log.warning(
                "consumer %s: delivering again after %.1fs %s: %s", self.label, spent, was, detail
            )
        else:
            log.warning(
                "consumer %s: %s: %s; /readyz is false until it delivers again",
                self.label,
                state,
                detail,
            )

    def pending(self, count: int) -> None:
        self._pending.set(count, consumer=self.label)

    def progressed(self) -> None:
        self._progress.set(time.time(), consumer=self.label)
