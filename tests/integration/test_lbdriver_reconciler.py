"""The lbdriver's reconciler and fleet behaviour against a real nats-server and appliances.

Coalescing, restart adoption, drift repair, orphan removal, circuit breaking,
failover and the status view, each proved by counting what the appliance saw.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

import msgspec
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from support.fences import lbdriver_settled
from support.lbdriver import LbHarness as Harness
from vipwire.applianceemu import F5Emulator
from vipwire.cli.lb import StatusUnavailable, fetch_status, render, status_command
from vipwire.contracts import (
    Endpoint,
    EndpointsSnapshot,
    LbFailed,
    LbProgrammed,
    Member,
    NodeEndpoints,
    NodeSnapshot,
    ServicePort,
    VipAssigned,
    VipReleased,
)
from vipwire.lbdriver import (
    ApplianceAuthError,
    ApplianceSettings,
    ApplianceTimeouts,
    LbdriverService,
    Monitor,
    Operation,
    SimAppliance,
    VirtualServer,
    desired_virtual_servers,
)
from vipwire.lbdriver.core.virtual_servers import (
    CreateVirtualServer,
    UpdateMembers,
    UpdateVirtualServer,
)
from vipwire.lbdriver.io.drivers.credentials import CredentialSource
from vipwire.lbdriver.io.drivers.f5 import F5Driver
from vipwire.runtime import Runtime
from vipwire.testing import eventually

RuntimeFactory = Callable[[str], Awaitable[Runtime]]

CLUSTER = "prod"
NS = "shop"
PREFIX = "vipwire"


def node(i: int, cluster: str = CLUSTER) -> NodeSnapshot:
    return NodeSnapshot(cluster=cluster, node=f"n{i}", addresses=(f"198.51.100.{i + 1}",))


def assigned(
    name: str,
    index: int,
    *,
    ports: tuple[int, ...] = (80,),
    policy: Literal["Cluster", "Local"] = "Cluster",
    group: str = "default",
) -> VipAssigned:
    return VipAssigned(
        cluster=CLUSTER,
        namespace=NS,
        name=name,
        uid=f"uid-{name}",
        vips=(f"192.0.2.{index % 250 + 1}" if index < 250 else f"203.0.113.{index % 250 + 1}",),
        pool="default",
        appliance_group=group,
        ports=tuple(ServicePort(port=p) for p in ports),
        external_traffic_policy=policy,
        health_check_node_port=32000 if policy == "Local" else None,
    )


def ready_on(name: str, nodes: Sequence[int]) -> EndpointsSnapshot:
    return EndpointsSnapshot(
        cluster=CLUSTER,
        namespace=NS,
        name=name,
        nodes=tuple(
            NodeEndpoints(node=f"n{i}", endpoints=(Endpoint(addresses=(f"10.244.{i}.7",)),))
            for i in nodes
        ),
    )


def owner(name: str) -> str:
    return f"{CLUSTER}/{NS}/{name}"


class RecordingSim(SimAppliance):
    """A sim that notes when each Service's objects were written (monotonic time)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.log: list[tuple[float, frozenset[str]]] = []

    async def apply(self, partition: str, ops: Sequence[Operation]) -> None:
        before = self.virtual_servers(partition)
        await super().apply(partition, ops)
        owners = set()
        for op in ops:
            match op:
                case CreateVirtualServer(server=s) | UpdateVirtualServer(server=s):
                    owners.add(s.owner)
                case UpdateMembers(name=name) if name in before:
                    owners.add(before[name].owner)
                case _:
                    pass
        self.log.append((time.monotonic(), frozenset(owners)))

    def writes_of(self, who: str, since: float = 0.0) -> list[float]:
        return [at for at, owners in self.log if who in owners and at >= since]


@pytest.fixture
async def h(
    make_runtime: RuntimeFactory, span_exporter: InMemorySpanExporter
) -> AsyncIterator[Harness]:
    harness = Harness(
        make_runtime,
        await make_runtime("test"),
        defaults={
            "appliances": (ApplianceSettings(name="sim-a", max_requests_per_s=0),),
            "coalesce_window_ms": 1.0,
            "retry_initial_s": 0.05,
            "retry_max_s": 0.2,
            "unhealthy_cooldown_s": 0.2,
            "verify_interval_s": 0.0,
        },
        sim=RecordingSim("sim-a"),
        spans=span_exporter,
    )
    await harness.observe()
    yield harness
    await harness.close()


def counter(service: LbdriverService, name: str, labels: Sequence[str]) -> Any:
    return service.runtime.metrics.counter(name, "", labels)


