"""The watcher with the real ipam and lbdriver (sim appliance) over a real nats-server.

What only the whole flow can show: a leader failover in the middle of a burst,
a type flip that releases and re-assigns, an appliance that blocks cleanup,
externalTrafficPolicy Local membership, and ipam's own refusals.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from support.fences import BOOKMARK_INTERVAL_S, now_ns, watcher_settled
from support.orders import WRITE_ORDERS
from support.recorders import BusRecorder
from vipwire.contracts import NodeApplied, ServiceSnapshot, decode
from vipwire.ipam import IpamService, IpamSettings, PoolSettings
from vipwire.kubeemu import KubeEmulator
from vipwire.lbdriver import (
    ApplianceSettings,
    LbdriverService,
    LbdriverSettings,
    Monitor,
    SimAppliance,
    VirtualServer,
)
from vipwire.runtime import Runtime
from vipwire.testing import eventually
from vipwire.watcher import WatcherService, WatcherSettings

RuntimeFactory = Callable[[str], Awaitable[Runtime]]
CLASS = "vipwire.io/dsr"
FINALIZER = "service.kubernetes.io/load-balancer-cleanup"
NODES = {"n1": "192.0.2.11", "n2": "192.0.2.12", "n3": "192.0.2.13"}


class Pipeline:
    def __init__(
        self,
        emu: KubeEmulator,
        make_runtime: RuntimeFactory,
        kubeconfig: Path,
        spans: InMemorySpanExporter,
    ) -> None:
        self.emu = emu
        self.spans = spans
        self.make_runtime = make_runtime
        self.kubeconfig = kubeconfig
        self.appliance = SimAppliance("sim-1")
        self.watchers: list[WatcherService] = []
        self.others: list[Any] = []
        self.recorder = BusRecorder()
        #: LbdriverSettings fields that override the pipeline's own.
        self.lbdriver_options: dict[str, Any] = {}
        #: ipam's pools (set before start).
        self.pools: tuple[PoolSettings, ...] = (
            PoolSettings(name="default", addresses=("198.51.100.0/24",), appliance_group="dc1"),
        )

    async def start(self) -> None:
        ipam = IpamService(
            IpamSettings(pools=self.pools),
            await self.make_runtime("ipam"),
        )
        lbdriver = LbdriverService(
            LbdriverSettings(
                appliances=(
                    ApplianceSettings(
                        name="sim-1", driver="sim", group="dc1", max_requests_per_s=0
                    ),
                ),
                coalesce_window_ms=50,
                coalesce_quiet_ms=10,
                retry_initial_s=0.05,
                retry_max_s=0.3,
                unhealthy_cooldown_s=0.3,
                unhealthy_max_cooldown_s=0.5,
                **self.lbdriver_options,
            ),
            await self.make_runtime("lbdriver"),
            drivers={"sim-1": self.appliance},
        )
        for service in (ipam, lbdriver):
            await service.start()
            self.others.append(service)
        watch = await self.make_runtime("recorder")
        await self.recorder.attach(watch, "vipwire.east.>")

    async def start_watcher(self, **overrides: Any) -> WatcherService:
        settings = WatcherSettings(
            cluster="east",
            kubeconfig=str(self.kubeconfig),
            context="east",
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
            instance=f"watcher-{len(self.watchers)}",
            lease_duration_s=2,
            renew_deadline_s=1.5,
            retry_period_s=0.2,
            **overrides,
        )
        watcher = WatcherService(settings, await self.make_runtime("watcher"))
        await watcher.start()
        self.watchers.append(watcher)
        await eventually(lambda: watcher.readiness() is None, what="the watcher is ready")
        return watcher

    async def stop(self) -> None:
        for watcher in self.watchers:
            await watcher.stop()
        for service in reversed(self.others):
            await service.stop()

    def service(self, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.emu.find("services", "default", name)
        return found

    def vips(self, name: str) -> list[str]:
        svc = self.service(name) or {}
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        return [e["ip"] for e in ingress]

    def events(self, reason: str, name: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.emu.list("events.events.k8s.io", "default")
            if e["reason"] == reason and (name is None or e["regarding"]["name"] == name)
        ]

    def members(self, name: str) -> set[str]:
        """Member nodes of the Service's virtual servers on the appliance."""
        return {
            m.node
            for vs in self.appliance.virtual_servers("east").values()
            if vs.owner.endswith(f"/default/{name}")
            for m in vs.members
        }

    def servers_of(self, name: str) -> list[Any]:
        return [
            vs
            for vs in self.appliance.virtual_servers("east").values()
            if vs.owner.endswith(f"/default/{name}")
        ]

    async def create(
        self,
        name: str,
        *,
        etp: str = "Cluster",
        annotations: dict[str, str] | None = None,
        endpoints_on: tuple[str, ...] | None = None,
    ) -> None:
        await self.emu.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": name,
                    "namespace": "default",
                    "annotations": annotations or {},
                },
                "spec": {
                    "type": "LoadBalancer",
                    "loadBalancerClass": CLASS,
                    "externalTrafficPolicy": etp,
                    "selector": {"app": name},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                },
            }
        )
        if endpoints_on is not None:
            await self.emu.create(endpoint_slice(name, endpoints_on))


