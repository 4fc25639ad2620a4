"""The forgeries of issue 15, replayed against the receivers over a real nats-server
started with the permissions ``vipwire nats config`` generates.

Every service and forger logs in as its own identity. Each forger publishes on a
subject its identity may use (the lbdriver on ``lb``,
a watcher on its own cluster's ``node`` and ``service``, ipam on ``vip``), but
with a payload that disagrees with the subject, an address outside the pools, or
a member outside the node networks: the receiver refuses it, counts it, and the
state after is what it was before. The rejection counter is each test's fence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, NamedTuple, TypeVar

import msgspec
import pytest

from support.secure_nats import SecuredNats
from vipwire.bus import DONE, ConsumerSpec, Delivery, Verdict
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
    encode,
    node_subject,
    service_subject,
    subject_for,
)
from vipwire.ipam import IpamService, IpamSettings, PoolSettings
from vipwire.ipam.io.bucket import IpamStore
from vipwire.lbdriver import ApplianceSettings, LbdriverService, LbdriverSettings, SimAppliance
from vipwire.lbdriver.io.feed import FeedPublisher
from vipwire.nodeagent import DryRunApplier, NodeagentService, NodeagentSettings
from vipwire.runtime import CommonSettings, Runtime
from vipwire.testing import eventually

RuntimeFactory = Callable[[str], Awaitable[Runtime]]
M = TypeVar("M", bound=Message)
#: Which identity may publish a family (decision 6 of the plan): each forger below
#: publishes only where its identity is allowed.
FORGER = {"lb": "lbdriver", "vip": "ipam", "pools": "ipam"}
OPERATOR = "operator-admin"
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
    """Every contract message stored on the stream under one filter from now on, read
    as an operator may (a named consumer with that one filter; core subscriptions on
    the stream's subjects are nobody's right). Refused payloads are not handed over."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def attach(self, rt: Runtime, subjects: str) -> None:
        async def on_delivery(d: Delivery) -> Verdict:
            self.messages.append(d.message)
            return DONE

        spec = ConsumerSpec(filters=(subjects,), deliver="new", ack="none", traced=False)
        self._consumer = rt.bus.consumer(spec, on_delivery)
        await self._consumer.start()

    async def detach(self) -> None:
        await self._consumer.stop()

    def of(self, kind: type[M]) -> list[M]:
        return [m for m in self.messages if isinstance(m, kind)]


Identities = Callable[[str], Awaitable[Runtime]]


@pytest.fixture
async def bus_as(secured_nats: SecuredNats) -> AsyncIterator[Identities]:
    """A runtime connected as one identity (``ipam``, ``lbdriver``, ``watcher-east``,
    ``nodeagent-east-n1``, ``operator-admin``) to a nats-server started with the
    permissions ``vipwire nats config`` generates; one per identity. The stream is
    declared first, as its steward (ipam) does."""
    await secured_nats.declare()
    made: dict[str, Runtime] = {}

    async def make(identity: str) -> Runtime:
        if identity not in made:
            settings = CommonSettings(bus=secured_nats.settings(identity))
            runtime = Runtime(identity, settings, connect_attempts=20)
            await runtime.start()
            made[identity] = runtime
        return made[identity]

    yield make
    for runtime in reversed(made.values()):
        await runtime.stop()


@pytest.fixture
async def forger(bus_as: Identities) -> Identities:
    """The forger: a connection as an identity allowed on the subject it forges on."""
    return bus_as


Observe = Callable[[str], Awaitable[Observer]]


@pytest.fixture
async def observe(bus_as: Identities) -> AsyncIterator[Observe]:
    """Observers of the stream as the operator; unsubscribed at teardown."""
    made: list[Observer] = []

    async def make(subjects: str) -> Observer:
        seen = Observer()
        await seen.attach(await bus_as(OPERATOR), subjects)
        made.append(seen)
        return seen

    yield make
    for seen in made:
        await seen.detach()


# --- the node agent: forged LbProgrammed ----------------------------------------------