def health(service: LbdriverService, appliance: str) -> str:
    """The appliance's breaker state as the status shows it: closed, open or half-open."""
    return next(a.health for a in service.status().appliances if a.name == appliance)


# --- coalescing ----------------------------------------------------------------------


async def test_rolling_update_writes_each_service_at_most_once_per_window(h: Harness) -> None:
    """10 Services x 10 endpoint events (a rollout each, interleaved) cost at most one write
    per Service per coalescing window, and the appliance ends with the last members."""
    window = 0.3
    # No drain here: members leave at once (the drain's own writes: test_lbdriver_drain).
    await h.start(coalesce_window_ms=window * 1000, coalesce_quiet_ms=100.0, drain_timeout_s=0.0)
    names = [f"svc{i}" for i in range(10)]
    await h.publish(*(node(i) for i in range(11)))
    await h.publish(*(ready_on(n, range(10)) for n in names))
    await h.publish(*(assigned(n, i, policy="Local") for i, n in enumerate(names)))
    await h.programmed(*names)

    # Each step moves one pod to the node the previous step freed: members change each time.
    # Steps 50 ms apart: shorter than the quiet period, so the rollouts span several windows.
    on = {n: set(range(10)) for n in names}
    started = time.monotonic()
    for step in range(10):
        for n in names:
            on[n].discard(step)
            on[n].add(step - 1 if step else 10)
            await h.publish(ready_on(n, sorted(on[n])))
        await asyncio.sleep(0.05)  # pacing the load: one rollout step every 50 ms
    span = time.monotonic() - started
    final = {f"n{i}" for i in on[names[0]]}

    def converged() -> bool:
        servers = h.sim.virtual_servers(CLUSTER).values()
        return all({m.node for m in s.members} == final for s in servers)

    await eventually(converged, timeout=5.0, what="every Service on the last members")
    await lbdriver_settled(h.services[0], h.spans)  # a late write would be done by now
    writes = {n: h.sim.writes_of(owner(n), since=started) for n in names}
    counts = {n: len(w) for n, w in writes.items()}
    report = (
        f"100 endpoint events over {span:.2f}s -> {sum(counts.values())} appliance writes "
        f"(window {window}s); per Service: {counts}"
    )
    allowed = math.ceil(span / window) + 1
    assert all(1 <= c <= allowed for c in counts.values()), report
    for n, times in writes.items():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g >= window * 0.95 for g in gaps), f"{n} written twice in a window: {report}"
    assert sum(counts.values()) <= len(names) * allowed < 100, report


# --- restart ---------------------------------------------------------------------------


async def test_restart_with_500_programmed_virtual_servers_writes_nothing(h: Harness) -> None:
    """A new lbdriver facing 500 virtual servers it programmed before adopts them all:
    zero writes to the appliance or the stream, nothing deleted as an orphan."""
    names = [f"svc{i}" for i in range(250)]
    first = await h.start()
    await h.publish(*(node(i) for i in range(3)))
    await h.publish(*(assigned(n, i, ports=(80, 443)) for i, n in enumerate(names)))
    await h.programmed(*names, timeout=15.0)
    await eventually(lambda: first.readiness() is None, what="the first lbdriver is ready")
    await h.stop(first)
    assert len(h.sim.virtual_servers(CLUSTER)) == 500
    writes, calls, lists = h.sim.writes, h.sim.apply_calls, h.sim.list_calls
    h.log.clear()

    second = await h.start()
    await eventually(
        lambda: second.readiness() is None, timeout=15.0, what="the second lbdriver is ready"
    )
    await eventually(
        lambda: h.sim.list_calls >= lists + 2, what="the start-up sweep listed the appliance"
    )  # the start-up sweep listed too
    assert (h.sim.writes, h.sim.apply_calls) == (writes, calls), (
        f"restart wrote {h.sim.apply_calls - calls} request(s), {h.sim.writes - writes} op(s)"
    )
    assert len(h.sim.virtual_servers(CLUSTER)) == 500
    await h.publisher.bus.nc.flush()
    assert h.reports(LbProgrammed) == []  # the stream holds every report already


# --- drift -------------------------------------------------------------------------------


FOREIGN = VirtualServer(
    name="legacy-app",
    owner="",
    address="192.0.2.200",
    port=80,
    protocol="TCP",
    members=(Member(node="old", address="198.51.100.200"),),
    monitor=Monitor(port=80),
)


