"""The chaos scenario's pure parts: its fault schedule and its invariants."""

from __future__ import annotations

from vipwire.bench.chaoscore import (
    APPLIANCE_ORPHAN,
    CONCURRENT_WRITERS,
    LBDRIVER_LEADER,
    NO_STATUS_VIP,
    NOT_ON_APPLIANCE,
    NOT_ON_NODE,
    STUCK_FINALIZER,
    VIP_CHANGED,
    VIP_OWNED_TWICE,
    WATCHER_LEADER,
    WRONG_MEMBERS,
    ApplianceObject,
    LiveService,
    Observation,
    Write,
    check_invariants,
    concurrent_writes,
    eligible_members,
    faults_by_kind,
    plan_faults,
    record_vips,
)

COMPONENTS = ["ipam-0", "ipam-1", "lbdriver-0", "lbdriver-1", "nodeagents-east", WATCHER_LEADER]
A, B = "east/default/a", "east/default/b"


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    """A run is reproducible from its seed."""
    one = plan_faults(7, 30, COMPONENTS)
    assert one == plan_faults(7, 30, COMPONENTS)
    assert one != plan_faults(8, 30, COMPONENTS)


def test_the_required_faults_are_among_the_first_ten() -> None:
    """Every schedule of ten or more faults has a NATS kill, an lbdriver leader kill and a
    leader SIGSTOP in its first ten, whatever the seed."""
    for seed in range(50):
        first = plan_faults(seed, 12, COMPONENTS)[:10]
        assert any(f.kind == "nats-kill" for f in first), seed
        assert any(f.kind == "kill" and f.target == LBDRIVER_LEADER for f in first), seed
        assert any(f.kind == "sigstop" for f in first), seed


def test_faults_only_name_known_targets_and_nats_indices_in_range() -> None:
    """Kills name a component or a leader, NATS kills a server index below the count."""
    faults = plan_faults(3, 200, COMPONENTS, nats_servers=3)
    for f in faults:
        if f.kind == "nats-kill":
            assert 0 <= int(f.target) < 3
        elif f.kind in ("kill", "sigstop"):
            assert f.target in {*COMPONENTS, LBDRIVER_LEADER, WATCHER_LEADER}
        assert f.hold_s > 0
    assert set(faults_by_kind(faults)) >= {"kill", "nats-kill", "sigstop", "appliance-restart"}


def test_fewer_faults_than_required_are_still_drawn() -> None:
    """A two-fault schedule is two faults (nothing forced in that does not fit)."""
    assert len(plan_faults(1, 2, COMPONENTS)) == 2
    assert plan_faults(1, 0, COMPONENTS) == []


def _healthy() -> Observation:
    return Observation(
        live={
            A: LiveService(uid="u1", status_vips=("10.0.0.1",), ports=("80/TCP",), members=("n1",))
        },
        kv_records={A: ("10.0.0.1",)},
        kv_claims={"10.0.0.1": (A,)},
        appliance=[ApplianceObject(owner=A, address="10.0.0.1", port="80/TCP", members=("n1",))],
        eligible_nodes={"east": ("n1", "n2")},
        applied={"east/n1": ("10.0.0.1",), "east/n2": ("10.0.0.1", "10.0.0.9")},
        vip_history={"u1": (A, [("10.0.0.1",)])},
    )


def invariants(obs: Observation) -> set[tuple[str, str]]:
    return {(v.invariant, v.service) for v in check_invariants(obs)}


def test_a_converged_state_has_no_violation() -> None:
    """Status, KV, appliance and nodes agreeing is clean."""
    assert check_invariants(_healthy()) == []


def test_a_vip_in_two_records_two_claims_or_two_statuses_is_owned_twice() -> None:
    """Each of the three places where ownership shows is checked."""
    obs = _healthy()
    obs.kv_records[B] = ("10.0.0.1",)
    assert (VIP_OWNED_TWICE, B) in invariants(obs)
    obs = _healthy()
    obs.kv_claims["10.0.0.1"] = (A, B)
    assert (VIP_OWNED_TWICE, B) in invariants(obs)
    obs = _healthy()
    obs.live[B] = LiveService(uid="u2", status_vips=("10.0.0.1",), ports=(), members=())
    assert (VIP_OWNED_TWICE, B) in invariants(obs)