def endpoint_slice(
    name: str,
    ready_on: tuple[str, ...],
    *,
    terminating_on: tuple[str, ...] = (),
    serving: bool = True,
) -> dict[str, Any]:
    """``terminating_on``: endpoints shutting down, still serving or not (``serving``)."""
    endpoints = [
        {
            "addresses": [f"10.0.{i}.{j}"],
            "nodeName": node,
            "conditions": {"ready": ready, "serving": ready or serving, "terminating": not ready},
        }
        for i, (nodes, ready) in enumerate(((ready_on, True), (terminating_on, False)))
        for j, node in enumerate(nodes, start=1)
    ]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-abc",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


@pytest.fixture(params=list(WRITE_ORDERS))
async def pipeline(
    request: pytest.FixtureRequest,
    make_runtime: RuntimeFactory,
    tmp_path: Path,
    span_exporter: InMemorySpanExporter,
) -> AsyncIterator[Pipeline]:
    emu = KubeEmulator(
        "east", bookmark_interval=BOOKMARK_INTERVAL_S, watch_first=WRITE_ORDERS[request.param]
    )
    await emu.start()
    for node, address in NODES.items():
        await emu.add_node(node, address)
    kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig", context_name="east")
    p = Pipeline(emu, make_runtime, kubeconfig, span_exporter)
    try:
        await p.start()
        yield p
    finally:
        await p.stop()
        await emu.stop()


class TestFailover:
    async def test_leader_dies_mid_burst_every_service_converges_without_duplicates(
        self, pipeline: Pipeline
    ) -> None:
        """100 Services while the leader dies without giving the Lease up: the standby takes
        over within the lease duration, every Service gets its VIP, and no message of the
        watcher's reaches the bus twice; snapshot ids come from cluster, uid and version
        only, so both replicas name a change alike."""
        first = await pipeline.start_watcher(lease_release_on_stop=False)
        second = await pipeline.start_watcher(lease_release_on_stop=False)
        assert first.leading and not second.leading
        names = [f"svc-{i}" for i in range(100)]
        creating = asyncio.gather(*(pipeline.create(n) for n in names))
        await eventually(
            lambda: sum(1 for n in names if pipeline.vips(n)) >= 20,
            timeout=15,
            what="20 Services have a VIP",
        )
        loop = asyncio.get_running_loop()
        died = loop.time()
        died_ns = now_ns()
        await first.stop()  # a crash, as far as the Lease knows
        await eventually(lambda: second.leading, timeout=3, what="the standby leads")
        # The lease duration (2 s) after the last renewal seen, plus a retry period or two.
        assert loop.time() - died < 3.0
        await creating
        await eventually(
            lambda: all(pipeline.vips(n) for n in names),
            timeout=30,
            what="all 100 Services have a VIP",
        )
        vips = [pipeline.vips(n)[0] for n in names]
        assert len(set(vips)) == 100
        await watcher_settled(second, pipeline.emu, pipeline.spans, since_ns=died_ns)
        assert pipeline.recorder.duplicates("service", "endpoints", "node", "status") == []
        for subject, data, msg_id in pipeline.recorder.family("service"):
            snap = decode(subject, data)
            if isinstance(snap, ServiceSnapshot):
                assert msg_id == f"east/{snap.uid}/{snap.resource_version}/service"
        for reason in ("IPAllocated", "LoadBalancerProgrammed"):
            events = pipeline.events(reason)
            assert sorted(e["regarding"]["name"] for e in events) == sorted(names), reason
            assert all("series" not in e for e in events), reason


