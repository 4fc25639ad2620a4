"""The node agent on a real nats-server: programmed VIPs in, dry-run applies and reports out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

import pytest
from nats.aio.subscription import Subscription
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from support.recorders import BusRecorder
from vipwire.contracts import (
    STREAM,
    Endpoint,
    EndpointPort,
    EndpointsSnapshot,
    LbFailed,
    LbProgrammed,
    LbRemoved,
    Member,
    NodeApplied,
    NodeEndpoints,
    PoolsServed,
    ServicePort,
    decode,
    node_subject,
)
from vipwire.lbdriver.io.feed import FeedPublisher
from vipwire.nodeagent import (
    AddAddress,
    AppliedState,
    DryRunApplier,
    InterfaceAddress,
    NodeagentService,
    NodeagentSettings,
    RemoveAddress,
    ReplaceNftTable,
)
from vipwire.runtime import Runtime
from vipwire.testing import eventually

RuntimeFactory = Callable[[str], Awaitable[Runtime]]
Feed = Literal["lb", "table"]
CLUSTER = "east"
NODE = "node-a.dc1"
POOLS = ("192.0.2.0/24", "2001:db8::/64")


def programmed(
    name: str, *vips: str, cluster: str = CLUSTER, policy: str = "Cluster"
) -> LbProgrammed:
    return LbProgrammed(
        cluster=cluster,
        namespace="default",
        name=name,
        uid=f"uid-{name}",
        appliance="sim-1",
        vips=vips,
        ports=(ServicePort(port=80, name="http"),),
        members=(Member(node=NODE, address="198.51.100.1"),),
        external_traffic_policy=policy,  # type: ignore[arg-type]
    )


def removed(name: str) -> LbRemoved:
    return LbRemoved(
        cluster=CLUSTER, namespace="default", name=name, uid=f"uid-{name}", appliance="sim-1"
    )


def endpoints(name: str, node: str, *addresses: str) -> EndpointsSnapshot:
    pods = tuple(
        Endpoint(addresses=(a,), ports=(EndpointPort(port=8080, name="http"),)) for a in addresses
    )
    return EndpointsSnapshot(
        cluster=CLUSTER,
        namespace="default",
        name=name,
        nodes=(NodeEndpoints(node=node, endpoints=pods),),
    )


def lo(address: str, prefix: int = 32) -> AddAddress:
    return AddAddress(interface="lo", address=address, prefix=prefix)


class Reports(BusRecorder):
    """Every NodeApplied on the bus, seen through a plain core-NATS subscription."""

    async def attach(self, runtime: Runtime, subjects: str = "vipwire.*.applied.>") -> Subscription:
        return await super().attach(runtime, subjects)

    @property
    def seen(self) -> list[NodeApplied]:
        return self.of(NodeApplied)

    async def wait_for(
        self, node: str = NODE, *, vips: tuple[str, ...] | None = None, after: int = 0
    ) -> NodeApplied:
        """The first report of ``node`` (with exactly ``vips``) past the first ``after`` seen."""

        def match() -> NodeApplied | None:
            for m in self.seen[after:]:
                if m.node == node and (vips is None or m.vips == vips):
                    return m
            return None

        await eventually(
            lambda: match() is not None,
            what=f"a report from {node} with {vips} past the first {after}",
        )
        found = match()
        assert found is not None
        return found


Agents = Callable[..., Awaitable[NodeagentService]]


#: The feed publisher of the running test (``table``), for fences.
publishers: list[FeedPublisher] = []


async def fed(runtime: Runtime) -> None:
    """Return once the feed holds every lb message on the bus (no-op without a feed)."""
    if publishers:
        publishers[0].serve(CLUSTER)  # as the lbdriver does for every cluster with Nodes
        last = await runtime.bus.last_message("vipwire.*.lb.>")
        await asyncio.wait_for(publishers[0].published(last.seq if last else 0), 5)


#: Least seconds between two reports of a test's agent: the default (0.5 s) made every
#: wait for a second report half a second long. Still above 0, so reports are paced as
#: in production; the test of the pacing sets its own interval.
REPORT_INTERVAL_S = 0.02

#: The node feed (``table``, the default) and the old contract (``lb``: an agent of
#: before the feed, which reads ``LbProgrammed`` from the stream during an upgrade).
#: The whole suite runs over the feed; what the old contract must keep doing during the
#: upgrade window (apply, remove, ignore other clusters, check pools, restart without
#: churn, replay a backlog, keep VIPs past unreadable messages) runs over both.
BOTH_FEEDS = pytest.mark.parametrize("feed", ["table", "lb"], indirect=True)


@pytest.fixture
async def feed(request: pytest.FixtureRequest, make_runtime: RuntimeFactory) -> AsyncIterator[str]:
    """The agents' ``feed`` setting: ``table`` (with the lbdriver's feed publisher running)
    unless a test is parametrised with ``lb`` (see BOTH_FEEDS)."""
    chosen: str = getattr(request, "param", "table")
    if chosen == "lb":
        yield "lb"
        return
    publisher = FeedPublisher(await make_runtime("lbdriver"), window_ms=5, is_leader=lambda: True)
    await publisher.start()
    publishers.append(publisher)
    try:
        yield "table"
    finally:
        publishers.remove(publisher)
        await publisher.stop()


@pytest.fixture
async def agents(monkeypatch: pytest.MonkeyPatch, feed: Feed) -> AsyncIterator[Agents]:
    """Start node agents (ready when returned); all are stopped at teardown."""
    monkeypatch.delenv("VIPWIRE_NODE", raising=False)
    started: list[NodeagentService] = []

    async def start(
        runtime: Runtime, applier: DryRunApplier, node: str = NODE, **overrides: object
    ) -> NodeagentService:
        options: dict[str, object] = {
            "coalesce_ms": 5,
            "resync_interval_s": 0.0,
            "report_interval_s": REPORT_INTERVAL_S,
            "feed": feed,
            **overrides,
        }
        # What ipam would publish: the pools every VIP of these tests is in.
        await runtime.bus.publish(PoolsServed(cluster=CLUSTER, ranges=POOLS))
        await fed(runtime)  # what is on the bus is in the table the agent reads
        settings = NodeagentSettings(cluster=CLUSTER, node=node, **options)  # type: ignore[arg-type]
        service = NodeagentService(settings, runtime, applier)
        started.append(service)
        runtime.set_readiness(service.readiness)
        await service.start()
        await service.wait_ready(5)
        return service

    yield start
    for service in reversed(started):
        await service.stop()


class TestApply:
    @BOTH_FEEDS
    async def test_programmed_vips_are_applied_and_reported(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """An LbProgrammed puts its VIP on lo (recorded) and a NodeApplied reports it."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        applier = DryRunApplier()
        await agents(rt, applier)
        first = await reports.wait_for(vips=())
        await rt.bus.publish(programmed("web", "192.0.2.10", "2001:db8::10"))
        report = await reports.wait_for(vips=("192.0.2.10", "2001:db8::10"))
        assert (report.cluster, report.mode, report.dry_run) == (CLUSTER, "kube-proxy", True)
        assert report.generation == first.generation + 1
        assert applier.history[-1] == (lo("192.0.2.10"), lo("2001:db8::10", 128))

    async def test_the_report_continues_the_trace_of_the_programmed_message(
        self, make_runtime: RuntimeFactory, agents: Agents, span_exporter: InMemorySpanExporter
    ) -> None:
        """The apply and the NodeApplied it leads to join the LbProgrammed's trace."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        await agents(rt, DryRunApplier())
        await rt.bus.publish(programmed("web", "192.0.2.10"))
        await reports.wait_for(vips=("192.0.2.10",))
        (cause,) = [s for s in span_exporter.get_finished_spans() if s.name == "publish lb"]
        assert cause.context is not None
        trace_id = cause.context.trace_id

        def in_trace() -> set[str]:
            return {
                s.name
                for s in span_exporter.get_finished_spans()
                if s.context and s.context.trace_id == trace_id
            }

        # The report can reach us before the agent's publish span has ended (at its ack).
        await eventually(
            lambda: {"nodeagent apply", "nodeagent report", "publish applied"} <= in_trace(),
            what="the apply, the report and its publish in the LbProgrammed's trace",
        )

    @BOTH_FEEDS
    async def test_removed_service_takes_its_vip_away_in_a_new_generation(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """LbRemoved removes the VIP (only that one) and bumps the generation."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        applier = DryRunApplier()
        await agents(rt, applier)
        await rt.bus.publish(programmed("web", "192.0.2.10"))
        await rt.bus.publish(programmed("api", "192.0.2.11"))
        both = await reports.wait_for(vips=("192.0.2.10", "192.0.2.11"))
        await rt.bus.publish(removed("web"))
        after = await reports.wait_for(vips=("192.0.2.11",))
        assert after.generation > both.generation
        assert applier.history[-1] == (
            RemoveAddress(interface="lo", address="192.0.2.10", prefix=32),
        )

    async def test_a_failed_programming_keeps_the_vip(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """LbFailed does not withdraw a VIP the appliance may still serve."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        applier = DryRunApplier()
        agent = await agents(rt, applier)
        await rt.bus.publish(programmed("web", "192.0.2.10"))
        await reports.wait_for(vips=("192.0.2.10",))
        failed = LbFailed(
            cluster=CLUSTER,
            namespace="default",
            name="web",
            uid="uid-web",
            appliance="sim-1",
            reason="ApplianceFailed",
            message="connection refused",
            removing=True,
        )
        await rt.bus.publish(failed)
        await rt.bus.publish(programmed("api", "192.0.2.11"))
        await reports.wait_for(vips=("192.0.2.10", "192.0.2.11"))
        assert not any(isinstance(a, RemoveAddress) for batch in applier.history for a in batch)
        assert agent.readiness() is None

    async def test_foreign_addresses_on_lo_are_kept(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """The node's own loopback addresses are never touched, even with no VIP at all."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        mine = InterfaceAddress(interface="lo", address="127.0.0.1", prefix=8)
        applier = DryRunApplier(AppliedState(addresses=(mine,)))
        await agents(rt, applier)
        await rt.bus.publish(programmed("web", "192.0.2.10"))
        await reports.wait_for(vips=("192.0.2.10",))
        await rt.bus.publish(removed("web"))
        await reports.wait_for(vips=(), after=1)
        assert applier.state.addresses == (mine,)

    async def test_a_burst_is_applied_in_fewer_writes_than_messages(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """Changes within the coalescing window share one apply; the last report has them all."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        applier = DryRunApplier()
        await agents(rt, applier, coalesce_ms=200)
        writes = applier.writes
        vips = tuple(sorted(f"192.0.2.{i}" for i in range(10, 20)))
        for i, vip in enumerate(vips):
            await rt.bus.publish(programmed(f"svc-{i}", vip))
        await reports.wait_for(vips=vips)
        assert applier.writes - writes < len(vips)

    async def test_a_burst_gets_fewer_reports_than_changes_and_the_last_has_them_all(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """Reports go out at most once per report_interval_s; the trailing one has the burst."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        await agents(rt, DryRunApplier(), coalesce_ms=0, report_interval_s=1.0)
        await rt.bus.publish(programmed("svc-0", "192.0.2.10"))
        await reports.wait_for(vips=("192.0.2.10",))
        seen = len(reports.seen)
        vips = tuple(f"192.0.2.{i}" for i in range(10, 16))
        for i, vip in enumerate(vips[1:], start=1):
            await rt.bus.publish(programmed(f"svc-{i}", vip))
        await reports.wait_for(vips=vips, after=seen)
        assert len(reports.seen) - seen < len(vips) - 1
        assert reports.seen[-1].vips == vips


class TestClusters:
    async def test_two_agents_for_two_nodes_both_report(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """Every node's agent applies the cluster's VIPs and reports under its own node name."""
        rt_a, rt_b = await make_runtime("nodeagent-a"), await make_runtime("nodeagent-b")
        reports = Reports()
        await reports.attach(rt_a)
        applier_a, applier_b = DryRunApplier(), DryRunApplier()
        await agents(rt_a, applier_a, node=NODE)
        await agents(rt_b, applier_b, node="node-b.dc1")
        await rt_a.bus.publish(programmed("web", "192.0.2.10"))
        await reports.wait_for(NODE, vips=("192.0.2.10",))
        await reports.wait_for("node-b.dc1", vips=("192.0.2.10",))
        assert lo("192.0.2.10") in applier_a.history[-1]
        assert lo("192.0.2.10") in applier_b.history[-1]

    async def test_every_nodes_report_of_one_change_is_kept_by_the_stream(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """Reports caused by the same LbProgrammed carry distinct message ids, so JetStream
        de-duplication keeps each node's (the watcher's status gate reads them from there)."""
        rt_a, rt_b = await make_runtime("nodeagent-a"), await make_runtime("nodeagent-b")
        await agents(rt_a, DryRunApplier(), node=NODE)
        await agents(rt_b, DryRunApplier(), node="node-b.dc1")
        await rt_a.bus.publish(programmed("web", "192.0.2.10"))

        async def stored(node: str) -> tuple[str, ...]:
            raw = await rt_a.bus.js.get_last_msg(STREAM, node_subject("applied", CLUSTER, node))
            message = decode(raw.subject or "", raw.data or b"")
            assert isinstance(message, NodeApplied)
            return message.vips

        async def both_stored() -> bool:
            return (await stored(NODE), await stored("node-b.dc1")) == (("192.0.2.10",),) * 2

        await eventually(both_stored, what="both nodes' reports of the change in the stream")

    @BOTH_FEEDS
    async def test_messages_of_another_cluster_are_ignored(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """A Service programmed in another cluster never reaches this cluster's nodes."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        applier = DryRunApplier()
        await agents(rt, applier)
        await rt.bus.publish(programmed("web", "192.0.2.99", cluster="west"))
        await rt.bus.publish(programmed("web", "192.0.2.10"))
        await reports.wait_for(vips=("192.0.2.10",))
        assert all("192.0.2.99" not in m.vips for m in reports.seen)
        assert all(
            getattr(a, "address", None) != "192.0.2.99" for batch in applier.history for a in batch
        )


class TestUpgradeWindow:
    async def test_an_old_contract_agent_keeps_working_beside_an_upgraded_one(
        self, make_runtime: RuntimeFactory, agents: Agents, feed: Feed
    ) -> None:
        """During an upgrade (the lbdriver publishes the feed): an agent still on the old
        contract (feed: lb) and an upgraded one (feed: table) on two nodes both add a new
        VIP, take a removed one off, and report the same VIPs."""
        assert feed == "table"  # the lbdriver's feed publisher runs
        rt_old, rt_new = await make_runtime("nodeagent-old"), await make_runtime("nodeagent-new")
        reports = Reports()
        await reports.attach(rt_old)
        old, new = DryRunApplier(), DryRunApplier()
        await agents(rt_old, old, node=NODE, feed="lb")
        await agents(rt_new, new, node="node-b.dc1")
        await rt_old.bus.publish(programmed("web", "192.0.2.10"))
        await rt_old.bus.publish(programmed("api", "192.0.2.11"))
        for node in (NODE, "node-b.dc1"):
            await reports.wait_for(node, vips=("192.0.2.10", "192.0.2.11"))
        seen = len(reports.seen)
        await rt_old.bus.publish(removed("web"))
        for node in (NODE, "node-b.dc1"):
            await reports.wait_for(node, vips=("192.0.2.11",), after=seen)
        assert on_lo(old) == on_lo(new) == ["192.0.2.11"]


class TestPools:
    @BOTH_FEEDS
    async def test_without_known_pools_nothing_is_added_nor_taken_off_until_they_come(
        self, make_runtime: RuntimeFactory, feed: Feed, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A restart before ipam has published pools (none on the bus, no vip_ranges):
        the VIP already on lo stays, a new one is not added; once the pools come, the one
        inside goes on lo and the one outside is refused, counted and reported."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        await rt.bus.publish(programmed("web", "192.0.2.10"))
        await rt.bus.publish(programmed("evil", "203.0.113.66"))
        served = InterfaceAddress(interface="lo", address="192.0.2.10", prefix=32)
        applier = DryRunApplier(AppliedState(addresses=(served,)))
        monkeypatch.delenv("VIPWIRE_NODE", raising=False)
        await fed(rt)
        service = NodeagentService(
            NodeagentSettings(
                cluster=CLUSTER,
                node=NODE,
                coalesce_ms=5,
                resync_interval_s=0.0,
                report_interval_s=REPORT_INTERVAL_S,
                feed=feed,
            ),
            rt,
            applier,
        )
        await service.start()
        try:
            await service.wait_ready(5)
            assert on_lo(applier) == ["192.0.2.10"]
            await rt.bus.publish(PoolsServed(cluster=CLUSTER, ranges=POOLS))
            report = await reports.wait_for(vips=("192.0.2.10",))
            assert report.refused == ("default/evil 203.0.113.66",)
            assert on_lo(applier) == ["192.0.2.10"]
            assert "vipwire_nodeagent_rejected_vips_total 1" in rt.metrics.expose()
        finally:
            await service.stop()


class TestRestart:
    @BOTH_FEEDS
    async def test_restart_rebuilds_from_the_bus_without_churn(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """A new agent on the same node changes nothing, yet reports its VIPs again."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        applier = DryRunApplier()
        first = await agents(rt, applier)
        await rt.bus.publish(programmed("web", "192.0.2.10"))
        await rt.bus.publish(programmed("api", "192.0.2.11"))
        before = await reports.wait_for(vips=("192.0.2.10", "192.0.2.11"))
        await first.stop()
        writes, seen = applier.writes, len(reports.seen)
        second = await agents(rt, applier)
        again = await reports.wait_for(vips=before.vips, after=seen)
        assert applier.writes == writes
        assert again.generation == before.generation == second.generation

    @BOTH_FEEDS
    async def test_a_fresh_start_applies_the_whole_backlog_at_once(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """What was programmed before the agent started is applied in one write after catch-up."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        for i in range(5):
            await rt.bus.publish(programmed(f"svc-{i}", f"192.0.2.{10 + i}"))
        await rt.bus.publish(removed("svc-4"))
        applier = DryRunApplier()
        await agents(rt, applier)
        report = await reports.wait_for()
        assert report.vips == tuple(f"192.0.2.{10 + i}" for i in range(4))
        assert applier.writes == 1
        assert report.generation == 1

    async def test_generation_continues_after_the_node_is_wiped(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """A node that lost its state re-applies under a higher generation than it last reported."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        first = await agents(rt, DryRunApplier())
        await rt.bus.publish(programmed("web", "192.0.2.10"))
        before = await reports.wait_for(vips=("192.0.2.10",))
        await first.stop()
        seen = len(reports.seen)
        await agents(rt, DryRunApplier())
        again = await reports.wait_for(vips=("192.0.2.10",), after=seen)
        assert again.generation == before.generation + 1


class TestStandalone:
    async def test_endpoints_become_dnat_rules_and_follow_changes(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """Standalone: the table steers VIP:port to ready endpoints and is replaced on change."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        applier = DryRunApplier()
        agent = await agents(rt, applier, mode="standalone")
        assert applier.nft_script is not None
        await rt.bus.publish(endpoints("web", NODE, "10.0.0.5"))
        await rt.bus.publish(programmed("web", "192.0.2.10", policy="Local"))
        report = await reports.wait_for(vips=("192.0.2.10",))
        assert report.mode == "standalone"
        await eventually(
            lambda: "dnat ip to 10.0.0.5:8080" in (applier.nft_script or ""),
            what="the DNAT to 10.0.0.5 in the nft script",
        )
        generation = agent.generation
        await rt.bus.publish(endpoints("web", NODE, "10.0.0.6"))
        await eventually(
            lambda: "dnat ip to 10.0.0.6:8080" in (applier.nft_script or ""),
            what="the DNAT to 10.0.0.6 in the nft script",
        )
        assert agent.generation == generation + 1
        assert isinstance(applier.history[-1][0], ReplaceNftTable)
        assert len(applier.history[-1]) == 1


class TestHealth:
    async def test_readiness_waits_for_the_first_apply_which_is_retried(
        self, make_runtime: RuntimeFactory, feed: Feed
    ) -> None:
        """Not ready before start nor while the first apply fails; ready once it succeeded."""
        rt = await make_runtime("nodeagent")
        applier = DryRunApplier(failures=2)
        await fed(rt)
        service = NodeagentService(
            NodeagentSettings(cluster=CLUSTER, node=NODE, resync_interval_s=0.0, feed=feed),
            rt,
            applier,
        )
        assert service.readiness() == "not started"
        await service.start()
        try:
            await eventually(
                lambda: "first apply failed" in (service.readiness() or ""),
                what="readiness names the failed first apply",
            )
            await service.wait_ready(5)
            assert service.readiness() is None
            assert applier.failures == 0 and applier.writes == 1
        finally:
            await service.stop()

    async def test_a_failed_apply_in_a_handler_is_retried(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """An apply that fails is retried by the agent (nothing is redelivered) and succeeds."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        applier = DryRunApplier()
        await agents(rt, applier)
        applier.failures = 1
        await rt.bus.publish(programmed("web", "192.0.2.10"))
        await reports.wait_for(vips=("192.0.2.10",))
        assert applier.failures == 0

    async def test_resync_repairs_drift_without_a_message(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """A VIP removed behind the agent's back is put back by the periodic resync."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        applier = DryRunApplier()
        await agents(rt, applier, resync_interval_s=0.05)
        await rt.bus.publish(programmed("web", "192.0.2.10"))
        await reports.wait_for(vips=("192.0.2.10",))
        writes = applier.writes
        applier.tamper(AppliedState(sysctls=applier.state.sysctls))
        await eventually(lambda: applier.writes > writes, what="the applier wrote again")
        assert applier.history[-1] == (lo("192.0.2.10"),)
        assert applier.state.addresses[0].owned

    async def test_metrics_count_applies_actions_and_vips(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """/metrics shows applies, actions by kind and the current VIP count."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        await agents(rt, DryRunApplier())
        await rt.bus.publish(programmed("web", "192.0.2.10", "192.0.2.11"))
        await reports.wait_for(vips=("192.0.2.10", "192.0.2.11"))
        text = rt.metrics.expose()
        assert 'vipwire_nodeagent_applies_total{result="applied"} 2' in text
        assert 'vipwire_nodeagent_actions_total{action="add-address"} 2' in text
        assert 'vipwire_nodeagent_actions_total{action="set-sysctl"} 2' in text
        assert "vipwire_nodeagent_vips 2" in text
        assert "vipwire_nodeagent_generation 2" in text


def on_lo(applier: DryRunApplier) -> list[str]:
    return sorted(a.address for a in applier.state.addresses if a.interface == "lo")


# Unreadable lb messages reach only agents that read the stream (feed: lb); over the
# feed, the lbdriver's publisher reads them (its last valid message stays in the table).
@pytest.mark.parametrize("feed", ["lb"], indirect=True)
class TestUnreadable:
    """A message that cannot be read means "unknown", never "absent"."""

    WEB = "vipwire.east.lb.default.web"

    async def test_garbage_last_on_an_lb_subject_keeps_the_vip_after_a_restart(
        self, make_runtime: RuntimeFactory, agents: Agents, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Garbage after a Service's LbProgrammed: a restarted agent keeps its VIP (the last
        valid message stays in force), writes nothing, and logs and counts the subject."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        applier = DryRunApplier()
        first = await agents(rt, applier)
        await rt.bus.publish(programmed("web", "192.0.2.10"))
        await rt.bus.publish(programmed("api", "192.0.2.11"))
        before = await reports.wait_for(vips=("192.0.2.10", "192.0.2.11"))
        await first.stop()
        bad = await rt.bus.js.publish(self.WEB, b"\x00not json")
        writes, seen = applier.writes, len(reports.seen)

        await agents(rt, applier)
        again = await reports.wait_for(after=seen)
        assert again.vips == before.vips
        assert applier.writes == writes
        assert on_lo(applier) == ["192.0.2.10", "192.0.2.11"]
        assert 'vipwire_bus_unreadable_total{family="lb"} 1' in rt.metrics.expose()
        logged = [r.getMessage() for r in caplog.records if self.WEB in r.getMessage()]
        assert any(f"seq {bad.seq}" in line for line in logged), logged

    async def test_garbage_with_no_valid_message_before_it_takes_no_vip_away(
        self, make_runtime: RuntimeFactory, agents: Agents
    ) -> None:
        """Garbage as the only message of a Service's subject (its history expired): the
        restarted agent keeps every VIP until a valid message says what the Service needs."""
        rt = await make_runtime("nodeagent")
        reports = Reports()
        await reports.attach(rt)
        applier = DryRunApplier()
        first = await agents(rt, applier)
        await rt.bus.publish(programmed("web", "192.0.2.10"))
        await rt.bus.publish(programmed("api", "192.0.2.11"))
        await reports.wait_for(vips=("192.0.2.10", "192.0.2.11"))
        await first.stop()
        await rt.bus.js.purge_stream(STREAM, subject=self.WEB)
        await rt.bus.js.publish(self.WEB, b"{}")
        seen = len(reports.seen)

        await agents(rt, applier)
        await reports.wait_for(after=seen)
        assert on_lo(applier) == ["192.0.2.10", "192.0.2.11"]

        await rt.bus.publish(removed("web"))
        await eventually(
            lambda: on_lo(applier) == ["192.0.2.11"], what="web's VIP gone once it is known"
        )
