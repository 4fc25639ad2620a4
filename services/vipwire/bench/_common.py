"""Helpers the convergence scenarios share: stream timestamps, a kube write probe, hop times."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from vipwire.allinone.clock import StatusClock
from vipwire.contracts import (
    STREAM,
    LbProgrammed,
    MalformedMessage,
    Message,
    ServiceRef,
    ServiceSnapshot,
    VipAssigned,
    decode,
)
from vipwire.kube import MERGE_PATCH, new_api_client, request_json
from vipwire.kubeemu import KubeEmulator

#: RFC 2544 reserves 198.18.0.0/15 for benchmarks (never routed). The emulator
#: takes cluster IPs from its lower half; VIPs come from the upper one: 65,536.
BENCH_POOL = "198.19.0.0/16"

#: The hops of a change, as :func:`hop_times` measures them.
HOPS = ("watcher_in", "ipam", "lbdriver", "watcher_status")


def load_average() -> float:
    """The 1-minute load average: how much else this machine was running (others' work
    on a shared 2-core machine shows here, and in every figure taken meanwhile)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def pool_for(services: int) -> str:
    """The smallest CIDR of :data:`BENCH_POOL` that holds ``services`` VIPs (at least a /24)."""
    network = ipaddress.ip_network(BENCH_POOL)
    prefix = 24
    while 2 ** (32 - prefix) < services and prefix > network.prefixlen:
        prefix -= 1
    return f"{network.network_address}/{prefix}"


async def stream_messages(
    nats_url: str, filters: Sequence[str], *, batch: int = 1000
) -> AsyncIterator[tuple[Message, float]]:
    """Every message stored on ``filters``, with the time the stream stored it (Unix s).

    A read-only pass (an ephemeral consumer without acks) over what is there now.
    """
    nc = await nats.connect(nats_url, name="vipwire-bench-reader")
    try:
        js = nc.jetstream()
        info = await js.add_consumer(
            STREAM,
            ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                filter_subjects=list(filters),
                inactive_threshold=30.0,
            ),
        )
        remaining = int(info.num_pending or 0)
        psub = await js.pull_subscribe_bind(info.name, stream=STREAM)
        while remaining > 0:
            try:
                msgs = await psub.fetch(min(batch, remaining), timeout=5.0)
            except TimeoutError:
                break
            for msg in msgs:
                remaining -= 1
                meta = msg.metadata
                with contextlib.suppress(MalformedMessage):
                    yield decode(msg.subject, msg.data), meta.timestamp.timestamp()
        await psub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(STREAM, info.name)
    finally:
        await nc.close()


async def kube_patcher(
    emulator: KubeEmulator, kubeconfig: Path, cluster: str
) -> tuple[Callable[[], Awaitable[None]], Any]:
    """A probe timing one API write as the watcher makes it (kubernetes-asyncio, merge
    PATCH) on a Lease no service watches; returns it and the client to close."""
    from kubernetes_asyncio.client import CoordinationV1Api

    await emulator.create(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "vipwire-bench-probe", "namespace": "default"},
            "spec": {"holderIdentity": "bench"},
        }
    )
    client = await new_api_client(str(kubeconfig), cluster)
    api = CoordinationV1Api(client)
    counter = 0

    async def patch() -> None:
        nonlocal counter
        counter += 1
        await request_json(
            api.patch_namespaced_lease,
            "vipwire-bench-probe",
            "default",
            {"spec": {"leaseTransitions": counter}},
            _content_type=MERGE_PATCH,
            timeout=10.0,
        )

    return patch, client