class TestLifecycle:
    async def test_type_flip_releases_and_reassigns_cleanly(self, pipeline: Pipeline) -> None:
        """LoadBalancer -> ClusterIP: VIP off the appliance, claim released, status, condition
        and finalizer gone. -> LoadBalancer again: a VIP assigned and programmed anew."""
        await pipeline.start_watcher()
        await pipeline.create("flip", endpoints_on=("n1",))
        await eventually(lambda: pipeline.vips("flip"), timeout=5, what="flip has a VIP")
        await pipeline.emu.patch("services", "default", "flip", {"spec": {"type": "ClusterIP"}})

        def let_go() -> bool:
            svc = pipeline.service("flip") or {}
            return not svc["metadata"].get("finalizers") and not pipeline.vips("flip")

        await eventually(let_go, timeout=5, what="flip let go: no finalizer, no VIP")
        svc = pipeline.service("flip")
        assert svc is not None
        assert not (svc.get("status") or {}).get("conditions")
        assert "vipwire.io/cluster" not in (svc["metadata"].get("annotations") or {})
        assert pipeline.servers_of("flip") == []
        await eventually(
            lambda: pipeline.events("IPReleased", "flip"), what="an IPReleased Event for flip"
        )

        await pipeline.emu.patch(
            "services",
            "default",
            "flip",
            {"spec": {"type": "LoadBalancer", "loadBalancerClass": CLASS}},
        )
        await eventually(lambda: pipeline.vips("flip"), timeout=5, what="flip has a VIP again")
        svc = pipeline.service("flip")
        assert svc is not None and FINALIZER in svc["metadata"]["finalizers"]
        assert {vs.address for vs in pipeline.servers_of("flip")} == set(pipeline.vips("flip"))
        (vip,) = pipeline.vips("flip")
        assert any(vip in e["note"] for e in pipeline.events("IPAllocated", "flip"))

    async def test_cleanup_blocked_by_the_appliance_keeps_the_finalizer_until_it_recovers(
        self, pipeline: Pipeline
    ) -> None:
        """Appliance down during deletion: the finalizer stays, CleanupBlocked is said (Event
        and condition); once the appliance answers again the Service is gone."""
        await pipeline.start_watcher()
        await pipeline.create("web")
        await eventually(lambda: pipeline.vips("web"), timeout=5, what="web has a VIP")
        pipeline.appliance.set_down(True)
        await pipeline.emu.delete("services", "default", "web")
        await eventually(
            lambda: pipeline.events("CleanupBlocked", "web"),
            timeout=5,
            what="a CleanupBlocked Event for web",
        )
        event = pipeline.events("CleanupBlocked", "web")[0]
        assert event["type"] == "Warning" and "finalizer stays" in event["note"]

        def blocked() -> bool:
            svc = pipeline.service("web") or {}
            conds = (svc.get("status") or {}).get("conditions") or []
            return any(c["reason"] == "CleanupBlocked" for c in conds)

        await eventually(blocked, timeout=5, what="web's condition says CleanupBlocked")
        # The lbdriver tried the removal twice more and failed, and the watcher handled all
        # that was said since: had the finalizer been let go, it would be by now.
        refused = pipeline.appliance.failures
        await eventually(
            lambda: pipeline.appliance.failures >= refused + 2,
            what="the lbdriver retried the removal on the down appliance twice more",
        )
        await watcher_settled(pipeline.watchers[0], pipeline.emu, pipeline.spans)
        svc = pipeline.service("web")
        assert svc is not None and FINALIZER in svc["metadata"]["finalizers"]
        pipeline.appliance.set_down(False)
        await eventually(
            lambda: pipeline.service("web") is None,
            timeout=10,
            what="web is gone once the appliance answers",
        )
        assert pipeline.servers_of("web") == []

    async def test_unknown_pool_is_an_allocation_failure_others_unaffected(
        self, pipeline: Pipeline
    ) -> None:
        """A pool that does not exist (only ipam knows): Warning AllocationFailed naming it,
        condition AllocationFailed, no VIP; the Service next to it is served."""
        await pipeline.start_watcher()
        await pipeline.create("lost", annotations={"vipwire.io/pool": "nope"})
        await pipeline.create("fine")
        await eventually(
            lambda: pipeline.events("AllocationFailed", "lost"),
            timeout=5,
            what="an AllocationFailed Event for lost",
        )
        assert "'nope'" in pipeline.events("AllocationFailed", "lost")[0]["note"]
        await eventually(lambda: pipeline.vips("fine"), timeout=5, what="fine has a VIP")

        def condition() -> str | None:
            conds = ((pipeline.service("lost") or {}).get("status") or {}).get("conditions")
            return next((c["reason"] for c in conds or [] if c["type"] == "vipwire.io/Ready"), None)

        await eventually(
            lambda: condition() == "AllocationFailed", what="lost's condition says AllocationFailed"
        )
        assert pipeline.vips("lost") == []


