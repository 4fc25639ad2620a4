"""`vipwire up --kubeconfig`: the all-in-one stack serving a cluster it did not create.

The "real" cluster is an API emulator the stack knows nothing about: it only
gets a kubeconfig, as it would for any cluster.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from vipwire.allinone import Stack, StackSettings
from vipwire.kubeemu import KubeEmulator
from vipwire.testing import eventually

FINALIZER = "service.kubernetes.io/load-balancer-cleanup"


def _lb(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "vipwire.io/dsr",
            "ports": [{"name": "http", "port": 80}],
        },
    }


async def test_stack_serves_an_external_cluster_from_its_kubeconfig(tmp_path: Path) -> None:
    """Given only a kubeconfig, the stack's watcher serves the cluster's Services (status
    written there), no emulator and no node agent is made for it, and ingress_ips answers."""
    async with KubeEmulator("prod", bookmark_interval=1.0) as cluster:
        await cluster.add_node("worker-1", "192.0.2.51")
        path = cluster.write_kubeconfig(tmp_path / "kubeconfig", context_name="prod-admin")
        settings = StackSettings(
            kubeconfigs={"prod": (str(path), "prod-admin")}, dashboard_port=None
        )
        async with Stack(settings) as stack:
            await stack.wait_ready()
            assert stack.clusters == ["prod"] and stack.emulators == {}
            assert not [n for n in stack.components if n.startswith("nodeagent")]
            await cluster.create(_lb("web"))
            await eventually(
                lambda: stack.ingress_ips("prod", "web"),
                timeout=10,
                what="prod/web has a VIP in the real cluster",
            )
            svc = cluster.get("services", "default", "web")
            assert (
                svc["status"]["loadBalancer"]["ingress"][0]["ip"]
                == stack.ingress_ips("prod", "web")[0]
            )
            assert FINALIZER in svc["metadata"]["finalizers"]
            await stack.delete_service("prod", "web")
            await eventually(
                lambda: cluster.find("services", "default", "web") is None,
                timeout=10,
                what="web is gone from the real cluster",
            )


async def test_vipwire_up_kubeconfig_demo_smoke_creates_and_cleans_up(tmp_path: Path) -> None:
    """`vipwire up --kubeconfig F --context C --demo --smoke`: the demo Services are created
    in that cluster, converge, and are deleted (finalizer released) before it exits; no demo
    Service without --demo."""
    async with KubeEmulator("prod", bookmark_interval=1.0) as cluster:
        await cluster.add_node("worker-1", "192.0.2.51")
        path = cluster.write_kubeconfig(tmp_path / "kubeconfig", context_name="prod-admin")
        base = [sys.executable, "-m", "vipwire.cli", "up", "--kubeconfig", str(path)]
        base += ["--context", "prod-admin", "--cluster", "prod", "--smoke", "--timeout", "20"]
        proc = await asyncio.create_subprocess_exec(
            *base,
            "--demo",
            "--services",
            "2",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
        assert proc.returncode == 0, err.decode()[-2000:]
        result = json.loads(out.decode().strip().splitlines()[-1])
        assert result["services"] == result["converged"] == 2
        assert cluster.list("services", "default") == []  # deleted, finalizers released

        proc = await asyncio.create_subprocess_exec(
            *base, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert json.loads(out.decode().strip().splitlines()[-1])["services"] == 0
