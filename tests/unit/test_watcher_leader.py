"""Leader election decisions (vipwire.kube): who may write the Lease, and what it writes."""

from __future__ import annotations

import msgspec
import pytest

from vipwire.kube import LeaseRecord, lease_spec, may_acquire
from vipwire.watcher import WatcherSettings

NOW = "2025-01-01T00:00:10.000000Z"


def held(holder: str = "b", *, duration: int = 15, rv: str = "7") -> LeaseRecord:
    return LeaseRecord(
        holder=holder,
        duration_s=duration,
        acquire_time="2025-01-01T00:00:00.000000Z",
        renew_time="2025-01-01T00:00:05.000000Z",
        transitions=3,
        resource_version=rv,
    )


class TestMayAcquire:
    def test_free_missing_or_own_lease_may_be_written(self) -> None:
        """No Lease, a released one (empty holder) or our own: write at once."""
        assert may_acquire("a", None, observed_at=100.0, now=100.0)
        assert may_acquire("a", held(""), observed_at=100.0, now=100.0)
        assert may_acquire("a", held("a"), observed_at=100.0, now=100.0)

    def test_another_holder_is_waited_out_by_our_own_clock(self) -> None:
        """Another holder: only once leaseDurationSeconds passed since *we* saw it change;
        its renewTime (another machine's clock) is never compared with ours."""
        record = held("b", duration=15)
        assert not may_acquire("a", record, observed_at=100.0, now=114.9)
        assert may_acquire("a", record, observed_at=100.0, now=115.0)

    def test_a_zero_duration_still_waits_a_second(self) -> None:
        """A malformed duration is no licence to take over at once."""
        assert not may_acquire("a", held("b", duration=0), observed_at=100.0, now=100.5)


class TestLeaseSpec:
    def test_creating(self) -> None:
        """A new Lease: we hold it, since now, no transitions yet."""
        assert lease_spec("a", None, duration_s=15, now=NOW) == {
            "holderIdentity": "a",
            "leaseDurationSeconds": 15,
            "acquireTime": NOW,
            "renewTime": NOW,
            "leaseTransitions": 0,
        }

    def test_taking_over_counts_a_transition(self) -> None:
        """From another holder: acquireTime now, leaseTransitions + 1."""
        spec = lease_spec("a", held("b"), duration_s=15, now=NOW)
        assert (spec["holderIdentity"], spec["acquireTime"], spec["leaseTransitions"]) == (
            "a",
            NOW,
            4,
        )

    def test_renewing_keeps_acquire_time_and_transitions(self) -> None:
        """Our own Lease: only renewTime moves."""
        spec = lease_spec("a", held("a"), duration_s=15, now=NOW)
        assert spec["acquireTime"] == "2025-01-01T00:00:00.000000Z"
        assert (spec["renewTime"], spec["leaseTransitions"]) == (NOW, 3)

    def test_record_is_read_from_the_api_shape(self) -> None:
        """A Lease as the API returns it becomes a LeaseRecord; garbage reads as empty."""
        lease = {
            "metadata": {"resourceVersion": "12"},
            "spec": {"holderIdentity": "b", "leaseDurationSeconds": 15, "leaseTransitions": 2},
        }
        record = LeaseRecord.of(lease)
        assert (record.holder, record.duration_s, record.transitions, record.resource_version) == (
            "b",
            15,
            2,
            "12",
        )
        assert LeaseRecord.of({"spec": {"leaseDurationSeconds": "x"}}).duration_s == 0
        assert record.same_record(LeaseRecord.of(lease))
        assert not record.same_record(None)


class TestSettings:
    def test_defaults_follow_client_go(self) -> None:
        """Election on; 15 s lease, 10 s renew deadline, 2 s retry; Lease named per cluster."""
        s = WatcherSettings(cluster="east")
        assert s.leader_election
        assert (s.lease_duration_s, s.renew_deadline_s, s.retry_period_s) == (15, 10.0, 2.0)
        assert s.lease == "vipwire-watcher-east"
        assert WatcherSettings(cluster="east", lease_name="x").lease == "x"

    @pytest.mark.parametrize(
        "timing",
        [
            {"lease_duration_s": 10, "renew_deadline_s": 10.0},
            {"renew_deadline_s": 2.0, "retry_period_s": 2.0},
            {"retry_period_s": 0.0},
        ],
    )
    def test_unsafe_timings_are_refused(self, timing: dict[str, float]) -> None:
        """The leader must give up before a standby may take over: duration > deadline > retry."""
        with pytest.raises(msgspec.ValidationError, match="leader election"):
            msgspec.convert({"cluster": "east", **timing}, WatcherSettings)

    def test_protocols_and_workers_are_checked(self) -> None:
        """An unknown protocol or no workers fail at load time."""
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"cluster": "east", "protocols": ["QUIC"]}, WatcherSettings)
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"cluster": "east", "workers": 0}, WatcherSettings)