class TestLocalTraffic:
    async def test_only_nodes_with_a_ready_local_endpoint_are_members(
        self, pipeline: Pipeline
    ) -> None:
        """externalTrafficPolicy Local: members are the nodes with a serving endpoint: ready,
        or terminating but still serving (graceful shutdown); once a terminating endpoint
        stops serving its node leaves; at zero, none is left."""
        await pipeline.start_watcher()
        await pipeline.create("local", etp="Local", endpoints_on=("n1", "n2"))
        await eventually(
            lambda: pipeline.members("local") == {"n1", "n2"}, timeout=5, what="members n1 and n2"
        )
        # n2's pod terminates, still serving; n3 gets one (its arrival fences the change).
        slice_ = endpoint_slice("local", ("n1", "n3"), terminating_on=("n2",))
        await pipeline.emu.patch(
            "endpointslices", "default", "local-abc", {"endpoints": slice_["endpoints"]}
        )
        await eventually(
            lambda: pipeline.members("local") == {"n1", "n2", "n3"},
            timeout=5,
            what="n2 still a member while its terminating pod serves, n3 joined",
        )
        slice_ = endpoint_slice("local", ("n1",), terminating_on=("n2",), serving=False)
        await pipeline.emu.patch(
            "endpointslices", "default", "local-abc", {"endpoints": slice_["endpoints"]}
        )
        await eventually(
            lambda: pipeline.members("local") == {"n1"}, timeout=5, what="member n1 only"
        )
        await pipeline.emu.patch(
            "endpointslices",
            "default",
            "local-abc",
            {"endpoints": endpoint_slice("local", ("n1",))["endpoints"]},
        )
        await pipeline.emu.patch("endpointslices", "default", "local-abc", {"endpoints": []})
        await eventually(
            lambda: pipeline.members("local") == set(), timeout=5, what="no member left"
        )
        assert pipeline.servers_of("local")  # the VIP stays programmed, with no member


# --- status that stays true ------------------------------------------------------------

#: The lbdriver's verification interval in these tests, and what the acceptance allows on
#: top of it on a loaded 2-core machine.
VERIFY_S = 0.5
SLACK_S = 5.0


@pytest.fixture
async def verifying(
    make_runtime: RuntimeFactory, tmp_path: Path, span_exporter: InMemorySpanExporter
) -> AsyncIterator[Pipeline]:
    """The pipeline with a short lbdriver verification interval (one write order)."""
    emu = KubeEmulator("east", bookmark_interval=0.5)
    await emu.start()
    for node, address in NODES.items():
        await emu.add_node(node, address)
    kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig", context_name="east")
    p = Pipeline(emu, make_runtime, kubeconfig, span_exporter)
    p.lbdriver_options = {"verify_interval_s": VERIFY_S}
    try:
        await p.start()
        yield p
    finally:
        await p.stop()
        await emu.stop()


def ready_condition(pipeline: Pipeline, name: str) -> dict[str, Any]:
    conds = ((pipeline.service(name) or {}).get("status") or {}).get("conditions") or []
    found: dict[str, Any] = next((c for c in conds if c["type"] == "vipwire.io/Ready"), {})
    return found


