"""The rerun checks: recorded decisions against ipam, lbdriver and nodeagent cores (pure)."""

from __future__ import annotations

from typing import Literal

from vipwire.contracts import (
    Endpoint,
    EndpointsSnapshot,
    LbProgrammed,
    LbRemoved,
    Member,
    Message,
    NodeApplied,
    NodeEndpoints,
    NodeSnapshot,
    ServicePort,
    ServiceSnapshot,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
    encode,
    subject_for,
)
from vipwire.ipam import PoolSettings
from vipwire.replay import Bound, Record, RerunResult, Scope, format_time, render, rerun

POOLS = (PoolSettings(name="lab", addresses=("198.51.100.0/29",), appliance_group="g1"),)
START = 1_700_000_000 * 10**9
MS = 10**6
Policy = Literal["Cluster", "Local"]


class Log:
    """A recorded history, built message by message (10 ms apart unless told)."""

    def __init__(self, first_seq: int = 1) -> None:
        self.records: list[Record] = []
        self.now = START
        self.first_seq = first_seq

    def add(self, message: Message, *, after_ms: float = 10, skip: int = 0) -> int:
        """Record a message; ``skip`` leaves that many sequence numbers out before it."""
        self.now += int(after_ms * MS)
        self.first_seq += skip
        seq = self.first_seq + len(self.records)
        self.records.append(
            Record(
                seq=seq,
                time=format_time(self.now),
                time_ns=self.now,
                subject=subject_for(message),
                headers={},
                data=encode(message),
            )
        )
        return seq

    def rerun(self, **kwargs: object) -> RerunResult:
        return rerun(self.records, POOLS, **kwargs)  # type: ignore[arg-type]


def svc(
    name: str,
    *,
    uid: str | None = None,
    cluster: str = "east",
    port: int = 80,
    policy: Policy = "Cluster",
    deleting: bool = False,
    requested: tuple[str, ...] = (),
    status: tuple[str, ...] = (),
) -> ServiceSnapshot:
    return ServiceSnapshot(
        cluster=cluster,
        namespace="shop",
        name=name,
        uid=uid or f"uid-{name}",
        resource_version="1",
        ports=(ServicePort(port=port),),
        external_traffic_policy=policy,
        deleting=deleting,
        requested_ips=requested,
        status_vips=status,
    )


def assigned(
    name: str, vip: str, *, uid: str | None = None, port: int = 80, policy: Policy = "Cluster"
) -> VipAssigned:
    return VipAssigned(
        cluster="east",
        namespace="shop",
        name=name,
        uid=uid or f"uid-{name}",
        vips=(vip,),
        pool="lab",
        appliance_group="g1",
        ports=(ServicePort(port=port),),
        external_traffic_policy=policy,
    )


def node(name: str, address: str, *, eligible: bool = True) -> NodeSnapshot:
    return NodeSnapshot(cluster="east", node=name, addresses=(address,), eligible=eligible)


N1 = Member(node="n1", address="192.0.2.1")
N2 = Member(node="n2", address="192.0.2.2")


def programmed(
    name: str,
    vip: str,
    members: tuple[Member, ...] = (N1, N2),
    *,
    port: int = 80,
    policy: Policy = "Cluster",
) -> LbProgrammed:
    return LbProgrammed(
        cluster="east",
        namespace="shop",
        name=name,
        uid=f"uid-{name}",
        appliance="sim-1",
        vips=(vip,),
        ports=(ServicePort(port=port),),
        members=members,
        external_traffic_policy=policy,
    )


def applied(node_name: str, generation: int, *vips: str) -> NodeApplied:
    return NodeApplied(cluster="east", node=node_name, generation=generation, vips=vips)


def endpoints(name: str, *ready_on: str) -> EndpointsSnapshot:
    return EndpointsSnapshot(
        cluster="east",
        namespace="shop",
        name=name,
        nodes=tuple(
            NodeEndpoints(node=n, endpoints=(Endpoint(addresses=("203.0.113.1",)),))
            for n in ready_on
        ),
    )


def served(log: Log, name: str, vip: str) -> None:
    """A Service created and served end to end (two nodes already known)."""
    log.add(svc(name))
    log.add(assigned(name, vip))
    log.add(programmed(name, vip))


def with_nodes() -> Log:
    log = Log()
    log.add(node("n1", "192.0.2.1"))
    log.add(node("n2", "192.0.2.2"))
    return log


def only(result: RerunResult) -> tuple[int, str]:
    first = result.first
    assert first is not None, "expected a divergence"
    return first.seq, first.check


class TestWholeHistories:
    def test_a_consistent_history_has_no_divergence_and_counts_every_decision(self) -> None:
        """Two Services served, applied by both nodes, one deleted cleanly: nothing diverges."""
        log = with_nodes()
        served(log, "web", "198.51.100.0")
        log.add(applied("n1", 1, "198.51.100.0"))
        log.add(applied("n2", 1, "198.51.100.0"))
        served(log, "api", "198.51.100.1")
        log.add(applied("n1", 2, "198.51.100.0", "198.51.100.1"))
        log.add(applied("n2", 2, "198.51.100.0", "198.51.100.1"))
        log.add(svc("api", deleting=True))
        release = VipReleasing(
            cluster="east",
            namespace="shop",
            name="api",
            uid="uid-api",
            vips=("198.51.100.1",),
            appliance_group="g1",
        )
        log.add(release)
        log.add(
            LbRemoved(
                cluster="east",
                namespace="shop",
                name="api",
                uid="uid-api",
                appliance="sim-1",
                vips=("198.51.100.1",),
            )
        )
        log.add(
            VipReleased(
                cluster="east",
                namespace="shop",
                name="api",
                uid="uid-api",
                vips=("198.51.100.1",),
            )
        )
        log.add(applied("n1", 3, "198.51.100.0"))
        log.add(applied("n2", 3, "198.51.100.0"))
        result = log.rerun()
        assert result.divergences == []
        assert result.checked == {"ipam": 4, "lbdriver": 3, "nodeagent": 6}
        assert result.exact_addresses
        assert render(result).startswith("no divergence (13 decisions checked")

    def test_only_the_first_divergence_is_the_answer_and_later_ones_are_counted(self) -> None:
        """Two bad decisions: the report leads with the earlier one and mentions the other."""
        log = with_nodes()
        served(log, "web", "198.51.100.0")
        bad = log.add(programmed("web", "198.51.100.0", (N1,)), after_ms=1000)
        log.add(svc("api"))
        log.add(assigned("api", "198.51.100.0"))
        result = log.rerun()
        assert only(result) == (bad, "lbdriver.members")
        assert len(result.divergences) >= 2
        assert "more after it" in render(result)


class TestIpam:
    def test_a_vip_held_by_another_service_diverges_there(self) -> None:
        """Assigning web's VIP to api is refused by the allocator: reported at api's VipAssigned."""
        log = with_nodes()
        served(log, "web", "198.51.100.0")
        log.add(svc("api"))
        bad = log.add(assigned("api", "198.51.100.0"))
        result = log.rerun()
        assert only(result) == (bad, "ipam.admissible")
        first = result.first
        assert first is not None
        assert "198.51.100.1" in first.recomputed
        assert "in use by east/shop/web" in first.detail

    def test_a_vip_outside_every_pool_diverges(self) -> None:
        """An address no pool holds is not admissible."""
        log = with_nodes()
        log.add(svc("web"))
        bad = log.add(assigned("web", "203.0.113.9"))
        assert only(log.rerun()) == (bad, "ipam.admissible")

    def test_a_service_keeps_its_vip_for_its_lifetime(self) -> None:
        """A later VipAssigned for the same incarnation with another VIP breaks stability."""
        log = with_nodes()
        served(log, "web", "198.51.100.0")
        log.add(svc("web", port=8080))
        bad = log.add(assigned("web", "198.51.100.3", port=8080))
        assert only(log.rerun()) == (bad, "ipam.stable")

    def test_release_before_the_appliance_is_clean_diverges(self) -> None:
        """VipReleased of a held VIP with no LbRemoved first breaks the release order."""
        log = with_nodes()
        served(log, "web", "198.51.100.0")
        log.add(svc("web", deleting=True))
        bad = log.add(
            VipReleased(
                cluster="east", namespace="shop", name="web", uid="uid-web", vips=("198.51.100.0",)
            )
        )
        assert only(log.rerun()) == (bad, "ipam.release-order")

    def test_next_fit_continues_from_the_last_allocation(self) -> None:
        """With one replica and the whole history, the second Service must get .1, not .5."""
        log = with_nodes()
        served(log, "web", "198.51.100.0")
        log.add(svc("api"))
        bad = log.add(assigned("api", "198.51.100.5"))
        log.add(programmed("api", "198.51.100.5"))
        result = log.rerun()
        assert only(result) == (bad, "ipam.next-fit")
        first = result.first
        assert first is not None and first.recomputed.startswith("VipAssigned 198.51.100.1")
        relaxed = log.rerun(ipam_replicas=2)
        assert relaxed.divergences == [] and not relaxed.exact_addresses

    def test_a_vip_given_back_from_status_is_not_next_fit_and_moves_no_cursor(self) -> None:
        """After a lost store a Service gets the VIP its status holds (.5, not .0), and the
        next fresh allocation still starts where next fit left off."""
        log = with_nodes()
        log.add(svc("web", status=("198.51.100.5",)))
        log.add(assigned("web", "198.51.100.5"))
        log.add(programmed("web", "198.51.100.5"))
        served(log, "api", "198.51.100.0")
        assert log.rerun().divergences == []

    def test_concurrent_allocations_may_be_published_in_either_order(self) -> None:
        """Two requests in flight: the later one published first with the later address is fine."""
        log = with_nodes()
        log.add(svc("web"))
        log.add(svc("api"))
        log.add(assigned("api", "198.51.100.1"))
        log.add(assigned("web", "198.51.100.0"))
        log.add(programmed("api", "198.51.100.1"))
        log.add(programmed("web", "198.51.100.0"))
        assert log.rerun().divergences == []

    def test_after_a_restart_next_fit_may_start_from_the_pool_again(self) -> None:
        """A released low address handed out again (an ipam restart resets its cursor) is fine."""
        log = with_nodes()
        served(log, "web", "198.51.100.0")
        served(log, "api", "198.51.100.1")
        log.add(svc("web", deleting=True))
        log.add(
            VipReleasing(
                cluster="east",
                namespace="shop",
                name="web",
                uid="uid-web",
                vips=("198.51.100.0",),
                appliance_group="g1",
            )
        )
        log.add(
            LbRemoved(
                cluster="east",
                namespace="shop",
                name="web",
                uid="uid-web",
                appliance="sim-1",
                vips=("198.51.100.0",),
            )
        )
        log.add(
            VipReleased(
                cluster="east", namespace="shop", name="web", uid="uid-web", vips=("198.51.100.0",)
            )
        )
        served(log, "db", "198.51.100.0")
        assert log.rerun().divergences == []

    def test_a_failure_where_the_pool_has_room_diverges(self) -> None:
        """VipFailed while the allocator would assign an address is a divergence."""
        log = with_nodes()
        log.add(svc("web"))
        bad = log.add(
            VipFailed(
                cluster="east",
                namespace="shop",
                name="web",
                uid="uid-web",
                reason="AllocationFailed",
                message="no free address",
            )
        )
        result = log.rerun()
        assert only(result) == (bad, "ipam.failed")

    def test_a_snapshot_never_answered_diverges_once_the_history_moves_on(self) -> None:
        """No vip message after a snapshot, with the history going on past --settle."""
        log = with_nodes()
        unanswered = log.add(svc("web"))
        log.add(node("n3", "192.0.2.3"), after_ms=6000)
        assert only(log.rerun()) == (unanswered, "ipam.answer")
        assert log.rerun(settle=10.0).divergences == []

    def test_requested_addresses_are_honoured(self) -> None:
        """A Service that asked for .6 and got .0 diverges."""
        log = with_nodes()
        log.add(svc("web", requested=("198.51.100.6",)))
        bad = log.add(assigned("web", "198.51.100.0"))
        assert only(log.rerun()) == (bad, "ipam.requested")


class TestLbdriver:
    def test_wrong_members_diverge_with_both_sides(self) -> None:
        """A member address no node ever had is reported, recorded against recomputed."""
        log = with_nodes()
        log.add(svc("web"))
        log.add(assigned("web", "198.51.100.0"), after_ms=1000)
        ghost = Member(node="n2", address="192.0.2.99")
        bad = log.add(programmed("web", "198.51.100.0", (N1, ghost)))
        result = log.rerun()
        assert only(result) == (bad, "lbdriver.members")
        first = result.first
        assert first is not None
        assert "n2=192.0.2.99" in first.recorded and "n2=192.0.2.2" in first.recomputed

    def test_a_cordoned_node_may_be_a_member_or_not(self) -> None:
        """The record does not say the lbdriver's drain_on_cordon: a cordoned node left out
        (the default) or kept (off) are both right, long after the cordon too."""
        log = with_nodes()
        log.add(svc("web"))
        log.add(assigned("web", "198.51.100.0"))
        log.add(programmed("web", "198.51.100.0"))
        cordoned = NodeSnapshot(cluster="east", node="n2", addresses=("192.0.2.2",), cordoned=True)
        log.add(cordoned, after_ms=1000)
        log.add(programmed("web", "198.51.100.0", (N1,)), after_ms=5000)
        log.add(programmed("web", "198.51.100.0", (N1, N2)), after_ms=5000)
        assert log.rerun(lag=0.05).divergences == []

    def test_a_node_change_just_before_may_not_have_been_seen(self) -> None:
        """Within --lag, the old node list is an acceptable input; long after, it is not."""
        log = with_nodes()
        log.add(svc("web"))
        log.add(assigned("web", "198.51.100.0"))
        log.add(programmed("web", "198.51.100.0"))
        log.add(node("n2", "192.0.2.2", eligible=False), after_ms=1000)
        stale = log.add(programmed("web", "198.51.100.0"), after_ms=100)
        assert log.rerun().divergences == []
        assert only(log.rerun(lag=0.05)) == (stale, "lbdriver.members")

    def test_local_policy_takes_only_nodes_with_a_ready_endpoint(self) -> None:
        """externalTrafficPolicy Local: a node without a ready endpoint is no member."""
        log = with_nodes()
        log.add(svc("web", policy="Local"))
        log.add(endpoints("web", "n1"))
        log.add(assigned("web", "198.51.100.0", policy="Local"), after_ms=1000)
        bad = log.add(programmed("web", "198.51.100.0", (N1, N2), policy="Local"))
        assert only(log.rerun()) == (bad, "lbdriver.members")

    def test_programming_ports_that_were_not_assigned_diverges(self) -> None:
        """LbProgrammed on port 8080 when 80 was assigned."""
        log = with_nodes()
        log.add(svc("web"))
        log.add(assigned("web", "198.51.100.0"))
        bad = log.add(programmed("web", "198.51.100.0", port=8080))
        assert only(log.rerun()) == (bad, "lbdriver.assignment")

    def test_a_change_never_programmed_diverges_once_settled(self) -> None:
        """A node excluded for longer than --settle with no new LbProgrammed: missed update."""
        log = with_nodes()
        served(log, "web", "198.51.100.0")
        excluded = log.add(node("n2", "192.0.2.2", eligible=False), after_ms=100)
        log.add(node("n3", "192.0.2.3", eligible=False), after_ms=6000)
        assert only(log.rerun()) == (excluded, "lbdriver.settle")

    def test_removal_without_withdrawal_diverges(self) -> None:
        """LbRemoved while the Service is still assigned."""
        log = with_nodes()
        served(log, "web", "198.51.100.0")
        bad = log.add(
            LbRemoved(
                cluster="east",
                namespace="shop",
                name="web",
                uid="uid-web",
                appliance="sim-1",
                vips=("198.51.100.0",),
            )
        )
        assert only(log.rerun()) == (bad, "lbdriver.removed")


