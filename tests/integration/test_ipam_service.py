"""ipam against a real nats-server: assign, release, restart, replicas, exhaustion."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vipwire.bus import DONE, Delivery, Verdict
from vipwire.contracts import (
    IPAM_BUCKET,
    STREAM,
    LbRemoved,
    Message,
    PoolsServed,
    ServiceGone,
    ServicePort,
    ServiceSnapshot,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
    cluster_subject,
    decode,
    parse_subject,
    subject_for,
)
from vipwire.ipam import (
    Claim,
    IpamService,
    IpamSettings,
    Owner,
    PoolSettings,
    ServiceRecord,
    Sharer,
)
from vipwire.ipam.core.records import GroupRecord, decode_claim, decode_record
from vipwire.ipam.io.bucket import IpamStore
from vipwire.natsserver import NatsServer
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


def lb_removed(
    name: str, uid: str | None = None, vips: tuple[str, ...] = (), cluster: str = "east"
) -> LbRemoved:
    return LbRemoved(
        cluster=cluster,
        namespace="shop",
        name=name,
        uid=uid or f"uid-{name}",
        appliance="sim-1",
        vips=vips,
    )


def gone(name: str) -> ServiceGone:
    return ServiceGone(cluster="east", namespace="shop", name=name, uid=f"uid-{name}")


class Seen:
    """Every ``vip`` message the stream stored, in its order (what every consumer sees;
    a publish the stream refused, e.g. a failed expected-sequence check, is not one)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def on_msg(self, msg: Msg) -> None:
        self.messages.append(decode(msg.subject, msg.data))

    def of_all(self, kind: type[M]) -> list[M]:
        """Every message of a kind, of every cluster."""
        return [m for m in self.messages if isinstance(m, kind)]

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
        await eventually(
            lambda: len(self.of(kind, name, cluster)) >= count,
            what=f"{count} {kind.__name__} about {cluster}/{name}",
        )
        return self.of(kind, name, cluster)[count - 1]


@pytest.fixture
async def bus(make_runtime: RuntimeFactory) -> Runtime:
    """A runtime standing in for the watcher and lbdriver."""
    return await make_runtime("peer")


@pytest.fixture
async def seen(bus: Runtime) -> AsyncIterator[Seen]:
    seen = Seen()
    sub = await bus.bus.js.subscribe(
        "vipwire.*.vip.>",
        stream=STREAM,
        cb=seen.on_msg,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.NEW,
    )
    yield seen
    await sub.unsubscribe()


@pytest.fixture
async def make_ipam(make_runtime: RuntimeFactory) -> AsyncIterator[IpamFactory]:
    """Start IpamServices (each on its own runtime); stop them all at teardown."""
    started: list[IpamService] = []

    async def make(
        *pools: PoolSettings,
        name: str = "ipam",
        config_path: str | None = None,
        settings: IpamSettings | None = None,
    ) -> IpamService:
        runtime = await make_runtime(name)
        service = IpamService(
            settings or IpamSettings(pools=pools or (POOL,)), runtime, config_path=config_path
        )
        await service.start()
        assert service.readiness() is None
        started.append(service)
        return service

    yield make
    for service in started:
        await service.stop()


async def kv_state(rt: Runtime) -> tuple[dict[str, Claim], dict[str, ServiceRecord]]:
    """The bucket as it is: claims by key, Service records by key.

    Listed with the store's own scan: nats-py's ``keys()`` may answer "none" under
    load (its end-of-values marker can overtake the values).
    """
    store = IpamStore(await rt.bus.kv(IPAM_BUCKET))
    claims = {k: decode_claim(k, e.value) for k, e in (await store.scan("addr.")).items()}
    records = {k: decode_record(k, e.value) for k, e in (await store.scan("svc.")).items()}
    return claims, records


async def groups(rt: Runtime) -> dict[str, GroupRecord]:
    store = IpamStore(await rt.bus.kv(IPAM_BUCKET))
    return {
        k: msgspec.json.decode(e.value or b"", type=GroupRecord)
        for k, e in (await store.scan("grp.")).items()
    }


