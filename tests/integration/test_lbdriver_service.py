"""The lbdriver service against a real nats-server and the simulated appliance."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import msgspec
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from support.lbdriver import LbHarness as Harness
from vipwire.bus import BusError
from vipwire.contracts import (
    LBDRIVER_LEASE_BUCKET,
    STREAM,
    Endpoint,
    EndpointsSnapshot,
    LbdriverLease,
    LbFailed,
    LbProgrammed,
    LbRemoved,
    Member,
    Message,
    NodeEndpoints,
    NodeGone,
    NodeSnapshot,
    ServicePort,
    VipAssigned,
    VipReleased,
    VipReleasing,
    encode,
    node_subject,
    service_subject,
)
from vipwire.lbdriver import (
    ApplianceRejected,
    ApplianceSettings,
    LbdriverSettings,
    Monitor,
    SimAppliance,
    VirtualServer,
)
from vipwire.lbdriver.core.desired import owner_of
from vipwire.lbdriver.io import last_reports as _reports
from vipwire.runtime import Runtime
from vipwire.testing import eventually

RuntimeFactory = Callable[[str], Awaitable[Runtime]]

CLUSTER = "prod"


def node(name: str, *addresses: str, eligible: bool = True, cluster: str = CLUSTER) -> NodeSnapshot:
    return NodeSnapshot(cluster=cluster, node=name, addresses=addresses, eligible=eligible)


def assigned(
    name: str = "web",
    *,
    vips: tuple[str, ...] = ("192.0.2.10",),
    ports: tuple[int, ...] = (80,),
    policy: Literal["Cluster", "Local"] = "Cluster",
    group: str = "default",
    cluster: str = CLUSTER,
) -> VipAssigned:
    return VipAssigned(
        cluster=cluster,
        namespace="shop",
        name=name,
        uid=f"uid-{name}",
        vips=vips,
        pool="default",
        appliance_group=group,
        ports=tuple(ServicePort(port=p) for p in ports),
        external_traffic_policy=policy,
        health_check_node_port=32000 if policy == "Local" else None,
    )


def releasing(name: str = "web", vips: tuple[str, ...] = ("192.0.2.10",)) -> VipReleasing:
    return VipReleasing(
        cluster=CLUSTER,
        namespace="shop",
        name=name,
        uid=f"uid-{name}",
        vips=vips,
        appliance_group="default",
    )


def ready_on(*nodes: str, name: str = "web") -> EndpointsSnapshot:
    return EndpointsSnapshot(
        cluster=CLUSTER,
        namespace="shop",
        name=name,
        nodes=tuple(
            NodeEndpoints(node=n, endpoints=(Endpoint(addresses=(f"10.244.{i}.7",)),))
            for i, n in enumerate(nodes)
        ),
    )


def member_nodes(message: LbProgrammed) -> list[str]:
    return sorted({m.node for m in message.members})


@pytest.fixture
async def h(make_runtime: RuntimeFactory) -> AsyncIterator[Harness]:
    harness = Harness(
        make_runtime,
        await make_runtime("test"),
        defaults={
            "appliances": (ApplianceSettings(name="sim-a"),),
            "coalesce_window_ms": 1.0,
            "retry_initial_s": 0.05,
            "retry_max_s": 0.2,
            "unhealthy_cooldown_s": 0.0,
        },
    )
    await harness.observe()
    yield harness
    await harness.close()


FLEET = (
    node("n1", "198.51.100.1", "2001:db8::1"),
    node("n2", "198.51.100.2"),
    node("n3", "198.51.100.3", eligible=False),
)


async def test_assignment_programs_the_appliance_and_reports_members(h: Harness) -> None:
    """A VipAssigned becomes one DSR virtual server per port, members on the same port."""
    await h.start()
    await h.publish(*FLEET, assigned(ports=(80, 443)))
    programmed = await h.expect(LbProgrammed)
    assert programmed.appliance == "sim-a"
    assert programmed.vips == ("192.0.2.10",)
    assert [p.port for p in programmed.ports] == [80, 443]
    assert programmed.members == (
        Member(node="n1", address="198.51.100.1"),
        Member(node="n2", address="198.51.100.2"),
    )
    servers = h.servers()
    assert sorted(servers) == [
        "vipwire-prod-shop-web-192.0.2.10-443-tcp",
        "vipwire-prod-shop-web-192.0.2.10-80-tcp",
    ]
    for server in servers.values():
        assert server.address == "192.0.2.10"
        assert server.members == programmed.members
        assert server.monitor == Monitor(port=10256)
        assert server.owner == "prod/shop/web"


async def test_a_report_the_bus_refuses_is_retried_with_a_warning_not_a_traceback(
    h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The appliance is programmed but the bus does not take the LbProgrammed (a NATS
    server gone): one WARNING naming the Service and the retry, no ERROR with a traceback,
    and the report goes out on the retry."""
    service = await h.start()
    bus = service.runtime.bus
    real_publish = bus.publish
    refused: list[str] = []

    async def publish(message: Message, **kwargs: Any) -> int:
        if isinstance(message, LbProgrammed) and not refused:
            refused.append(message.name)
            raise BusError("publish to vipwire.prod.lb.shop.web failed: NoStreamResponseError()")
        return await real_publish(message, **kwargs)

    monkeypatch.setattr(bus, "publish", publish)
    with caplog.at_level(logging.WARNING, logger="vipwire.lbdriver"):
        await h.publish(*FLEET, assigned())
        await h.expect(LbProgrammed)
    assert refused == ["web"]
    warned = [r for r in caplog.records if "prod/shop/web: the bus failed it" in r.getMessage()]
    assert len(warned) == 1 and "again in" in warned[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_dual_stack_members_follow_each_vips_family(h: Harness) -> None:
    """An IPv6 VIP gets the nodes' IPv6 addresses; v4-only nodes serve only the v4 VIP."""
    await h.start()
    await h.publish(*FLEET, assigned(vips=("192.0.2.10", "2001:db8:ff::10")))
    programmed = await h.expect(LbProgrammed)
    assert Member(node="n1", address="2001:db8::1") in programmed.members
    v6 = next(s for s in h.servers().values() if s.address == "2001:db8:ff::10")
    assert v6.members == (Member(node="n1", address="2001:db8::1"),)


async def test_local_policy_members_follow_ready_endpoints(h: Harness) -> None:
    """With Local, members move with the nodes that hold ready endpoints."""
    await h.start()
    await h.publish(*FLEET, ready_on("n1"), assigned(policy="Local"))
    first = await h.expect(LbProgrammed)
    assert member_nodes(first) == ["n1"]
    (server,) = h.servers().values()
    assert server.monitor == Monitor(port=32000)

    await h.publish(ready_on("n2"))
    moved = await h.expect(LbProgrammed)
    assert member_nodes(moved) == ["n2"]
    assert [m.node for m in next(iter(h.servers().values())).members] == ["n2"]

    # Endpoints that change without changing the node set cause no write and no report.
    writes = h.sim.writes
    await h.publish(ready_on("n2", "n3"))  # n3 is ineligible: members unchanged
    await h.publish(node("n4", "198.51.100.4"), ready_on("n2", "n4"))
    after = await h.expect(LbProgrammed)
    assert member_nodes(after) == ["n2", "n4"]
    assert h.sim.writes == writes + 1


async def test_node_changes_reprogram_every_service_of_the_cluster(h: Harness) -> None:
    """A node leaving (ineligible, then gone) reprograms all Services of its cluster only."""
    await h.start()
    other = node("x1", "203.0.113.1", cluster="dev")
    await h.publish(*FLEET, other, assigned("web"), assigned("api", vips=("192.0.2.11",)))
    await h.publish(assigned("dev-web", vips=("192.0.2.12",), cluster="dev"))
    await h.expect(LbProgrammed, "web")
    await h.expect(LbProgrammed, "api")
    await h.expect(LbProgrammed, "dev-web")

    await h.publish(node("n2", "198.51.100.2", eligible=False))
    assert member_nodes(await h.expect(LbProgrammed, "web")) == ["n1"]
    assert member_nodes(await h.expect(LbProgrammed, "api")) == ["n1"]

    await h.publish(NodeGone(cluster=CLUSTER, node="n1"))
    assert member_nodes(await h.expect(LbProgrammed, "web")) == []
    assert member_nodes(await h.expect(LbProgrammed, "api")) == []
    dev = h.sim.virtual_servers("dev")
    assert [m.node for s in dev.values() for m in s.members] == ["x1"]


async def test_releasing_removes_only_our_servers_and_reports_removed(h: Harness) -> None:
    """VipReleasing deletes the Service's servers, keeps foreign objects, publishes LbRemoved."""
    foreign = VirtualServer(
        name="legacy-app",
        owner="",
        address="192.0.2.99",
        port=80,
        protocol="TCP",
        members=(),
        monitor=Monitor(port=80),
    )
    h.sim.put(CLUSTER, foreign)
    await h.start()
    await h.publish(*FLEET, assigned("web"), assigned("api", vips=("192.0.2.11",)))
    await h.expect(LbProgrammed, "web")
    await h.expect(LbProgrammed, "api")

    await h.publish(releasing("web"))
    removed = await h.expect(LbRemoved)
    assert removed.appliance == "sim-a"
    assert removed.vips == ("192.0.2.10",)
    assert sorted(h.servers()) == ["legacy-app", "vipwire-prod-shop-api-192.0.2.11-80-tcp"]

    # Once released nothing more happens for it, even when nodes change.
    await h.publish(VipReleased(cluster=CLUSTER, namespace="shop", name="web", uid="uid-web"))
    await h.publish(node("n2", "198.51.100.2", eligible=False))
    await h.expect(LbProgrammed, "api")
    assert sorted(h.servers()) == ["legacy-app", "vipwire-prod-shop-api-192.0.2.11-80-tcp"]


async def test_restart_adopts_what_is_programmed_without_writing(h: Harness) -> None:
    """A new lbdriver on the same appliance rebuilds state and is ready without writing to
    the appliance or publishing: the stream already holds every report it would make."""
    first = await h.start()
    await h.publish(*FLEET, ready_on("n2"), assigned("web", policy="Local"))
    await h.publish(assigned("api", vips=("192.0.2.11",), ports=(80, 8443)))
    await h.expect(LbProgrammed, "web")
    await h.expect(LbProgrammed, "api")
    await h.stop(first)
    writes, calls = h.sim.writes, h.sim.apply_calls
    h.log.clear()

    second = await h.start()
    await eventually(lambda: second.readiness() is None, what="the second lbdriver is ready")
    await h.publisher.bus.nc.flush()
    assert (h.sim.writes, h.sim.apply_calls) == (writes, calls)
    assert h.log == []


async def test_restart_reports_only_what_changed_or_was_not_answered(h: Harness) -> None:
    """After a restart, a Service whose members changed meanwhile is written and reported;
    one whose assignment came again unanswered is confirmed; the rest stay silent."""
    first = await h.start()
    await h.publish(*FLEET, ready_on("n2"), assigned("web", policy="Local"))
    await h.publish(assigned("api", vips=("192.0.2.11",)), assigned("db", vips=("192.0.2.12",)))
    for name in ("web", "api", "db"):
        await h.expect(LbProgrammed, name)
    await h.stop(first)
    calls = h.sim.apply_calls
    h.log.clear()
    await h.publish(ready_on("n1", "n2"))  # web's members change while no lbdriver runs
    await h.publish(assigned("api", vips=("192.0.2.11",)))  # the same assignment, again

    second = await h.start()
    web = await h.expect(LbProgrammed, "web")
    api = await h.expect(LbProgrammed, "api")
    await eventually(lambda: second.readiness() is None, what="the second lbdriver is ready")
    await h.publisher.bus.nc.flush()
    assert member_nodes(web) == ["n1", "n2"]
    assert member_nodes(api) == ["n1", "n2"]
    assert h.sim.apply_calls == calls + 1  # web's members; api needed no write
    assert sorted(m.name for m in h.log) == ["api", "web"]


async def test_restart_answers_an_assignment_made_while_away_even_with_the_same_failure(
    h: Harness,
) -> None:
    """An assignment published while no lbdriver ran gets its answer after a restart, here
    the same LbFailed as before (the appliance is still down), once despite the retries."""
    first = await h.start()
    h.sim.set_down(True)
    await h.publish(*FLEET, assigned())
    failed = await h.expect(LbFailed)
    await h.stop(first)
    await h.publish(assigned())  # ipam says it again
    h.log.clear()

    second = await h.start()
    assert await h.expect(LbFailed) == failed
    await eventually(
        lambda: h.sim.failures >= 8, what="eight failed calls to the appliance"
    )  # retried meanwhile
    assert len(h.reports(LbFailed, "web")) == 1
    h.sim.set_down(False)
    await h.expect(LbProgrammed)
    await eventually(lambda: second.readiness() is None, what="the second lbdriver is ready")


async def test_last_reports_are_read_per_service(h: Harness) -> None:
    """The start-up read finds each Service's last report (content and sequence), of
    several earlier ones per Service; other families are not read."""
    last: dict[tuple[str, str, str], tuple[bytes, int]] = {}
    for round_ in range(3):
        for i in range(4):
            message = LbRemoved(
                cluster=CLUSTER, namespace="shop", name=f"s{i}", uid=f"u{round_}", appliance="a"
            )
            seq = await h.publisher.bus.publish(message)
            last[(CLUSTER, "shop", f"s{i}")] = (_reports.fingerprint(encode(message)), seq)
    await h.publish(assigned("s9"))
    assert await _reports.last_reports(h.publisher.bus) == last


async def test_appliance_outage_reports_failure_then_recovers(h: Harness) -> None:
    """While the appliance is down LbFailed is published and the write retried until it lands."""
    service = await h.start()
    h.sim.set_down(True)
    await h.publish(*FLEET, assigned())
    failed = await h.expect(LbFailed)
    assert failed.reason == "ApplianceUnavailable"
    assert failed.appliance == "sim-a"
    assert not failed.removing
    h.sim.set_down(False)
    programmed = await h.expect(LbProgrammed)
    assert member_nodes(programmed) == ["n1", "n2"]
    assert len(h.servers()) == 1
    failures = service.runtime.metrics.counter(
        "lbdriver_appliance_failures_total", "", ["appliance", "call", "reason"]
    )
    assert failures.total() >= 1


async def test_failed_removal_is_reported_as_removing_and_retried(h: Harness) -> None:
    """A withdrawal the appliance refuses is LbFailed(removing) until LbRemoved."""
    await h.start()
    await h.publish(*FLEET, assigned())
    await h.expect(LbProgrammed)
    h.sim.fail_next(2, ApplianceRejected)
    await h.publish(releasing())
    failed = await h.expect(LbFailed)
    assert (failed.reason, failed.removing) == ("ApplianceRejected", True)
    await h.expect(LbRemoved)
    assert h.servers() == {}


async def test_a_failing_service_does_not_block_others(h: Harness) -> None:
    """One Service refused by the appliance keeps retrying while others are programmed."""
    squatter = VirtualServer(
        name="legacy-squatter",
        owner="",
        address="192.0.2.20",
        port=80,
        protocol="TCP",
        members=(),
        monitor=Monitor(port=80),
    )
    h.sim.put(CLUSTER, squatter)
    await h.start()
    await h.publish(*FLEET, assigned("blocked", vips=("192.0.2.20",)))
    failed = await h.expect(LbFailed, "blocked")
    assert failed.reason == "ApplianceRejected"
    await h.publish(assigned("free", vips=("192.0.2.21",)))
    await h.expect(LbProgrammed, "free")

    h.sim.remove(CLUSTER, "legacy-squatter")
    await h.expect(LbProgrammed, "blocked")


async def test_unknown_appliance_group_is_reported(h: Harness) -> None:
    """A pool pointing at a group with no appliance fails visibly, without retrying."""
    await h.start()
    await h.publish(*FLEET, assigned(group="dc9"))
    failed = await h.expect(LbFailed)
    assert failed.reason == "UnknownApplianceGroup"
    assert h.sim.apply_calls == 0


async def test_report_joins_the_trace_of_the_assignment(
    h: Harness, span_exporter: InMemorySpanExporter
) -> None:
    """LbProgrammed is published inside the VipAssigned's trace, with the appliance call."""
    await h.start()
    await h.publish(*FLEET, assigned())
    await h.expect(LbProgrammed)

    def trace_names() -> set[str]:
        spans = span_exporter.get_finished_spans()
        vip_publish = next(s for s in spans if s.name == "publish vip")
        trace_id = vip_publish.context.trace_id
        return {s.name for s in spans if s.context.trace_id == trace_id}

    # The consumer span ends just after the handler, so after the report arrives.
    await eventually(
        lambda: {"process vip", "appliance apply", "publish lb"} <= trace_names(),
        what="process vip, appliance apply and publish lb spans",
    )


async def test_burst_of_endpoint_changes_converges_to_the_last(h: Harness) -> None:
    """Many quick endpoint changes end with the appliance matching the last snapshot."""
    await h.start(coalesce_window_ms=20.0)
    inventory = [node(f"n{i}", f"198.51.100.{i}") for i in range(1, 9)]
    await h.publish(*inventory, ready_on("n1"), assigned(policy="Local"))
    await h.expect(LbProgrammed)
    for i in range(2, 9):
        await h.publish(ready_on(*(f"n{j}" for j in range(1, i + 1))))
    last = await h.expect(LbProgrammed, where=lambda m: len(m.members) == 8)
    assert member_nodes(last) == [f"n{i}" for i in range(1, 9)]
    (server,) = h.servers().values()
    assert len(server.members) == 8


async def test_node_change_reports_only_services_whose_members_changed(h: Harness) -> None:
    """A node change republishes LbProgrammed only where the members actually moved."""
    service = await h.start()
    await h.publish(*FLEET, ready_on("n1", name="local"), assigned("web"))
    await h.publish(assigned("local", vips=("192.0.2.11",), policy="Local"))
    await h.expect(LbProgrammed, "web")
    await h.expect(LbProgrammed, "local")
    writes = h.sim.writes

    # n2 leaves: web loses it; local (endpoints on n1 only) stays as it was.
    await h.publish(node("n2", "198.51.100.2", eligible=False))
    await h.expect(LbProgrammed, "web", lambda m: member_nodes(m) == ["n1"])
    await h.publish(node("n2", "198.51.100.2"))
    await h.expect(LbProgrammed, "web", lambda m: member_nodes(m) == ["n1", "n2"])
    assert len(h.reports(LbProgrammed, "local")) == 1
    assert h.sim.writes == writes + 2
    ops = service.runtime.metrics.counter("lbdriver_appliance_ops_total", "", ["appliance", "kind"])
    assert ops.value(appliance="sim-a", kind="create") == 2
    assert ops.value(appliance="sim-a", kind="update-members") == 2


async def test_burst_of_node_events_is_coalesced_into_few_writes(h: Harness) -> None:
    """Node events arriving within the coalescing window share one appliance write."""
    await h.start(coalesce_window_ms=150.0)
    await h.publish(*FLEET, assigned())
    await h.expect(LbProgrammed)
    calls = h.sim.apply_calls
    added = [node(f"m{i}", f"198.51.100.{10 + i}") for i in range(8)]
    await h.publish(*added)
    await h.expect(LbProgrammed, where=lambda m: len(m.members) == 10)
    assert h.sim.apply_calls - calls <= 3


async def test_unreachable_appliance_fails_over_within_its_group(h: Harness) -> None:
    """When the first appliance of a group is unreachable the next one is programmed."""
    standby = SimAppliance("sim-b")
    await h.start(
        drivers={"sim-b": standby},
        appliances=(ApplianceSettings(name="sim-a"), ApplianceSettings(name="sim-b")),
        unhealthy_cooldown_s=30.0,
    )
    h.sim.set_down(True)
    await h.publish(*FLEET, assigned())
    assert (await h.expect(LbFailed)).appliance == "sim-a"
    programmed = await h.expect(LbProgrammed)
    assert programmed.appliance == "sim-b"
    assert len(standby.virtual_servers(CLUSTER)) == 1


def test_settings_roundtrip_for_config_files() -> None:
    """Settings survive the YAML/JSON shape used by config files."""
    settings = LbdriverSettings(appliances=(ApplianceSettings(name="sim-a", group="dc1"),))
    data = msgspec.to_builtins(settings)
    assert msgspec.convert(data, LbdriverSettings) == settings


async def test_a_coalesced_write_links_to_every_trace_it_served(
    h: Harness, span_exporter: InMemorySpanExporter
) -> None:
    """One reconcile absorbing several endpoint changes links to each change's trace."""
    await h.start(coalesce_window_ms=300.0, coalesce_quiet_ms=150.0)
    inventory = [node(f"n{i}", f"198.51.100.{i}") for i in range(1, 6)]
    await h.publish(*inventory, ready_on("n1"), assigned(policy="Local"))
    await h.expect(LbProgrammed)
    span_exporter.clear()
    # Three changes, each published as its own trace, inside one quiet period.
    for i in range(2, 5):
        await h.publish(ready_on(*(f"n{j}" for j in range(1, i + 1))))
    await h.expect(LbProgrammed, where=lambda m: len(m.members) == 4)

    def change_traces() -> set[int]:
        return {
            s.context.trace_id
            for s in span_exporter.get_finished_spans()
            if s.name == "publish endpoints" and s.context is not None
        }

    def served_traces() -> set[int]:
        served: set[int] = set()
        for s in span_exporter.get_finished_spans():
            if s.name == "reconcile" and s.context is not None:
                served.add(s.context.trace_id)
                served |= {link.context.trace_id for link in s.links}
        return served

    await eventually(lambda: len(change_traces()) == 3, what="three change traces")
    await eventually(lambda: change_traces() <= served_traces(), what="every change trace served")
    coalesced = [
        s
        for s in span_exporter.get_finished_spans()
        if s.name == "reconcile" and s.links and s.attributes is not None
    ]
    assert coalesced, "no reconcile absorbed more than one change"
    assert all(int(s.attributes["vipwire.coalesced_events"]) >= 2 for s in coalesced)


# --- messages that cannot be read ----------------------------------------------------


def orphan_of(name: str) -> VirtualServer:
    """An object of ours for a Service the stream knows nothing of: the start-up sweep
    removes it, which fences that sweep."""
    return VirtualServer(
        name=f"vipwire-{CLUSTER}-shop-{name}-192.0.2.99-80-tcp",
        owner=owner_of(CLUSTER, "shop", name),
        address="192.0.2.99",
        port=80,
        protocol="TCP",
        members=(),
        monitor=Monitor(port=80),
    )


async def restart_after(h: Harness, garbage_on: str, *, purge: bool = False) -> None:
    """Stop the running lbdriver, leave garbage last on ``garbage_on`` (its only message
    with ``purge``) and an orphan on the appliance, start another and wait for its
    start-up sweep (the orphan removed)."""
    for service in list(h.services):
        await h.stop(service)
    js = h.publisher.bus.js
    if purge:
        await js.purge_stream(STREAM, subject=garbage_on)
    await js.publish(garbage_on, b"\x00not json")
    orphan = orphan_of("gone")
    h.sim.put(CLUSTER, orphan)
    h.log.clear()
    second = await h.start()
    await eventually(lambda: second.readiness() is None, what="the second lbdriver is ready")
    await eventually(
        lambda: orphan.name not in h.servers(), what="the start-up sweep removed the orphan"
    )


async def test_garbage_last_on_a_vip_subject_keeps_the_virtual_server_after_a_restart(
    h: Harness,
) -> None:
    """Garbage after a Service's assignment: the restarted lbdriver keeps its objects (the
    last valid assignment stays in force) and counts the subject."""
    await h.start()
    await h.publish(*FLEET, assigned("web"), assigned("api", vips=("192.0.2.11",)))
    await h.programmed("web", "api")
    before = h.servers()

    await restart_after(h, service_subject("vip", CLUSTER, "shop", "web"))
    assert h.servers() == before
    assert h.reports(LbRemoved) == []
    metrics = h.services[0].runtime.metrics.expose()
    assert 'vipwire_bus_unreadable_total{family="vip"} 1' in metrics


async def test_garbage_alone_on_a_vip_subject_deletes_nothing(h: Harness) -> None:
    """Garbage as the only message on a Service's VIP subject (its history expired): what
    the Service needs is unknown, so its objects are no orphans."""
    await h.start()
    await h.publish(*FLEET, assigned("web"), assigned("api", vips=("192.0.2.11",)))
    await h.programmed("web", "api")
    before = h.servers()

    await restart_after(h, service_subject("vip", CLUSTER, "shop", "web"), purge=True)
    assert h.servers() == before


async def test_garbage_last_on_a_node_subject_keeps_the_node_a_member(h: Harness) -> None:
    """Garbage after a Node's snapshot: after a restart the node is still a member of every
    Service of its cluster, and nothing is written or reported."""
    await h.start()
    await h.publish(*FLEET, assigned("web"), assigned("api", vips=("192.0.2.11",)))
    await h.programmed("web", "api")
    before = h.servers()
    writes = h.sim.writes

    await restart_after(h, node_subject("node", CLUSTER, "n2"))
    assert h.servers() == before
    assert h.sim.writes == writes + 1  # the orphan's removal, nothing else
    assert h.reports(LbProgrammed) == []


# --- leader election ------------------------------------------------------------------------


async def test_a_lease_left_long_ago_is_taken_at_once_and_a_fresh_one_waited_out(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A lease whose recorded renewal is far older than ttl + skew is taken at once; one
    renewed just now by a replica that is gone is waited out for the ttl."""
    caplog.set_level(logging.INFO, logger="vipwire.lbdriver.election")
    kv = await h.publisher.bus.kv(LBDRIVER_LEASE_BUCKET)

    def lease(age_s: float) -> bytes:
        renewed = time.time() - age_s
        return msgspec.json.encode(LbdriverLease(holder="gone", renewed_at=renewed, ttl_s=1.5))

    await kv.put("lbdriver.leader", lease(60.0))
    first = await h.start(lease_ttl_s=1.5, lease_renew_s=0.5, lease_clock_skew_s=1.0)
    assert first.role == "leader"
    assert "the lease of gone is 60" in caplog.text
    await h.stop(first)

    await kv.put("lbdriver.leader", lease(0.0))
    second = await h.start(lease_ttl_s=1.5, lease_renew_s=0.5, lease_clock_skew_s=1.0)
    assert second.role == "standby"
    await eventually(lambda: second.role == "leader", what="the second lbdriver leads")
    assert "gone did not renew for 1.5s" in caplog.text
