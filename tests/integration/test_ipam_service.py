"""ipam against a real nats-server: assign, release, restart, replicas, exhaustion."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import msgspec
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vipwire.bus import DONE, Delivery
from vipwire.contracts import (
    IPAM_BUCKET,
    STREAM,
    LbRemoved,
    Message,
    ServiceGone,
    ServicePort,
    ServiceSnapshot,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
    decode,
    parse_subject,
    subject_for,
)
from vipwire.ipam import Claim, IpamService, IpamSettings, PoolSettings, ServiceRecord
from vipwire.runtime import Runtime
from vipwire.testing import eventually

RuntimeFactory = Callable[[str], Awaitable[Runtime]]
IpamFactory = Callable[..., Awaitable[IpamService]]
M = TypeVar("M", bound=Message)

TINY = PoolSettings(name="tiny", addresses=("198.51.100.10-198.51.100.11",))
POOL = PoolSettings(name="lab", addresses=("192.0.2.0/24", "2001:db8::/120"), appliance_group="g1")


def snapshot(
    name: str, uid: str | None = None, cluster: str = "east", **kw: object
) -> ServiceSnapshot:
    fields: dict[str, object] = {
        "cluster": cluster,
        "namespace": "shop",
        "name": name,
        "uid": uid or f"uid-{name}",
        "resource_version": "1",
        "ports": (ServicePort(port=80),),
    }
    fields.update(kw)
    return msgspec.convert(fields, ServiceSnapshot, from_attributes=True)


def lb_removed(name: str, uid: str | None = None, vips: tuple[str, ...] = ()) -> LbRemoved:
    return LbRemoved(
        cluster="east",
        namespace="shop",
        name=name,
        uid=uid or f"uid-{name}",
        appliance="sim-1",
        vips=vips,
    )


def gone(name: str) -> ServiceGone:
    return ServiceGone(cluster="east", namespace="shop", name=name, uid=f"uid-{name}")


class Seen:
    """Every ``vip`` message, as the bus carried it (plain core NATS, no consumer)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def on_msg(self, msg: Msg) -> None:
        self.messages.append(decode(msg.subject, msg.data))

    def of(self, kind: type[M], name: str | None = None, cluster: str = "east") -> list[M]:
        return [
            m
            for m in self.messages
            if isinstance(m, kind)
            and m.cluster == cluster
            and (name is None or getattr(m, "name", None) == name)
        ]

    async def wait(self, kind: type[M], name: str, count: int = 1, cluster: str = "east") -> M:
        """The ``count``-th message of a kind about one Service, once it has come."""
        await eventually(lambda: len(self.of(kind, name, cluster)) >= count)
        return self.of(kind, name, cluster)[count - 1]


@pytest.fixture
async def bus(make_runtime: RuntimeFactory) -> Runtime:
    """A runtime standing in for the watcher and lbdriver."""
    return await make_runtime("peer")


@pytest.fixture
async def seen(bus: Runtime) -> AsyncIterator[Seen]:
    seen = Seen()
    sub = await bus.bus.nc.subscribe("vipwire.*.vip.>", cb=seen.on_msg)
    yield seen
    await sub.unsubscribe()


@pytest.fixture
async def make_ipam(make_runtime: RuntimeFactory) -> AsyncIterator[IpamFactory]:
    """Start IpamServices (each on its own runtime); stop them all at teardown."""
    started: list[IpamService] = []

    async def make(*pools: PoolSettings, name: str = "ipam") -> IpamService:
        runtime = await make_runtime(name)
        service = IpamService(IpamSettings(pools=pools or (POOL,)), runtime)
        await service.start()
        assert service.readiness() is None
        started.append(service)
        return service

    yield make
    for service in started:
        await service.stop()


async def kv_state(rt: Runtime) -> tuple[dict[str, Claim], dict[str, ServiceRecord]]:
    """The bucket as it is: claims by key, Service records by key."""
    kv = await rt.bus.kv(IPAM_BUCKET)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return {}, {}
    claims: dict[str, Claim] = {}
    records: dict[str, ServiceRecord] = {}
    for key in keys:
        value = (await kv.get(key)).value or b""
        if key.startswith("addr."):
            claims[key] = msgspec.json.decode(value, type=Claim)
        else:
            records[key] = msgspec.json.decode(value, type=ServiceRecord)
    return claims, records


async def handled(ipam: IpamService, count: int) -> None:
    """Wait until the ipam consumer has finished ``count`` messages."""
    done = ipam.runtime.metrics.counter("bus_handled_total", "", ["consumer", "verdict"])
    await eventually(lambda: done.value(consumer="ipam", verdict="done") >= count)