@pytest.fixture(params=["table", "lb"])
def feed(request: pytest.FixtureRequest) -> Literal["lb", "table"]:
    """The agent's ``feed``: over the node feed (the lbdriver's publisher, as the
    lbdriver identity, beside it), or the old ``lb`` subjects."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def agent(
    bus_as: Identities,
    forger: Identities,
    observe: Observe,
    monkeypatch: pytest.MonkeyPatch,
    feed: Literal["lb", "table"],
) -> AsyncIterator[tuple[NodeagentService, DryRunApplier, Observer, Runtime]]:
    """A node agent of east serving ``default/web`` on 198.51.100.10, pools published."""
    monkeypatch.delenv("VIPWIRE_NODE", raising=False)
    ipam = await forger(FORGER["pools"])
    lbdriver = await forger(FORGER["lb"])
    await ipam.bus.publish(PoolsServed(cluster="east", ranges=("198.51.100.0/24",)))
    last = await lbdriver.bus.publish(programmed("web", "198.51.100.10"))
    publisher = None
    if feed == "table":
        publisher = FeedPublisher(lbdriver, window_ms=5, is_leader=lambda: True)
        await publisher.start()
        await asyncio.wait_for(publisher.published(last), 10)
    rt = await bus_as("nodeagent-east-n1")
    reports = await observe("vipwire.east.applied.>")
    applier = DryRunApplier()
    # Reports paced at 20 ms, not the default 0.5 s: a report is what the tests wait for.
    settings = NodeagentSettings(
        cluster="east",
        node="n1",
        coalesce_ms=5,
        resync_interval_s=0,
        report_interval_s=0.02,
        feed=feed,
    )
    service = NodeagentService(settings, rt, applier)
    await service.start()
    try:
        await service.wait_ready(5)
        assert on_lo(applier) == ["198.51.100.10"]
        yield service, applier, reports, rt
    finally:
        await service.stop()
        if publisher is not None:
            await publisher.stop()


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
        self, agent: tuple[NodeagentService, DryRunApplier, Observer, Runtime], forger: Identities
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

    # Over the feed the lbdriver's publisher refuses them (its consumer), not the agent.
    @pytest.mark.parametrize("feed", ["lb"], indirect=True)
    async def test_a_payload_for_another_service_or_cluster_is_refused(
        self, agent: tuple[NodeagentService, DryRunApplier, Observer, Runtime], forger: Identities
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

CLUSTER = "east"


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


class Lb(NamedTuple):
    service: LbdriverService
    sim: SimAppliance
    reports: Observer
    watcher: Runtime

    def members(self) -> set[tuple[str, str]]:
        return {
            (m.node, m.address)
            for vs in self.sim.virtual_servers(CLUSTER).values()
            for m in vs.members
        }


@pytest.fixture
async def lb(bus_as: Identities, observe: Observe) -> AsyncIterator[Lb]:
    """An lbdriver (node networks 192.0.2.0/24) programming east's ``shop/web`` on n1, n2."""
    east, ipam = await bus_as(watcher(CLUSTER)), await bus_as(FORGER["vip"])
    reports = await observe("vipwire.*.lb.>")
    await east.bus.publish(node("n1", "192.0.2.11"))
    await east.bus.publish(node("n2", "192.0.2.12"))
    sim = SimAppliance("sim-a")
    settings = LbdriverSettings(
        appliances=(ApplianceSettings(name="sim-a"),),
        coalesce_window_ms=1.0,
        node_networks=("192.0.2.0/24",),
    )
    service = LbdriverService(settings, await bus_as("lbdriver"), {"sim-a": sim})
    await service.start()
    try:
        await ipam.bus.publish(assigned())
        harness = Lb(service, sim, reports, east)
        await eventually(lambda: harness.members() == HEALTHY, what="web programmed on n1, n2")
        yield harness
    finally:
        await service.stop()


HEALTHY = {("n1", "192.0.2.11"), ("n2", "192.0.2.12")}


class TestForgedNodeSnapshot:
    async def test_an_address_outside_the_node_networks_never_becomes_a_member(
        self, lb: Lb
    ) -> None:
        """The watcher's identity points n1 at 203.0.113.66 on n1's own subject: the
        address is refused (counted), n1 keeps 192.0.2.11, the appliance is unchanged."""
        rt = lb.service.runtime
        await forge(lb.watcher, node_subject("node", CLUSTER, "n1"), node("n1", "203.0.113.66"))
        await eventually(
            lambda: (
                counted(rt, "lbdriver_refused_node_addresses_total", ("cluster",), cluster=CLUSTER)
                == 1
            ),
            what="the address refused",
        )
        await lb.watcher.bus.publish(node("n3", "192.0.2.13"))  # a fence: a change applied
        await eventually(lambda: ("n3", "192.0.2.13") in lb.members(), what="n3 a member")
        assert lb.members() == HEALTHY | {("n3", "192.0.2.13")}
        assert all(
            m.address != "203.0.113.66" for r in lb.reports.of(LbProgrammed) for m in r.members
        )

    async def test_a_snapshot_of_another_node_or_cluster_is_refused(self, lb: Lb) -> None:
        """n1 pointed at 192.0.2.66 (inside the networks) on n2's subject, and a west
        node on east's: refused before the lbdriver, the members unchanged."""
        n2 = node_subject("node", CLUSTER, "n2")
        await forge(lb.watcher, n2, node("n1", "192.0.2.66"))
        await forge(lb.watcher, n2, node("n2", "192.0.2.66", cluster="west"))
        await rejected(lb.service.runtime, "node", 2)
        assert lb.members() == HEALTHY


