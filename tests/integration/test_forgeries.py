"""The forgeries of issue 15, replayed against the receivers over a real nats-server.

Each forger publishes on a subject its identity may use (the lbdriver on ``lb``,
a watcher on its own cluster's ``node`` and ``service``, ipam on ``vip``), but
with a payload that disagrees with the subject, an address outside the pools, or
a member outside the node networks: the receiver refuses it, counts it, and the
state after is what it was before. The rejection counter is each test's fence.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
from nats.aio.msg import Msg

from support.lbdriver import LbHarness
from vipwire.contracts import (
    IPAM_BUCKET,
    LbProgrammed,
    LbRemoved,
    Member,
    Message,
    NodeApplied,
    NodeSnapshot,
    PoolsServed,
    ServiceGone,
    ServicePort,
    ServiceSnapshot,
    VipAssigned,
    VipReleased,
    VipReleasing,
    decode,
    encode,
    node_subject,
    service_subject,
    subject_for,
)
from vipwire.ipam import IpamService, IpamSettings, PoolSettings
from vipwire.ipam.io.bucket import IpamStore
from vipwire.lbdriver import ApplianceSettings
from vipwire.nodeagent import DryRunApplier, NodeagentService, NodeagentSettings
from vipwire.runtime import Runtime
from vipwire.testing import eventually

RuntimeFactory = Callable[[str], Awaitable[Runtime]]
#: Which identity may publish a family (decision 6 of the plan): each forger below
#: publishes only where its identity is allowed.
FORGER = {"lb": "lbdriver", "vip": "ipam", "pools": "ipam"}
POOL = PoolSettings(name="lab", addresses=("198.51.100.0/24",))


def watcher(cluster: str) -> str:
    return f"watcher-{cluster}"


async def forge(forger: Runtime, subject: str, message: Message) -> None:
    """Publish ``message`` on ``subject`` as is (a forger builds its own subject)."""
    await forger.bus.js.publish(subject, encode(message))


def counted(rt: Runtime, name: str, labels: tuple[str, ...] = (), **values: str) -> float:
    return rt.metrics.counter(name, "", labels).value(**values)


async def rejected(rt: Runtime, family: str, count: int = 1) -> None:
    """Fence: ``rt``'s consumers refused ``count`` messages of ``family`` as mismatched."""
    await eventually(
        lambda: (
            counted(
                rt,
                "bus_rejected_total",
                ("family", "reason"),
                family=family,
                reason="subject-mismatch",
            )
            >= count
        ),
        what=f"{count} {family} message(s) refused as subject-mismatch",
    )