def test_an_appliance_object_of_a_service_not_live_is_an_orphan() -> None:
    """A virtual server whose owner is not a live Service is reported under that owner."""
    obs = _healthy()
    obs.appliance.append(ApplianceObject(owner=B, address="10.0.0.2", port="80/TCP", members=()))
    assert invariants(obs) == {(APPLIANCE_ORPHAN, B)}


def test_a_deleted_service_still_present_is_stuck() -> None:
    """The API server still holding a Service the load deleted is a violation."""
    obs = _healthy()
    obs.deleted_present[B] = ("vipwire.io/vip",)
    assert invariants(obs) == {(STUCK_FINALIZER, B)}


def test_a_live_service_must_be_in_status_on_the_appliance_and_on_every_node() -> None:
    """No status VIP; a port missing on the appliance; wrong members; a node lacking it."""
    obs = _healthy()
    obs.live[A] = LiveService(uid="u1", status_vips=(), ports=("80/TCP",), members=("n1",))
    assert invariants(obs) == {(NO_STATUS_VIP, A)}
    obs = _healthy()
    obs.live[A] = LiveService(
        uid="u1", status_vips=("10.0.0.1",), ports=("80/TCP", "443/TCP"), members=("n1",)
    )
    assert invariants(obs) == {(NOT_ON_APPLIANCE, A)}
    obs = _healthy()
    obs.live[A] = LiveService(
        uid="u1", status_vips=("10.0.0.1",), ports=("80/TCP",), members=("n1", "n2")
    )
    assert invariants(obs) == {(WRONG_MEMBERS, A)}
    obs = _healthy()
    obs.applied["east/n2"] = ("10.0.0.9",)
    assert invariants(obs) == {(NOT_ON_NODE, A)}
    obs = _healthy()
    del obs.applied["east/n2"]
    (violation,) = check_invariants(obs)
    assert "no report" in violation.detail


def test_a_vip_that_changes_for_one_uid_is_a_violation_but_a_new_uid_is_not() -> None:
    """record_vips keeps distinct non-empty sets per uid; two of them is a change."""
    history: dict[str, tuple[str, list[tuple[str, ...]]]] = {}
    record_vips(history, "u1", A, ["10.0.0.1"])
    record_vips(history, "u1", A, [])
    record_vips(history, "u1", A, ["10.0.0.1"])
    record_vips(history, "u2", A, ["10.0.0.7"])
    obs = _healthy()
    obs.vip_history = history
    assert check_invariants(obs) == []
    record_vips(history, "u1", A, ["10.0.0.2"])
    assert invariants(obs) == {(VIP_CHANGED, A)}


def test_writes_by_a_superseded_writer_soon_after_the_other_are_concurrent() -> None:
    """A, B, A within the gap is two replicas writing at once; a clean handover is not."""
    handover = [Write(at=1.0, writer="a"), Write(at=5.0, writer="b"), Write(at=5.2, writer="b")]
    assert concurrent_writes(handover, gap_s=1.0) == []
    back_later = [*handover, Write(at=20.0, writer="a")]
    assert concurrent_writes(back_later, gap_s=1.0) == []
    overlap = [Write(at=1.0, writer="a"), Write(at=5.0, writer="b"), Write(at=5.3, writer="a")]
    found = concurrent_writes(overlap, gap_s=1.0)
    assert [v.invariant for v in found] == [CONCURRENT_WRITERS]
    assert "a wrote" in found[0].detail


def test_eligible_members_follow_the_traffic_policy() -> None:
    """Cluster: every ready node; Local: the ready nodes with an endpoint."""
    assert eligible_members("Cluster", ["n1", "n2"], ["n3"]) == ("n1", "n2")
    assert eligible_members("Local", ["n1", "n2"], ["n2", "n3"]) == ("n2",)
