"""The real ``kubectl`` against the emulated clusters, as an operator uses it.

Skipped, with the reason, where no ``kubectl`` binary is on the PATH (CI has one).
kubectl runs as a subprocess of the test's own event loop (the emulator serves in it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vipwire.allinone import Stack, StackSettings
from vipwire.kubeemu import KubeEmulator
from vipwire.testing import eventually

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="the kubectl binary is not on the PATH (these tests drive it)"
)

SERVICE_YAML = """\
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  type: LoadBalancer
  selector:
    app: {name}
  ports:
  - port: {port}
    {protocol_field}: TCP
"""


async def kubectl(kubeconfig: Path, *args: str) -> tuple[int, str, str]:
    """Run kubectl with only this kubeconfig (no user config, no cache from other runs)."""
    assert KUBECTL is not None
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(kubeconfig.parent),
        "KUBECACHEDIR": str(kubeconfig.parent / "kubecache"),
    }
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        "--kubeconfig",
        str(kubeconfig),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def column(table: str, name: str, row: str) -> str:
    """The cell under header ``name`` in the row whose first cell is ``row``."""
    lines = table.splitlines()
    header = lines[0]
    start = header.index(name)
    rest = header[start + len(name) :]
    end = start + len(name) + (len(rest) - len(rest.lstrip(" "))) if rest.strip() else None
    for line in lines[1:]:
        if line.split()[0] == row:
            return line[start:end].strip()
    raise AssertionError(f"no row {row!r} in:\n{table}")


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[tuple[KubeEmulator, Path]]:
    async with KubeEmulator("east") as emu:
        yield emu, emu.write_kubeconfig(tmp_path / "kubeconfig-east")


async def test_get_svc_shows_the_standard_columns(
    emulator: tuple[KubeEmulator, Path],
) -> None:
    """kubectl get svc: TYPE, CLUSTER-IP, EXTERNAL-IP (the ingress IP) and PORT(S) columns."""
    emu, kubeconfig = emulator
    await emu.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
        }
    )
    code, out, err = await kubectl(kubeconfig, "get", "svc")
    assert code == 0, err
    assert out.split("\n", 1)[0].split() == [
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
    ]
    assert column(out, "EXTERNAL-IP", "web") == "<pending>"
    svc = emu.get("services", "default", "web")
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.7", "ipMode": "VIP"}]}}
    await emu.replace(svc, subresource="status")
    code, out, err = await kubectl(kubeconfig, "get", "svc", "web")
    assert code == 0, err
    assert column(out, "EXTERNAL-IP", "web") == "203.0.113.7"
    assert column(out, "TYPE", "web") == "LoadBalancer"
    node_port = svc["spec"]["ports"][0]["nodePort"]
    assert column(out, "PORT(S)", "web") == f"80:{node_port}/TCP"


async def test_apply_validates_against_the_servers_openapi(
    emulator: tuple[KubeEmulator, Path],
) -> None:
    """kubectl apply works without --validate=false (create, then a patch); a misspelled
    field is refused by strict field validation, as a real server refuses it."""
    emu, kubeconfig = emulator
    manifest = kubeconfig.parent / "web.yaml"
    manifest.write_text(SERVICE_YAML.format(name="web", port=80, protocol_field="protocol"))
    code, out, err = await kubectl(kubeconfig, "apply", "-f", str(manifest))
    assert (code, out.strip()) == (0, "service/web created"), err
    manifest.write_text(SERVICE_YAML.format(name="web", port=8080, protocol_field="protocol"))
    code, out, err = await kubectl(kubeconfig, "apply", "-f", str(manifest))
    assert (code, out.strip()) == (0, "service/web configured"), err
    assert "warning" not in err.lower()  # the patch was computed from the served OpenAPI
    assert [p["port"] for p in emu.get("services", "default", "web")["spec"]["ports"]] == [8080]

    typo = kubeconfig.parent / "typo.yaml"
    typo.write_text(SERVICE_YAML.format(name="typo", port=80, protocol_field="protocl"))
    code, out, err = await kubectl(kubeconfig, "apply", "-f", str(typo))
    assert code == 1
    assert 'strict decoding error: unknown field "spec.ports[0].protocl"' in err
    assert emu.find("services", "default", "typo") is None


async def test_events_and_describe_show_what_the_watcher_wrote(tmp_path: Path) -> None:
    """Against `vipwire up`'s kubeconfig-east: get svc shows the VIP under EXTERNAL-IP,
    kubectl events --for and describe svc list IPAllocated and LoadBalancerProgrammed."""
    settings = StackSettings(clusters=1, nodes=1, state_dir=str(tmp_path))
    async with Stack(settings) as stack:
        await stack.wait_ready()
        await stack.create_service("east", "web", ports=((80, "TCP"),))
        emu = stack.emulators["east"]

        def reasons() -> set[str]:
            return {e["reason"] for e in emu.list("events.events.k8s.io", "default")}

        await eventually(
            lambda: {"IPAllocated", "LoadBalancerProgrammed"} <= reasons(),
            timeout=10.0,
            what="the watcher wrote IPAllocated and LoadBalancerProgrammed for east/web",
        )
        ips = stack.ingress_ips("east", "web")
        assert ips
        kubeconfig = tmp_path / "kubeconfig-east"

        code, out, err = await kubectl(kubeconfig, "get", "svc", "web")
        assert code == 0, err
        assert column(out, "EXTERNAL-IP", "web") == ips[0]

        code, out, err = await kubectl(kubeconfig, "events", "--for", "service/web")
        assert code == 0, err
        assert "IPAllocated" in out and "LoadBalancerProgrammed" in out, out

        code, out, err = await kubectl(kubeconfig, "describe", "svc", "web")
        assert code == 0, err
        events = out.split("Events:", 1)[1]
        assert "IPAllocated" in events and "LoadBalancerProgrammed" in events, out