async def test_drift_pass_undoes_out_of_band_edits_and_counts_them(h: Harness) -> None:
    """A deleted and an edited object are repaired by the next pass; a foreign object in the
    same partition stays exactly as it was; the repairs are counted in the metric; each
    Service reports the drift (ApplianceDrift, naming what was found), then the repair."""
    h.sim.put(CLUSTER, FOREIGN)
    service = await h.start(verify_interval_s=0.2)
    await h.publish(*(node(i) for i in range(3)), assigned("web", 1), assigned("api", 2))
    await h.programmed("web", "api")
    programmed = h.sim.virtual_servers(CLUSTER)
    web = next(n for n, s in programmed.items() if s.owner == owner("web"))
    api = next(n for n, s in programmed.items() if s.owner == owner("api"))
    reports = len(h.log)

    h.sim.remove(CLUSTER, web)
    h.sim.put(CLUSTER, msgspec.structs.replace(programmed[api], members=()))
    await eventually(
        lambda: h.sim.virtual_servers(CLUSTER) == programmed,
        timeout=3.0,
        what="the drift pass restored the programmed objects",
    )
    drift = counter(service, "lbdriver_drift_repairs_total", ["appliance", "kind"])
    assert drift.value(appliance="sim-a", kind="repair") == 2
    assert "vipwire_lbdriver_drift_repairs_total" in service.runtime.metrics.expose()
    assert h.sim.virtual_servers(CLUSTER)["legacy-app"] == FOREIGN
    await eventually(
        lambda: len(h.log) == reports + 4, what="a drift report and a repair report each"
    )
    told = h.log[reports:]
    for name, found in (("web", f"virtual server {web} is missing"), ("api", "other members")):
        mine = [m for m in told if m.name == name]
        assert [type(m).__name__ for m in mine] == ["LbFailed", "LbProgrammed"]
        failed = mine[0]
        assert isinstance(failed, LbFailed) and failed.reason == "ApplianceDrift"
        assert found in failed.message and "re-programming it" in failed.message


async def test_start_up_sweep_removes_only_our_orphans_in_our_partitions(h: Harness) -> None:
    """After the replay, objects with our prefix that no Service accounts for are deleted;
    foreign objects and other partitions are never touched; live Services keep theirs."""
    orphan = VirtualServer(
        name=f"{PREFIX}-{CLUSTER}-{NS}-gone-192.0.2.50-80-tcp",
        owner=owner("gone"),
        address="192.0.2.50",
        port=80,
        protocol="TCP",
        members=(),
        monitor=Monitor(port=10256),
    )
    untagged = msgspec.structs.replace(
        orphan, name=f"{PREFIX}-{CLUSTER}-x-y-192.0.2.51-80-tcp", owner="", address="192.0.2.51"
    )
    elsewhere = msgspec.structs.replace(orphan, owner="other/ns/svc")
    h.sim.put(CLUSTER, orphan)
    h.sim.put(CLUSTER, untagged)
    h.sim.put(CLUSTER, FOREIGN)
    h.sim.put("other", elsewhere)
    nodes = [node(i) for i in range(3)]
    web = assigned("web", 1)
    want = desired_virtual_servers(web, {n.node: n for n in nodes}, None, prefix=PREFIX)
    for server in want.values():
        h.sim.put(CLUSTER, server)  # programmed by an earlier incarnation
    await h.publish(*nodes, web)
    await h.publish(VipReleased(cluster=CLUSTER, namespace=NS, name="gone", uid="uid-gone"))

    service = await h.start()
    await h.programmed("web")
    await eventually(
        lambda: orphan.name not in h.sim.virtual_servers(CLUSTER),
        timeout=3.0,
        what="the tagged orphan removed",
    )
    await eventually(
        lambda: untagged.name not in h.sim.virtual_servers(CLUSTER),
        what="the untagged orphan removed",
    )
    assert h.sim.virtual_servers(CLUSTER) == {"legacy-app": FOREIGN, **want}
    assert h.sim.virtual_servers("other") == {elsewhere.name: elsewhere}
    drift = counter(service, "lbdriver_drift_repairs_total", ["appliance", "kind"])
    assert drift.value(appliance="sim-a", kind="orphan") == 2


# --- failing appliances ------------------------------------------------------------------


