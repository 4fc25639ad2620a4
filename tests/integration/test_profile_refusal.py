"""An unknown appliance profile, from the Service to its condition: the watcher passes the
annotation on, ipam refuses it as InvalidService listing the profiles, the Service says so."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from support.recorders import BusRecorder
from vipwire.contracts import VipAssigned, VipFailed
from vipwire.ipam import IpamService, IpamSettings, PoolSettings
from vipwire.kubeemu import KubeEmulator
from vipwire.runtime import Runtime
from vipwire.testing import eventually
from vipwire.watcher import WatcherService, WatcherSettings

RuntimeFactory = Callable[[str], Awaitable[Runtime]]
CLASS = "vipwire.io/dsr"
POOL = PoolSettings(name="lab", addresses=("198.51.100.0/28",), profile="slow")


def lb_service(name: str, profile: str | None) -> dict[str, Any]:
    annotations = {"vipwire.io/profile": profile} if profile else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": CLASS,
            "ports": [{"name": "p80", "port": 80, "targetPort": 8080}],
        },
    }


def condition(emu: KubeEmulator, name: str) -> dict[str, Any] | None:
    service = emu.find("services", "default", name) or {}
    for c in (service.get("status") or {}).get("conditions") or []:
        if c.get("type") == "vipwire.io/Ready":
            return dict(c)
    return None


async def test_an_unknown_profile_is_an_invalid_service_naming_the_profiles(
    make_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    """A Service naming profile gold gets condition and Warning Event InvalidService with the
    configured profiles; one naming none gets its pool's default in VipAssigned."""
    emu = KubeEmulator("east")
    await emu.start()
    seen = BusRecorder()
    peer = await make_runtime("peer")
    sub = await seen.attach(peer, "vipwire.east.>")
    ipam = IpamService(
        IpamSettings(pools=(POOL,)), await make_runtime("ipam"), profiles=("fast", "slow")
    )
    watcher = WatcherService(
        WatcherSettings(
            cluster="east",
            kubeconfig=str(emu.write_kubeconfig(tmp_path / "kubeconfig", context_name="east")),
            context="east",
            instance="test-watcher",
        ),
        await make_runtime("watcher"),
    )
    try:
        await ipam.start()
        await watcher.start()
        await eventually(lambda: watcher.readiness() is None, what="the watcher is ready")
        await emu.create(lb_service("gold", "gold"))
        await emu.create(lb_service("plain", None))

        failed = await seen.wait(VipFailed, name="gold")
        assert failed.reason == "InvalidService"
        assert "profile 'gold' is not configured (profiles: fast, slow)" in failed.message
        plain = await seen.wait(VipAssigned, name="plain")
        assert plain.profile == "slow"

        await eventually(
            lambda: (condition(emu, "gold") or {}).get("reason") == "InvalidService",
            what="gold's condition says InvalidService",
        )
        said = condition(emu, "gold")
        assert said is not None and said["status"] == "False"
        assert "(profiles: fast, slow)" in said["message"]
        await eventually(
            lambda: any(
                e["reason"] == "InvalidService" and e["regarding"]["name"] == "gold"
                for e in emu.list("events.events.k8s.io", "default")
            ),
            what="a Warning Event InvalidService about gold",
        )
        (event,) = [
            e
            for e in emu.list("events.events.k8s.io", "default")
            if e["reason"] == "InvalidService" and e["regarding"]["name"] == "gold"
        ]
        assert event["type"] == "Warning" and "profiles: fast, slow" in event["note"]
    finally:
        await watcher.stop()
        await ipam.stop()
        await sub.unsubscribe()
        await emu.stop()