class Observer:
    """Every contract message on core NATS subjects matching a filter, decoded."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def attach(self, rt: Runtime, subjects: str) -> None:
        async def on_msg(msg: Msg) -> None:
            self.messages.append(decode(msg.subject, msg.data))

        await rt.bus.nc.subscribe(subjects, cb=on_msg)
        await rt.bus.fence()

    def of(self, kind: type[Any]) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]


Forgers = Callable[[str], Awaitable[Runtime]]


@pytest.fixture
async def forger(make_runtime: RuntimeFactory) -> Forgers:
    """A connection as one identity (``lbdriver``, ``ipam``, ``watcher-<cluster>``)."""
    made: dict[str, Runtime] = {}

    async def make(identity: str) -> Runtime:
        if identity not in made:
            made[identity] = await make_runtime(identity)
        return made[identity]

    return make


# --- the node agent: forged LbProgrammed ----------------------------------------------


@pytest.fixture
async def agent(
    make_runtime: RuntimeFactory, forger: Forgers, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[NodeagentService, DryRunApplier, Observer, Runtime]]:
    """A node agent of east serving ``default/web`` on 198.51.100.10, pools published."""
    monkeypatch.delenv("VIPWIRE_NODE", raising=False)
    ipam = await forger(FORGER["pools"])
    lbdriver = await forger(FORGER["lb"])
    await ipam.bus.publish(PoolsServed(cluster="east", ranges=("198.51.100.0/24",)))
    await lbdriver.bus.publish(programmed("web", "198.51.100.10"))
    rt = await make_runtime("nodeagent")
    reports = Observer()
    await reports.attach(rt, "vipwire.east.applied.>")
    applier = DryRunApplier()
    settings = NodeagentSettings(cluster="east", node="n1", coalesce_ms=5, resync_interval_s=0)
    service = NodeagentService(settings, rt, applier)
    await service.start()
    try:
        await service.wait_ready(5)
        assert on_lo(applier) == ["198.51.100.10"]
        yield service, applier, reports, rt
    finally:
        await service.stop()


def programmed(name: str, *vips: str, cluster: str = "east") -> LbProgrammed:
    return LbProgrammed(
        cluster=cluster,
        namespace="default",
        name=name,
        uid=f"uid-{name}",
        appliance="sim-1",
        vips=vips,
        ports=(ServicePort(port=80),),
        members=(Member(node="n1", address="192.0.2.11"),),
    )


def on_lo(applier: DryRunApplier) -> list[str]:
    return sorted(a.address for a in applier.state.addresses if a.interface == "lo")


class TestForgedLbProgrammed:
    async def test_vips_outside_the_pools_never_reach_the_node(
        self, agent: tuple[NodeagentService, DryRunApplier, Observer, Runtime], forger: Forgers
    ) -> None:
        """LbProgrammed naming the gateway and 8.8.8.8, on the Service's own subject by
        the lbdriver: refused as a whole (counted, reported in NodeApplied.refused), and
        the Service's VIP stays on lo."""
        _, applier, reports, rt = agent
        lbdriver = await forger(FORGER["lb"])
        forged = programmed("web", "192.0.2.1", "8.8.8.8")
        await forge(lbdriver, subject_for(forged), forged)
        await eventually(
            lambda: any(r.refused for r in reports.of(NodeApplied)), what="a report of refusals"
        )
        report = reports.of(NodeApplied)[-1]
        assert report.refused == ("default/web 192.0.2.1", "default/web 8.8.8.8")
        assert report.vips == ("198.51.100.10",)
        assert counted(rt, "nodeagent_rejected_vips_total") == 2
        assert on_lo(applier) == ["198.51.100.10"]

    async def test_a_payload_for_another_service_or_cluster_is_refused(
        self, agent: tuple[NodeagentService, DryRunApplier, Observer, Runtime], forger: Forgers
    ) -> None:
        """West's LbProgrammed (VIP 8.8.8.8), and web's with a VIP inside the pools, both on
        east's subject of another Service: refused before the agent, nothing changes."""
        _, applier, _, rt = agent
        lbdriver = await forger(FORGER["lb"])
        api = service_subject("lb", "east", "default", "api")
        await forge(lbdriver, api, programmed("web", "8.8.8.8", cluster="west"))
        await forge(lbdriver, api, programmed("web", "198.51.100.66"))
        await rejected(rt, "lb", 2)
        assert on_lo(applier) == ["198.51.100.10"]
        assert counted(rt, "nodeagent_rejected_vips_total") == 0


# --- the lbdriver: forged NodeSnapshot, VipAssigned, VipReleasing ---------------------

CLUSTER = "prod"


def node(name: str, *addresses: str, cluster: str = CLUSTER) -> NodeSnapshot:
    return NodeSnapshot(cluster=cluster, node=name, addresses=addresses)


def assigned(name: str = "web", cluster: str = CLUSTER) -> VipAssigned:
    return VipAssigned(
        cluster=cluster,
        namespace="shop",
        name=name,
        uid=f"uid-{name}",
        vips=("198.51.100.10",),
        pool="lab",
        appliance_group="default",
        ports=(ServicePort(port=80),),
    )


@pytest.fixture
async def lb(make_runtime: RuntimeFactory, forger: Forgers) -> AsyncIterator[LbHarness]:
    """An lbdriver (node networks 192.0.2.0/24) programming ``shop/web`` on n1 and n2."""
    harness = LbHarness(
        make_runtime,
        await forger(watcher(CLUSTER)),
        defaults={
            "appliances": (ApplianceSettings(name="sim-a"),),
            "coalesce_window_ms": 1.0,
            "node_networks": ("192.0.2.0/24",),
        },
    )
    await harness.observe()
    ipam = await forger(FORGER["vip"])
    await harness.publish(node("n1", "192.0.2.11"), node("n2", "192.0.2.12"))
    await harness.start()
    await ipam.bus.publish(assigned())
    await harness.programmed("web")
    try:
        yield harness
    finally:
        await harness.close()