async def test_wrong_credentials_fail_clearly_back_off_and_spare_other_appliances(
    h: Harness,
) -> None:
    """Credentials refused: every Service gets one LbFailed(ApplianceAuthError) with a clear
    message, the appliance sees a bounded number of attempts (breaker + backoff, no storm),
    and the Services of another appliance are programmed meanwhile."""
    good = SimAppliance("sim-b")
    h.sim.fail_next(10_000, ApplianceAuthError)
    service = await h.start(
        drivers={"sim-b": good},
        appliances=(
            ApplianceSettings(name="sim-a", group="g1", max_requests_per_s=0),
            ApplianceSettings(name="sim-b", group="g2", max_requests_per_s=0),
        ),
        breaker_failures=3,
        unhealthy_cooldown_s=1.5,
    )
    failing = [f"bad{i}" for i in range(10)]
    fine = [f"ok{i}" for i in range(10)]
    await h.publish(*(node(i) for i in range(3)))
    await h.publish(*(assigned(n, i, group="g1") for i, n in enumerate(failing)))
    await h.publish(*(assigned(n, 100 + i, group="g2") for i, n in enumerate(fine)))
    await h.programmed(*fine)
    assert len(good.virtual_servers(CLUSTER)) == 10

    # Fences: every failing Service reported; the breaker opened; after its cooldown
    # (1.5 s) one probe went through, failed, and opened it again. Ten Services cost the
    # breaker's three attempts and that probe, not ten times the retries.
    await eventually(
        lambda: {m.name for m in h.reports(LbFailed)} == set(failing),
        what="every Service of the failing appliance reported LbFailed",
    )
    await eventually(lambda: health(service, "sim-a") == "open", what="sim-a's breaker open")
    opened = h.sim.failures
    await eventually(lambda: h.sim.failures > opened, what="a probe after the cooldown")
    await eventually(lambda: health(service, "sim-a") == "open", what="open again after it")
    attempts = h.sim.failures
    assert attempts <= 5, f"{attempts} calls reached the appliance for 10 Services"
    for name in failing:
        (failed,) = h.reports(LbFailed, name)  # one report each, not one per retry
        assert (failed.reason, failed.appliance) == ("ApplianceAuthError", "sim-a")
        assert "check the credentials of appliance sim-a" in failed.message
    assert not h.reports(LbProgrammed, "bad0")
    status = {a.name: a for a in service.status().appliances}
    assert status["sim-a"].health in ("open", "half-open")
    assert status["sim-a"].last_error is not None
    assert status["sim-a"].last_error.startswith("ApplianceAuthError")
    assert (status["sim-b"].health, status["sim-b"].virtual_servers) == ("closed", 10)


