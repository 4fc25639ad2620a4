"""Bounded stores against a real nats-server: a Service too large for the bus is told so
and can still be deleted; a full stream makes every component not ready, and ready again
once there is room."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.js.errors
import pytest
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig

from support.recorders import BusRecorder
from vipwire.bus import BusSettings, StoreFull
from vipwire.contracts import STREAM, NodeApplied, ServiceSnapshot, VipReleased
from vipwire.kubeemu import KubeEmulator
from vipwire.natsserver import NatsServer
from vipwire.runtime import Runtime
from vipwire.testing import eventually
from vipwire.watcher import WatcherService, WatcherSettings

RuntimeFactory = Callable[[str], Awaitable[Runtime]]
CLASS = "vipwire.io/dsr"
FINALIZER = "service.kubernetes.io/load-balancer-cleanup"
#: A small stream: 64 KiB messages at most, 512 KiB in all.
MAX_MSG = 64 * 1024
MAX_BYTES = 512 * 1024


@pytest.fixture
def bus_settings(nats_server: NatsServer) -> BusSettings:
    return BusSettings(
        servers=(nats_server.url,),
        storage="memory",
        reconnect_wait_s=0.1,
        stream_max_bytes=MAX_BYTES,
        stream_max_msg_size=MAX_MSG,
        kv_max_bytes=MAX_BYTES,
        store_check_interval_s=0.1,
    )


def lb_service(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": CLASS,
            "selector": {"app": name},
            "ports": [{"name": "p80", "port": 80, "targetPort": 8080}],
        },
    }


def metric(runtime: Runtime, name: str, **labels: str) -> float:
    """A sample of ``name`` in what /metrics serves (0: not there)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}(\{{(.*)\}})? (\S+)$", re.M)
    for match in pattern.finditer(runtime.metrics.expose()):
        have = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
        if have == want:
            return float(match.group(3))
    return 0.0


class Watched:
    def __init__(self, emu: KubeEmulator, peer: Runtime, seen: BusRecorder) -> None:
        self.emu, self.peer, self.seen = emu, peer, seen

    def service(self, name: str) -> dict[str, Any] | None:
        return self.emu.find("services", "default", name)

    def condition(self, name: str) -> dict[str, Any] | None:
        svc = self.service(name) or {}
        for cond in svc.get("status", {}).get("conditions") or []:
            if cond["type"] == "vipwire.io/Ready":
                return dict(cond)
        return None

    def events(self, reason: str) -> list[dict[str, Any]]:
        found = self.emu.list("events.events.k8s.io", "default")
        return [e for e in found if e["reason"] == reason]


@pytest.fixture
async def watched(
    make_runtime: RuntimeFactory, tmp_path: Path
) -> AsyncIterator[tuple[Watched, Runtime]]:
    emu = KubeEmulator("east", bookmark_interval=0.5)
    await emu.start()
    kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig", context_name="east")
    peer = await make_runtime("peer")
    seen = BusRecorder()
    sub = await seen.attach(peer, "vipwire.east.>")
    runtime = await make_runtime("watcher")
    settings = WatcherSettings(
        cluster="east",
        kubeconfig=str(kubeconfig),
        context="east",
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        instance="test-watcher",
    )
    watcher = WatcherService(settings, runtime)
    await watcher.start()
    try:
        await eventually(lambda: watcher.readiness() is None, what="the watcher is ready")
        yield Watched(emu, peer, seen), runtime
    finally:
        await watcher.stop()
        await sub.unsubscribe()
        await emu.stop()