class TestStatusStaysTrue:
    async def test_a_local_service_whose_endpoints_all_go_away_is_not_ready(
        self, verifying: Pipeline
    ) -> None:
        """Local, every endpoint gone: within the interval the condition turns False
        (NoMembers) with a Warning Event, the VIP stays in status; an endpoint back: True
        again with a Normal MembersAvailable Event."""
        p = verifying
        await p.start_watcher()
        await p.create("local", etp="Local", endpoints_on=("n1",))
        await eventually(
            lambda: ready_condition(p, "local").get("status") == "True",
            timeout=10,
            what="local is Ready",
        )
        vips = p.vips("local")
        loop = asyncio.get_running_loop()
        gone = loop.time()
        await p.emu.patch("endpointslices", "default", "local-abc", {"endpoints": []})
        await eventually(
            lambda: ready_condition(p, "local").get("reason") == "NoMembers",
            timeout=VERIFY_S + SLACK_S,
            what="local's condition says NoMembers",
        )
        assert loop.time() - gone < VERIFY_S + SLACK_S
        condition = ready_condition(p, "local")
        assert condition["status"] == "False"
        assert "no node holds a ready endpoint" in condition["message"]
        assert p.vips("local") == vips  # the address stays: see writeback.decide
        await eventually(
            lambda: [e["type"] for e in p.events("NoMembers", "local")] == ["Warning"],
            what="a Warning NoMembers Event",
        )

        await p.emu.patch(
            "endpointslices",
            "default",
            "local-abc",
            {"endpoints": endpoint_slice("local", ("n2",))["endpoints"]},
        )
        await eventually(
            lambda: ready_condition(p, "local").get("status") == "True",
            timeout=10,
            what="local is Ready again",
        )
        await eventually(
            lambda: [e["type"] for e in p.events("MembersAvailable", "local")] == ["Normal"],
            what="a Normal MembersAvailable Event",
        )

    async def test_a_virtual_server_deleted_behind_our_back_is_told_and_repaired(
        self, verifying: Pipeline
    ) -> None:
        """Deleted on the appliance: within the interval the condition turns False
        (ApplianceDrift, a Warning Event) and the virtual server is re-created; then the
        condition is True again (its transition time moved) with a Normal DriftRepaired."""
        p = verifying
        await p.start_watcher()
        await p.create("web", endpoints_on=("n1",))
        await eventually(
            lambda: ready_condition(p, "web").get("status") == "True",
            timeout=10,
            what="web is Ready",
        )
        since = ready_condition(p, "web")["lastTransitionTime"]
        [server] = p.servers_of("web")
        loop = asyncio.get_running_loop()
        deleted = loop.time()
        p.appliance.remove("east", server.name)
        await eventually(
            lambda: [e["type"] for e in p.events("ApplianceDrift", "web")] == ["Warning"],
            timeout=VERIFY_S + SLACK_S,
            what="a Warning ApplianceDrift Event",
        )
        assert loop.time() - deleted < VERIFY_S + SLACK_S
        [event] = p.events("ApplianceDrift", "web")
        assert f"virtual server {server.name} is missing" in event["note"]
        await eventually(
            lambda: p.servers_of("web") == [server], timeout=SLACK_S, what="the server is back"
        )
        await eventually(
            lambda: [e["type"] for e in p.events("DriftRepaired", "web")] == ["Normal"],
            what="a Normal DriftRepaired Event",
        )
        await eventually(
            lambda: (
                ready_condition(p, "web").get("status") == "True"
                and ready_condition(p, "web")["lastTransitionTime"] != since
            ),
            what="web's condition went False and back to True",
        )

    async def test_member_nodes_whose_agents_withdrew_the_vip_are_told(
        self, verifying: Pipeline
    ) -> None:
        """A member node whose agent reports it without the VIP past the grace period: the
        condition turns False (NodesMissingVip, naming it) with a Warning Event; once it
        reports the VIP again, True with a Normal NodesHoldVip. A node that never reported
        is not judged."""
        p = verifying
        await p.start_watcher(node_vip_grace_s=0.5)
        agents = await p.make_runtime("nodeagents")
        await p.create("web", endpoints_on=("n1",))
        await eventually(lambda: p.vips("web"), timeout=10, what="web has a VIP")
        [vip] = p.vips("web")

        async def report(node: str, generation: int, *vips: str) -> None:
            await agents.bus.publish(
                NodeApplied(cluster="east", node=node, generation=generation, vips=vips)
            )

        for node in ("n1", "n2"):
            await report(node, 1, vip)
        await eventually(
            lambda: ready_condition(p, "web").get("status") == "True",
            timeout=10,
            what="web is Ready",
        )
        loop = asyncio.get_running_loop()
        withdrawn = loop.time()
        await report("n2", 2)
        await eventually(
            lambda: ready_condition(p, "web").get("reason") == "NodesMissingVip",
            timeout=0.5 + SLACK_S,
            what="web's condition says NodesMissingVip",
        )
        assert loop.time() - withdrawn >= 0.5  # not before the grace period ends
        condition = ready_condition(p, "web")
        assert condition["status"] == "False" and "node agents of n2 " in condition["message"]
        assert "n3" not in condition["message"]  # never reported: not judged
        await eventually(
            lambda: [e["type"] for e in p.events("NodesMissingVip", "web")] == ["Warning"],
            what="a Warning NodesMissingVip Event",
        )

        await report("n2", 3, vip)
        await eventually(
            lambda: ready_condition(p, "web").get("status") == "True",
            timeout=SLACK_S,
            what="web is Ready again",
        )
        await eventually(
            lambda: [e["type"] for e in p.events("NodesHoldVip", "web")] == ["Normal"],
            what="a Normal NodesHoldVip Event",
        )