async def hop_times(nats_url: str, clock: StatusClock) -> dict[str, list[float]]:
    """Per hop, the seconds each Service spent in it (from stream timestamps)."""
    first: dict[tuple[str, ServiceRef], float] = {}
    filters = ("vipwire.*.service.>", "vipwire.*.vip.>", "vipwire.*.lb.>")
    async for message, stored in stream_messages(nats_url, filters):
        match message:
            case ServiceSnapshot(deleting=False):
                kind = "service"
            case VipAssigned():
                kind = "vip"
            case LbProgrammed():
                kind = "lb"
            case _:
                continue
        ref = ServiceRef(message.cluster, message.namespace, message.name)
        first.setdefault((kind, ref), stored)
    hops: dict[str, list[float]] = {hop: [] for hop in HOPS}
    for ref, (_, created) in clock.created.items():
        done = clock.converged_wall(ref)
        service, vip, lb = (first.get((k, ref)) for k in ("service", "vip", "lb"))
        if done is None or service is None or vip is None or lb is None:
            continue
        for hop, start, end in (
            ("watcher_in", created, service),
            ("ipam", service, vip),
            ("lbdriver", vip, lb),
            ("watcher_status", lb, done),
        ):
            hops[hop].append(end - start)
    return hops


def _consumer_label(durable: str | None, filters: list[str] | None) -> str:
    """Who a consumer is, from what it reads: its durable name, or its subject families
    (``lb`` alone: a node agent; ``node+endpoints`` and ``vip``: the lbdriver; …)."""
    if durable:
        return durable
    families = sorted({f.split(".")[2] for f in filters or [] if f.count(".") >= 3})
    return "+".join(families) or "?"


async def bus_traffic(nats_url: str) -> dict[str, Any]:
    """What went over the bus so far: messages stored per subject family, bytes, and
    deliveries made to the consumers that exist now (JetStream's own counts)."""
    nc = await nats.connect(nats_url, name="vipwire-bench-traffic")
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        families: dict[str, int] = {}
        for family in ("service", "endpoints", "node", "vip", "lb", "applied", "status"):
            part = await js.stream_info(STREAM, subjects_filter=f"vipwire.*.{family}.>")
            families[family] = sum((part.state.subjects or {}).values())
        by_consumer: dict[str, int] = {}
        offset = 0
        while True:
            consumers = await js.consumers_info(STREAM, offset=offset)
            if not consumers:
                break
            for c in consumers:
                one = [c.config.filter_subject] if c.config.filter_subject else []
                label = _consumer_label(c.config.durable_name, c.config.filter_subjects or one)
                delivered = (c.delivered.consumer_seq or 0) if c.delivered else 0
                by_consumer[label] = by_consumer.get(label, 0) + delivered
            offset += len(consumers)
        return {
            "messages": info.state.messages,
            "bytes": info.state.bytes,
            "by_family": families,
            "deliveries": sum(by_consumer.values()),
            "deliveries_by_consumer": by_consumer,
        }
    finally:
        await nc.close()


async def monitoring(port: int | None, path: str) -> dict[str, Any]:
    """A monitoring endpoint's JSON document; empty when the server shows none."""
    if port is None:
        return {}
    with contextlib.suppress(OSError, TimeoutError, ValueError):
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()
        body = raw.partition(b"\r\n\r\n")[2]
        document = json.loads(body)
        if isinstance(document, dict):
            return document
    return {}


#: The name prefix of node agents' NATS connections (``vipwire-nodeagent/<node>``).
AGENT_CONNECTION = "vipwire-nodeagent"
_CONNZ_PAGE = 1024


async def agent_traffic(port: int | None) -> dict[str, int]:
    """What nats-server sent to node agents' connections, from ``/connz``: every message
    (``deliveries``: the node feed on core NATS, JetStream deliveries, replies to their
    requests) and its bytes, summed over the connections named like an agent's."""
    totals = {"deliveries": 0, "bytes": 0, "connections": 0}
    offset = 0
    while True:
        page = await monitoring(port, f"/connz?limit={_CONNZ_PAGE}&offset={offset}")
        connections = page.get("connections") or []
        for conn in connections:
            name = str(conn.get("name") or "")
            if name == AGENT_CONNECTION or name.startswith(f"{AGENT_CONNECTION}/"):
                totals["deliveries"] += int(conn.get("out_msgs", 0))
                totals["bytes"] += int(conn.get("out_bytes", 0))
                totals["connections"] += 1
        if len(connections) < _CONNZ_PAGE:
            return totals
        offset += _CONNZ_PAGE