async def test_service_too_large_is_told_once_and_can_be_deleted(
    watched: tuple[Watched, Runtime],
) -> None:
    """A Service whose snapshot is over the message size limit gets a TooLarge Warning
    Event and condition, is refused once (not retried), others go on, and its deletion
    still takes the finalizer off."""
    h, watcher_rt = watched
    labels = {f"label-{i:05d}": "v" * 63 for i in range(MAX_MSG // 64)}  # > 64 KiB of labels
    await h.emu.create(lb_service("huge", labels))
    await h.emu.create(lb_service("small"))
    await eventually(
        lambda: h.seen.of(ServiceSnapshot, name="small"), what="a snapshot of the small Service"
    )
    await eventually(lambda: h.events("TooLarge"), what="a TooLarge Event on huge")
    (event,) = h.events("TooLarge")
    assert event["type"] == "Warning"
    assert event["regarding"]["name"] == "huge"
    assert f"over the bus limit of {MAX_MSG} bytes" in event["note"]
    assert "fewer or smaller labels" in event["note"]
    await eventually(
        lambda: (h.condition("huge") or {}).get("reason") == "TooLarge",
        what="huge's condition says TooLarge",
    )
    assert (h.condition("huge") or {})["status"] == "False"
    # (A core subscriber hears the publish; the stream, which consumers read, has nothing.)
    assert await h.peer.bus.last_message("vipwire.east.service.default.huge") is None
    rejected = {"family": "service", "reason": "too_large"}
    assert metric(watcher_rt, "vipwire_bus_publish_rejected_total", **rejected) == 1
    # The condition write changed the Service, which queued it again: still refused once.
    small = h.seen.of(ServiceSnapshot, name="small")[-1]
    await h.emu.delete("services", "default", "small")
    await eventually(
        lambda: h.seen.of(ServiceSnapshot, name="small", deleting=True),
        what="a deleting snapshot of small (the watcher went on past huge)",
    )
    assert metric(watcher_rt, "vipwire_bus_publish_rejected_total", **rejected) == 1
    assert watcher_rt.bus.store_problem() is None  # too large is no store problem

    huge = h.service("huge")
    assert huge is not None and FINALIZER in huge["metadata"]["finalizers"]
    await h.emu.delete("services", "default", "huge")
    await eventually(
        lambda: h.seen.of(ServiceSnapshot, name="huge", deleting=True),
        what="a deleting snapshot of huge",
    )
    gone = h.seen.of(ServiceSnapshot, name="huge", deleting=True)[-1]
    assert gone.labels == {}
    # As ipam answers a Service it never allocated for.
    await h.peer.bus.publish(
        VipReleased(cluster="east", namespace="default", name="huge", uid=gone.uid, vips=())
    )
    await h.peer.bus.publish(
        VipReleased(cluster="east", namespace="default", name="small", uid=small.uid, vips=())
    )
    await eventually(lambda: h.service("huge") is None, what="huge is deleted (finalizer off)")
    await eventually(lambda: h.service("small") is None, what="small is deleted")


COMPONENTS = ("ipam", "lbdriver", "watcher", "nodeagent")


async def readyz(http: aiohttp.ClientSession, runtime: Runtime) -> tuple[int, str]:
    async with http.get(f"http://127.0.0.1:{runtime.http_port}/readyz") as response:
        return response.status, await response.text()


async def test_full_stream_makes_every_component_not_ready_until_room_returns(
    make_runtime: RuntimeFactory,
) -> None:
    """Junk fills the stream: the publish refused is StoreFull and counted, every
    component's /readyz says the stream is full and vipwire_bus_store_full is 1; once
    the junk is purged all are ready again and the gauge is 0."""
    runtimes = {name: await make_runtime(name) for name in COMPONENTS}
    for runtime in runtimes.values():
        runtime.set_readiness(lambda: None)
    junk = await make_runtime("junk")
    async with aiohttp.ClientSession() as http:
        for runtime in runtimes.values():
            assert await readyz(http, runtime) == (200, "ready\n")
            assert metric(runtime, "vipwire_bus_store_full") == 0

        filled = 0
        for size in (4096, 512, 64):  # to the last few bytes
            with pytest.raises(nats.js.errors.APIError) as refused:
                while filled < 2 * MAX_BYTES:
                    await junk.bus.js.publish(f"vipwire.junk.x.{filled}", b"x" * size)
                    filled += size
            assert refused.value.err_code == 10077  # the stream's own byte limit, DiscardNew

        nodeagent = runtimes["nodeagent"]
        with pytest.raises(StoreFull, match="stream VIPWIRE is full"):
            await nodeagent.bus.publish(
                NodeApplied(cluster="east", node="n1", generation=1, vips=("198.51.100.7",))
            )
        full = {"family": "applied", "reason": "store_full"}
        assert metric(nodeagent, "vipwire_bus_publish_rejected_total", **full) == 1

        async def all_full() -> bool:
            for runtime in runtimes.values():
                status, text = await readyz(http, runtime)
                if status != 503 or "VIPWIRE is full" not in text:
                    return False
                if metric(runtime, "vipwire_bus_store_full") != 1:
                    return False
                if metric(runtime, "vipwire_bus_store_used_ratio", stream=STREAM) < 0.99:
                    return False
            return True

        await eventually(all_full, what="every component is not ready: the stream is full")

        await junk.bus.js.purge_stream(STREAM, subject="vipwire.junk.>")

        async def all_ready() -> bool:
            for runtime in runtimes.values():
                if await readyz(http, runtime) != (200, "ready\n"):
                    return False
                if metric(runtime, "vipwire_bus_store_full") != 0:
                    return False
            return True

        await eventually(all_ready, what="every component is ready again once there is room")
        await nodeagent.bus.publish(NodeApplied(cluster="east", node="n1", generation=2, vips=()))


async def test_an_older_stream_and_bucket_get_the_limits_and_keep_their_messages(
    nats_server: NatsServer, bus_settings: BusSettings, make_runtime: RuntimeFactory
) -> None:
    """A stream and a KV bucket declared without limits (an older version) get them at
    start-up; a stream already holding more than the byte limit keeps every message (and
    a limit it can live with) instead of being trimmed."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name=STREAM,
                subjects=["vipwire.>"],
                storage=StorageType.MEMORY,
                max_age=7 * 24 * 3600.0,
            )
        )
        kv = await js.create_key_value(
            KeyValueConfig(bucket="vipwire-test", storage=StorageType.MEMORY)
        )
        await kv.put("k", b"v")
        held = MAX_BYTES + 64 * 1024
        for i in range(held // 4096):
            await js.publish(f"vipwire.old.x.{i}", b"x" * 4096)

        runtime = await make_runtime("ipam")
        bucket = await runtime.bus.kv("vipwire-test")
        info = await js.stream_info(STREAM)
        assert info.config.discard == DiscardPolicy.NEW
        assert (info.config.max_msg_size, info.config.max_msgs_per_subject) == (MAX_MSG, 16)
        assert not info.config.max_age  # no age limit: nothing in force expires
        assert info.config.max_bytes in (None, -1)  # not lowered below what it holds
        assert info.state.messages == held // 4096
        kv_info = await js.stream_info("KV_vipwire-test")
        assert (kv_info.config.max_bytes, kv_info.config.max_msg_size) == (
            MAX_BYTES,
            bus_settings.kv_max_value_size,
        )
        entry = await bucket.get("k")
        assert entry is not None and entry.value == b"v"
    finally:
        await nc.close()


async def test_a_lost_stream_makes_every_component_not_ready_until_it_is_back(
    make_runtime: RuntimeFactory,
) -> None:
    """The stream deleted behind vipwire's back (connected, but nothing can be stored):
    every component says so and vipwire_bus_store_failing is 1, until it is declared again."""
    runtimes = {name: await make_runtime(name) for name in COMPONENTS}
    for runtime in runtimes.values():
        runtime.set_readiness(lambda: None)
    operator = await make_runtime("operator")
    async with aiohttp.ClientSession() as http:

        async def all_say(status: int, text: str, failing: float) -> bool:
            for runtime in runtimes.values():
                got_status, got_text = await readyz(http, runtime)
                if got_status != status or text not in got_text:
                    return False
                if metric(runtime, "vipwire_bus_store_failing") != failing:
                    return False
            return True

        assert await all_say(200, "ready", 0)
        await operator.bus.js.delete_stream(STREAM)
        await eventually(
            lambda: all_say(503, f"stream {STREAM} cannot be read", 1),
            what="every component is not ready: the stream is gone",
        )
        await operator.bus.ensure_stream()
        await eventually(
            lambda: all_say(200, "ready", 0), what="every component is ready once it is back"
        )
