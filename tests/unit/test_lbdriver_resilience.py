"""Backoff with jitter, the circuit breaker and the rate limit: pure, clock passed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vipwire.lbdriver import Admission, CircuitBreaker, TokenBucket, backoff_delay


class TestBackoff:
    def test_doubles_per_attempt_up_to_the_maximum(self) -> None:
        """Without jitter the delay is initial, 2x, 4x, … capped at the maximum."""
        delays = [
            backoff_delay(n, initial=0.2, maximum=1.0, jitter=0.0, rand=0.7) for n in range(1, 6)
        ]
        assert delays == [0.2, 0.4, 0.8, 1.0, 1.0]

    def test_jitter_shortens_by_at_most_its_share(self) -> None:
        """rand 0 keeps the full delay; rand near 1 takes off up to ``jitter`` of it."""
        full = backoff_delay(3, initial=1.0, maximum=60, jitter=0.5, rand=0.0)
        least = backoff_delay(3, initial=1.0, maximum=60, jitter=0.5, rand=0.999999)
        assert full == 4.0
        assert 2.0 <= least < 2.001

    @given(
        attempt=st.integers(min_value=-5, max_value=10_000),
        jitter=st.floats(min_value=0, max_value=1),
        rand=st.floats(min_value=0, max_value=1, exclude_max=True),
    )
    def test_always_within_bounds_even_for_huge_attempts(
        self, attempt: int, jitter: float, rand: float
    ) -> None:
        """Any attempt count gives a finite delay in [0, maximum] (no overflow)."""
        delay = backoff_delay(attempt, initial=0.1, maximum=30.0, jitter=jitter, rand=rand)
        assert 0.0 <= delay <= 30.0

    def test_different_draws_spread_services_apart(self) -> None:
        """Services failing together retry at different times."""
        draws = [i / 10 for i in range(10)]
        delays = {backoff_delay(4, initial=0.2, maximum=10, jitter=0.5, rand=r) for r in draws}
        assert len(delays) == 10


class TestCircuitBreaker:
    def breaker(
        self, threshold: int = 3, open_s: float = 5.0, max_open_s: float = 40.0
    ) -> CircuitBreaker:
        return CircuitBreaker(threshold=threshold, open_s=open_s, max_open_s=max_open_s)

    def test_opens_after_n_consecutive_failures_only(self) -> None:
        """A success in between resets the count; the Nth failure in a row opens it."""
        b = self.breaker()
        for _ in range(2):
            assert b.failed(Admission.CALL, now=0.0) is False
        b.succeeded(Admission.CALL)
        assert b.failures == 0
        assert not b.failed(Admission.CALL, 1.0)
        assert not b.failed(Admission.CALL, 1.0)
        assert b.failed(Admission.CALL, 1.0) is True
        assert b.state(1.0) == "open"
        assert b.retry_at == 6.0
        assert b.trips == 1

    def test_open_fails_fast_then_admits_exactly_one_probe(self) -> None:
        """While open nothing passes; after the wait one probe passes, others still fail fast."""
        b = self.breaker(threshold=1)
        b.failed(Admission.CALL, 0.0)
        assert b.admit(4.9) is None
        assert b.state(5.0) == "half-open"
        assert b.admit(5.0) is Admission.PROBE
        assert b.admit(5.1) is None  # the probe is in flight
        assert b.state(5.1) == "half-open"

    def test_successful_probe_closes(self) -> None:
        """A probe that succeeds closes the breaker and resets its wait."""
        b = self.breaker(threshold=1)
        b.failed(Admission.CALL, 0.0)
        probe = b.admit(5.0)
        assert probe is Admission.PROBE
        assert b.succeeded(probe) is True
        assert b.state(5.0) == "closed"
        assert b.retry_at is None
        assert b.admit(5.0) is Admission.CALL

    def test_failed_probe_reopens_for_twice_as_long_up_to_the_maximum(self) -> None:
        """Each failed probe doubles the wait (5, 10, 20, 40, 40 …)."""
        b = self.breaker(threshold=1)
        b.failed(Admission.CALL, 0.0)
        now, waits = 0.0, []
        for _ in range(5):
            assert b.retry_at is not None
            now = b.retry_at
            probe = b.admit(now)
            assert probe is Admission.PROBE
            assert b.failed(probe, now) is True
            assert b.retry_at is not None
            waits.append(b.retry_at - now)
        assert waits == [10.0, 20.0, 40.0, 40.0, 40.0]

    def test_stragglers_admitted_before_opening_change_nothing(self) -> None:
        """Calls let through while closed that end after it opened neither extend nor close it."""
        b = self.breaker(threshold=2)
        b.failed(Admission.CALL, 0.0)
        b.failed(Admission.CALL, 0.0)
        retry_at = b.retry_at
        assert b.failed(Admission.CALL, 3.0) is False
        assert b.succeeded(Admission.CALL) is False
        assert (b.state(3.0), b.retry_at) == ("open", retry_at)

    def test_abandoned_probe_frees_the_slot(self) -> None:
        """A cancelled probe proves nothing; the next call may probe."""
        b = self.breaker(threshold=1)
        b.failed(Admission.CALL, 0.0)
        probe = b.admit(5.0)
        assert probe is Admission.PROBE
        b.abandoned(probe)
        assert b.admit(5.0) is Admission.PROBE

    def test_zero_wait_goes_straight_to_half_open(self) -> None:
        """With no wait configured an open breaker admits a probe at once, one at a time."""
        b = self.breaker(threshold=1, open_s=0.0, max_open_s=0.0)
        b.failed(Admission.CALL, 0.0)
        assert b.admit(0.0) is Admission.PROBE
        assert b.admit(0.0) is None

    def test_threshold_must_be_positive(self) -> None:
        """A breaker that opens on zero failures makes no sense."""
        with pytest.raises(ValueError, match="threshold"):
            CircuitBreaker(threshold=0, open_s=1, max_open_s=1)


class TestTokenBucket:
    def test_burst_then_rate(self) -> None:
        """A full bucket lets ``burst`` calls through at once, then one per 1/rate."""
        bucket = TokenBucket(rate=10.0, burst=3)
        assert [bucket.reserve(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
        waits = [bucket.reserve(0.0) for _ in range(3)]
        assert waits == pytest.approx([0.1, 0.2, 0.3])

    def test_refills_over_time_up_to_the_burst(self) -> None:
        """Tokens come back at ``rate`` per second but never beyond ``burst``."""
        bucket = TokenBucket(rate=10.0, burst=2)
        bucket.reserve(0.0)
        bucket.reserve(0.0)
        assert bucket.reserve(0.1) == 0.0
        assert bucket.reserve(100.0) == 0.0
        assert bucket.reserve(100.0) == 0.0
        assert bucket.reserve(100.0) == pytest.approx(0.1)

    def test_debt_is_paid_back_before_new_calls(self) -> None:
        """Waiting callers hold reservations: a later caller waits behind them."""
        bucket = TokenBucket(rate=1.0, burst=1)
        assert bucket.reserve(0.0) == 0.0
        assert bucket.reserve(0.0) == pytest.approx(1.0)
        assert bucket.reserve(0.5) == pytest.approx(1.5)

    def test_rate_zero_is_unlimited(self) -> None:
        """0 disables the limit."""
        bucket = TokenBucket(rate=0.0, burst=1)
        assert all(bucket.reserve(0.0) == 0.0 for _ in range(1000))

    @given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200))
    def test_long_run_rate_is_respected(self, gaps: list[float]) -> None:
        """However calls arrive, the n-th may start no sooner than (n - burst) / rate."""
        bucket = TokenBucket(rate=20.0, burst=5)
        now = 0.0
        for n, gap in enumerate(gaps, start=1):
            now += gap
            start = now + bucket.reserve(now)
            assert start >= (n - 5) / 20.0 - 1e-9
