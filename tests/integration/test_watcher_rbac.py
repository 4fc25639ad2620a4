"""The watcher's RBAC, as an overlay renders it, is exactly what its code calls.

``kubectl kustomize deploy/kustomize/overlays/east`` gives the roles and the
watcher's config (cluster, Lease name); the emulator records every request in
RBAC's terms while a watcher with that config goes through a Service's whole
life, an aggregated failure, a conflict and a leader term. Every request must
be allowed by the rendered roles, and every permission they grant must have
been used (least privilege, kept honest both ways).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from support.kustomize import OVERLAYS, config_of, render
from vipwire.contracts import (
    LbProgrammed,
    Member,
    ServicePort,
    VipAssigned,
    VipFailed,
    VipReleased,
)
from vipwire.kubeemu import KubeEmulator
from vipwire.runtime import Runtime
from vipwire.testing import eventually
from vipwire.watcher import WatcherService, WatcherSettings

RuntimeFactory = Callable[[str], Awaitable[Runtime]]
OVERLAY = OVERLAYS / "east"
FINALIZER = "service.kubernetes.io/load-balancer-cleanup"

Grant = tuple[str, str, str, str | None, str | None]  # scope, group, resource, verb, name


def grants(rendered: list[dict[str, Any]]) -> set[Grant]:
    """(ClusterRole|Role namespace, group, resource[/sub], verb, resourceName or None)."""
    out: set[Grant] = set()
    for doc in rendered:
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        scope = "*" if doc["kind"] == "ClusterRole" else doc["metadata"]["namespace"]
        for rule in doc["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [None]:
                            out.add((scope, group, resource, verb, name))
    return out


def allowed_by(entry: Any, granted: set[Grant]) -> Grant | None:
    resource = entry.resource + (f"/{entry.subresource}" if entry.subresource else "")
    for scope, group, res, verb, name in granted:
        if (group, res, verb) != (entry.group, resource, entry.verb):
            continue
        if scope not in ("*", entry.namespace):
            continue
        if name is not None and name != entry.name:
            continue
        return (scope, group, res, verb, name)
    return None


async def test_every_call_is_granted_and_every_grant_is_used(
    make_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    """A Service's life, an aggregated failure, a 409, a leader term: nothing denied, and
    no permission in the rendered overlay left unused."""
    rendered = render(OVERLAY)
    deployed = config_of(rendered, "vipwire-cluster-config")["watcher"]
    # In its pod the watcher keeps its Lease in the pod's namespace: the Deployment's.
    (namespace,) = {
        o["metadata"]["namespace"]
        for o in rendered
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "vipwire-watcher"
    }
    async with KubeEmulator(deployed["cluster"], bookmark_interval=0.5) as emu:
        await emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        await emu.add_node("n1", "192.0.2.11")
        audit = emu.record_requests()
        settings = WatcherSettings(
            **deployed,
            kubeconfig=str(emu.write_kubeconfig(tmp_path / "kubeconfig", context_name="east")),
            context="east",
            lease_namespace=namespace,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
        )
        peer = await make_runtime("peer")
        watcher = WatcherService(settings, await make_runtime("watcher"))
        await watcher.start()
        try:
            await eventually(lambda: watcher.readiness() is None, what="the watcher is ready")
            await emu.create(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "web", "namespace": "default"},
                    "spec": {
                        "type": "LoadBalancer",
                        "loadBalancerClass": "vipwire.io/dsr",
                        "ports": [{"name": "http", "port": 80}],
                    },
                }
            )
            await eventually(
                lambda: (
                    FINALIZER
                    in (emu.get("services", "default", "web")["metadata"].get("finalizers") or [])
                ),
                what="web has our finalizer",
            )
            uid = emu.get("services", "default", "web")["metadata"]["uid"]
            svc = {"cluster": settings.cluster, "namespace": "default", "name": "web", "uid": uid}
            for _ in range(2):  # the second is counted in the first's series: get + patch
                await peer.bus.publish(VipFailed(**svc, reason="AllocationFailed", message="full"))
            await eventually(
                lambda: any(e.get("series") for e in emu.list("events.events.k8s.io", "default")),
                what="an Event with a series",
            )
            emu.inject_failure(409, reason="Conflict", method="PATCH", resource="services")
            # The watcher writes only VIPs ipam assigned: the assignment comes first.
            await peer.bus.publish(
                VipAssigned(
                    **svc,
                    vips=("198.51.100.7",),
                    pool="default",
                    appliance_group="dc1",
                    ports=(ServicePort(port=80),),
                )
            )
            await peer.bus.publish(
                LbProgrammed(
                    **svc,
                    appliance="sim-1",
                    vips=("198.51.100.7",),
                    ports=(ServicePort(port=80),),
                    members=(Member(node="n1", address="192.0.2.11"),),
                )
            )
            await eventually(
                lambda: (emu.get("services", "default", "web").get("status") or {}).get(
                    "loadBalancer"
                ),
                what="web's status has a load balancer",
            )
            await emu.delete("services", "default", "web")
            await eventually(
                lambda: (
                    watcher.runtime.metrics.counter(
                        "watcher_api_writes_total", "", ["kind", "outcome"]
                    ).value(kind="status", outcome="ok")
                    >= 1
                ),
                what="a status write counted ok",
            )
            await peer.bus.publish(VipReleased(**svc, vips=("198.51.100.7",)))
            await eventually(
                lambda: emu.find("services", "default", "web") is None, what="web is gone"
            )
        finally:
            await watcher.stop()  # gives the Lease up: get + update

    granted = grants(rendered)
    denied = sorted({str(e) for e in audit if allowed_by(e, granted) is None})
    assert denied == [], "requests the manifests do not allow"
    used = {allowed_by(e, granted) for e in audit}
    assert sorted(map(str, granted - used)) == [], "permissions granted but never used"
