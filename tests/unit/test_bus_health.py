"""A consumer's recovery decisions: where to resume, when it is lost or stalled."""

from __future__ import annotations

from vipwire.bus._health import Progress, silent, stall_check_due, stalled
from vipwire.metrics import Registry


class TestProgress:
    def test_nothing_seen_resumes_by_the_consumers_own_policy(self) -> None:
        """Before any delivery there is no resume point (0: the spec's deliver policy)."""
        assert Progress().resume_seq == 0

    def test_resumes_after_the_last_finished_sequence(self) -> None:
        """All finished in order: resume one past the highest, and those count as done."""
        p = Progress()
        for seq in (3, 5, 8):
            p.received(seq)
            p.finished(seq)
        assert p.resume_seq == 9
        assert p.done(5) and p.done(8) and not p.done(9)

    def test_a_sequence_still_in_a_lane_holds_the_resume_point_back(self) -> None:
        """Handled out of order across lanes: resume at the oldest unfinished one, and
        skip the finished ones above it when they come again."""
        p = Progress()
        for seq in (10, 11, 12):
            p.received(seq)
        p.finished(12)
        p.finished(10)
        assert p.resume_seq == 11
        assert p.done(10) and p.done(12) and not p.done(11)
        p.finished(11)
        assert p.resume_seq == 13

    def test_a_retried_sequence_is_resumed_from_and_handled_again(self) -> None:
        """A Retry is not finished: its redelivery is handled, and resume stays at it."""
        p = Progress()
        p.received(4)
        p.received(5)
        p.retrying(4)
        p.finished(5)
        assert p.resume_seq == 4
        assert not p.done(4) and p.done(5)
        p.received(4)
        p.finished(4)
        assert p.done(4) and p.resume_seq == 6

    def test_two_copies_in_hand_keep_a_sequence_open_until_both_finish(self) -> None:
        """A copy from the old incarnation and one from the new: open until both settle."""
        p = Progress()
        p.received(7)
        p.received(7)
        p.finished(7)
        p.received(8)
        p.finished(8)
        assert p.done(7)
        assert p.resume_seq == 7  # the second copy is still in a lane

    def test_a_consumer_lost_before_its_first_delivery_resumes_after_its_start(
        self,
    ) -> None:
        """Created at stream seq 41 ("new"), lost before anything came: resume at 42, not
        by the policy (which would skip what was published meanwhile)."""
        p = Progress()
        p.start_after(41)
        assert p.resume_seq == 42
        p.received(42)
        p.finished(42)
        p.start_after(99)  # a later incarnation's start changes nothing once seen
        assert p.resume_seq == 43

    def test_a_shared_durable_counts_only_what_it_finished_itself(self) -> None:
        """Another replica's message redelivered to us (it died) is below our floor but
        was never handled here: it is not a duplicate."""
        p = Progress(shared=True)
        for seq in (1, 3, 5):
            p.received(seq)
            p.finished(seq)
        assert p.done(3)
        assert not p.done(4)

    def test_a_shared_durable_forgets_the_oldest_beyond_its_bound(self) -> None:
        """The record of finished sequences is bounded."""
        p = Progress(shared=True)
        for seq in range(1, Progress.RECENT + 2):
            p.received(seq)
            p.finished(seq)
        assert not p.done(1) and p.done(2) and p.done(Progress.RECENT + 1)


class TestLost:
    def test_silence_with_a_request_open_means_lost_after_two_and_a_half_heartbeats(
        self,
    ) -> None:
        """No heartbeat for 2.5 intervals on an open request: the server holding it is gone."""
        assert not silent(now=102.4, last_heard=100.0, outstanding=5, heartbeat_s=1.0)
        assert silent(now=102.6, last_heard=100.0, outstanding=5, heartbeat_s=1.0)

    def test_silence_without_a_request_open_means_nothing(self) -> None:
        """Every credit in a slow handler: the server has nothing to tell us."""
        assert not silent(now=200.0, last_heard=100.0, outstanding=0, heartbeat_s=1.0)


class TestStalled:
    def test_a_stall_check_waits_for_idleness_and_is_rate_limited(self) -> None:
        """Asked only after stall_after_s without a delivery, and once per stall_after_s."""
        base = {"outstanding": 4, "stall_after_s": 10.0}
        assert not stall_check_due(now=109.0, last_delivery=100.0, last_check=0.0, **base)
        assert stall_check_due(now=110.0, last_delivery=100.0, last_check=0.0, **base)
        assert not stall_check_due(now=115.0, last_delivery=100.0, last_check=110.0, **base)
        assert stall_check_due(now=120.0, last_delivery=100.0, last_check=110.0, **base)

    def test_no_stall_check_without_an_open_request_or_when_disabled(self) -> None:
        """A busy consumer (no request open) or stall_after_s 0 costs no request."""
        assert not stall_check_due(
            now=200.0, last_delivery=0.0, last_check=0.0, outstanding=0, stall_after_s=10.0
        )
        assert not stall_check_due(
            now=200.0, last_delivery=0.0, last_check=0.0, outstanding=3, stall_after_s=0.0
        )

    def test_stalled_means_messages_held_and_none_delivered(self) -> None:
        """Pending messages and no delivery since the last check: stalled; else not."""
        assert stalled(num_pending=3, delivered_since_check=False)
        assert not stalled(num_pending=3, delivered_since_check=True)
        assert not stalled(num_pending=0, delivered_since_check=False)


def test_health_reports_the_consumer_by_name_and_its_gauges() -> None:
    """A lost consumer is named in its problem and its connected gauge drops to 0."""
    from vipwire.bus._health import ConsumerHealth

    metrics = Registry()
    health = ConsumerHealth("lbdriver-vip", metrics)
    assert health.problem is None
    health.change("lost", "no heartbeat for 3.0s")
    assert health.problem is not None and "lbdriver-vip lost" in health.problem
    exposed = metrics.expose()
    assert 'vipwire_bus_consumer_connected{consumer="lbdriver-vip"} 0' in exposed
    assert 'vipwire_bus_consumer_last_progress_seconds{consumer="lbdriver-vip"}' in exposed
    health.change("connected", "delivered stream seq 9")
    assert health.problem is None
    assert 'vipwire_bus_consumer_connected{consumer="lbdriver-vip"} 1' in metrics.expose()
