"""The leader lease, decided: given what the key holds, who I am, what I hold and the
time, what to do next. No I/O and no clock: ``io.election`` reads the key, passes the
times in, and does what is decided.

One lease per lbdriver deployment (not one per appliance group): every replica
consumes every subject and holds the whole desired view, so the writer of one group
is the writer of all; one key gives one takeover path, one fence and one place to
look. Sharding groups over replicas would be a scaling feature, not availability.

Times:

- ``now`` is the replica's monotonic clock. The holder's **write deadline** is the
  moment its last successful renewal was *sent*, plus ``ttl_s``, minus
  ``safety_margin_s``: the lease was certainly valid then, and the standbys count
  ``ttl_s`` from *after* they saw that renewal, so the holder stops first.
- A standby takes over when it has seen the same revision for ``ttl_s`` by its own
  clock (a standby just started therefore waits a full ``ttl_s``), or earlier when
  the entry's own age (its write time against ``wall``) is beyond
  ``ttl_s + clock_skew_s``: a lease left by a replica long dead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["acquire", "renew", "hold", "stand_by", "step_down"]


@dataclass(frozen=True, slots=True)
class LeaseTimes:
    """The lease's durations, in seconds."""

    ttl_s: float
    renew_s: float
    safety_margin_s: float
    clock_skew_s: float

    def __post_init__(self) -> None:
        if not 0 < self.renew_s < self.ttl_s - self.safety_margin_s:
            raise ValueError(
                "lease renew interval must be positive and shorter than the ttl minus "
                f"the safety margin (renew {self.renew_s}s, ttl {self.ttl_s}s, margin "
                f"{self.safety_margin_s}s)"
            )
        if self.safety_margin_s < 0 or self.clock_skew_s < 0:
            raise ValueError("lease safety margin and clock skew must not be negative")


@dataclass(frozen=True, slots=True)
class Seen:
    """The lease key as read: who holds it, at which revision, written when."""

    holder: str
    revision: int
    #: When this revision was written, ns since the epoch: the server's time where the
    #: read tells it, else the renewal time the holder recorded in it (0: unknown).
    written_ns: int = 0
    #: The ttl the holder recorded (its deadline counts with it; 0: unknown).
    ttl_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Term:
    """My lease while I hold it."""

    revision: int
    #: Monotonic time after which I must not start a write.
    deadline: float
    #: Monotonic time of the next renewal.
    renew_at: float


@dataclass(frozen=True, slots=True)
class Watched:
    """Another holder's revision, and when (my monotonic clock) I first saw it."""

    revision: int
    since: float


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    #: The revision to compare-and-set against (acquire, renew); None: create.
    last: int | None
    #: Decide again at this monotonic time at the latest.
    wake_at: float
    #: What a standby keeps watching (None: nothing).
    watched: Watched | None
    #: For the log line of a change.
    reason: str


def term_after_write(revision: int, sent_at: float, times: LeaseTimes) -> Term:
    """My term after a successful create or update of revision ``revision`` sent at ``sent_at``."""
    return Term(
        revision=revision,
        deadline=sent_at + times.ttl_s - times.safety_margin_s,
        renew_at=sent_at + times.renew_s,
    )


def read_timeout_s(times: LeaseTimes) -> float:
    """Seconds a read of the lease may take before it counts as failed and is tried
    again: the time a leader has left, once a renewal falls due, to read the key
    before its write deadline (a slower answer cannot keep its term), but never less
    than ``renew_s``. A read unanswered for long (a NATS server gone with the lease
    stream's leader, until the stream elects another) is thus asked again soon after
    the stream answers, not after the client's own request timeout (5 s)."""
    return max(times.renew_s, times.ttl_s - times.safety_margin_s - times.renew_s)


def may_write(term: Term | None, now: float) -> bool:
    """The fence: a write may start only inside the term."""
    return term is not None and now < term.deadline


def decide(
    *,
    now: float,
    wall_ns: int,
    seen: Seen | None,
    me: str,
    term: Term | None,
    watched: Watched | None,
    times: LeaseTimes,
) -> Decision:
    """What to do with the lease now.

    ``seen`` is the key as just read (None: absent or deleted); ``term`` is mine
    if I hold it; ``watched`` is what I kept from the previous decision.
    """
    poll = now + times.renew_s
    if term is not None and now >= term.deadline:
        # Paused, or renewals failing: whatever the key says now, my writes stop first.
        return Decision("step_down", None, now, None, "my lease ran out before I renewed it")
    if seen is None:
        if term is not None:
            return Decision("step_down", None, now, None, "my lease was deleted")
        return Decision("acquire", None, poll, None, "nobody holds the lease")
    if seen.holder == me:
        if term is None:
            # Mine from an earlier term (a pause, a failed renewal): take it again by
            # its revision; a standby that takes it first makes this fail.
            return Decision("acquire", seen.revision, poll, None, "the lease still names me")
        if seen.revision != term.revision:
            return Decision("step_down", None, now, None, "the lease changed under me")
        if now >= term.renew_at:
            return Decision("renew", seen.revision, term.renew_at, None, "renewal due")
        return Decision("hold", None, min(term.renew_at, term.deadline), None, "renewal not due")
    if term is not None:
        return Decision("step_down", None, now, None, f"{seen.holder} holds the lease now")
    if watched is None or watched.revision != seen.revision:
        watched = Watched(seen.revision, now)
    # The holder stops by its own ttl: with replicas configured differently (a rollout
    # changing it), the longer one counts.
    ttl_s = max(times.ttl_s, seen.ttl_s)
    expires = watched.since + ttl_s
    age_s = (wall_ns - seen.written_ns) / 1e9 if seen.written_ns else 0.0
    if now >= expires:
        reason = f"{seen.holder} did not renew for {ttl_s:g}s"
        return Decision("acquire", seen.revision, poll, None, reason)
    if age_s > ttl_s + times.clock_skew_s:
        reason = f"the lease of {seen.holder} is {age_s:.1f}s old"
        return Decision("acquire", seen.revision, poll, None, reason)
    return Decision("stand_by", None, min(expires, poll), watched, f"{seen.holder} holds the lease")