class TestForgedVipMessages:
    async def test_a_vip_assigned_for_another_cluster_programs_nothing(
        self, lb: Lb, forger: Identities
    ) -> None:
        """ipam's identity puts east's VIP into a VipAssigned of west, on east's subject:
        refused, no west partition, no west LbProgrammed."""
        ipam = await forger(FORGER["vip"])
        await forge(ipam, service_subject("vip", CLUSTER, "shop", "web"), assigned(cluster="west"))
        await rejected(lb.service.runtime, "vip")
        assert lb.sim.virtual_servers("west") == {}
        assert not [m for m in lb.reports.messages if getattr(m, "cluster", "") == "west"]
        assert lb.members() == HEALTHY

    async def test_a_vip_releasing_for_another_service_takes_nothing_off(
        self, lb: Lb, forger: Identities
    ) -> None:
        """VipReleasing of shop/web sent on shop/api's subject: refused, web stays
        programmed, no LbRemoved."""
        ipam = await forger(FORGER["vip"])
        before = lb.sim.virtual_servers(CLUSTER)
        going = VipReleasing(
            cluster=CLUSTER,
            namespace="shop",
            name="web",
            uid="uid-web",
            vips=("198.51.100.10",),
            appliance_group="default",
        )
        await forge(ipam, service_subject("vip", CLUSTER, "shop", "api"), going)
        await rejected(lb.service.runtime, "vip")
        assert lb.sim.virtual_servers(CLUSTER) == before
        assert lb.reports.of(LbRemoved) == []


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
def served() -> tuple[str, ...]:
    """The clusters ipam serves (``ipam.clusters``)."""
    return ("east", "west")


@pytest.fixture
async def ipam(bus_as: Identities, served: tuple[str, ...]) -> AsyncIterator[IpamService]:
    """ipam serving ``served`` from one pool."""
    service = IpamService(IpamSettings(pools=(POOL,), clusters=served), await bus_as("ipam"))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def vips(ipam: IpamService, observe: Observe) -> Observer:
    return await observe("vipwire.*.vip.>")


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
        self, ipam: IpamService, vips: Observer, forger: Identities
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
            lambda: any(getattr(m, "name", "") == "thief" for m in vips.messages),
            what="an answer to the thief",
        )
        assert all(
            live not in getattr(m, "vips", ())
            for m in vips.messages
            if getattr(m, "name", "") == "thief"
        )
        assert not vips.of(VipReleased)
        after = await claims(ipam.runtime)
        assert {k: v for k, v in after.items() if k in before} == before

    @pytest.mark.parametrize("served", [("east",)])
    async def test_snapshots_of_an_unknown_cluster_allocate_nothing(
        self,
        ipam: IpamService,
        vips: Observer,
        forger: Identities,
        observe: Observe,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Five Services of a cluster ipam does not serve (the issue's "ghost": here west,
        whose watcher may publish on west's subjects): refused (counted 5, logged once),
        no claim, nothing published into that cluster's subjects."""
        ghost = await forger(watcher("west"))
        everything = await observe("vipwire.west.>")
        with caplog.at_level(logging.WARNING, logger="vipwire.ipam"):
            for i in range(5):
                await ghost.bus.publish(snapshot(f"s{i}", cluster="west"))
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
        lines = [r.getMessage() for r in caplog.records if "'west'" in r.getMessage()]
        assert len(lines) == 1 and "ipam.clusters" in lines[0], lines

    async def test_an_lb_removed_for_another_service_releases_nothing_while_blocked(
        self, ipam: IpamService, vips: Observer, forger: Identities
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
