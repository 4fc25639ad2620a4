"""How the lbdriver treats a fragile appliance: backoff, a circuit breaker, a rate limit.

Pure: every decision takes the time (``now``, any monotonic clock in seconds)
and any randomness as arguments, so each is tested without sleeping.
"""

from __future__ import annotations

import enum
from typing import Literal

BreakerState = Literal["closed", "open", "half-open"]

# 2**60 times any sane initial delay is beyond every maximum; larger exponents overflow.
_MAX_EXPONENT = 60


def backoff_delay(
    attempt: int, *, initial: float, maximum: float, jitter: float, rand: float
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    Exponential (``initial`` doubling up to ``maximum``), then shortened by up
    to ``jitter`` (0..1) of itself, as ``rand`` (uniform in [0, 1)) draws: Services
    that failed together spread out instead of retrying in lockstep, and no
    delay ever exceeds ``maximum``.
    """
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    base = min(maximum, initial * 2.0**exponent)
    return base * (1.0 - jitter * rand)


class Admission(enum.Enum):
    """How the breaker let a call through."""

    #: Normal traffic of a closed breaker.
    CALL = "call"
    #: The single trial call of a half-open breaker.
    PROBE = "probe"


class CircuitBreaker:
    """One appliance's breaker: closed → open → half-open → closed (or open again).

    Closed, every call goes through; ``threshold`` consecutive failures open it.
    Open, calls are refused (the caller fails fast without touching the
    appliance) until ``retry_at``; then it is half-open and admits exactly one
    probe. A probe that succeeds closes it; one that fails opens it again for
    twice as long (at most ``max_open_s``). Calls admitted before it opened
    may still finish afterwards; their results change nothing.
    """

    def __init__(self, *, threshold: int, open_s: float, max_open_s: float) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.open_s = open_s
        self.max_open_s = max(max_open_s, open_s)
        #: Consecutive failures while closed.
        self.failures = 0
        #: Times the breaker opened (from closed or after a failed probe).
        self.trips = 0
        self._retry_at: float | None = None
        self._period = 0.0
        self._probing = False

    @property
    def retry_at(self) -> float | None:
        """When an open breaker admits its next probe; None while closed."""
        return self._retry_at

    def state(self, now: float) -> BreakerState:
        if self._retry_at is None:
            return "closed"
        if self._probing or now >= self._retry_at:
            return "half-open"
        return "open"

    def admit(self, now: float) -> Admission | None:
        """Let a call through (and how), or None: fail fast."""
        state = self.state(now)
        if state == "closed":
            return Admission.CALL
        if state == "open" or self._probing:
            return None
        self._probing = True
        return Admission.PROBE

    def succeeded(self, admission: Admission) -> bool:
        """Record an answer from the appliance; True if that closed the breaker."""
        if admission is Admission.PROBE:
            self._probing = False
            self._retry_at = None
            self._period = 0.0
            self.failures = 0
            return True
        if self._retry_at is None:
            self.failures = 0
        return False

    def failed(self, admission: Admission, now: float) -> bool:
        """Record a failed call; True if that opened the breaker."""
        if admission is Admission.PROBE:
            self._probing = False
            self._open(now, min(self.max_open_s, max(self.open_s, self._period * 2)))
            return True
        if self._retry_at is not None:
            return False  # admitted before the breaker opened: already accounted for
        self.failures += 1
        if self.failures >= self.threshold:
            self._open(now, self.open_s)
            return True
        return False

    def abandoned(self, admission: Admission) -> None:
        """The call was given up before an answer (cancelled): it proves nothing."""
        if admission is Admission.PROBE:
            self._probing = False

    def _open(self, now: float, period: float) -> None:
        self._period = period
        self._retry_at = now + period
        self.trips += 1


class TokenBucket:
    """A rate limit: ``rate`` calls per second on average, ``burst`` at once.

    :meth:`reserve` takes a token and says how long to wait before using it;
    tokens may be owed, so concurrent callers queue up in arrival order
    instead of all retrying at the same moment. ``rate`` 0 means no limit.
    """

    def __init__(self, rate: float, burst: int) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("rate must be >= 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp: float | None = None

    def reserve(self, now: float) -> float:
        """Take one token; seconds until it may be used (0: now)."""
        if self.rate == 0:
            return 0.0
        if self._stamp is not None and now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        if self._stamp is None or now > self._stamp:
            self._stamp = now
        self._tokens -= 1.0
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate
