"""The dashboard's core: the fold, the queries over the read model and the waterfall; no I/O."""

from __future__ import annotations

import pytest

from vipwire.contracts import (
    LbFailed,
    LbProgrammed,
    LbRemoved,
    Member,
    Message,
    NodeApplied,
    NodeGone,
    NodeSnapshot,
    ServiceGone,
    ServicePort,
    ServiceRef,
    ServiceSnapshot,
    StatusWritten,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
)
from vipwire.dashboard.core import queries
from vipwire.dashboard.core.fold import Change, Event, ReadModel
from vipwire.dashboard.core.views import Query, TimelineEntry
from vipwire.dashboard.core.waterfall import waterfall

T0 = 1_700_000_000.0
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PORTS = (ServicePort(port=80), ServicePort(port=443))
NODES = ("n1", "n2", "n3")
WEB = ServiceRef("east", "default", "web")


def ev(message: Message, at_ms: float = 0.0, trace: str | None = TRACE, seq: int = 0) -> Event:
    return Event(message=message, time=T0 + at_ms / 1000, seq=seq, trace_id=trace)


def snapshot(name: str = "web", uid: str = "u1", cluster: str = "east", **kw: object) -> Message:
    return ServiceSnapshot(
        cluster=cluster,
        namespace=str(kw.pop("namespace", "default")),
        name=name,
        uid=uid,
        resource_version="1",
        ports=PORTS,
        **kw,  # type: ignore[arg-type]
    )


def assigned(
    name: str = "web", vip: str = "198.51.100.1", uid: str = "u1", cluster: str = "east"
) -> Message:
    return VipAssigned(
        cluster=cluster,
        namespace="default",
        name=name,
        uid=uid,
        vips=(vip,),
        pool="default",
        appliance_group="dc1",
        ports=PORTS,
    )


def programmed(
    name: str = "web", vip: str = "198.51.100.1", uid: str = "u1", cluster: str = "east"
) -> Message:
    return LbProgrammed(
        cluster=cluster,
        namespace="default",
        name=name,
        uid=uid,
        appliance="sim-1",
        vips=(vip,),
        ports=PORTS,
        members=tuple(Member(node=n, address=f"192.0.2.{i + 1}") for i, n in enumerate(NODES)),
    )


def status(
    name: str = "web", vips: tuple[str, ...] = ("198.51.100.1",), uid: str = "u1"
) -> Message:
    return StatusWritten(cluster="east", namespace="default", name=name, uid=uid, vips=vips)


def applied(node: str, generation: int, *vips: str) -> Message:
    return NodeApplied(cluster="east", node=node, generation=generation, vips=vips)


def converge(model: ReadModel, name: str = "web", vip: str = "198.51.100.1") -> None:
    """One Service through every hop: 0 → 10 → 25 → 30..32 → 40 ms."""
    model.apply(ev(snapshot(name)))
    model.apply(ev(assigned(name, vip), 10))
    model.apply(ev(programmed(name, vip), 25))
    for i, node in enumerate(NODES):
        model.apply(ev(NodeSnapshot(cluster="east", node=node, addresses=(f"192.0.2.{i}",)), 1))
        model.apply(ev(applied(node, 1, vip), 30 + i))
    model.apply(ev(status(name, (vip,)), 40))


class TestLifecycle:
    def test_state_follows_the_pipeline_to_ready(self) -> None:
        """pending → assigned → programmed → ready as each hop reports."""
        model = ReadModel()
        key = WEB
        assert model.apply(ev(snapshot())) == [Change("added", "east/default/web")]
        assert queries.detail(model, key).row.state == "pending"  # type: ignore[union-attr]
        model.apply(ev(assigned(), 10))
        assert queries.detail(model, key).row.state == "assigned"  # type: ignore[union-attr]
        model.apply(ev(programmed(), 25))
        assert queries.detail(model, key).row.state == "programmed"  # type: ignore[union-attr]
        assert model.apply(ev(status(), 40)) == [Change("changed", "east/default/web")]
        row = queries.row(model, key)
        assert row is not None
        assert row.state == "ready"
        assert row.vips == ("198.51.100.1",) and row.appliance == "sim-1" and row.members == 3

    def test_convergence_is_snapshot_to_status_by_stream_time(self) -> None:
        """Convergence is the stream-time distance from the snapshot to StatusWritten."""
        model = ReadModel()
        converge(model)
        row = queries.row(model, WEB)
        assert row is not None and row.convergence_ms == pytest.approx(40.0, abs=1e-3)
        assert row.nodes_applied == 3 and row.nodes_total == 3

    def test_an_allocation_failure_shows_failed_with_the_reason(self) -> None:
        """VipFailed makes the Service failed with reason and message; a later VIP clears it."""
        model = ReadModel()
        model.apply(ev(snapshot()))
        model.apply(
            ev(
                VipFailed(
                    cluster="east",
                    namespace="default",
                    name="web",
                    uid="u1",
                    reason="AllocationFailed",
                    message="pool 'x' is full",
                ),
                5,
            )
        )
        row = queries.row(model, WEB)
        assert row is not None and row.state == "failed"
        assert row.error == "AllocationFailed: pool 'x' is full"
        model.apply(ev(assigned(), 10))
        row = queries.row(model, WEB)
        assert row is not None and row.state == "assigned" and row.error is None

    def test_an_appliance_failure_shows_failed_until_programmed(self) -> None:
        """LbFailed makes it failed; the next LbProgrammed recovers it."""
        model = ReadModel()
        model.apply(ev(snapshot()))
        model.apply(ev(assigned(), 1))
        failure = LbFailed(
            cluster="east",
            namespace="default",
            name="web",
            uid="u1",
            appliance="sim-1",
            reason="ApplianceFailed",
            message="503",
        )
        model.apply(ev(failure, 2))
        row = queries.row(model, WEB)
        assert row is not None and row.state == "failed" and "503" in (row.error or "")
        model.apply(ev(programmed(), 3))
        assert queries.row(model, WEB).state == "programmed"  # type: ignore[union-attr]
        assert queries.appliances(model)[0].failing == 0

    def test_deletion_removes_the_row_and_late_messages_do_not_revive_it(self) -> None:
        """deleting → released removes the Service; its later status clear is ignored."""
        model = ReadModel()
        converge(model)
        model.apply(ev(snapshot(deleting=True), 100))
        assert queries.row(model, WEB).state == "deleting"  # type: ignore[union-attr]
        releasing = VipReleasing(
            cluster="east",
            namespace="default",
            name="web",
            uid="u1",
            vips=("198.51.100.1",),
            appliance_group="dc1",
        )
        model.apply(ev(releasing, 101))
        removed = LbRemoved(
            cluster="east", namespace="default", name="web", uid="u1", appliance="sim-1"
        )
        model.apply(ev(removed, 102))
        released = VipReleased(cluster="east", namespace="default", name="web", uid="u1")
        assert model.apply(ev(released, 103)) == [Change("removed", "east/default/web")]
        assert model.apply(ev(status(vips=()), 104)) == []
        gone = ServiceGone(cluster="east", namespace="default", name="web", uid="u1")
        assert model.apply(ev(gone, 105)) == []
        assert len(model) == 0

    def test_a_service_recreated_under_its_name_starts_over(self) -> None:
        """A snapshot with a new uid replaces the old Service; old-uid messages are ignored."""
        model = ReadModel()
        converge(model)
        model.apply(ev(snapshot(uid="u2"), 200))
        model.apply(ev(status(uid="u1", vips=()), 201))
        detail = queries.detail(model, WEB)
        assert detail is not None
        assert detail.uid == "u2" and detail.row.state == "pending" and detail.row.vips == ()
        assert len(detail.timeline) == 1

    def test_a_rebuild_from_last_messages_reaches_the_same_state(self) -> None:
        """Only the last message per subject, in stream order, gives the same row."""
        live = ReadModel()
        converge(live)
        rebuilt = ReadModel()
        for message, at in [
            (snapshot(), 0),
            (assigned(), 10),
            (programmed(), 25),
            (status(), 40),
            (applied("n1", 1, "198.51.100.1"), 41),
            (applied("n2", 1, "198.51.100.1"), 42),
            (applied("n3", 1, "198.51.100.1"), 43),
        ]:
            rebuilt.apply(ev(message, at))
        key = WEB
        a, b = queries.row(live, key), queries.row(rebuilt, key)
        assert a is not None and b is not None
        assert (a.state, a.vips, a.nodes_applied, a.convergence_ms) == (
            b.state,
            b.vips,
            b.nodes_applied,
            b.convergence_ms,
        )

    def test_a_redelivered_message_changes_nothing(self) -> None:
        """The same stream sequence again (consumer re-created) adds no event, no sample."""
        model = ReadModel()
        model.apply(ev(snapshot(), seq=1))
        model.apply(ev(status(), 40, seq=2))
        assert model.apply(ev(snapshot(), seq=1)) == []
        assert model.apply(ev(status(), 40, seq=2)) == []
        detail = queries.detail(model, WEB)
        assert detail is not None and len(detail.timeline) == 2
        assert queries.convergence(model, T0, 60).count == 1

    def test_a_message_before_any_snapshot_still_makes_a_row(self) -> None:
        """A Service first seen through ipam's message is shown, not dropped."""
        model = ReadModel()
        assert model.apply(ev(assigned())) == [Change("added", "east/default/web")]
        assert queries.row(model, WEB).state == "assigned"  # type: ignore[union-attr]


class TestNodes:
    def test_node_applies_land_on_the_owning_services_timeline(self) -> None:
        """A node taking up a VIP is an event of the Service that owns it."""
        model = ReadModel()
        converge(model)
        detail = queries.detail(model, WEB)
        assert detail is not None
        node_events = [e for e in detail.timeline if e.hop == "nodeagent"]
        assert {e.node for e in node_events} == set(NODES)
        assert all("serves 198.51.100.1" in e.summary for e in node_events)

    def test_an_older_generation_does_not_overwrite_a_newer_apply(self) -> None:
        """Generations only grow: a late, older NodeApplied is ignored."""
        model = ReadModel()
        converge(model)
        assert model.apply(ev(applied("n1", 0), 50)) == []
        assert queries.row(model, WEB).nodes_applied == 3  # type: ignore[union-attr]

    def test_a_node_that_goes_away_no_longer_counts(self) -> None:
        """NodeGone drops the node from the applied counts and the cluster's nodes."""
        model = ReadModel()
        converge(model)
        model.apply(ev(NodeGone(cluster="east", node="n3"), 60))
        row = queries.row(model, WEB)
        assert row is not None and (row.nodes_applied, row.nodes_total) == (2, 2)
        cluster = queries.overview(model, T0, 900).clusters[0]
        assert (cluster.nodes, cluster.agents) == (2, 2)


class TestTimelineAndWaterfall:
    def test_the_timeline_is_bounded_and_newest_first(self) -> None:
        """Only the last N events are kept; the detail lists the newest first."""
        model = ReadModel(timeline_events=5)
        converge(model)
        detail = queries.detail(model, WEB)
        assert detail is not None
        assert len(detail.timeline) == 5
        times = [e.time for e in detail.timeline]
        assert times == sorted(times, reverse=True)
        assert detail.timeline[0].kind == "status-written"

    def test_the_waterfall_places_each_hop_by_time(self) -> None:
        """Bars run from the message that caused a hop to the one it published."""
        model = ReadModel()
        converge(model)
        detail = queries.detail(model, WEB)
        assert detail is not None and detail.waterfall is not None
        wf = detail.waterfall
        bars = {b.hop: (b.start_ms, b.end_ms) for b in wf.bars}
        assert bars["watcher"] == (0.0, 0.0)
        assert bars["ipam"] == pytest.approx((0.0, 10.0), abs=1e-3)
        assert bars["lbdriver"] == pytest.approx((10.0, 25.0), abs=1e-3)
        assert bars["nodeagent"] == pytest.approx((25.0, 32.0), abs=1e-3)
        assert bars["status"] == pytest.approx((25.0, 40.0), abs=1e-3)
        assert wf.complete and wf.total_ms == pytest.approx(40.0, abs=1e-3) and wf.trace_id == TRACE

    def test_the_waterfall_shows_only_the_last_change(self) -> None:
        """Events before the latest snapshot belong to an earlier change."""
        model = ReadModel()
        converge(model)
        model.apply(ev(snapshot(), 1000, trace="b" * 32))
        detail = queries.detail(model, WEB)
        assert detail is not None and detail.waterfall is not None
        assert [b.hop for b in detail.waterfall.bars] == ["watcher"]
        assert not detail.waterfall.complete and detail.waterfall.trace_id == "b" * 32

    def test_a_failed_hop_is_marked_on_the_waterfall(self) -> None:
        """A failure event makes its bar failed (the change stopped there)."""
        entries = [
            TimelineEntry(time=T0, hop="watcher", kind="service", summary="s"),
            TimelineEntry(time=T0 + 0.005, hop="ipam", kind="vip-failed", summary="full"),
        ]
        wf = waterfall(entries)
        assert wf is not None and not wf.complete
        assert [b.failed for b in wf.bars] == [False, True]

    def test_no_waterfall_without_a_snapshot(self) -> None:
        """A Service seen only through later hops has no change to draw."""
        model = ReadModel()
        model.apply(ev(assigned()))
        assert queries.detail(model, WEB).waterfall is None  # type: ignore[union-attr]


class TestQueries:
    @pytest.fixture
    def model(self) -> ReadModel:
        model = ReadModel()
        for cluster in ("east", "west"):
            for i in range(30):
                ns = "shop" if i % 3 == 0 else "default"
                uid = f"{cluster}-{i}"
                vip = f"198.51.100.{i + (100 if cluster == 'west' else 0)}"
                model.apply(ev(snapshot(f"svc-{i:02d}", uid=uid, cluster=cluster, namespace=ns)))
                if ns == "default":
                    model.apply(
                        ev(
                            VipAssigned(
                                cluster=cluster,
                                namespace=ns,
                                name=f"svc-{i:02d}",
                                uid=uid,
                                vips=(vip,),
                                pool="default",
                                appliance_group="dc1",
                                ports=PORTS,
                            ),
                            1,
                        )
                    )
        return model

    def test_pages_are_sorted_and_sized(self, model: ReadModel) -> None:
        """Rows come sorted by cluster, namespace, name, per_page at a time."""
        page = queries.page(model, Query(per_page=25))
        assert page.total == page.matched == 60 and page.pages == 3
        assert [r.key for r in page.rows][:2] == ["east/default/svc-01", "east/default/svc-02"]
        last = queries.page(model, Query(per_page=25, page=99))
        assert last.page == 3 and len(last.rows) == 10

    def test_filters_combine(self, model: ReadModel) -> None:
        """cluster, namespace and state filters narrow the rows together."""
        page = queries.page(model, Query(cluster="west", namespace="shop"))
        assert page.matched == 10
        assert all(r.cluster == "west" and r.namespace == "shop" for r in page.rows)
        page = queries.page(model, Query(cluster="east", state="assigned"))
        assert page.matched == 20 and {r.state for r in page.rows} == {"assigned"}

    def test_search_finds_a_service_by_vip(self, model: ReadModel) -> None:
        """The search box matches names and VIPs, case-insensitively."""
        page = queries.page(model, Query(q="198.51.100.107"))
        assert [r.key for r in page.rows] == ["west/default/svc-07"]
        assert queries.page(model, Query(q="SVC-1")).matched == 20

    def test_facets_count_states_within_the_other_filters(self, model: ReadModel) -> None:
        """State counts follow the cluster filter, so the state menu tells what it will show."""
        page = queries.page(model, Query(cluster="east", state="pending"))
        assert page.facets.states["pending"] == 10 and page.facets.states["assigned"] == 20
        assert page.facets.clusters == ("east", "west")
        assert page.facets.namespaces == ("default", "shop")

    def test_services_beyond_the_limit_are_counted_not_kept(self) -> None:
        """max_services bounds memory; the overview says how many were left out."""
        model = ReadModel(max_services=2)
        for i in range(3):
            model.apply(ev(snapshot(f"s{i}", uid=str(i))))
        assert len(model) == 2 and model.dropped == 1
        assert queries.overview(model, T0, 60).dropped == 1


class TestOverview:
    def test_convergence_percentiles_cover_only_the_window(self) -> None:
        """p50/p99 come from changes inside the window; older ones are left out."""
        model = ReadModel()
        for i, ms in enumerate([10.0, 20.0, 30.0, 40.0]):
            name = f"s{i}"
            model.apply(ev(snapshot(name, uid=name), i * 60_000))
            model.apply(ev(status(name, uid=name), i * 60_000 + ms))
        now = T0 + 3 * 60 + 1
        stats = queries.convergence(model, now, window_s=150)  # the last three
        assert stats.count == 3
        assert stats.p50_ms == pytest.approx(30.0, abs=1e-3)
        assert stats.p99_ms == pytest.approx(40.0, abs=1e-3)
        assert queries.convergence(model, now + 3600, window_s=60).p50_ms is None

    def test_overview_counts_clusters_pools_and_appliances(self) -> None:
        """The overview sums states per cluster, VIPs per pool, servers per appliance."""
        model = ReadModel()
        converge(model)
        converge(model, "api", "198.51.100.2")
        overview = queries.overview(model, T0 + 1, 900)
        assert overview.services == 2 and overview.states["ready"] == 2
        (cluster,) = overview.clusters
        assert (cluster.name, cluster.nodes, cluster.nodes_ready, cluster.agents) == (
            "east",
            3,
            3,
            3,
        )
        (pool,) = overview.pools
        assert (pool.name, pool.appliance_group, pool.services, pool.vips) == (
            "default",
            "dc1",
            2,
            2,
        )
        (appliance,) = overview.appliances
        assert (appliance.name, appliance.services, appliance.virtual_servers) == ("sim-1", 2, 4)
        assert overview.convergence.count == 2
