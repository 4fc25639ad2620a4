"""The watcher against a real nats-server and the Kubernetes API emulator."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from support.fences import BOOKMARK_INTERVAL_S, SUBJECT, now_ns, watcher_settled
from support.orders import WRITE_ORDERS
from support.recorders import BusRecorder as Seen
from vipwire.cli.main import main
from vipwire.contracts import (
    EndpointsSnapshot,
    LbFailed,
    LbProgrammed,
    Member,
    Message,
    NodeApplied,
    NodeGone,
    NodeSnapshot,
    ServiceGone,
    ServicePort,
    ServiceRejected,
    ServiceSnapshot,
    StatusWritten,
    VipAssigned,
    VipFailed,
    VipReleased,
)
from vipwire.kubeemu import KubeEmulator
from vipwire.natsserver import NatsServer
from vipwire.runtime import Runtime
from vipwire.testing import eventually
from vipwire.watcher import WatcherService, WatcherSettings

RuntimeFactory = Callable[[str], Awaitable[Runtime]]
CLASS = "vipwire.io/dsr"
FINALIZER = "service.kubernetes.io/load-balancer-cleanup"
SVC = {"cluster": "east", "namespace": "default", "name": "web"}


def lb_service(
    name: str = "web",
    *,
    lb_class: str | None = CLASS,
    annotations: dict[str, str] | None = None,
    ports: tuple[int, ...] = (80,),
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "LoadBalancer",
        "selector": {"app": name},
        "ports": [{"name": f"p{p}", "port": p, "targetPort": 8080} for p in ports],
    }
    if lb_class is not None:
        spec["loadBalancerClass"] = lb_class
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations or {}},
        "spec": spec,
    }


def endpoint_slice(name: str, service: str, node: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [ip], "nodeName": node, "conditions": {"ready": True}},
        ],
        "ports": [{"name": "p80", "port": 8080, "protocol": "TCP"}],
    }


class Harness:
    def __init__(
        self,
        emu: KubeEmulator,
        peer: Runtime,
        seen: Seen,
        make_runtime: RuntimeFactory,
        kubeconfig: Path,
        *,
        spans: InMemorySpanExporter,
    ) -> None:
        self.emu = emu
        self.peer = peer
        self.seen = seen
        self.spans = spans
        self.started_ns = 0
        self._make_runtime = make_runtime
        self.kubeconfig = kubeconfig
        #: (uid, VIPs) ipam has assigned, as far as this harness published.
        self._assigned: set[tuple[str, tuple[str, ...]]] = set()
        self.watcher: WatcherService | None = None
        self.runtime: Runtime | None = None

    async def start_watcher(self, **overrides: Any) -> WatcherService:
        settings = WatcherSettings(
            cluster="east",
            kubeconfig=str(self.kubeconfig),
            context="east",
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
            instance="test-watcher",
            **overrides,
        )
        runtime = await self._make_runtime("watcher")
        watcher = WatcherService(settings, runtime)
        self.started_ns = now_ns()
        await watcher.start()
        self.watcher, self.runtime = watcher, runtime
        await eventually(lambda: watcher.readiness() is None, what="the watcher is ready")
        return watcher

    async def stop_watcher(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
            self.watcher = None

    async def settled(self, since_ns: int | None = None) -> None:
        """Fence: the watcher handled all we published and every Kubernetes change so far."""
        assert self.watcher is not None
        await watcher_settled(
            self.watcher,
            self.emu,
            self.spans,
            since_ns=self.started_ns if since_ns is None else since_ns,
        )

    def service(self, name: str = "web") -> dict[str, Any] | None:
        return self.emu.find("services", "default", name)

    async def publish(self, message: Message) -> None:
        """Publish as the pipeline would: a programming comes after ipam's assignment of
        its VIPs (the watcher writes only assigned VIPs), published here if not yet."""
        if isinstance(message, LbProgrammed) and (message.uid, message.vips) not in self._assigned:
            await self.peer.bus.publish(
                VipAssigned(
                    cluster=message.cluster,
                    namespace=message.namespace,
                    name=message.name,
                    uid=message.uid,
                    vips=message.vips,
                    pool="default",
                    appliance_group="sim",
                    ports=message.ports,
                )
            )
        if isinstance(message, VipAssigned):
            self._assigned.add((message.uid, message.vips))
        if isinstance(message, LbProgrammed):
            self._assigned.add((message.uid, message.vips))
        await self.peer.bus.publish(message)

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [
            e for e in self.emu.list("events.events.k8s.io", "default") if e["reason"] == reason
        ]

    async def created(self, name: str = "web", **kwargs: Any) -> ServiceSnapshot:
        """Create a Service of ours and wait for its first snapshot."""
        await self.emu.create(lb_service(name, **kwargs))
        await eventually(
            lambda: self.seen.of(ServiceSnapshot, name=name), what=f"a ServiceSnapshot of {name}"
        )
        snap: ServiceSnapshot = self.seen.of(ServiceSnapshot, name=name)[-1]
        return snap


@pytest.fixture(params=list(WRITE_ORDERS))
async def harness(
    request: pytest.FixtureRequest,
    make_runtime: RuntimeFactory,
    tmp_path: Path,
    span_exporter: InMemorySpanExporter,
) -> AsyncIterator[Harness]:
    emu = KubeEmulator(
        "east", bookmark_interval=BOOKMARK_INTERVAL_S, watch_first=WRITE_ORDERS[request.param]
    )
    await emu.start()
    kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig", context_name="east")
    peer = await make_runtime("peer")
    seen = Seen()
    sub = await seen.attach(peer, "vipwire.east.>")
    h = Harness(emu, peer, seen, make_runtime, kubeconfig, spans=span_exporter)
    try:
        yield h
    finally:
        await h.stop_watcher()
        await sub.unsubscribe()
        await emu.stop()


def programmed(uid: str, vips: tuple[str, ...] = ("198.51.100.7",), **kw: Any) -> LbProgrammed:
    return LbProgrammed(
        **SVC,
        uid=uid,
        appliance="sim-a",
        vips=vips,
        ports=(ServicePort(port=80),),
        members=kw.pop("members", (Member(node="n1", address="192.0.2.11"),)),
        **kw,
    )


class TestServices:
    async def test_service_of_our_class_gets_finalizer_then_snapshot(
        self, harness: Harness
    ) -> None:
        """A LoadBalancer Service of our class gets the finalizer and a snapshot of its spec."""
        await harness.start_watcher()
        await harness.emu.create(
            lb_service(annotations={"vipwire.io/pool": "gold", "vipwire.io/ips": "198.51.100.7"})
        )
        await eventually(
            lambda: harness.seen.of(ServiceSnapshot, name="web"), what="a ServiceSnapshot of web"
        )
        svc = harness.service()
        assert svc is not None
        assert FINALIZER in svc["metadata"]["finalizers"]
        snap = harness.seen.of(ServiceSnapshot, name="web")[0]
        assert snap.uid == svc["metadata"]["uid"]
        assert snap.pool == "gold"
        assert snap.requested_ips == ("198.51.100.7",)
        assert [p.port for p in snap.ports] == [80]
        assert not snap.deleting
        # The snapshot was published after the finalizer write: it carries that version.
        assert int(snap.resource_version) >= int(svc["metadata"]["resourceVersion"]) - 1

    async def test_service_of_another_class_is_ignored(self, harness: Harness) -> None:
        """Services of another class (or none) get no finalizer and no snapshot."""
        await harness.start_watcher()
        await harness.emu.create(lb_service("other", lb_class="example.com/lb"))
        await harness.emu.create(lb_service("plain", lb_class=None))
        await harness.created("web")
        for name in ("other", "plain"):
            svc = harness.service(name)
            assert svc is not None
            assert FINALIZER not in (svc["metadata"].get("finalizers") or [])
            assert not harness.seen.of(ServiceSnapshot, name=name)

    async def test_programmed_vips_ipam_did_not_assign_never_reach_the_status(
        self, harness: Harness
    ) -> None:
        """A forged LbProgrammed (the lbdriver's subject) naming the gateway and 8.8.8.8
        besides the assigned VIP: nothing is written (counted, logged); the true
        programming then writes only the assigned VIP."""
        await harness.start_watcher()
        snap = await harness.created()
        await harness.publish(programmed(snap.uid))
        await eventually(lambda: ingress_of(harness.service()), what="web's ingress")
        forged = programmed(snap.uid, ("198.51.100.7", "192.0.2.1", "8.8.8.8"))
        await harness.peer.bus.publish(forged)  # no assignment of these: as a forger does
        assert harness.runtime is not None
        refused = harness.runtime.metrics.counter("watcher_refused_vips_total", "")
        await eventually(lambda: refused.value() == 2, what="the two foreign VIPs refused")
        assert ingress_of(harness.service()) == [{"ip": "198.51.100.7", "ipMode": "VIP"}]

    async def test_programmed_writes_status_and_event(
        self, harness: Harness, span_exporter: InMemorySpanExporter
    ) -> None:
        """LbProgrammed: VIPs in status (ipMode VIP), a Normal Event, StatusWritten on the bus."""
        await harness.start_watcher()
        snap = await harness.created()
        await harness.publish(programmed(snap.uid))

        def ingress() -> Any:
            svc = harness.service()
            return svc and svc.get("status", {}).get("loadBalancer", {}).get("ingress")

        await eventually(ingress, what="web's status lists its ingress")
        assert ingress() == [{"ip": "198.51.100.7", "ipMode": "VIP"}]
        await eventually(
            lambda: harness.events("LoadBalancerProgrammed"), what="a LoadBalancerProgrammed Event"
        )
        event = harness.events("LoadBalancerProgrammed")[0]
        assert event["type"] == "Normal"
        assert event["regarding"]["uid"] == snap.uid
        assert event["reportingController"] == "vipwire.io/watcher"

        def consumer_parent_of_status_write() -> bool:
            spans = span_exporter.get_finished_spans()
            by_id = {s.context.span_id: s for s in spans}
            return any(
                s.name == "status write"
                and s.parent is not None
                and s.parent.span_id in by_id
                and by_id[s.parent.span_id].kind == SpanKind.CONSUMER
                for s in spans
            )

        await eventually(
            consumer_parent_of_status_write, what="a status write span under a CONSUMER span"
        )
        roots = [s for s in span_exporter.get_finished_spans() if s.name == "reconcile service"]
        assert roots and all(s.parent is None for s in roots)
        await eventually(
            lambda: harness.seen.of(StatusWritten, name="web"), what="StatusWritten for web"
        )
        written = harness.seen.of(StatusWritten, name="web")[0]
        assert written.vips == ("198.51.100.7",)
        write = next(s for s in span_exporter.get_finished_spans() if s.name == "status write")
        assert written.trace_id == format(write.context.trace_id, "032x")
        assert roots[0].attributes is not None
        assert roots[0].attributes["k8s.service.name"] == "web"
        # Our own status write does not make us publish the unchanged Service again.
        await harness.settled()
        assert len(harness.seen.of(ServiceSnapshot, name="web")) == 1

    async def test_failures_become_warning_events(self, harness: Harness) -> None:
        """VipFailed and LbFailed are recorded as Warning Events with their message."""
        await harness.start_watcher()
        snap = await harness.created()
        await harness.publish(
            VipFailed(**SVC, uid=snap.uid, reason="AllocationFailed", message="pool gold is full")
        )
        await eventually(
            lambda: harness.events("AllocationFailed"), what="an AllocationFailed Event"
        )
        event = harness.events("AllocationFailed")[0]
        assert event["type"] == "Warning"
        assert event["note"].startswith("pool gold is full (trace ")
        await harness.publish(
            LbFailed(**SVC, uid=snap.uid, appliance="f5-a", reason="Timeout", message="no answer")
        )
        await eventually(lambda: harness.events("ApplianceFailed"), what="an ApplianceFailed Event")
        assert "no answer" in harness.events("ApplianceFailed")[0]["note"]

    async def test_an_unreadable_message_is_a_warning_event_and_changes_no_status(
        self, harness: Harness
    ) -> None:
        """Garbage last on a Service's ``lb`` subject: a Warning Event names the subject and
        sequence, and the status keeps what the last valid message said."""
        await harness.start_watcher()
        snap = await harness.created()
        await harness.publish(programmed(snap.uid))
        await eventually(
            lambda: harness.events("LoadBalancerProgrammed"), what="a LoadBalancerProgrammed Event"
        )
        bad = await harness.peer.bus.js.publish("vipwire.east.lb.default.web", b"\x00not json")
        await eventually(
            lambda: harness.events("UnreadableMessage"), what="an UnreadableMessage Event"
        )
        (event,) = harness.events("UnreadableMessage")
        assert event["type"] == "Warning"
        assert event["regarding"]["uid"] == snap.uid
        assert f"vipwire.east.lb.default.web (stream seq {bad.seq})" in event["note"]
        assert "stays in force" in event["note"]
        await harness.settled()
        svc = harness.service()
        assert svc is not None
        assert svc["status"]["loadBalancer"]["ingress"] == [{"ip": "198.51.100.7", "ipMode": "VIP"}]

    async def test_an_unreadable_message_found_at_a_restart_is_a_warning_event(
        self, harness: Harness
    ) -> None:
        """Garbage left last on a Service's ``lb`` subject while no watcher ran: the next
        one tells it in a Warning Event once the Service is listed, and keeps its status."""
        await harness.start_watcher()
        snap = await harness.created()
        await harness.publish(programmed(snap.uid))
        await eventually(
            lambda: harness.events("LoadBalancerProgrammed"), what="a LoadBalancerProgrammed Event"
        )
        await harness.stop_watcher()
        bad = await harness.peer.bus.js.publish("vipwire.east.lb.default.web", b"\x00not json")
        await harness.start_watcher()
        await eventually(
            lambda: harness.events("UnreadableMessage"), what="an UnreadableMessage Event"
        )
        (event,) = harness.events("UnreadableMessage")
        assert event["regarding"]["uid"] == snap.uid
        assert f"(stream seq {bad.seq})" in event["note"]
        await harness.settled()
        svc = harness.service()
        assert svc is not None
        assert svc["status"]["loadBalancer"]["ingress"] == [{"ip": "198.51.100.7", "ipMode": "VIP"}]

    async def test_an_unreadable_node_message_is_a_warning_event_on_the_node(
        self, harness: Harness
    ) -> None:
        """Garbage left last on ``node.<node>`` while no watcher ran: the next one puts a
        Warning Event on the Node naming the subject and sequence, and does not take the
        node for gone."""
        await harness.emu.add_node("n1", "192.0.2.11")
        await harness.start_watcher()
        await eventually(
            lambda: harness.seen.of(NodeSnapshot, node="n1"), what="a NodeSnapshot of n1"
        )
        await harness.stop_watcher()
        bad = await harness.peer.bus.js.publish("vipwire.east.node.n1", b"\x00not json")
        await harness.start_watcher()
        await eventually(
            lambda: harness.events("UnreadableMessage"), what="an UnreadableMessage Event"
        )
        (event,) = harness.events("UnreadableMessage")
        assert event["type"] == "Warning"
        assert event["regarding"]["kind"] == "Node" and event["regarding"]["name"] == "n1"
        assert "namespace" not in event["regarding"]
        assert f"vipwire.east.node.n1 (stream seq {bad.seq})" in event["note"]
        await harness.settled()
        assert not harness.seen.of(NodeGone, node="n1")

    async def test_delete_then_released_removes_finalizer(self, harness: Harness) -> None:
        """Deleting publishes a deleting snapshot; VipReleased lets the Service go, and the
        watcher forgets it (no view, lock or tombstone left behind)."""
        await harness.start_watcher()
        snap = await harness.created()
        await harness.emu.delete("services", "default", "web")
        await eventually(
            lambda: harness.seen.of(ServiceSnapshot, name="web", deleting=True),
            what="a deleting snapshot of web",
        )
        assert harness.service() is not None  # held by our finalizer
        await harness.publish(VipReleased(**SVC, uid=snap.uid, vips=("198.51.100.7",)))
        await eventually(lambda: harness.service() is None, what="web is gone")
        await eventually(
            lambda: harness.seen.of(ServiceGone, name="web", uid=snap.uid),
            what="ServiceGone for web",
        )
        # Nothing is kept about a Service that is gone everywhere (white box).
        watcher = harness.watcher
        assert watcher is not None
        await eventually(
            lambda: "default/web" not in watcher._term.memory.views,
            what="the watcher forgot web's view",
        )
        await eventually(
            lambda: "default/web" not in watcher._term.memory.services,
            what="the watcher forgot web's record",
        )
        await eventually(lambda: len(watcher._term.locks) == 0, what="no lock left")
        assert "default/web" not in watcher._term.memory.departed

    async def test_type_change_away_releases_and_clears_status(self, harness: Harness) -> None:
        """A Service that stops being a LoadBalancer is released, then let go, status cleared."""
        await harness.start_watcher()
        snap = await harness.created()
        await harness.publish(programmed(snap.uid))
        await eventually(
            lambda: (harness.service() or {}).get("status", {}).get("loadBalancer"),
            what="web's status has a load balancer",
        )
        await harness.emu.patch("services", "default", "web", {"spec": {"type": "ClusterIP"}})
        await eventually(
            lambda: harness.seen.of(ServiceSnapshot, name="web", deleting=True),
            what="a deleting snapshot of web",
        )
        await harness.publish(VipReleased(**SVC, uid=snap.uid))

        def let_go() -> bool:
            svc = harness.service()
            assert svc is not None
            return FINALIZER not in (svc["metadata"].get("finalizers") or [])

        await eventually(let_go, what="web let go (no finalizer)")
        svc = harness.service()
        assert svc is not None
        assert not svc.get("status", {}).get("loadBalancer", {}).get("ingress")
        await eventually(
            lambda: harness.seen.of(ServiceGone, name="web"), what="ServiceGone for web"
        )
        assert harness.seen.of(StatusWritten, name="web")[-1].vips == ()

    async def test_status_gate_all_waits_for_every_member(self, harness: Harness) -> None:
        """With status_gate=all, status is written only once every member node applied."""
        await harness.start_watcher(status_gate="all")
        snap = await harness.created()
        members = (Member(node="n1", address="192.0.2.11"), Member(node="n2", address="192.0.2.12"))
        await harness.publish(programmed(snap.uid, members=members))
        await harness.publish(
            NodeApplied(cluster="east", node="n1", generation=1, vips=("198.51.100.7",))
        )
        await harness.settled()
        svc = harness.service()
        assert svc is not None
        assert not svc.get("status", {}).get("loadBalancer", {}).get("ingress")
        await harness.publish(
            NodeApplied(cluster="east", node="n2", generation=1, vips=("198.51.100.7",))
        )
        await eventually(
            lambda: (harness.service() or {}).get("status", {}).get("loadBalancer"),
            what="web's status written once both nodes applied",
        )

    async def test_reports_make_no_span_and_the_status_they_open_is_in_the_services_trace(
        self, harness: Harness
    ) -> None:
        """A node agent's report is taken in without a CONSUMER span (at 1,000 nodes they
        are most of the watcher's deliveries), and the status write it lets through joins
        the trace of the Service's last change, not the report's."""
        await harness.start_watcher(status_gate="any")
        snap = await harness.created()
        members = (Member(node="n1", address="192.0.2.11"),)
        await harness.publish(programmed(snap.uid, members=members))
        await harness.settled()
        await harness.publish(
            NodeApplied(cluster="east", node="n1", generation=1, vips=("198.51.100.7",))
        )
        await harness.settled()
        assert ((harness.service() or {}).get("status") or {}).get("loadBalancer")
        spans = harness.spans.get_finished_spans()
        consumed = [
            s
            for s in spans
            if s.kind == SpanKind.CONSUMER
            and s.resource.attributes.get("service.name") == "vipwire-watcher"
        ]
        assert consumed, "the watcher's other deliveries are traced"
        assert not [s for s in consumed if ".applied." in str(s.attributes.get(SUBJECT))]

        def published(family: str) -> str:
            (span,) = [
                s
                for s in spans
                if s.kind == SpanKind.PRODUCER and f".{family}." in str(s.attributes.get(SUBJECT))
            ]
            return format(span.context.trace_id, "032x")

        writes = [s for s in spans if s.name == "status write"]
        assert writes
        assert format(writes[-1].context.trace_id, "032x") == published("lb")


class TestNodesAndEndpoints:
    async def test_nodes_and_endpoint_slices_yield_snapshots(self, harness: Harness) -> None:
        """Nodes become NodeSnapshot/NodeGone; EndpointSlices of our Services EndpointsSnapshot."""
        await harness.emu.add_node("n1.rack-1", "192.0.2.11")
        await harness.start_watcher()
        await eventually(
            lambda: harness.seen.of(NodeSnapshot, node="n1.rack-1"),
            what="a NodeSnapshot of n1.rack-1",
        )
        assert harness.seen.of(NodeSnapshot, node="n1.rack-1")[0].addresses == ("192.0.2.11",)
        await harness.created()
        await harness.emu.create(endpoint_slice("web-abc", "web", "n1.rack-1", "10.0.0.5"))
        await harness.emu.create(endpoint_slice("other-abc", "other", "n1.rack-1", "10.0.0.6"))

        def nodes_of_web() -> list[str]:
            snaps = harness.seen.of(EndpointsSnapshot, name="web")
            return [n.node for n in snaps[-1].nodes] if snaps else []

        await eventually(
            lambda: nodes_of_web() == ["n1.rack-1"], what="web's endpoints on n1.rack-1"
        )
        assert not harness.seen.of(EndpointsSnapshot, name="other")
        await harness.emu.delete("nodes", None, "n1.rack-1")
        await eventually(
            lambda: harness.seen.of(NodeGone, node="n1.rack-1"), what="NodeGone for n1.rack-1"
        )


class TestResilience:
    async def test_changes_during_a_broken_watch_are_not_lost(self, harness: Harness) -> None:
        """After watches break (and history is compacted), every change is caught up on."""
        await harness.emu.add_node("n1", "192.0.2.11")
        await harness.emu.add_node("n2", "192.0.2.12")
        await harness.start_watcher()
        await eventually(
            lambda: harness.seen.of(NodeSnapshot, node="n2"), what="a NodeSnapshot of n2"
        )
        await eventually(lambda: harness.emu.open_watches >= 3, what="three watches open")
        harness.emu.latency = 0.3  # the watcher reconnects slowly: changes land meanwhile
        assert await harness.emu.break_watches() >= 3
        await harness.emu.create(lb_service("during"))
        await harness.emu.add_node("n3", "192.0.2.13")
        await harness.emu.delete("nodes", None, "n2")
        harness.emu.compact()  # and the history is gone: only a re-list can tell
        # The slow reconnects get under way before the watches break again; the assertions
        # below hold whichever way that goes.
        await asyncio.sleep(0.1)  # pacing, not a wait for an outcome
        harness.emu.latency = 0.0
        await harness.emu.break_watches()
        await eventually(
            lambda: harness.seen.of(ServiceSnapshot, name="during"),
            what="a ServiceSnapshot of during",
        )
        await eventually(
            lambda: harness.seen.of(NodeSnapshot, node="n3"), what="a NodeSnapshot of n3"
        )
        await eventually(lambda: harness.seen.of(NodeGone, node="n2"), what="NodeGone for n2")
        assert harness.runtime is not None
        restarts = harness.runtime.metrics.counter(
            "watcher_watch_restarts_total", "", ["resource", "reason"]
        )
        assert restarts.value(resource="nodes", reason="gone") >= 1

    async def test_outage_and_410_lose_no_change_and_duplicate_no_outcome(
        self, harness: Harness
    ) -> None:
        """Watches broken, history compacted (410): a Service created and another deleted
        meanwhile end up right, and nothing is published or announced twice."""
        await harness.start_watcher()
        stay = await harness.created("stay")
        leaving = await harness.created("leaving")
        for snap in (stay, leaving):
            await harness.publish(
                LbProgrammed(
                    cluster="east",
                    namespace="default",
                    name=snap.name,
                    uid=snap.uid,
                    appliance="sim-a",
                    vips=("198.51.100.7",) if snap.name == "stay" else ("198.51.100.8",),
                    ports=(ServicePort(port=80),),
                    members=(Member(node="n1", address="192.0.2.11"),),
                )
            )
        await eventually(
            lambda: ingress_of(harness.service("stay")), what="stay's status lists its ingress"
        )
        await eventually(
            lambda: ingress_of(harness.service("leaving")),
            what="leaving's status lists its ingress",
        )
        await eventually(lambda: harness.emu.open_watches >= 3, what="three watches open")

        harness.emu.latency = 0.3  # the watcher reconnects slowly: changes land meanwhile
        assert await harness.emu.break_watches() >= 3
        await harness.emu.create(lb_service("during"))
        await harness.emu.delete("services", "default", "leaving")
        harness.emu.compact()  # only a re-list can tell what happened
        await asyncio.sleep(0.1)  # pacing, not a wait for an outcome (as in the test above)
        harness.emu.latency = 0.0
        await harness.emu.break_watches()

        await eventually(
            lambda: harness.seen.of(ServiceSnapshot, name="during"),
            what="a ServiceSnapshot of during",
        )
        await eventually(
            lambda: harness.seen.of(ServiceSnapshot, name="leaving", deleting=True),
            what="a deleting snapshot of leaving",
        )
        await harness.publish(
            VipReleased(
                cluster="east",
                namespace="default",
                name="leaving",
                uid=leaving.uid,
                vips=("198.51.100.8",),
            )
        )
        await eventually(lambda: harness.service("leaving") is None, what="leaving is gone")
        await eventually(
            lambda: harness.seen.of(ServiceGone, name="leaving"), what="ServiceGone for leaving"
        )
        during = harness.service("during")
        assert during is not None and FINALIZER in during["metadata"]["finalizers"]
        await harness.settled()
        assert harness.seen.duplicates("service", "endpoints", "node") == []
        assert len(harness.seen.of(ServiceSnapshot, name="stay")) == 1
        assert len(harness.seen.of(ServiceSnapshot, name="leaving", deleting=True)) == 1
        assert len(harness.seen.of(ServiceGone, name="leaving")) == 1
        assert len(harness.seen.of(ServiceSnapshot, name="during")) == 1
        programmed_events = harness.events("LoadBalancerProgrammed")
        assert sorted(e["regarding"]["name"] for e in programmed_events) == ["leaving", "stay"]
        assert all("series" not in e for e in programmed_events)

    async def test_restart_republishes_nothing_and_catches_up(self, harness: Harness) -> None:
        """A restarted watcher knows what it published; what vanished meanwhile is gone."""
        await harness.emu.add_node("n1", "192.0.2.11")
        await harness.emu.add_node("n2", "192.0.2.12")
        await harness.start_watcher()
        await harness.created()
        await eventually(
            lambda: harness.seen.of(EndpointsSnapshot, name="web"),
            what="an EndpointsSnapshot of web",
        )
        await eventually(
            lambda: harness.seen.of(NodeSnapshot, node="n2"), what="a NodeSnapshot of n2"
        )
        await harness.stop_watcher()
        await harness.emu.delete("nodes", None, "n2")
        before = len(harness.seen.messages)
        await harness.start_watcher()
        await eventually(
            lambda: harness.seen.of(NodeGone, node="n2"), what="NodeGone for n2 after the restart"
        )
        await harness.settled()
        new = harness.seen.messages[before:]
        assert [type(m).__name__ for m in new] == ["NodeGone"]

    async def test_a_replay_that_outlasts_its_timeout_finishes_while_serving(
        self, harness: Harness
    ) -> None:
        """Past catch_up_timeout_s the watcher serves Kubernetes while the replay of its own
        families goes on; once that ends it reads them no more, and a Service deleted then
        is still declared gone and forgotten."""
        for i in range(500):  # something to replay for longer than the timeout
            await harness.publish(NodeGone(cluster="east", node=f"old-{i}"))
        watcher = await harness.start_watcher(catch_up_timeout_s=0.001)
        snap = await harness.created()
        await eventually(
            lambda: watcher._replay is None, what="the replay of our own families stopped"
        )  # white box: replay stopped
        await harness.emu.delete("services", "default", "web")
        await eventually(
            lambda: harness.seen.of(ServiceSnapshot, name="web", deleting=True),
            what="a deleting snapshot of web",
        )
        await harness.publish(VipReleased(**SVC, uid=snap.uid, vips=("198.51.100.7",)))
        await eventually(
            lambda: harness.seen.of(ServiceGone, name="web", uid=snap.uid),
            what="ServiceGone for web",
        )
        await eventually(lambda: harness.service() is None, what="web is gone")
        await eventually(
            lambda: "default/web" not in watcher._term.memory.services,
            what="the watcher forgot web",
        )
        assert "default/web" not in watcher._term.memory.views

    async def test_services_replaced_or_removed_while_down_are_caught_up(
        self, harness: Harness
    ) -> None:
        """After a restart: a namesake's old uid is declared gone, a vanished Service too."""
        await harness.start_watcher()
        old_web = await harness.created("web")
        old_api = await harness.created("api")
        await harness.stop_watcher()
        for name in ("web", "api"):
            # Someone forces the Services out past our finalizer while we are down.
            await harness.emu.patch("services", "default", name, {"metadata": {"finalizers": None}})
            await harness.emu.delete("services", "default", name)
        await harness.emu.create(lb_service("web"))
        await harness.start_watcher()
        await eventually(
            lambda: harness.seen.of(ServiceGone, name="api", uid=old_api.uid),
            what="ServiceGone for the old api",
        )
        await eventually(
            lambda: harness.seen.of(ServiceGone, name="web", uid=old_web.uid),
            what="ServiceGone for the old web",
        )
        await eventually(
            lambda: len(harness.seen.of(ServiceSnapshot, name="web")) == 2,
            what="a snapshot of the new web",
        )
        new_web = harness.seen.of(ServiceSnapshot, name="web")[-1]
        assert new_web.uid != old_web.uid
        gone_at = harness.seen.messages.index(
            harness.seen.of(ServiceGone, name="web", uid=old_web.uid)[0]
        )
        assert gone_at < harness.seen.messages.index(new_web)


class TestApiFailures:
    async def test_finalizer_conflict_is_retried_on_a_fresh_read(self, harness: Harness) -> None:
        """A 409 on the finalizer write is retried after re-reading; the snapshot follows."""
        await harness.start_watcher()
        harness.emu.inject_failure(409, reason="Conflict", method="PATCH", resource="services")
        await harness.created()
        svc = harness.service()
        assert svc is not None and FINALIZER in svc["metadata"]["finalizers"]
        assert harness.runtime is not None
        writes = harness.runtime.metrics.counter(
            "watcher_api_writes_total", "", ["kind", "outcome"]
        )
        assert writes.value(kind="finalizer-add", outcome="conflict") == 1

    async def test_failed_status_write_is_retried(self, harness: Harness) -> None:
        """A 500 on the status write makes the delivery retry until status is written."""
        await harness.start_watcher()
        snap = await harness.created()
        harness.emu.inject_failure(500, method="PATCH", resource="services", count=2)
        await harness.publish(programmed(snap.uid))
        await eventually(
            lambda: (harness.service() or {}).get("status", {}).get("loadBalancer"),
            what="web's status written despite the 500s",
        )

    async def test_renewed_watches_miss_nothing(self, harness: Harness) -> None:
        """Watches the server ends (timeoutSeconds) are renewed from where they stopped."""
        watches = harness.emu.record_requests()
        await harness.start_watcher(watch_timeout_s=1)

        def renewed() -> bool:
            opened = Counter(r.resource for r in watches if r.verb == "watch")
            return all(opened[r] >= 2 for r in ("services", "endpointslices", "nodes"))

        await eventually(renewed, what="every watch ended by the server was opened again")
        await harness.created()
        await harness.emu.add_node("n9", "192.0.2.19")
        await eventually(
            lambda: harness.seen.of(NodeSnapshot, node="n9"), what="a NodeSnapshot of n9"
        )


def ready_condition(svc: dict[str, Any] | None) -> dict[str, Any] | None:
    for cond in ((svc or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "vipwire.io/Ready":
            found: dict[str, Any] = cond
            return found
    return None


def ingress_of(svc: dict[str, Any] | None) -> list[Any]:
    found: list[Any] = (((svc or {}).get("status") or {}).get("loadBalancer") or {}).get(
        "ingress"
    ) or []
    return found


class TestValidation:
    async def test_each_invalid_input_gets_its_warning_and_nothing_else_is_affected(
        self, harness: Harness
    ) -> None:
        """Malformed IPs, a bad pool name, an unknown vipwire annotation, an unserved protocol:
        a Warning Event saying what to fix, the condition, no finalizer, no snapshot; a valid
        Service next to them is served as usual."""
        await harness.start_watcher(protocols=("TCP", "UDP"))
        invalid: dict[str, tuple[dict[str, Any], str]] = {
            "bad-ips": (
                lb_service("bad-ips", annotations={"vipwire.io/ips": "198.51.100.300"}),
                'vipwire.io/ips: "198.51.100.300" is not an IP address',
            ),
            "bad-legacy": (lb_service("bad-legacy"), "spec.loadBalancerIP"),
            "bad-pool": (
                lb_service("bad-pool", annotations={"vipwire.io/pool": "Gold!"}),
                "a pool name is a DNS label",
            ),
            "typo": (
                lb_service("typo", annotations={"vipwire.io/pol": "gold"}),
                "annotation vipwire.io/pol is not one vipwire knows",
            ),
            "sctp": (lb_service("sctp"), "3868/SCTP (p3868) cannot be served"),
        }
        invalid["bad-legacy"][0]["spec"]["loadBalancerIP"] = "not-an-ip"
        invalid["sctp"][0]["spec"]["ports"] = [{"name": "p3868", "port": 3868, "protocol": "SCTP"}]
        for body, _ in invalid.values():
            await harness.emu.create(body)
        good = await harness.created("good")

        def warned(name: str) -> list[dict[str, Any]]:
            return [e for e in harness.events("InvalidService") if e["regarding"]["name"] == name]

        for name, (_, expected) in invalid.items():
            await eventually(lambda n=name: warned(n), what=f"an InvalidService Event for {name}")
            (event,) = warned(name)
            assert event["type"] == "Warning"
            assert expected in event["note"], event["note"]
            assert "no VIP is assigned until this is fixed" in event["note"]
            await eventually(
                lambda n=name: ready_condition(harness.service(n)),
                what=f"a Ready condition on {name}",
            )
            cond = ready_condition(harness.service(name))
            assert cond is not None and (cond["status"], cond["reason"]) == (
                "False",
                "InvalidService",
            )
            svc = harness.service(name)
            assert svc is not None and not svc["metadata"].get("finalizers")
            assert not harness.seen.of(ServiceSnapshot, name=name)
        assert not good.deleting and not warned("good")
        web = harness.service("good")
        assert web is not None and FINALIZER in web["metadata"]["finalizers"]
        assert ready_condition(web) is None

    async def test_fixing_an_invalid_service_serves_it(self, harness: Harness) -> None:
        """Once the annotation is fixed, the finalizer and the snapshot follow, and the
        InvalidService condition gives way to Pending."""
        await harness.start_watcher()
        await harness.emu.create(lb_service(annotations={"vipwire.io/ips": "nope"}))
        await eventually(lambda: harness.events("InvalidService"), what="an InvalidService Event")
        # The Event is recorded before the status write: fixed before that write, the
        # Service never shows InvalidService, and has nothing to give way to Pending.
        await eventually(
            lambda: (ready_condition(harness.service()) or {}).get("reason") == "InvalidService",
            what="web's condition says InvalidService",
        )
        await harness.emu.patch(
            "services",
            "default",
            "web",
            {"metadata": {"annotations": {"vipwire.io/ips": "198.51.100.9"}}},
        )
        await eventually(
            lambda: harness.seen.of(ServiceSnapshot, name="web"),
            what="a ServiceSnapshot of the fixed web",
        )
        assert harness.seen.of(ServiceSnapshot, name="web")[0].requested_ips == ("198.51.100.9",)
        await eventually(
            lambda: (ready_condition(harness.service()) or {}).get("reason") == "Pending",
            what="web's condition says Pending",
        )

    async def test_a_served_service_made_invalid_keeps_its_vip(self, harness: Harness) -> None:
        """A typo in a Service already served: Warning, condition, but its VIP stays and no
        new snapshot goes out."""
        await harness.start_watcher()
        snap = await harness.created()
        await harness.publish(programmed(snap.uid))
        await eventually(
            lambda: ingress_of(harness.service()), what="web's status lists its ingress"
        )
        await harness.emu.patch(
            "services", "default", "web", {"metadata": {"annotations": {"vipwire.io/ips": "1.2.3"}}}
        )
        await eventually(lambda: harness.events("InvalidService"), what="an InvalidService Event")
        assert "keeps its current VIPs" in harness.events("InvalidService")[0]["note"]
        await eventually(
            lambda: (ready_condition(harness.service()) or {}).get("reason") == "InvalidService",
            what="web's condition says InvalidService",
        )
        await harness.settled()
        assert ingress_of(harness.service()) == [{"ip": "198.51.100.7", "ipMode": "VIP"}]
        assert len(harness.seen.of(ServiceSnapshot, name="web")) == 1
        # The rejection is on the bus, with the snapshot still in force (not an end).
        (rejected,) = harness.seen.of(ServiceRejected, name="web")
        assert rejected.in_force == snap and rejected.reason == "InvalidService"

    async def test_a_rejection_is_published_in_the_trace_of_its_event_and_annotation(
        self, harness: Harness, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """vipwire.io/ips " , ,": InvalidService; a ServiceRejected on the bus (never valid:
        nothing in force) whose trace is the Event's and vipwire.io/last-trace-id's; fixed,
        a snapshot follows; deleted while rejected, its subject ends with ServiceGone."""
        await harness.start_watcher()
        await harness.emu.create(lb_service(annotations={"vipwire.io/ips": " , ,"}))
        rejected = await harness.seen.wait(ServiceRejected, name="web")
        assert rejected.in_force is None and rejected.reason == "InvalidService"
        assert 'vipwire.io/ips: " , ," names no address' in rejected.message
        assert rejected.trace_id
        await eventually(lambda: harness.events("InvalidService"), what="an InvalidService Event")
        assert f"(trace {rejected.trace_id})" in harness.events("InvalidService")[0]["note"]

        def annotated() -> str | None:
            meta = (harness.service() or {}).get("metadata") or {}
            trace: str | None = (meta.get("annotations") or {}).get("vipwire.io/last-trace-id")
            return trace

        await eventually(
            lambda: annotated() == rejected.trace_id,
            what="the annotation names the trace of the rejected change",
        )
        svc = harness.service()
        assert svc is not None and not svc["metadata"].get("finalizers")
        assert not harness.seen.of(ServiceSnapshot, name="web")
        # vipwire replay --service shows it with its reason.
        capsys.readouterr()
        args = ["replay", "--nats", nats_server.url, "--service", "east/default/web"]
        assert await asyncio.to_thread(main, args) == 0
        out = capsys.readouterr().out
        assert "service-rejected" in out and "rejected: InvalidService" in out, out

        await harness.emu.patch(
            "services", "default", "web", {"metadata": {"annotations": {"vipwire.io/ips": "x"}}}
        )
        second = await harness.seen.wait(ServiceRejected, count=2, name="web")
        assert second.trace_id != rejected.trace_id
        await eventually(
            lambda: annotated() == second.trace_id, what="the annotation follows the new change"
        )
        await harness.emu.delete("services", "default", "web")
        gone = await harness.seen.wait(ServiceGone, name="web")
        assert gone.uid == rejected.uid


class TestRefusedForGood:
    async def test_a_service_refused_for_good_that_never_held_a_vip_keeps_no_finalizer(
        self, harness: Harness
    ) -> None:
        """ipam refuses a new Service for good (unknown pool): the finalizer and our mark come
        off, the annotation names the refusal's trace (its Event's too); a change puts them
        back with a new snapshot; a refusal that waits (pool full) keeps the finalizer."""
        await harness.start_watcher()
        snap = await harness.created(annotations={"vipwire.io/pool": "gold"})
        refusal = VipFailed(
            **SVC,
            uid=snap.uid,
            reason="AllocationFailed",
            message="pool 'gold' does not exist (pools: 'default')",
            retryable=False,
        )
        await harness.publish(refusal)

        def meta() -> dict[str, Any]:
            found: dict[str, Any] = (harness.service() or {}).get("metadata") or {}
            return found

        await eventually(
            lambda: not meta().get("finalizers"), what="the finalizer is off the refused web"
        )
        assert "vipwire.io/cluster" not in (meta().get("annotations") or {})
        await eventually(
            lambda: harness.events("AllocationFailed"), what="an AllocationFailed Event"
        )
        trace = (meta().get("annotations") or {}).get("vipwire.io/last-trace-id")
        assert trace and f"(trace {trace})" in harness.events("AllocationFailed")[0]["note"]
        await harness.settled()
        assert not meta().get("finalizers")  # not put back for the same snapshot

        await harness.emu.patch(
            "services", "default", "web", {"metadata": {"annotations": {"vipwire.io/pool": "x"}}}
        )
        changed = await harness.seen.wait(ServiceSnapshot, count=2, name="web")
        assert changed.pool == "x" and FINALIZER in meta()["finalizers"]
        await harness.publish(
            VipFailed(**SVC, uid=snap.uid, reason="AllocationFailed", message="pool 'x' is full")
        )
        await eventually(
            lambda: len(harness.seen.of(VipFailed, name="web")) == 2, what="the second refusal"
        )
        await harness.settled()
        assert FINALIZER in meta()["finalizers"]

    async def test_a_refused_move_is_a_warning_and_a_condition_saying_what_it_keeps(
        self, harness: Harness
    ) -> None:
        """ipam refuses to move a served Service (VipFailed MoveRefused, then the VipAssigned
        it keeps): a MoveRefused Warning Event and a False condition saying what it keeps and
        why; the VIP stays in status and the finalizer on."""
        await harness.start_watcher()
        snap = await harness.created()
        vip = "198.51.100.7"
        assigned = VipAssigned(
            **SVC,
            uid=snap.uid,
            vips=(vip,),
            pool="default",
            appliance_group="sim",
            ports=(ServicePort(port=80),),
        )
        await harness.publish(assigned)
        await harness.publish(programmed(snap.uid, (vip,)))
        await eventually(lambda: ingress_of(harness.service()), what="web's VIP in status")
        why = (
            f"east/default/web keeps {vip} although it asks for 198.51.100.77: the VIPs of a "
            "served Service do not move by themselves"
        )
        await harness.publish(
            VipFailed(**SVC, uid=snap.uid, reason="MoveRefused", message=why, retryable=False)
        )
        await harness.publish(assigned)
        await eventually(lambda: harness.events("MoveRefused"), what="a MoveRefused Event")
        (event,) = harness.events("MoveRefused")
        assert event["type"] == "Warning" and why in event["note"]
        await eventually(
            lambda: (ready_condition(harness.service()) or {}).get("reason") == "MoveRefused",
            what="web's condition says MoveRefused",
        )
        cond = ready_condition(harness.service())
        assert cond is not None and cond["status"] == "False" and cond["message"] == why
        await harness.settled()
        svc = harness.service()
        assert svc is not None and FINALIZER in svc["metadata"]["finalizers"]
        assert ingress_of(svc) == [{"ip": vip, "ipMode": "VIP"}]

    async def test_a_sharing_key_that_could_not_share_is_a_warning(self, harness: Harness) -> None:
        """A VipAssigned that says its sharing key's VIP could not be shared: one
        SharingRefused Warning Event saying why (not repeated by the republishes)."""
        await harness.start_watcher()
        snap = await harness.created()
        why = (
            "east/default/web could not share a VIP (sharing key 'k': 198.51.100.1 is held by "
            "east/default/a, which uses port 80/TCP on it), so it got one of its own"
        )
        fields: dict[str, Any] = {
            "uid": snap.uid,
            "vips": ("198.51.100.2",),
            "pool": "default",
            "appliance_group": "sim",
            "ports": (ServicePort(port=80),),
        }
        await harness.publish(VipAssigned(**SVC, **fields, sharing_refused=why))
        await harness.publish(VipAssigned(**SVC, **fields))
        await eventually(lambda: harness.events("SharingRefused"), what="a SharingRefused Event")
        await harness.settled()
        (event,) = harness.events("SharingRefused")
        assert event["type"] == "Warning" and why in event["note"]
        assert "198.51.100.2" in event["note"] and "series" not in event


class TestConditionsTraceAndEvents:
    async def test_ready_condition_and_trace_annotation_follow_each_outcome(
        self, harness: Harness, span_exporter: InMemorySpanExporter
    ) -> None:
        """Programmed: Ready True and vipwire.io/last-trace-id = the status write's trace, which
        the Event names too; a later failure: Ready False with the reason."""
        await harness.start_watcher()
        snap = await harness.created()
        await harness.publish(programmed(snap.uid))
        await eventually(
            lambda: (ready_condition(harness.service()) or {}).get("status") == "True",
            what="web is Ready",
        )
        cond = ready_condition(harness.service())
        assert cond is not None and cond["reason"] == "LoadBalancerProgrammed"

        def annotated() -> str | None:
            svc = harness.service() or {}
            trace: str | None = (svc["metadata"].get("annotations") or {}).get(
                "vipwire.io/last-trace-id"
            )
            return trace

        def status_writes() -> list[ReadableSpan]:
            return [s for s in span_exporter.get_finished_spans() if s.name == "status write"]

        # The finalizer PATCH set the annotation first (the create's trace); the status
        # write then names its own.
        await eventually(status_writes, what="a status write span")
        write_trace = format(status_writes()[0].context.trace_id, "032x")
        await eventually(
            lambda: annotated() == write_trace, what="the annotation names the status write's trace"
        )
        await eventually(
            lambda: harness.events("LoadBalancerProgrammed"), what="a LoadBalancerProgrammed Event"
        )
        assert f"(trace {annotated()})" in harness.events("LoadBalancerProgrammed")[0]["note"]

        await harness.publish(
            LbFailed(**SVC, uid=snap.uid, appliance="f5-a", reason="Timeout", message="no answer")
        )
        await eventually(
            lambda: (ready_condition(harness.service()) or {}).get("reason") == "ApplianceFailed",
            what="web's condition says ApplianceFailed",
        )
        assert ingress_of(harness.service())  # a VIP once served stays in status

    async def test_repeated_failures_are_one_event_with_a_series(self, harness: Harness) -> None:
        """The same failure three times: one Event, series.count 3; a restart replaying the
        last one counts nothing more."""
        await harness.start_watcher()
        snap = await harness.created()
        failed = VipFailed(**SVC, uid=snap.uid, reason="AllocationFailed", message="pool full")
        for _ in range(3):
            await harness.publish(failed)
        await eventually(
            lambda: (
                [e.get("series", {}).get("count") for e in harness.events("AllocationFailed")]
                == [3]
            ),
            what="one AllocationFailed Event with series.count 3",
        )
        await harness.stop_watcher()
        await harness.start_watcher()
        await harness.settled()  # the replayed VipFailed handled, and whatever it wrote
        (event,) = harness.events("AllocationFailed")
        assert event["series"]["count"] == 3

    async def test_a_new_term_writes_nothing_that_is_already_right(self, harness: Harness) -> None:
        """Lease lost and won back by the same replica: the new term replays the bus (a
        repeated LbProgrammed confirmation last) and writes nothing to the API."""
        watcher = await harness.start_watcher(
            lease_duration_s=1, renew_deadline_s=0.6, retry_period_s=0.1
        )
        snap = await harness.created()
        vip = "198.51.100.7"
        await harness.publish(
            VipAssigned(
                **SVC,
                uid=snap.uid,
                vips=(vip,),
                pool="default",
                appliance_group="sim",
                ports=(ServicePort(port=80),),
            )
        )
        await harness.publish(programmed(snap.uid, (vip,)))
        await eventually(
            lambda: harness.events("LoadBalancerProgrammed"), what="a LoadBalancerProgrammed Event"
        )
        await eventually(lambda: harness.events("IPAllocated"), what="an IPAllocated Event")
        await harness.publish(programmed(snap.uid, (vip,)))  # as a restarted lbdriver does
        await harness.settled()
        writes: list[str] = []
        unsubscribe = harness.emu.store.subscribe(
            lambda change: writes.append(change.resource.plural)
        )
        try:
            lease = harness.emu.get("leases", "default", "vipwire-watcher-east")
            lease["spec"].update(holderIdentity="intruder", leaseDurationSeconds=30)
            await harness.emu.replace(lease)
            await eventually(
                lambda: not watcher.leading, timeout=2, what="the watcher stops leading"
            )
            lease = harness.emu.get("leases", "default", "vipwire-watcher-east")
            lease["spec"].update(holderIdentity="", leaseDurationSeconds=1)
            term_started = now_ns()
            await harness.emu.replace(lease)
            assert harness.runtime is not None
            terms = harness.runtime.metrics.counter("watcher_leader_terms_total", "")
            await eventually(lambda: terms.value() == 2, timeout=5, what="a second term")
            await eventually(
                lambda: watcher.readiness() is None, what="the watcher is ready in its new term"
            )
            await harness.settled(since_ns=term_started)
        finally:
            unsubscribe()
        assert [w for w in writes if w != "leases"] == []
        assert all("series" not in e for e in harness.events("LoadBalancerProgrammed"))

    async def test_status_conflict_is_retried_on_a_fresh_read(self, harness: Harness) -> None:
        """A 409 on the status write (another writer got there first) is decided again."""
        await harness.start_watcher()
        snap = await harness.created()
        harness.emu.inject_failure(409, reason="Conflict", method="PATCH", resource="services")
        await harness.publish(programmed(snap.uid))
        await eventually(
            lambda: ingress_of(harness.service()), what="web's status lists its ingress"
        )
        assert harness.runtime is not None
        writes = harness.runtime.metrics.counter(
            "watcher_api_writes_total", "", ["kind", "outcome"]
        )
        assert writes.value(kind="status", outcome="conflict") == 1

    async def test_refused_status_write_is_reported_on_the_service(self, harness: Harness) -> None:
        """A 422 on the status write cannot be retried away: a Warning Event says so."""
        await harness.start_watcher()
        snap = await harness.created()
        harness.emu.inject_failure(422, reason="Invalid", method="PATCH", resource="services")
        await harness.publish(programmed(snap.uid))
        await eventually(
            lambda: harness.events("StatusWriteRefused"), what="a StatusWriteRefused Event"
        )
        assert "refused" in harness.events("StatusWriteRefused")[0]["note"]


class TestOwnershipEdges:
    async def test_classless_services_are_taken_only_in_that_mode(self, harness: Harness) -> None:
        """serve_classless: a LoadBalancer without class is served; one of another class not."""
        await harness.start_watcher(serve_classless=True)
        await harness.emu.create(lb_service("other", lb_class="example.com/lb"))
        await harness.created("plain", lb_class=None)
        svc = harness.service("plain")
        assert svc is not None and FINALIZER in svc["metadata"]["finalizers"]
        assert svc["metadata"]["annotations"]["vipwire.io/cluster"] == "east"
        await harness.settled()
        assert not harness.seen.of(ServiceSnapshot, name="other")

    async def test_finalizer_left_by_a_crash_before_publishing_is_removed(
        self, harness: Harness
    ) -> None:
        """Our finalizer went on, nothing was published, then the type changed while we were
        down: the finalizer (and our mark) come off, nothing is published."""
        await harness.emu.create(lb_service())
        # What a watcher that stopped between its finalizer write and its publish leaves.
        await harness.emu.patch(
            "services",
            "default",
            "web",
            {
                "metadata": {
                    "finalizers": [FINALIZER],
                    "annotations": {"vipwire.io/cluster": "east"},
                }
            },
        )
        await harness.emu.patch("services", "default", "web", {"spec": {"type": "ClusterIP"}})
        await harness.start_watcher()

        def let_go() -> bool:
            svc = harness.service() or {}
            meta = svc.get("metadata", {})
            return not meta.get("finalizers") and "vipwire.io/cluster" not in (
                meta.get("annotations") or {}
            )

        await eventually(let_go, what="the finalizer and mark are off")
        assert not harness.seen.of(ServiceSnapshot, name="web")