def members(h: LbHarness) -> set[tuple[str, str]]:
    return {(m.node, m.address) for vs in h.servers().values() for m in vs.members}


HEALTHY = {("n1", "192.0.2.11"), ("n2", "192.0.2.12")}


class TestForgedNodeSnapshot:
    async def test_an_address_outside_the_node_networks_never_becomes_a_member(
        self, lb: LbHarness
    ) -> None:
        """The watcher's identity points n1 at 203.0.113.66 on n1's own subject: the
        address is refused (counted), n1 keeps 192.0.2.11, the appliance is unchanged."""
        (service,) = lb.services
        await forge(lb.publisher, node_subject("node", CLUSTER, "n1"), node("n1", "203.0.113.66"))
        await eventually(
            lambda: (
                counted(
                    service.runtime,
                    "lbdriver_refused_node_addresses_total",
                    ("cluster",),
                    cluster=CLUSTER,
                )
                == 1
            ),
            what="the address refused",
        )
        await lb.publish(node("n3", "192.0.2.13"))  # a fence: a change that is applied
        await eventually(lambda: ("n3", "192.0.2.13") in members(lb), what="n3 a member")
        assert members(lb) == HEALTHY | {("n3", "192.0.2.13")}
        assert all(m.address != "203.0.113.66" for r in lb.reports(LbProgrammed) for m in r.members)

    async def test_a_snapshot_of_another_node_or_cluster_is_refused(self, lb: LbHarness) -> None:
        """n1 pointed at 192.0.2.66 (inside the networks) on n2's subject, and a west
        node on prod's: refused before the lbdriver, the members unchanged."""
        (service,) = lb.services
        n2 = node_subject("node", CLUSTER, "n2")
        await forge(lb.publisher, n2, node("n1", "192.0.2.66"))
        await forge(lb.publisher, n2, node("n2", "192.0.2.66", cluster="west"))
        await rejected(service.runtime, "node", 2)
        assert members(lb) == HEALTHY


class TestForgedVipMessages:
    async def test_a_vip_assigned_for_another_cluster_programs_nothing(
        self, lb: LbHarness, forger: Forgers
    ) -> None:
        """ipam's identity puts prod's VIP into a VipAssigned of west, on prod's subject:
        refused, no west partition, no west LbProgrammed."""
        (service,) = lb.services
        ipam = await forger(FORGER["vip"])
        await forge(ipam, service_subject("vip", CLUSTER, "shop", "web"), assigned(cluster="west"))
        await rejected(service.runtime, "vip")
        assert lb.sim.virtual_servers("west") == {}
        assert not [m for m in lb.log if m.cluster == "west"]
        assert members(lb) == HEALTHY

    async def test_a_vip_releasing_for_another_service_takes_nothing_off(
        self, lb: LbHarness, forger: Forgers
    ) -> None:
        """VipReleasing of shop/web sent on shop/api's subject: refused, web stays
        programmed, no LbRemoved."""
        (service,) = lb.services
        ipam = await forger(FORGER["vip"])
        before = dict(lb.servers())
        going = VipReleasing(
            cluster=CLUSTER,
            namespace="shop",
            name="web",
            uid="uid-web",
            vips=("198.51.100.10",),
            appliance_group="default",
        )
        await forge(ipam, service_subject("vip", CLUSTER, "shop", "api"), going)
        await rejected(service.runtime, "vip")
        assert lb.servers() == before
        assert lb.reports(LbRemoved) == []


# --- ipam: forged ServiceGone, snapshots of "ghost", LbRemoved ------------------------


def snapshot(name: str, cluster: str = "east", **kw: Any) -> ServiceSnapshot:
    fields: dict[str, Any] = {
        "cluster": cluster,
        "namespace": "shop",
        "name": name,
        "uid": f"uid-{name}",
        "resource_version": "1",
        "ports": (ServicePort(port=80),),
        **kw,
    }
    return msgspec.convert(fields, ServiceSnapshot)


@pytest.fixture
async def ipam(make_runtime: RuntimeFactory) -> AsyncIterator[IpamService]:
    """ipam serving east and west (``ipam.clusters``) from one pool."""
    rt = await make_runtime("ipam")
    service = IpamService(IpamSettings(pools=(POOL,), clusters=("east", "west")), rt)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def vips(ipam: IpamService) -> Observer:
    seen = Observer()
    await seen.attach(ipam.runtime, "vipwire.*.vip.>")
    return seen