async def handled(ipam: IpamService, count: int) -> None:
    """Wait until the ipam consumer has finished ``count`` messages."""
    done = ipam.runtime.metrics.counter("bus_handled_total", "", ["consumer", "verdict"])
    await eventually(
        lambda: done.value(consumer="ipam-service", verdict="done") >= count,
        what=f"ipam handled {count} messages",
    )


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
                cluster="east",
                namespace="shop",
                pool="lab",
                appliance_group="g1",
                sharers=(Sharer(name="web", uid="uid-web"),),
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
            lambda: "publish vip" in {s.name for s in span_exporter.get_finished_spans()},
            what="a 'publish vip' span",
        )
        spans = {s.name: s for s in span_exporter.get_finished_spans()}
        assert spans["publish vip"].context.trace_id == spans["publish service"].context.trace_id


class TestRelease:
    async def test_released_keys_leave_no_markers_for_good_and_come_back(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """The sweep drops the delete markers a release leaves; the same Service then gets
        its address again (creating a key whose marker was purged works as a first time)."""
        settings = IpamSettings(pools=(POOL,), marker_sweep_interval_s=0.1, marker_max_age_s=0)
        ipam = await make_ipam(settings=settings)
        await bus.bus.publish(snapshot("web"))
        assigned = await seen.wait(VipAssigned, "web")
        await bus.bus.publish(snapshot("web", deleting=True))
        await seen.wait(VipReleasing, "web")
        await bus.bus.publish(lb_removed("web", vips=assigned.vips))
        await seen.wait(VipReleased, "web")
        dropped = ipam.runtime.metrics.counter("ipam_kv_markers_dropped_total", "")
        await eventually(
            lambda: dropped.value() >= 2, what="two messages dropped"
        )  # the claim's and the record's
        info = await bus.bus.js.stream_info(f"KV_{IPAM_BUCKET}", subjects_filter=">")
        assert not info.state.subjects
        # The same record key, and the same address asked for: both keys are created anew.
        await bus.bus.publish(snapshot("web", uid="u-2", requested_ips=assigned.vips))
        again = await seen.wait(VipAssigned, "web", count=2)
        assert again.uid == "u-2" and again.vips == assigned.vips


class TestDurability:
    async def test_a_former_versions_durable_is_deleted_at_start(
        self, bus: Runtime, make_ipam: IpamFactory
    ) -> None:
        """The one durable "ipam" of both families (before identities) goes at start: left,
        it would hold back the purge of ended subjects; ipam-service and ipam-lb read."""
        from nats.js.api import ConsumerConfig

        await bus.bus.ensure_stream()
        await bus.bus.js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name="ipam", filter_subjects=["vipwire.*.service.>", "vipwire.*.lb.>"]
            ),
        )
        await make_ipam()
        names = {info.name for info in await bus.bus.js.consumers_info(STREAM)}
        assert "ipam" not in names
        assert {"ipam-service", "ipam-lb"} <= names

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
            what="200 Services assigned",
        )
        claims, records = await kv_state(bus)
        named = {v for r in records.values() for v in r.vips}
        extra = {k: c for k, c in claims.items() if k not in {addr(v) for v in named}}
        assert len(claims) == 200 and len(records) == 200, (len(claims), len(records), extra)
        vips = [v for r in records.values() for v in r.vips]
        assert len(vips) == len(set(vips)) == 200
        for key, record in records.items():
            _, cluster, _, name = key.split(".")
            (vip,) = record.vips
            claim = claims[addr(vip)]
            assert claim.owners == (Owner(cluster, "shop", name, record.uid),)
        published: dict[str, set[tuple[str, ...]]] = {}
        for m in seen.messages:
            if isinstance(m, VipAssigned):
                published.setdefault(f"{m.cluster}/{m.name}", set()).add(m.vips)
        assert all(len(v) == 1 for v in published.values()), "a Service saw two different VIPs"
        handled = [
            s.runtime.metrics.expose().count('consumer="ipam-service",verdict="done"')
            for s in (a, b)
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

    async def test_garbage_last_on_a_waiting_services_vip_subject_does_not_strand_it(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An unreadable last ``vip`` message hides no waiting Service from the next ipam."""
        first = await make_ipam(TINY, name="ipam-1")
        await bus.bus.publish(snapshot("a"))
        await bus.bus.publish(snapshot("b"))
        await seen.wait(VipAssigned, "b")
        await bus.bus.publish(snapshot("c"))
        await seen.wait(VipFailed, "c")
        await first.stop()
        bad = await bus.bus.js.publish("vipwire.east.vip.shop.c", b"\x00not json")
        second = await make_ipam(TINY, name="ipam-2")
        assert second.runtime.metrics.expose().count("vipwire_ipam_waiting_services 1") == 1
        assert f"vipwire.east.vip.shop.c (seq {bad.seq}) is unreadable" in caplog.text
        await bus.bus.publish(snapshot("b", deleting=True))
        await seen.wait(VipReleasing, "b")
        await bus.bus.publish(lb_removed("b"))
        assert (await seen.wait(VipAssigned, "c")).uid == "uid-c"


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
                assert await ipam.handle(delivery) == DONE
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
        """A claim written before a crash (no record yet) is the VIP the Service then gets,
        even in the layout of version 1 (one owner)."""
        kv = await bus.bus.kv(IPAM_BUCKET)
        orphan = {"cluster": "east", "namespace": "shop", "name": "web", "uid": "uid-web"}
        await kv.create(addr("192.0.2.200"), msgspec.json.encode({**orphan, "pool": "lab"}))
        await make_ipam()
        await bus.bus.publish(snapshot("web"))
        assigned = await seen.wait(VipAssigned, "web")
        assert assigned.vips == ("192.0.2.200",)
        claims, records = await kv_state(bus)
        assert list(claims) == [addr("192.0.2.200")] and list(records) == ["svc.east.shop.web"]


# --- issue 4: sharing, failure reasons, reload, operators, scale ---------------------------


def ports(*specs: str) -> tuple[ServicePort, ...]:
    """``ports("53/TCP", "53/UDP")``."""
    out = []
    for spec in specs:
        number, _, protocol = spec.partition("/")
        out.append(msgspec.convert({"port": int(number), "protocol": protocol}, ServicePort))
    return tuple(out)


def write_config(path: Path, *pools: PoolSettings, **ipam: object) -> None:
    """An ipam config file (JSON is YAML) whose modification time surely changes."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_bytes(
        msgspec.json.encode({"ipam": {"pools": [msgspec.to_builtins(p) for p in pools], **ipam}})
    )
    os.utime(path, ns=(before + 10**9, before + 10**9))


async def ask(rt: Runtime, subject: str, payload: object = None) -> dict[str, Any]:
    body = b"" if payload is None else msgspec.json.encode(payload)
    reply = await rt.bus.nc.request(subject, body, timeout=10)
    answer: dict[str, Any] = msgspec.json.decode(reply.data)
    return answer


class TestSharing:
    async def test_one_key_shares_one_vip_until_the_last_sharer_leaves(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """Two Services of one key share a VIP; one leaving withdraws only itself (its
        VipReleasing, its LbRemoved), the claim stays for the other; the last frees it."""
        await make_ipam()
        await bus.bus.publish(snapshot("dns-tcp", sharing_key="dns", ports=ports("53/TCP")))
        tcp = await seen.wait(VipAssigned, "dns-tcp")
        await bus.bus.publish(snapshot("dns-udp", sharing_key="dns", ports=ports("53/UDP")))
        udp = await seen.wait(VipAssigned, "dns-udp")
        assert udp.vips == tcp.vips
        (vip,) = tcp.vips
        claims, records = await kv_state(bus)
        assert [s.name for s in claims[addr(vip)].sharers] == ["dns-tcp", "dns-udp"]
        assert claims[addr(vip)].sharers[1].ports == ("53/UDP",)
        assert len(records) == 2
        assert list((await groups(bus)).values()) == [GroupRecord(key="dns", addresses=(vip,))]

        await bus.bus.publish(snapshot("dns-tcp", deleting=True))
        releasing = await seen.wait(VipReleasing, "dns-tcp")
        assert releasing.vips == (vip,)
        await bus.bus.publish(lb_removed("dns-tcp"))
        released = await seen.wait(VipReleased, "dns-tcp")
        assert released.vips == (vip,)
        claims, records = await kv_state(bus)
        assert [s.name for s in claims[addr(vip)].sharers] == ["dns-udp"]
        assert list(records) == ["svc.east.shop.dns-udp"]
        assert not seen.of(VipReleasing, "dns-udp")

        await bus.bus.publish(snapshot("dns-udp", deleting=True))
        await seen.wait(VipReleasing, "dns-udp")
        await bus.bus.publish(lb_removed("dns-udp"))
        await seen.wait(VipReleased, "dns-udp")
        assert await kv_state(bus) == ({}, {})
        assert await groups(bus) == {}  # and the sharing group is gone too

    async def test_replicas_racing_give_each_key_one_vip(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """The two Services of each of 20 keys handled at the same moment by two different
        replicas: one VIP per key (the group key decides who gave the first one), and no
        address twice."""
        a = await make_ipam(name="ipam-a")
        b = await make_ipam(name="ipam-b")

        def delivery(message: ServiceSnapshot) -> Delivery:
            subject = parse_subject(subject_for(message))
            # seq 0: not on the stream (nothing for the status VIP index to wait for).
            return Delivery(subject=subject, message=message, seq=0, num_delivered=1, headers={})

        async def handle(replica: IpamService, i: int, proto: str) -> Verdict:
            """Like the consumer: a Retry verdict (a KV timeout under load) is redelivered."""
            message = snapshot(
                f"k{i}-{proto.lower()}", sharing_key=f"k{i}", ports=ports(f"53/{proto}")
            )
            for _ in range(5):
                verdict = await replica.handle(delivery(message))
                if verdict == DONE:
                    break
            return verdict

        # Opposite orders, so that the replicas' next-fit picks differ for each key.
        handling = [handle(a, i, "TCP") for i in range(20)]
        handling += [handle(b, i, "UDP") for i in reversed(range(20))]
        assert await asyncio.gather(*handling) == [DONE] * 40
        await eventually(
            lambda: len({m.name for m in seen.of(VipAssigned)}) == 40, what="40 Services assigned"
        )
        assert not seen.of(VipFailed)
        vips = {m.name: m.vips for m in seen.of(VipAssigned)}
        for i in range(20):
            assert vips[f"k{i}-tcp"] == vips[f"k{i}-udp"], f"key k{i} got two VIPs"
        assert len({v for vs in vips.values() for v in vs}) == 20
        claims, _ = await kv_state(bus)
        assert len(claims) == 20 and all(len(c.sharers) == 2 for c in claims.values())


class TestReload:
    async def test_shrinking_a_pool_moves_nothing_and_flags_stale(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory, tmp_path: Path
    ) -> None:
        """Reload to a pool of 8 under 20 live VIPs: no claim changes, 12 records flagged
        stale, status and metrics count them, re-sent snapshots keep their VIPs; a
        released stale Service gets a VIP from the pool as it is now."""
        config = tmp_path / "vipwire.yaml"
        wide = PoolSettings(name="lab", addresses=("192.0.2.0/24",), appliance_group="g1")
        write_config(config, wide, reload_interval_s=0)
        ipam = await make_ipam(
            settings=IpamSettings(pools=(wide,), reload_interval_s=0), config_path=str(config)
        )
        for i in range(20):
            await bus.bus.publish(snapshot(f"s{i}"))
        await eventually(lambda: len(seen.of(VipAssigned)) == 20, what="20 VipAssigned")
        before_claims, _ = await kv_state(bus)
        narrow = msgspec.structs.replace(wide, addresses=("192.0.2.0/29",))
        write_config(config, narrow, reload_interval_s=0)

        answer = await ask(bus, "vipwire-ctl.ipam.reload.operator-test")
        assert (answer["error"], answer["stale"], answer["flagged"]) == (None, 12, 12)
        claims, records = await kv_state(bus)
        assert claims == before_claims, "a reload changed a claim"
        stale = {k for k, r in records.items() if r.stale}
        assert len(stale) == 12
        assert all("no longer in pool 'lab'" in (records[k].stale or "") for k in stale)
        status = await ask(bus, "vipwire-ctl.ipam.status.operator-test")
        (lab,) = status["pools"]
        assert (lab["size"], lab["used"], lab["free"], lab["stale"]) == (8, 8, 0, 12)
        assert lab["clusters"] == [{"cluster": "east", "used": 8, "stale": 12}]
        assert status["stale_total"] == 12 and len(status["stale"]) == 12
        metrics = ipam.runtime.metrics.expose()
        assert 'vipwire_ipam_stale_allocations{pool="lab",family="IPv4"} 12' in metrics

        vips = {m.name: m.vips for m in seen.of(VipAssigned)}
        for i in range(20):
            await bus.bus.publish(snapshot(f"s{i}", ports=ports("8080/TCP")))
        await eventually(lambda: len(seen.of(VipAssigned)) == 40, what="40 VipAssigned")
        assert {m.name: m.vips for m in seen.of(VipAssigned)[20:]} == vips
        assert (await kv_state(bus))[0] == before_claims

        await bus.bus.publish(snapshot("late"))
        failed = await seen.wait(VipFailed, "late")
        assert "'lab' (8/8 in use)" in failed.message

        victim = next(n for n, v in vips.items() if int(v[0].split(".")[-1]) >= 8)
        answer = await ask(
            bus, "vipwire-ctl.ipam.release.operator-test", {"service": f"east/shop/{victim}"}
        )
        assert answer["error"] is None and tuple(answer["vips"]) == vips[victim]
        releasing = await seen.wait(VipReleasing, victim)
        assert releasing.vips == vips[victim]
        await bus.bus.publish(lb_removed(victim))
        # Re-allocated from the pool as it is now: full, so it waits like anyone.
        assert "'lab' (8/8 in use)" in (await seen.wait(VipFailed, victim)).message
        inside = [n for n, v in vips.items() if int(v[0].split(".")[-1]) < 8][:2]
        for name in inside:
            await bus.bus.publish(snapshot(name, deleting=True))
            await seen.wait(VipReleasing, name)
            await bus.bus.publish(lb_removed(name))
        moved = await seen.wait(VipAssigned, victim, count=3)
        assert ipaddress.ip_address(moved.vips[0]) in ipaddress.ip_network("192.0.2.0/29")
        await seen.wait(VipAssigned, "late")
        _, records = await kv_state(bus)
        assert records[f"svc.east.shop.{victim}"].stale is None
        assert len([r for r in records.values() if r.stale]) == 11

    async def test_a_config_file_change_is_picked_up_and_serves_waiting_services(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory, tmp_path: Path
    ) -> None:
        """Polling notices the new file: a Service refused for want of a pool gets one."""
        config = tmp_path / "vipwire.yaml"
        write_config(config, TINY, reload_interval_s=0.05)
        ipam = await make_ipam(
            settings=IpamSettings(pools=(TINY,), reload_interval_s=0.05), config_path=str(config)
        )
        await bus.bus.publish(snapshot("web", pool="lab"))
        assert "does not exist" in (await seen.wait(VipFailed, "web")).message
        write_config(config, TINY, POOL, reload_interval_s=0.05)
        assigned = await seen.wait(VipAssigned, "web")
        assert assigned.pool == "lab"
        assert ipam.status().reloaded_at is not None

    async def test_a_bad_config_is_refused_and_nothing_changes(
        self, bus: Runtime, make_ipam: IpamFactory, tmp_path: Path
    ) -> None:
        """A reload of a broken file answers with the error and keeps the pools."""
        config = tmp_path / "vipwire.yaml"
        write_config(config, POOL, reload_interval_s=0)
        await make_ipam(settings=IpamSettings(pools=(POOL,)), config_path=str(config))
        config.write_text("ipam:\n  pools: [{name: Bad, addresses: []}]\n")
        answer = await ask(bus, "vipwire-ctl.ipam.reload.operator-test")
        assert "DNS label" in answer["error"] and "ipam.pools[0]" in answer["error"]
        status = await ask(bus, "vipwire-ctl.ipam.status.operator-test")
        assert {p["name"] for p in status["pools"]} == {"lab"}


class TestOperatorCommands:
    async def test_status_show_reload_release_from_the_command_line(
        self,
        *,
        bus: Runtime,
        seen: Seen,
        make_ipam: IpamFactory,
        nats_server: NatsServer,
        capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """`vipwire ipam` verbs print what ipam (or the KV) says and exit 0; a release is
        logged with its caller, and the next VipAssigned says who released what."""
        from vipwire.cli import ipam as cli
        from vipwire.cli.main import build_parser

        await make_ipam()
        await bus.bus.publish(snapshot("web", sharing_key="k", ports=ports("80/TCP")))
        await bus.bus.publish(snapshot("api", sharing_key="k", ports=ports("443/TCP")))
        await eventually(lambda: len(seen.of(VipAssigned)) == 2, what="two VipAssigned")
        (vip,) = seen.of(VipAssigned, "web")[0].vips

        async def run(*argv: str) -> tuple[int, str]:
            args = build_parser().parse_args(["ipam", *argv, "--nats", nats_server.url])
            code = await cli.run(args)
            return code, capsys.readouterr().out

        code, out = await run("status")
        assert code == 0 and "lab   IPv4" in out and "east 1" in out
        code, out = await run("status", "--json")
        assert code == 0 and msgspec.json.decode(out)["pools"][0]["used"] == 1
        code, out = await run("show", vip)
        assert code == 0 and "held by east/shop/api" in out and "held by east/shop/web" in out
        code, out = await run("show", "east/shop/web")
        assert code == 0 and f"VIPs {vip}" in out and "shared with api (key 'k')" in out
        code, out = await run("show", "east/shop/web", "--kv")
        assert code == 0 and "read from the KV bucket" in out
        code, out = await run("reload")
        assert code == 1 and "reload refused" in out  # started without a config file
        code, out = await run("release", "east/shop/nope")
        assert code == 1 and "holds no addresses" in out
        with caplog.at_level(logging.INFO, logger="vipwire.ipam"):
            code, out = await run("release", "east/shop/web")
        assert code == 0 and f"withdrawing {vip}" in out
        await seen.wait(VipReleasing, "web")
        # Logged with the caller (no credentials: anonymous), the Service key and the VIPs.
        assert any(
            "operator release by anonymous: east/shop/web (key svc.east.shop.web) gives up " + vip
            in r.getMessage()
            for r in caplog.records
        ), [r.getMessage() for r in caplog.records]
        await bus.bus.publish(lb_removed("web"))
        again = await seen.wait(VipAssigned, "web", count=2)
        assert (again.released_by, again.released_vips) == ("anonymous", (vip,))


class TestRaces:
    @pytest.mark.parametrize("server_checks", [True, False], ids=["server-check", "read-check"])
    async def test_an_allocation_overtaken_by_the_deletion_is_undone(
        self,
        bus: Runtime,
        seen: Seen,
        make_ipam: IpamFactory,
        monkeypatch: pytest.MonkeyPatch,
        server_checks: bool,
    ) -> None:
        """A replica that checked a live snapshot before its deletion was published, and
        commits after another replica released everything, undoes its commit unpublished:
        whether the server checks the subject's last sequence as it stores VipAssigned
        (nats-server 2.11+) or, before that, the check is a read of its own."""
        ipam = await make_ipam()
        assert ipam.lifecycle is not None
        ipam.lifecycle.publisher.expect_subject = server_checks
        live = snapshot("web")
        seq = await bus.bus.publish(live)
        await seen.wait(VipAssigned, "web")
        await bus.bus.publish(snapshot("web", deleting=True))
        await seen.wait(VipReleasing, "web")
        await bus.bus.publish(lb_removed("web"))
        await seen.wait(VipReleased, "web")
        assert await kv_state(bus) == ({}, {})

        async def not_yet(d: Delivery) -> bool:
            return False  # as if the start-up check ran before the deletion was published

        monkeypatch.setattr(ipam.lifecycle.publisher, "superseded", not_yet)
        stale = Delivery(
            subject=parse_subject(subject_for(live)),
            message=live,
            seq=seq,
            num_delivered=2,
            headers={},
        )
        assert await ipam.handle(stale) == DONE
        assert await kv_state(bus) == ({}, {})
        assert len(seen.of(VipAssigned, "web")) == 1

    async def test_a_refusal_overtaken_by_a_newer_snapshot_is_not_published(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """A snapshot handled after a newer one was stored, by a replica that read nothing
        first (no claim names the Service), publishes no VipFailed: the newer one decides."""
        ipam = await make_ipam()
        await ipam.consumer.stop()  # type: ignore[union-attr]  # this test hands out the deliveries
        old = snapshot("web", requested_ips=("203.0.113.9",))  # outside every pool
        seq = await bus.bus.publish(old)
        await bus.bus.publish(snapshot("web"))
        stale = Delivery(
            subject=parse_subject(subject_for(old)),
            message=old,
            seq=seq,
            num_delivered=1,
            headers={},
        )
        assert await ipam.handle(stale) == DONE
        assert await stored(bus, "vipwire.east.vip.shop.web") == 0
        assert await kv_state(bus) == ({}, {})


class TestStaleCache:
    """A replica whose claim watch has not yet seen another replica's writes skips the
    record read on the belief "no claim names this Service": the creates' compare-and-set
    catches the belief when it is wrong."""

    async def stale_pair(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> tuple[IpamService, IpamService]:
        """Replica ``a`` serves everything; ``b`` hears nothing of ``a``'s claims."""
        a = await make_ipam(name="ipam-a")
        b = await make_ipam(name="ipam-b")
        await b.consumer.stop()  # type: ignore[union-attr]
        await b.cache.stop()
        return a, b

    async def test_a_redelivery_to_a_stale_replica_keeps_the_one_vip(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """The stale replica's create loses on an address it believed free, then its record
        create is never reached: it re-reads, keeps the VIP ``a`` gave, and no address is
        owned twice."""
        _a, b = await self.stale_pair(bus, seen, make_ipam)
        await bus.bus.publish(snapshot("first"))
        first = (await seen.wait(VipAssigned, "first")).vips
        web = snapshot("web")
        seq = await bus.bus.publish(web)
        vips = (await seen.wait(VipAssigned, "web")).vips
        assert not b.allocator.claims()  # b believes the pool empty
        again = Delivery(
            subject=parse_subject(subject_for(web)),
            message=web,
            seq=seq,
            num_delivered=2,
            headers={},
        )
        assert await b.handle(again) == DONE
        claims, records = await kv_state(bus)
        assert set(claims) == {addr(first[0]), addr(vips[0])}
        assert records["svc.east.shop.web"].vips == vips
        assert claims[addr(vips[0])].owners == (Owner("east", "shop", "web", "uid-web"),)
        assert {m.vips for m in seen.of(VipAssigned, "web")} == {vips}
        assert b.runtime.metrics.counter("ipam_conflicts_total", "").value() >= 1

    async def test_a_new_incarnation_on_a_stale_replica_frees_the_old_one_first(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """A re-created Service (new uid) handled by a replica that knows nothing of the old
        incarnation: the record create fails on the old record, the claims it wrote are
        given back, and after the re-read the old incarnation's claims are freed."""
        a, b = await self.stale_pair(bus, seen, make_ipam)
        await bus.bus.publish(snapshot("web"))
        await seen.wait(VipAssigned, "web")
        await a.consumer.stop()  # type: ignore[union-attr]
        new = snapshot("web", uid="uid-web-2")
        seq = await bus.bus.publish(new)
        delivery = Delivery(
            subject=parse_subject(subject_for(new)),
            message=new,
            seq=seq,
            num_delivered=1,
            headers={},
        )
        assert await b.handle(delivery) == DONE
        claims, records = await kv_state(bus)
        record = records["svc.east.shop.web"]
        assert record.uid == "uid-web-2"
        assert [c.owners for c in claims.values()] == [(Owner("east", "shop", "web", "uid-web-2"),)]
        assert set(claims) == {addr(v) for v in record.vips}
        assert seen.of(VipAssigned, "web")[-1].vips == record.vips


SCALE_POOL = PoolSettings(name="big", addresses=("10.20.0.0/20",))
CLUSTERS = ("c1", "c2", "c3", "c4", "c5")


async def serve_1000(bus: Runtime, seen: Seen) -> list[ServiceSnapshot]:
    """1,000 Services of 5 clusters, published at once; returns them once all are served."""
    snaps = [snapshot(f"s{i}", cluster=c) for c in CLUSTERS for i in range(200)]
    for chunk in range(0, len(snaps), 250):
        await asyncio.gather(*(bus.bus.publish(s) for s in snaps[chunk : chunk + 250]))
    await eventually(
        lambda: (
            len({(m.cluster, m.name) for m in seen.messages if isinstance(m, VipAssigned)}) == 1000
        ),
        timeout=25,
        what="1000 Services assigned",
    )
    return snaps


class TestScale:
    async def test_three_replicas_serve_1000_services_of_5_clusters(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """Three replicas on one JetStream KV: every Service served, no address owned twice,
        every Service told one VIP only, every replica did part of the work."""
        replicas = [await make_ipam(SCALE_POOL, name=f"ipam-{i}") for i in range(3)]
        await serve_1000(bus, seen)
        claims, records = await kv_state(bus)
        assert len(claims) == len(records) == 1000
        vips = [v for r in records.values() for v in r.vips]
        assert len(set(vips)) == 1000
        for key, record in records.items():
            _, cluster, _, name = key.split(".")
            assert claims[addr(record.vips[0])].owners == (
                Owner(cluster, "shop", name, record.uid),
            )
        told: dict[tuple[str, str], set[tuple[str, ...]]] = {}
        for m in seen.messages:
            if isinstance(m, VipAssigned):
                told.setdefault((m.cluster, m.name), set()).add(m.vips)
        assert all(len(v) == 1 for v in told.values()), "a Service was told two VIPs"
        assert not seen.of(VipFailed)
        counts = [
            r.runtime.metrics.counter("ipam_allocations_total", "", ["pool"]).value(pool="big")
            for r in replicas
        ]
        assert sum(counts) == 1000 and all(counts), counts

    async def test_a_restart_under_1000_live_allocations_changes_nothing(
        self, bus: Runtime, seen: Seen, make_ipam: IpamFactory
    ) -> None:
        """Stop ipam with 1,000 live VIPs, start another, re-send every snapshot: the same
        VIPs, and not one write to the KV bucket."""
        first = await make_ipam(SCALE_POOL, name="ipam-1")
        snaps = await serve_1000(bus, seen)
        before = {(m.cluster, m.name): m.vips for m in seen.of_all(VipAssigned)}
        await first.stop()
        kv_stream = "KV_" + IPAM_BUCKET
        writes = (await bus.bus.js.stream_info(kv_stream)).state.last_seq
        second = await make_ipam(SCALE_POOL, name="ipam-2")
        assert len(second.allocator.claims()) == 1000
        seen.messages.clear()
        for chunk in range(0, len(snaps), 250):
            await asyncio.gather(
                *(
                    bus.bus.publish(msgspec.structs.replace(s, resource_version="2"))
                    for s in snaps[chunk : chunk + 250]
                )
            )
        await eventually(
            lambda: len(seen.of_all(VipAssigned)) == 1000,
            timeout=25,
            what="1000 VipAssigned across the replicas",
        )
        assert {(m.cluster, m.name): m.vips for m in seen.of_all(VipAssigned)} == before
        await handled(second, 1000)
        assert (await bus.bus.js.stream_info(kv_stream)).state.last_seq == writes


class TestPoolsServed:
    async def test_each_served_cluster_is_told_its_pools_at_start_and_after_a_reload(
        self, bus: Runtime, make_ipam: IpamFactory, tmp_path: Path
    ) -> None:
        """ipam.clusters east and west: each gets PoolsServed on vipwire.<c>.pools.all (a
        pool for west only is west's alone); a reload publishes the new ranges."""
        west_only = PoolSettings(name="west", addresses=("203.0.113.0/28",), clusters=("west",))
        config = tmp_path / "vipwire.yaml"
        write_config(config, TINY, west_only, clusters=["east", "west"], reload_interval_s=0.05)
        settings = IpamSettings(
            pools=(TINY, west_only), clusters=("east", "west"), reload_interval_s=0.05
        )
        await make_ipam(settings=settings, config_path=str(config))

        async def told(cluster: str) -> PoolsServed | None:
            stored = await bus.bus.last_message(cluster_subject("pools", cluster))
            message = None if stored is None else decode(stored.subject, stored.data)
            return message if isinstance(message, PoolsServed) else None

        async def says(cluster: str, ranges: tuple[str, ...]) -> bool:
            found = await told(cluster)
            return found is not None and found.ranges == ranges

        await eventually(lambda: says("east", ("198.51.100.10/31",)), what="east's pools")
        await eventually(
            lambda: says("west", ("198.51.100.10/31", "203.0.113.0/28")), what="west's pools"
        )
        write_config(config, POOL, west_only, clusters=["east", "west"], reload_interval_s=0.05)
        await eventually(
            lambda: says("east", ("192.0.2.0/24", "2001:db8::/120")), what="east's new pools"
        )
