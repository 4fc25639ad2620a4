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
    VIP_LEAKED,
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


def test_a_kv_record_or_claim_of_a_service_not_live_is_a_leak() -> None:
    """An address still held in the KV for a Service that is gone is never given back."""
    obs = _healthy()
    obs.kv_records[B] = ("10.0.0.2",)
    obs.kv_claims["10.0.0.2"] = (B,)
    assert invariants(obs) == {(VIP_LEAKED, B)}
    assert len(check_invariants(obs)) == 2


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


def _w(at: float, writer: str, lease: int | None = None, end: float | None = None) -> Write:
    return Write(at=at, end=at + 0.01 if end is None else end, writer=writer, lease=lease)


def test_writes_by_a_superseded_writer_soon_after_the_other_are_concurrent() -> None:
    """Without lease revisions: A, B, A within the gap is two replicas writing at once;
    a clean handover, or a handover back later, is not."""
    handover = [_w(1.0, "a"), _w(5.0, "b"), _w(5.2, "b")]
    assert concurrent_writes(handover, gap_s=1.0) == []
    assert concurrent_writes([*handover, _w(20.0, "a")], gap_s=1.0) == []
    found = concurrent_writes([_w(1.0, "a"), _w(5.0, "b"), _w(5.3, "a")], gap_s=1.0)
    assert [v.invariant for v in found] == [CONCURRENT_WRITERS]
    assert "a wrote" in found[0].detail


def test_overlapping_writes_of_two_writers_are_concurrent() -> None:
    """Two writers' requests in flight at the same time is a violation; one writer's not."""
    assert concurrent_writes([_w(1.0, "a", end=2.0), _w(1.5, "a")], gap_s=0.1) == []
    (found,) = concurrent_writes([_w(1.0, "a", 3, end=2.0), _w(1.5, "b", 4)], gap_s=0.1)
    assert "overlaps a" in found.detail


def test_a_write_under_an_older_lease_after_a_newer_one_is_concurrent() -> None:
    """A deposed leader writing after its successor shows as an older lease revision;
    a leader that gets the lease back later writes under a newer one and is fine."""
    ok = [_w(1.0, "a", 3), _w(5.0, "b", 4), _w(30.0, "a", 5)]
    assert concurrent_writes(ok, gap_s=1.0) == []
    (found,) = concurrent_writes([_w(1.0, "a", 3), _w(5.0, "b", 4), _w(30.0, "a", 3)], 1.0)
    assert "lease 3 after b wrote under 4" in found.detail


def test_eligible_members_follow_the_traffic_policy() -> None:
    """Cluster: every ready node; Local: the ready nodes with an endpoint."""
    assert eligible_members("Cluster", ["n1", "n2"], ["n3"]) == ("n1", "n2")
    assert eligible_members("Local", ["n1", "n2"], ["n2", "n3"]) == ("n2",)


def test_leader_since_reads_the_replicas_own_clock_and_zero_is_none() -> None:
    """A takeover is timed by the lease-taking replica's gauge; 0 (standing by) or no
    gauge says nothing."""
    from vipwire.bench._chaos_fleet import leader_since

    text = (
        "# HELP x\nvipwire_lbdriver_leader 1.0\n"
        "vipwire_lbdriver_leader_since_seconds 1796656018.5\n"
    )
    assert leader_since(text) == 1796656018.5
    assert leader_since("vipwire_lbdriver_leader_since_seconds 0.0\n") is None
    assert leader_since("vipwire_lbdriver_leader 1.0\n") is None