async def claims(rt: Runtime) -> dict[str, bytes | None]:
    store = IpamStore(await rt.bus.kv(IPAM_BUCKET))
    return {k: e.value for k, e in (await store.scan("addr.")).items()}


async def assigned_to(seen: Observer, name: str, cluster: str = "east") -> VipAssigned:
    await eventually(
        lambda: any(m.name == name and m.cluster == cluster for m in seen.of(VipAssigned)),
        what=f"VipAssigned for {cluster}/shop/{name}",
    )
    return next(m for m in seen.of(VipAssigned) if m.name == name and m.cluster == cluster)


class TestForgedIpamInput:
    async def test_a_service_gone_for_another_clusters_service_frees_nothing(
        self, ipam: IpamService, vips: Observer, forger: Forgers
    ) -> None:
        """East's watcher sends west/shop/web's ServiceGone on east's subject: refused;
        west keeps its VIP, and a Service asking for that address does not get it."""
        east, west = await forger(watcher("east")), await forger(watcher("west"))
        await west.bus.publish(snapshot("web", cluster="west"))
        (live,) = (await assigned_to(vips, "web", "west")).vips
        before = await claims(ipam.runtime)
        gone = ServiceGone(cluster="west", namespace="shop", name="web", uid="uid-web")
        await forge(east, service_subject("service", "east", "shop", "web"), gone)
        await rejected(ipam.runtime, "service")
        await east.bus.publish(snapshot("thief", requested_ips=(live,)))
        await eventually(
            lambda: any(m.name == "thief" for m in vips.messages), what="an answer to the thief"
        )
        assert all(live not in getattr(m, "vips", ()) for m in vips.messages if m.name == "thief")
        assert not vips.of(VipReleased)
        after = await claims(ipam.runtime)
        assert {k: v for k, v in after.items() if k in before} == before

    async def test_snapshots_of_an_unknown_cluster_allocate_nothing(
        self, ipam: IpamService, vips: Observer, forger: Forgers, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Five Services of cluster "ghost" (a watcher identity of its own): refused
        (counted 5, logged once), no claim, nothing published into ghost's subjects."""
        ghost = await forger(watcher("ghost"))
        everything = Observer()
        await everything.attach(ipam.runtime, "vipwire.ghost.>")
        with caplog.at_level(logging.WARNING, logger="vipwire.ipam"):
            for i in range(5):
                await ghost.bus.publish(snapshot(f"s{i}", cluster="ghost"))
            await eventually(
                lambda: (
                    counted(
                        ipam.runtime, "ipam_refused_total", ("reason",), reason="unknown-cluster"
                    )
                    == 5
                ),
                what="five snapshots refused",
            )
        assert await claims(ipam.runtime) == {}
        assert [m for m in everything.messages if not isinstance(m, ServiceSnapshot)] == []
        lines = [r.getMessage() for r in caplog.records if "'ghost'" in r.getMessage()]
        assert len(lines) == 1 and "ipam.clusters" in lines[0], lines

    async def test_an_lb_removed_for_another_service_releases_nothing_while_blocked(
        self, ipam: IpamService, vips: Observer, forger: Forgers
    ) -> None:
        """web is going away and its cleanup waits for the lbdriver; the lbdriver's
        identity sends web's LbRemoved on api's subject: refused, the claim is held, no
        VipReleased."""
        east, lbdriver = await forger(watcher("east")), await forger(FORGER["lb"])
        await east.bus.publish(snapshot("web"))
        (vip,) = (await assigned_to(vips, "web")).vips
        await east.bus.publish(snapshot("web", deleting=True))
        await eventually(lambda: vips.of(VipReleasing), what="VipReleasing for web")
        before = await claims(ipam.runtime)
        removed = LbRemoved(
            cluster="east",
            namespace="shop",
            name="web",
            uid="uid-web",
            appliance="sim-1",
            vips=(vip,),
        )
        await forge(lbdriver, service_subject("lb", "east", "shop", "api"), removed)
        await rejected(ipam.runtime, "lb")
        assert await claims(ipam.runtime) == before
        assert not vips.of(VipReleased)