async def test_wrong_password_on_the_f5_emulator_is_not_a_login_storm(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Against the BIG-IP emulator, a wrong password is LbFailed(ApplianceAuthError) for each
    Service while the emulator sees only a handful of login attempts; the password appears
    in no report, status or log line."""
    caplog.set_level("DEBUG", logger="vipwire")
    emu = F5Emulator(username="admin", password="right-password")
    await emu.start()
    bigip = F5Driver(
        "bigip",
        emu.url,
        CredentialSource("bigip", "admin", password="wrong-password"),
        timeouts=ApplianceTimeouts(login_s=2, read_s=2, write_s=2, commit_s=2),
    )
    try:
        await h.start(
            drivers={"bigip": bigip},
            appliances=(ApplianceSettings(name="bigip", max_requests_per_s=0),),
            breaker_failures=3,
            unhealthy_cooldown_s=1.5,
        )
        names = [f"svc{i}" for i in range(8)]
        await h.publish(*(node(i) for i in range(2)))
        await h.publish(*(assigned(n, i) for i, n in enumerate(names)))
        await eventually(
            lambda: len(h.reports(LbFailed)) == len(names),
            timeout=3.0,
            what="every Service reported LbFailed",
        )
        # Fence: the breaker open; nothing reaches the emulator until its cooldown ends.
        await eventually(
            lambda: health(h.services[0], "bigip") == "open", what="bigip's breaker open"
        )
        assert 1 <= emu.failed_logins <= 5, f"{emu.failed_logins} logins for 8 Services"
        assert emu.logins == 0
        reasons = {(m.reason, m.appliance) for m in h.reports(LbFailed)}
        assert reasons == {("ApplianceAuthError", "bigip")}
        assert all("wrong-password" not in m.message for m in h.reports(LbFailed))
        assert "wrong-password" not in caplog.text
        assert b"wrong-password" not in msgspec.json.encode(h.services[0].status())
    finally:
        for service in list(h.services):
            await h.stop(service)
        await bigip.close()
        await emu.stop()


async def test_failover_moves_every_service_and_the_recovered_one_does_not_take_them_back(
    h: Harness,
) -> None:
    """The active appliance going down while idle is noticed by health probes and moves all
    of its group's Services to the standby; when it answers again it is cleaned, not reused."""
    standby = RecordingSim("sim-b")
    service = await h.start(
        drivers={"sim-b": standby},
        appliances=(
            ApplianceSettings(name="sim-a", group="dc1", max_requests_per_s=0),
            ApplianceSettings(name="sim-b", group="dc1", max_requests_per_s=0),
        ),
        health_interval_s=0.2,
        breaker_failures=2,
        unhealthy_cooldown_s=0.3,
    )
    names = [f"svc{i}" for i in range(5)]
    await h.publish(*(node(i) for i in range(2)))
    await h.publish(*(assigned(n, i, group="dc1") for i, n in enumerate(names)))
    await h.programmed(*names)
    assert {m.appliance for m in h.reports(LbProgrammed)} == {"sim-a"}
    assert len(h.sim.virtual_servers(CLUSTER)) == 5

    h.sim.set_down(True)  # noticed by health probes: no Service event is needed
    await eventually(
        lambda: len(standby.virtual_servers(CLUSTER)) == 5,
        timeout=4.0,
        what="all five Services on the standby",
    )
    await eventually(
        lambda: {m.name for m in h.reports(LbProgrammed) if m.appliance == "sim-b"} == set(names),
        what="LbProgrammed from the standby for every Service",
    )
    failovers = counter(service, "lbdriver_failovers_total", ["group"])
    assert failovers.value(group="dc1") == 1

    h.sim.set_down(False)
    await eventually(
        lambda: h.sim.virtual_servers(CLUSTER) == {},
        timeout=3.0,
        what="the recovered appliance cleaned",
    )
    writes = len(standby.log)
    # Fence: several probes of each appliance with both healthy, and nothing in flight.
    probes = (h.sim.list_calls, standby.list_calls)
    await eventually(
        lambda: h.sim.list_calls >= probes[0] + 3 and standby.list_calls >= probes[1] + 3,
        what="three more health probes of each appliance",
    )
    await lbdriver_settled(service, h.spans)
    assert len(standby.log) == writes
    assert len(standby.virtual_servers(CLUSTER)) == 5
    status = {a.name: a for a in service.status().appliances}
    assert (status["sim-a"].active, status["sim-b"].active) == (False, True)
    assert (status["sim-a"].health, status["sim-b"].services) == ("closed", 5)
    assert {m.appliance for m in h.log[-5:]} == {"sim-b"}


async def test_rate_limit_spaces_appliance_calls(h: Harness) -> None:
    """With a rate of 20 calls/s and a burst of 1, calls start at least 50 ms apart."""
    await h.start(
        appliances=(ApplianceSettings(name="sim-a", max_requests_per_s=20, request_burst=1),)
    )
    names = [f"svc{i}" for i in range(4)]
    await h.publish(*(node(i) for i in range(2)))
    started = time.monotonic()
    await h.publish(*(assigned(n, i) for i, n in enumerate(names)))
    await h.programmed(*names)
    calls = h.sim.apply_calls + h.sim.list_calls
    assert calls == 5  # one listing, four writes
    assert time.monotonic() - started >= (calls - 1) * 0.05 * 0.9


# --- status ------------------------------------------------------------------------------


async def test_status_is_served_over_nats_and_rendered_by_the_cli(
    h: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vipwire lb status` asks the running lbdriver and shows health, objects, last write."""
    await h.start()
    await h.publish(node(0), assigned("web", 1, ports=(80, 443)))
    await h.programmed("web")
    url = h.publisher.settings.bus.servers[0]
    await eventually(lambda: h.services[0].readiness() is None, what="the lbdriver is ready")

    status = await fetch_status(url)
    assert status.ready and status.services == 1
    assert (status.role, status.leader) == ("leader", h.services[0].status().leader)
    assert status.leader.endswith(status.instance)
    (appliance,) = status.appliances
    assert (appliance.name, appliance.health, appliance.active) == ("sim-a", "closed", True)
    assert (appliance.virtual_servers, appliance.services, appliance.writes) == (2, 1, 1)
    assert appliance.last_write_at is not None and appliance.last_error is None
    table = render(status)
    assert "sim-a" in table and "healthy" in table and "active" in table
    assert table.startswith(f"lbdriver {status.instance} leader: ready")

    assert await status_command(url, as_json=True, timeout=2.0) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["appliances"][0]["virtual_servers"] == 2


async def test_status_without_an_lbdriver_says_so(
    h: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """No lbdriver (or no NATS): a clear message and exit code 1, not a traceback."""
    url = h.publisher.settings.bus.servers[0]
    with pytest.raises(StatusUnavailable, match="no lbdriver"):
        await fetch_status(url, timeout=1.0)
    assert await status_command(url, as_json=False, timeout=1.0) == 1
    assert "no lbdriver" in capsys.readouterr().err
    with pytest.raises(StatusUnavailable, match="cannot connect to NATS"):
        await fetch_status("nats://127.0.0.1:1", timeout=1.0)
