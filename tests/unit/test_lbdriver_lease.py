"""The leader lease's decisions (core.lease), on a clock passed in."""

from __future__ import annotations

import pytest

from vipwire.lbdriver.core.lease import (
    Decision,
    LeaseTimes,
    Seen,
    Term,
    Watched,
    decide,
    may_write,
    read_timeout_s,
    term_after_write,
)

TIMES = LeaseTimes(ttl_s=3.0, renew_s=1.0, safety_margin_s=0.5, clock_skew_s=1.0)
ME, OTHER = "lbdriver-a", "lbdriver-b"
WALL = 1_700_000_000 * 10**9  # a wall clock (ns) that the entries below are written at


def run(
    now: float,
    seen: Seen | None,
    *,
    term: Term | None = None,
    watched: Watched | None = None,
    wall_ns: int = WALL,
) -> Decision:
    return decide(
        now=now, wall_ns=wall_ns, seen=seen, me=ME, term=term, watched=watched, times=TIMES
    )


def test_nobody_holding_it_means_create() -> None:
    """An absent (or deleted) key is created, with no revision to compare."""
    d = run(10.0, None)
    assert (d.action, d.last) == ("acquire", None)


def test_the_deadline_counts_from_when_the_renewal_was_sent() -> None:
    """Deadline = send time + ttl - margin; renewal due renew_s after the send."""
    term = term_after_write(7, sent_at=100.0, times=TIMES)
    assert term == Term(revision=7, deadline=102.5, renew_at=101.0)


def test_the_fence_opens_only_inside_the_term() -> None:
    """A write may start before the deadline, never at or after it, never without a term."""
    term = term_after_write(7, sent_at=100.0, times=TIMES)
    assert may_write(term, 102.49)
    assert not may_write(term, 102.5)
    assert not may_write(None, 0.0)


def test_the_holder_waits_then_renews_by_revision() -> None:
    """Before renew_at it holds; from then it updates against its own revision."""
    term = term_after_write(7, sent_at=100.0, times=TIMES)
    held = run(100.5, Seen(ME, 7), term=term)
    assert (held.action, held.wake_at) == ("hold", 101.0)
    due = run(101.0, Seen(ME, 7), term=term)
    assert (due.action, due.last) == ("renew", 7)


def test_a_read_may_take_what_a_due_renewal_has_left_of_the_term() -> None:
    """ttl 3, margin 0.5, renew 1: a read slower than 1.5 s cannot keep the term (it is
    given up and asked again); never less than renew_s."""
    assert read_timeout_s(TIMES) == 1.5
    tight = LeaseTimes(ttl_s=3.0, renew_s=2.0, safety_margin_s=0.5, clock_skew_s=1.0)
    assert read_timeout_s(tight) == 2.0


def test_a_holder_past_its_deadline_steps_down_whatever_the_key_says() -> None:
    """Paused past the deadline (SIGSTOP): step down first, even if the key still names me."""
    term = term_after_write(7, sent_at=100.0, times=TIMES)
    for seen in (Seen(ME, 7), Seen(OTHER, 8), None):
        assert run(102.5, seen, term=term).action == "step_down"


def test_a_holder_steps_down_when_another_holds_it_or_it_is_gone() -> None:
    """Another holder, a changed revision, or a deleted key: my term is over."""
    term = term_after_write(7, sent_at=100.0, times=TIMES)
    assert run(100.2, Seen(OTHER, 8), term=term).action == "step_down"
    assert run(100.2, Seen(ME, 9), term=term).action == "step_down"
    assert run(100.2, None, term=term).action == "step_down"


def test_a_lease_still_naming_me_after_a_step_down_is_taken_back_by_revision() -> None:
    """No term but my name on the key: acquire it by its revision (a standby may win)."""
    d = run(200.0, Seen(ME, 7))
    assert (d.action, d.last) == ("acquire", 7)


def test_a_standby_watches_a_new_revision_from_its_own_clock() -> None:
    """A revision first seen now is watched from now; the wake is the next poll."""
    d = run(50.0, Seen(OTHER, 4, written_ns=WALL), wall_ns=WALL)
    assert d.action == "stand_by"
    assert d.watched == Watched(4, 50.0)
    assert d.wake_at == 51.0


def test_a_standby_takes_over_after_ttl_without_a_new_revision() -> None:
    """Same revision for ttl_s by my clock: take it over against that revision."""
    watched = Watched(4, 50.0)
    assert run(52.9, Seen(OTHER, 4), watched=watched).action == "stand_by"
    d = run(53.0, Seen(OTHER, 4), watched=watched)
    assert (d.action, d.last) == ("acquire", 4)


def test_a_renewal_restarts_the_standbys_count() -> None:
    """A new revision resets the watch, however long the old one was watched."""
    d = run(60.0, Seen(OTHER, 5), watched=Watched(4, 50.0))
    assert d.action == "stand_by"
    assert d.watched == Watched(5, 60.0)
    assert d.wake_at == 61.0


def test_the_standby_wakes_at_expiry_when_it_comes_before_the_next_poll() -> None:
    """The wake is the lease's expiry when that is sooner than a poll."""
    d = run(52.5, Seen(OTHER, 4), watched=Watched(4, 50.0))
    assert (d.action, d.wake_at) == ("stand_by", 53.0)


def test_a_holder_with_a_longer_ttl_is_waited_out_for_its_own() -> None:
    """The ttl the holder recorded counts when longer than mine (a rollout changing it)."""
    watched = Watched(4, 50.0)
    assert run(53.0, Seen(OTHER, 4, ttl_s=10.0), watched=watched).action == "stand_by"
    d = run(60.0, Seen(OTHER, 4, ttl_s=10.0), watched=watched)
    assert (d.action, d.last) == ("acquire", 4)
    assert run(53.0, Seen(OTHER, 4, ttl_s=1.0), watched=watched).action == "acquire"


def test_a_long_dead_lease_is_taken_at_once_by_its_age() -> None:
    """An entry older than ttl + clock skew by the server's write time needs no wait."""
    old = WALL - int(4.1 * 1e9)
    d = run(50.0, Seen(OTHER, 4, written_ns=old))
    assert (d.action, d.last) == ("acquire", 4)
    recent = WALL - int(3.9 * 1e9)
    assert run(50.0, Seen(OTHER, 4, written_ns=recent)).action == "stand_by"


def test_settings_that_cannot_hold_a_lease_are_refused() -> None:
    """Renewing no sooner than the deadline would let the lease lapse: refused."""
    with pytest.raises(ValueError, match="renew"):
        LeaseTimes(ttl_s=3.0, renew_s=2.5, safety_margin_s=0.5, clock_skew_s=0.0)
    with pytest.raises(ValueError, match="negative"):
        LeaseTimes(ttl_s=3.0, renew_s=1.0, safety_margin_s=0.5, clock_skew_s=-1.0)


def test_the_emulators_read_the_headers_the_lbdriver_sends() -> None:
    """The write log's writer and lease headers are the ones the fence stamps."""
    from vipwire.applianceemu import LEASE_HEADER, WRITER_HEADER
    from vipwire.lbdriver.io import fencing

    assert (fencing.WRITER_HEADER, fencing.LEASE_HEADER) == (WRITER_HEADER, LEASE_HEADER)