class TestPartialStatus:
    async def test_a_refused_port_is_in_the_status_while_the_other_is_served(
        self, pipeline: Pipeline
    ) -> None:
        """Another tool holds VIP:443 on the appliance: port 80 is served, the status lists
        443 with ``error: vipwire.io/ApplianceRejected`` and a Warning PortRefused tells
        it; once the clash is gone the ports (and their errors) leave the status."""
        vip = "198.51.100.77"
        pipeline.appliance.put(
            "east",
            VirtualServer(
                name="other-tool-443",
                owner="",
                address=vip,
                port=443,
                protocol="TCP",
                members=(),
                monitor=Monitor(port=1),
            ),
        )
        await pipeline.start_watcher()
        await pipeline.emu.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": "two",
                    "namespace": "default",
                    "annotations": {"vipwire.io/ips": vip},
                },
                "spec": {
                    "type": "LoadBalancer",
                    "loadBalancerClass": CLASS,
                    "selector": {"app": "two"},
                    "ports": [
                        {"name": "http", "port": 80, "targetPort": 8080},
                        {"name": "https", "port": 443, "targetPort": 8443},
                    ],
                },
            }
        )

        def ingress() -> list[dict[str, Any]]:
            svc = pipeline.service("two") or {}
            found = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress")
            return found or []

        refused = [
            {"port": 80, "protocol": "TCP"},
            {"port": 443, "protocol": "TCP", "error": "vipwire.io/ApplianceRejected"},
        ]
        await eventually(
            lambda: [e.get("ports") for e in ingress()] == [refused],
            what="status lists port 443 refused",
        )
        await eventually(lambda: pipeline.events("PortRefused", "two"), what="a PortRefused Event")
        assert {s.port for s in pipeline.servers_of("two")} == {80}

        pipeline.appliance.remove("east", "other-tool-443")
        await eventually(
            lambda: [e.get("ports") for e in ingress()] == [None],
            what="the ports leave the status once 443 is served",
        )
        assert {s.port for s in pipeline.servers_of("two")} == {80, 443}


async def test_a_dual_stack_service_on_ipv4_only_nodes_is_no_members(
    make_runtime: RuntimeFactory, tmp_path: Path, span_exporter: InMemorySpanExporter
) -> None:
    """Dual-stack Service, IPv4-only nodes: the IPv6 virtual server has no member, so the
    condition is False (NoMembers, naming the IPv6 VIP) with a Warning Event, although the
    IPv4 VIP is served (sim appliance)."""
    emu = KubeEmulator("east", bookmark_interval=0.5)
    await emu.start()
    for node, address in NODES.items():
        await emu.add_node(node, address)
    kubeconfig = emu.write_kubeconfig(tmp_path / "kc", context_name="east")
    p = Pipeline(emu, make_runtime, kubeconfig, span_exporter)
    p.pools = (
        PoolSettings(
            name="dual", addresses=("198.51.100.0/24", "2001:db8:1::/120"), appliance_group="dc1"
        ),
    )
    try:
        await p.start()
        await p.start_watcher()
        await emu.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "dual", "namespace": "default"},
                "spec": {
                    "type": "LoadBalancer",
                    "loadBalancerClass": CLASS,
                    "selector": {"app": "dual"},
                    "ipFamilies": ["IPv4", "IPv6"],
                    "ipFamilyPolicy": "RequireDualStack",
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                },
            }
        )

        def condition() -> dict[str, Any]:
            conds = ((p.service("dual") or {}).get("status") or {}).get("conditions") or []
            return next((c for c in conds if c["type"] == "vipwire.io/Ready"), {})

        await eventually(lambda: condition().get("reason") == "NoMembers", what="NoMembers")
        v6 = [ip for ip in p.vips("dual") if ":" in ip]
        assert len(p.vips("dual")) == 2 and len(v6) == 1
        assert condition()["status"] == "False"
        assert v6[0] in condition()["message"] and "no IPv6 member node" in condition()["message"]
        await eventually(lambda: p.events("NoMembers", "dual"), what="a Warning NoMembers")
        by_family = {":" in s.address: len(s.members) for s in p.servers_of("dual")}
        assert by_family == {False: 3, True: 0}
    finally:
        await p.stop()
        await emu.stop()