class TestNodeagent:
    def test_a_node_missing_a_programmed_vip_diverges(self) -> None:
        """NodeApplied without a VIP that has been programmed for a while."""
        log = with_nodes()
        served(log, "web", "198.51.100.0")
        served(log, "api", "198.51.100.1")
        bad = log.add(applied("n1", 1, "198.51.100.0"), after_ms=1000)
        assert only(log.rerun()) == (bad, "nodeagent.vips")

    def test_a_generation_going_back_diverges(self) -> None:
        """Generations only grow."""
        log = with_nodes()
        served(log, "web", "198.51.100.0")
        log.add(applied("n1", 5, "198.51.100.0"))
        bad = log.add(applied("n1", 4, "198.51.100.0"))
        assert only(log.rerun()) == (bad, "nodeagent.generation")

    def test_a_node_that_never_reports_a_settled_set_diverges(self) -> None:
        """An agent that reported before, but not the VIP set that stood still for --settle."""
        log = with_nodes()
        log.add(applied("n1", 1))
        served(log, "web", "198.51.100.0")
        log.add(node("n3", "192.0.2.3"), after_ms=6000)
        result = log.rerun()
        first = result.first
        assert first is not None and first.check == "nodeagent.settle"
        assert "n1" in first.detail


class TestSlices:
    def test_scope_and_range_select_what_is_reported(self) -> None:
        """A divergence in another cluster, or before --since, is neither counted nor reported."""
        log = with_nodes()
        log.add(svc("web"))
        bad = log.add(assigned("web", "203.0.113.9"))
        assert log.rerun(scope=Scope(cluster="west")).divergences == []
        assert log.rerun(since=Bound(seq=bad + 1)).divergences == []
        assert only(log.rerun(until=Bound(seq=bad))) == (bad, "ipam.admissible")

    def test_a_partial_history_is_said_so_and_skips_exact_addresses(self) -> None:
        """A history that does not start at seq 1: no next-fit comparison, and a note."""
        log = Log(first_seq=100)
        log.add(node("n1", "192.0.2.1"))
        log.add(node("n2", "192.0.2.2"))
        log.add(svc("api"))
        log.add(assigned("api", "198.51.100.5"))
        log.add(programmed("api", "198.51.100.5"))
        result = log.rerun()
        assert result.divergences == []
        assert not result.complete and not result.exact_addresses
        assert "starts at seq 100" in render(result)

    def test_a_history_with_gaps_is_partial_too(self) -> None:
        """Messages missing in the middle (an export of one cluster): a note, no next fit."""
        log = with_nodes()
        served(log, "web", "198.51.100.0")
        log.add(svc("api"), skip=3)
        log.add(assigned("api", "198.51.100.5"))
        log.add(programmed("api", "198.51.100.5"))
        result = log.rerun()
        assert result.divergences == [] and not result.complete
        assert "1 gaps" in render(result)