def addr(vip: str) -> str:
    return "addr." + vip.replace(".", "_").replace(":", "-")


class TestAssign:
    async def test_snapshot_gets_a_vip_from_the_pool(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """A live snapshot gets VipAssigned with a pool address, its ports, and KV claims."""
        ipam = await make_ipam()
        await bus.bus.publish(
            snapshot("web", external_traffic_policy="Local", health_check_node_port=31000)
        )
        assigned = await seen.wait(VipAssigned, "web")
        (vip,) = assigned.vips
        assert ipaddress.ip_address(vip) in ipaddress.ip_network("192.0.2.0/24")
        assert (assigned.pool, assigned.appliance_group) == ("lab", "g1")
        assert assigned.ports == (ServicePort(port=80),)
        assert (assigned.external_traffic_policy, assigned.health_check_node_port) == (
            "Local",
            31000,
        )
        claims, records = await kv_state(bus)
        assert claims == {
            addr(vip): Claim(
                cluster="east", namespace="shop", name="web", uid="uid-web", pool="lab"
            )
        }
        assert records["svc.east.shop.web"] == ServiceRecord(
            uid="uid-web", vips=(vip,), pool="lab", appliance_group="g1"
        )
        metrics = ipam.runtime.metrics.expose()
        assert 'vipwire_ipam_allocations_total{pool="lab"} 1' in metrics
        assert 'vipwire_ipam_pool_addresses_in_use{pool="lab",family="IPv4"} 1' in metrics
        assert 'vipwire_ipam_pool_addresses{pool="lab",family="IPv6"} 256' in metrics

    async def test_vip_assigned_continues_the_snapshot_trace(
        self,
        bus: Runtime,
        seen: Seen,
        make_ipam: IpamFactory,
        span_exporter: InMemorySpanExporter,
    ) -> None:
        """The VipAssigned publish is a span of the trace the snapshot's publisher started."""
        await make_ipam()
        await bus.bus.publish(snapshot("web"))
        await seen.wait(VipAssigned, "web")
        await eventually(
            lambda: "publish vip" in {s.name for s in span_exporter.get_finished_spans()}
        )
        spans = {s.name: s for s in span_exporter.get_finished_spans()}
        assert spans["publish vip"].context.trace_id == spans["publish service"].context.trace_id

    async def test_a_changed_snapshot_keeps_its_vip_and_carries_new_ports(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """VipAssigned is repeated with the new ports; the VIP never changes."""
        await make_ipam()
        await bus.bus.publish(snapshot("web"))
        first = await seen.wait(VipAssigned, "web")
        await bus.bus.publish(snapshot("web", ports=(ServicePort(port=443),)))
        second = await seen.wait(VipAssigned, "web", count=2)
        assert second.vips == first.vips and second.ports == (ServicePort(port=443),)

    async def test_dual_stack_and_requested_ips(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """RequireDualStack gets one VIP per family; a requested address is given as asked."""
        await make_ipam()
        await bus.bus.publish(
            snapshot("dual", ip_families=("IPv6", "IPv4"), ip_family_policy="RequireDualStack")
        )
        await bus.bus.publish(snapshot("pinned", requested_ips=("192.0.2.77",)))
        dual = await seen.wait(VipAssigned, "dual")
        pinned = await seen.wait(VipAssigned, "pinned")
        assert [ipaddress.ip_address(v).version for v in dual.vips] == [6, 4]
        assert pinned.vips == ("192.0.2.77",)
        await bus.bus.publish(snapshot("thief", requested_ips=("192.0.2.77",)))
        failed = await seen.wait(VipFailed, "thief")
        assert "east/shop/pinned" in failed.message

    async def test_a_replaced_service_releases_the_old_claims_first(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """Same name, new uid: the old incarnation's claims go, the new one gets its own."""
        await make_ipam()
        await bus.bus.publish(snapshot("web", requested_ips=("192.0.2.9",)))
        await seen.wait(VipAssigned, "web")
        await bus.bus.publish(snapshot("web", uid="second", requested_ips=("192.0.2.9",)))
        again = await seen.wait(VipAssigned, "web", count=2)
        assert (again.uid, again.vips) == ("second", ("192.0.2.9",))
        claims, records = await kv_state(bus)
        assert [c.uid for c in claims.values()] == ["second"]
        assert records["svc.east.shop.web"].uid == "second"


class TestRelease:
    async def test_deletion_withdraws_then_releases_on_lb_removed(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """deleting → VipReleasing (claims held); LbRemoved → claims gone, VipReleased."""
        await make_ipam()
        await bus.bus.publish(snapshot("web"))
        assigned = await seen.wait(VipAssigned, "web")
        await bus.bus.publish(snapshot("web", deleting=True))
        releasing = await seen.wait(VipReleasing, "web")
        assert (releasing.vips, releasing.appliance_group) == (assigned.vips, "g1")
        claims, records = await kv_state(bus)
        assert set(claims) == {addr(assigned.vips[0])}
        assert records["svc.east.shop.web"].state == "releasing"
        assert not seen.of(VipReleased, "web")

        await bus.bus.publish(lb_removed("web", vips=assigned.vips))
        released = await seen.wait(VipReleased, "web")
        assert released.vips == assigned.vips
        assert await kv_state(bus) == ({}, {})

    async def test_gone_without_claims_is_released_at_once(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """A Service that never held an address is released without an appliance round trip."""
        await make_ipam()
        await bus.bus.publish(ServiceGone(cluster="east", namespace="shop", name="ghost", uid="u"))
        released = await seen.wait(VipReleased, "ghost")
        assert released.vips == ()
        assert not seen.of(VipReleasing)

    async def test_deleting_a_new_incarnation_also_withdraws_an_outlived_old_one(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """Old uid recorded, new uid deleted before it was ever live: the new one is released
        at once, the old one goes through withdrawal."""
        await make_ipam()
        await bus.bus.publish(snapshot("web", uid="old"))
        first = await seen.wait(VipAssigned, "web")
        await bus.bus.publish(snapshot("web", uid="new", deleting=True))
        releasing = await seen.wait(VipReleasing, "web")
        released = await seen.wait(VipReleased, "web")
        assert (releasing.uid, releasing.vips) == ("old", first.vips)
        assert (released.uid, released.vips) == ("new", ())
        await bus.bus.publish(lb_removed("web", uid="old"))
        old = await seen.wait(VipReleased, "web", count=2)
        assert (old.uid, old.vips) == ("old", first.vips)
        assert await kv_state(bus) == ({}, {})

    async def test_a_service_that_comes_back_before_removal_keeps_its_vip(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """deleting then live again (class changed back): same VIP, a late LbRemoved is ignored."""
        ipam = await make_ipam()
        await bus.bus.publish(snapshot("web"))
        first = await seen.wait(VipAssigned, "web")
        await bus.bus.publish(snapshot("web", deleting=True))
        await seen.wait(VipReleasing, "web")
        await bus.bus.publish(snapshot("web"))
        back = await seen.wait(VipAssigned, "web", count=2)
        assert back.vips == first.vips
        await bus.bus.publish(lb_removed("web"))
        await handled(ipam, 4)
        assert not seen.of(VipReleased, "web")
        claims, records = await kv_state(bus)
        assert addr(first.vips[0]) in claims and records["svc.east.shop.web"].state == "active"


class TestDurability:
    async def test_restart_keeps_allocations(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """A new ipam on the same bus gives a re-sent Service its VIP and nobody else that VIP."""
        first = await make_ipam(name="ipam-1")
        for name in ("a", "b", "c"):
            await bus.bus.publish(snapshot(name))
        before = {}
        for name in ("a", "b", "c"):
            msg = await seen.wait(VipAssigned, name)
            before[name] = msg.vips
        await first.stop()

        await make_ipam(name="ipam-2")
        await bus.bus.publish(snapshot("b", ports=(ServicePort(port=8080),)))
        await bus.bus.publish(snapshot("d"))
        again = await seen.wait(VipAssigned, "b", count=2)
        newcomer = await seen.wait(VipAssigned, "d")
        assert again.vips == before["b"]
        assert not set(newcomer.vips) & {v for vips in before.values() for v in vips}

    async def test_two_replicas_never_own_an_address_twice(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """Two replicas racing on 200 Services of two clusters: every VIP owned exactly once."""
        a = await make_ipam(name="ipam-a")
        b = await make_ipam(name="ipam-b")
        snaps = [snapshot(f"s{i}", cluster=c) for i in range(100) for c in ("east", "west")]
        await asyncio.gather(*(bus.bus.publish(s) for s in snaps))
        await eventually(
            lambda: (
                len({(m.cluster, m.name) for m in seen.messages if isinstance(m, VipAssigned)})
                == 200
            ),
            timeout=15,
        )
        claims, records = await kv_state(bus)
        assert len(claims) == 200 and len(records) == 200
        vips = [v for r in records.values() for v in r.vips]
        assert len(vips) == len(set(vips)) == 200
        for key, record in records.items():
            _, cluster, _, name = key.split(".")
            (vip,) = record.vips
            claim = claims[addr(vip)]
            assert (claim.cluster, claim.name, claim.uid) == (cluster, name, record.uid)
        published: dict[str, set[tuple[str, ...]]] = {}
        for m in seen.messages:
            if isinstance(m, VipAssigned):
                published.setdefault(f"{m.cluster}/{m.name}", set()).add(m.vips)
        assert all(len(v) == 1 for v in published.values()), "a Service saw two different VIPs"
        handled = [
            s.runtime.metrics.expose().count('consumer="ipam",verdict="done"') for s in (a, b)
        ]
        assert all(handled), "both replicas took part"


class TestExhaustion:
    @pytest.mark.parametrize("replicas", [1, 2])
    async def test_exhausted_pool_fails_then_hands_out_a_freed_address(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory, replicas: int
    ) -> None:
        """VipFailed names the pool and its usage; when an address frees, the waiter gets it
        (whichever replica released it)."""
        for i in range(replicas):
            await make_ipam(TINY, name=f"ipam-{i}")
        await bus.bus.publish(snapshot("a"))
        await bus.bus.publish(snapshot("b"))
        a = await seen.wait(VipAssigned, "a")
        await seen.wait(VipAssigned, "b")
        await bus.bus.publish(snapshot("c"))
        failed = await seen.wait(VipFailed, "c")
        assert failed.reason == "AllocationFailed"
        assert "'tiny' (2/2 in use)" in failed.message

        await bus.bus.publish(gone("a"))
        await seen.wait(VipReleasing, "a")
        assert not seen.of(VipAssigned, "c"), "the address is held until the appliance is clean"
        await bus.bus.publish(lb_removed("a"))
        late = await seen.wait(VipAssigned, "c")
        assert late.vips == a.vips

    async def test_a_restart_does_not_strand_a_waiting_service(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """Services left waiting by a stopped ipam are found by the next one and served."""
        first = await make_ipam(TINY, name="ipam-1")
        await bus.bus.publish(snapshot("a"))
        await bus.bus.publish(snapshot("b"))
        await seen.wait(VipAssigned, "a")
        await seen.wait(VipAssigned, "b")
        await bus.bus.publish(snapshot("c"))
        await seen.wait(VipFailed, "c")
        await first.stop()
        second = await make_ipam(TINY, name="ipam-2")
        assert second.runtime.metrics.expose().count("vipwire_ipam_waiting_services 1") == 1
        await bus.bus.publish(snapshot("b", deleting=True))
        await seen.wait(VipReleasing, "b")
        await bus.bus.publish(lb_removed("b"))
        late = await seen.wait(VipAssigned, "c")
        assert late.uid == "uid-c"


async def stored(rt: Runtime, subject: str) -> int:
    """How many messages the stream holds on one subject (duplicates are dropped)."""
    info = await rt.bus.js.stream_info(STREAM, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


class TestIdempotency:
    async def test_every_step_handled_again_does_no_harm(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """Each message handled twice more: same KV, and no extra message on the stream."""
        ipam = await make_ipam()
        vip_subject = "vipwire.east.vip.shop.web"

        async def again(message: Message, seq: int) -> None:
            subject = subject_for(message)
            delivery = Delivery(
                subject=parse_subject(subject),
                message=message,
                seq=seq,
                num_delivered=2,
                headers={},
            )
            before = await kv_state(bus)
            for _ in range(2):
                assert await ipam._handle(delivery) == DONE
            assert await kv_state(bus) == before

        live = snapshot("web")
        seq = await bus.bus.publish(live)
        await seen.wait(VipAssigned, "web")
        await again(live, seq)
        assert await stored(bus, vip_subject) == 1

        going = snapshot("web", deleting=True)
        seq = await bus.bus.publish(going)
        await seen.wait(VipReleasing, "web")
        await again(going, seq)
        assert await stored(bus, vip_subject) == 2

        removed = lb_removed("web")
        seq = await bus.bus.publish(removed)
        await seen.wait(VipReleased, "web")
        await again(removed, seq)
        assert await stored(bus, vip_subject) == 3
        assert await kv_state(bus) == ({}, {})

    async def test_claims_left_by_a_crash_are_adopted_not_leaked(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """A claim written before a crash (no record yet) is the VIP the Service then gets."""
        kv = await bus.bus.kv(IPAM_BUCKET)
        orphan = Claim(cluster="east", namespace="shop", name="web", uid="uid-web", pool="lab")
        await kv.create(addr("192.0.2.200"), msgspec.json.encode(orphan))
        await make_ipam()
        await bus.bus.publish(snapshot("web"))
        assigned = await seen.wait(VipAssigned, "web")
        assert assigned.vips == ("192.0.2.200",)
        claims, records = await kv_state(bus)
        assert list(claims) == [addr("192.0.2.200")] and list(records) == ["svc.east.shop.web"]
