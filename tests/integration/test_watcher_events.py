"""The watcher's Events whichever comes first: a write's reply or its watch event.

A real API server gives no order between the two (see
:class:`vipwire.kubeemu.KubeEmulator`, ``watch_first``): every test here runs
with the reply first (the emulator's default) and with the watch events first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from support.fences import BOOKMARK_INTERVAL_S, now_ns, watcher_settled
from support.orders import WRITE_ORDERS
from support.recorders import BusRecorder
from vipwire.contracts import (
    LbProgrammed,
    Member,
    ServicePort,
    ServiceSnapshot,
    VipAssigned,
    VipReleased,
)
from vipwire.kubeemu import KubeEmulator
from vipwire.runtime import Runtime
from vipwire.testing import eventually
from vipwire.watcher import WatcherService, WatcherSettings

RuntimeFactory = Callable[[str], Awaitable[Runtime]]
CLASS = "vipwire.io/dsr"
N1 = Member(node="n1", address="192.0.2.11")
N2 = Member(node="n2", address="192.0.2.12")


def lb_service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": CLASS,
            "selector": {"app": name},
            "ports": [{"name": "p80", "port": 80, "targetPort": 8080}],
        },
    }


def ref(name: str) -> dict[str, str]:
    return {"cluster": "east", "namespace": "default", "name": name}


class Stack:
    """One emulated cluster, the bus, and a watcher that can be restarted."""

    def __init__(
        self,
        emu: KubeEmulator,
        *,
        peer: Runtime,
        seen: BusRecorder,
        make_runtime: RuntimeFactory,
        kubeconfig: Path,
        spans: InMemorySpanExporter,
    ) -> None:
        self.emu = emu
        self.peer = peer
        self.seen = seen
        self.spans = spans
        self.started_ns = 0
        self.watcher: WatcherService | None = None
        self._make_runtime = make_runtime
        self._kubeconfig = kubeconfig

    async def start_watcher(self) -> WatcherService:
        settings = WatcherSettings(
            cluster="east",
            kubeconfig=str(self._kubeconfig),
            context="east",
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
            instance="test-watcher",
        )
        watcher = WatcherService(settings, await self._make_runtime("watcher"))
        self.started_ns = now_ns()
        await watcher.start()
        self.watcher = watcher
        await eventually(lambda: watcher.readiness() is None, what="the watcher is ready")
        return watcher

    async def stop_watcher(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
            self.watcher = None

    async def settled(self) -> None:
        """Fence: every message and Kubernetes change so far handled since the start."""
        assert self.watcher is not None
        await watcher_settled(self.watcher, self.emu, self.spans, since_ns=self.started_ns)

    async def created(self, name: str) -> ServiceSnapshot:
        await self.emu.create(lb_service(name))
        return await self.seen.wait(ServiceSnapshot, name=name)

    def events(self, *, kind: str | None = None, reason: str | None = None) -> list[Any]:
        return [
            e
            for e in self.emu.list("events.events.k8s.io", "default")
            if (kind is None or e["type"] == kind) and (reason is None or e["reason"] == reason)
        ]


@pytest.fixture(params=list(WRITE_ORDERS))
async def stack(
    request: pytest.FixtureRequest,
    make_runtime: RuntimeFactory,
    tmp_path: Path,
    span_exporter: InMemorySpanExporter,
) -> AsyncIterator[Stack]:
    emu = KubeEmulator(
        "east",
        bookmark_interval=BOOKMARK_INTERVAL_S,
        watch_first=WRITE_ORDERS[request.param],
        seed=14,
    )
    await emu.start()
    kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig", context_name="east")
    peer = await make_runtime("peer")
    seen = BusRecorder()
    sub = await seen.attach(peer, "vipwire.east.>")
    s = Stack(
        emu,
        peer=peer,
        seen=seen,
        make_runtime=make_runtime,
        kubeconfig=kubeconfig,
        spans=span_exporter,
    )
    try:
        yield s
    finally:
        await s.stop_watcher()
        await sub.unsubscribe()
        await emu.stop()


async def test_every_deletion_gets_its_ip_released_event(stack: Stack) -> None:
    """Each deleted Service gets IPReleased about its uid, though removing the finalizer
    lets the API server delete it at once (and its DELETED event may come first)."""
    await stack.start_watcher()
    names = [f"web-{i}" for i in range(5)]
    snaps = {name: await stack.created(name) for name in names}
    for i, name in enumerate(names):
        await stack.emu.delete("services", "default", name)
        await stack.seen.wait(ServiceSnapshot, name=name, deleting=True)
        await stack.peer.bus.publish(
            VipReleased(**ref(name), uid=snaps[name].uid, vips=(f"198.51.100.{i + 1}",))
        )
    for name in names:
        await eventually(
            lambda name=name: stack.emu.find("services", "default", name) is None,
            what=f"{name} is deleted",
        )
    await stack.settled()
    released = stack.events(reason="IPReleased")
    told = sorted((e["regarding"]["name"], e["regarding"]["uid"]) for e in released)
    assert told == sorted((name, snap.uid) for name, snap in snaps.items())
    assert all(e["type"] == "Normal" and e["regarding"]["kind"] == "Service" for e in released)


async def test_a_restart_emits_no_normal_event_for_an_unchanged_service(stack: Stack) -> None:
    """A restarted watcher replays the bus, a programming whose members changed since its
    Event included, and emits no Normal Event, nor counts one again; a Service deleted
    before the restart is not told gone twice."""
    await stack.start_watcher()
    web = await stack.created("web")
    vip = "198.51.100.7"
    await stack.peer.bus.publish(
        VipAssigned(
            **ref("web"),
            uid=web.uid,
            vips=(vip,),
            pool="default",
            appliance_group="sim",
            ports=(ServicePort(port=80),),
        )
    )
    programmed = LbProgrammed(
        **ref("web"),
        uid=web.uid,
        appliance="sim-a",
        vips=(vip,),
        ports=(ServicePort(port=80),),
        members=(N1,),
    )
    await stack.peer.bus.publish(programmed)
    await eventually(
        lambda: stack.events(reason="LoadBalancerProgrammed"), what="LoadBalancerProgrammed"
    )
    # A node joins: the lbdriver says so, and that is no news for an Event.
    await stack.peer.bus.publish(msgspec.structs.replace(programmed, members=(N1, N2)))
    gone = await stack.created("gone")
    await stack.emu.delete("services", "default", "gone")
    await stack.seen.wait(ServiceSnapshot, name="gone", deleting=True)
    await stack.peer.bus.publish(VipReleased(**ref("gone"), uid=gone.uid, vips=("198.51.100.8",)))
    await eventually(lambda: stack.events(reason="IPReleased"), what="IPReleased for gone")
    await stack.settled()
    told = {e["metadata"]["name"]: e.get("series") for e in stack.events(kind="Normal")}
    assert sorted(e["reason"] for e in stack.events(kind="Normal")) == [
        "IPAllocated",
        "IPReleased",
        "LoadBalancerProgrammed",
    ]

    await stack.stop_watcher()
    await stack.start_watcher()
    await stack.settled()
    assert {e["metadata"]["name"]: e.get("series") for e in stack.events(kind="Normal")} == told


async def test_a_status_vip_not_kept_gets_a_warning_event_that_says_why(stack: Stack) -> None:
    """ipam could not give the Service back the VIP its status held (VipAssigned.notes):
    a Warning StatusVIPNotKept says why and what it got instead, next to IPAllocated."""
    await stack.start_watcher()
    web = await stack.created("web")
    note = "status VIP 198.51.100.7 not kept: held by another Service (east/default/db)"
    await stack.peer.bus.publish(
        VipAssigned(
            **ref("web"),
            uid=web.uid,
            vips=("198.51.100.9",),
            pool="default",
            appliance_group="sim",
            ports=(ServicePort(port=80),),
            notes=(note,),
        )
    )
    await eventually(lambda: stack.events(reason="StatusVIPNotKept"), what="StatusVIPNotKept")
    await stack.settled()
    (warning,) = stack.events(reason="StatusVIPNotKept")
    assert warning["type"] == "Warning"
    assert warning["regarding"]["uid"] == web.uid
    assert warning["note"].startswith(f"{note}; assigned 198.51.100.9")
    assert [e["type"] for e in stack.events(reason="IPAllocated")] == ["Normal"]
