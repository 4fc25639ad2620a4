"""The whole pipeline, watcher → ipam → lbdriver → nodeagents → status, over real NATS.

Each test builds the all-in-one stack: a real nats-server, emulated Kubernetes
API servers, and every service in its own runtime, as `vipwire up` runs them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vipwire.allinone import Stack
from vipwire.bus import kv_keys
from vipwire.contracts import IPAM_BUCKET
from vipwire.ipam import addr_key
from vipwire.ipam.core.records import decode_claim
from vipwire.natsserver import NatsServer
from vipwire.testing import eventually

POOL = ipaddress.ip_network("198.51.100.0/24")
FINALIZER = "service.kubernetes.io/load-balancer-cleanup"


@pytest.fixture
async def stack(span_exporter: InMemorySpanExporter) -> AsyncIterator[Stack]:
    async with Stack(span_processors=[SimpleSpanProcessor(span_exporter)]) as s:
        await s.wait_ready()
        yield s
        # Permissions are on: every component did its work within its own.
        assert isinstance(s.nats, NatsServer)
        refused = [line for line in s.nats.log_tail if "Violation" in line]
        assert not refused, "\n".join(refused)


async def kv_claims(stack: Stack) -> dict[str, set[tuple[str, str]]]:
    """Every address claim in the ipam bucket: address key → (cluster, name) of its holders."""
    runtime = stack.components["ipam"].runtime  # the one identity that may read it all
    assert runtime is not None
    kv = await runtime.bus.kv(IPAM_BUCKET)
    claims: dict[str, set[tuple[str, str]]] = {}
    for key in await kv_keys(runtime.bus.js, IPAM_BUCKET, "addr.>"):
        entry = await kv.get(key)
        claim = decode_claim(key, entry.value)
        claims[key] = {(claim.cluster, sharer.name) for sharer in claim.sharers}
    return claims


def vip_of(stack: Stack, cluster: str, name: str) -> str | None:
    ips = stack.ingress_ips(cluster, name)
    return ips[0] if ips else None


class TestLifecycle:
    async def test_create_gets_a_vip_and_delete_leaves_nothing_behind(self, stack: Stack) -> None:
        """A Service gets a pool VIP in status within 2 s; deleting it leaves nothing behind."""
        await stack.create_service("east", "web", ports=((80, "TCP"), (443, "TCP")))
        await eventually(
            lambda: vip_of(stack, "east", "web"), timeout=2.0, what="east/web has a VIP in status"
        )
        vip = vip_of(stack, "east", "web")
        assert vip is not None and ipaddress.ip_address(vip) in POOL
        svc = stack.service("east", "web")
        assert svc is not None
        assert FINALIZER in svc["metadata"]["finalizers"]
        assert svc["status"]["loadBalancer"]["ingress"] == [{"ip": vip, "ipMode": "VIP"}]
        servers = stack.appliance.virtual_servers("east")
        assert {(vs.address, vs.port) for vs in servers.values()} == {(vip, 80), (vip, 443)}
        assert len(await kv_claims(stack)) == 1

        await stack.delete_service("east", "web")
        await eventually(
            lambda: stack.service("east", "web") is None,
            timeout=5.0,
            what="east/web is gone from Kubernetes",
        )
        assert stack.appliance.virtual_servers("east") == {}
        assert await kv_claims(stack) == {}

    async def test_a_service_of_another_class_is_left_alone(self, stack: Stack) -> None:
        """A LoadBalancer Service of a foreign loadBalancerClass gets no finalizer and no VIP."""
        await stack.create_service("east", "theirs", load_balancer_class="example.com/other")
        await stack.create_service("east", "ours")
        await eventually(
            lambda: vip_of(stack, "east", "ours"), timeout=5.0, what="east/ours has a VIP in status"
        )
        theirs = stack.service("east", "theirs")
        assert theirs is not None
        assert not theirs["metadata"].get("finalizers")
        assert vip_of(stack, "east", "theirs") is None


class TestSharedVipSpace:
    async def test_two_clusters_of_fifty_never_share_a_vip(self, stack: Stack) -> None:
        """100 Services in two clusters: every status VIP distinct, and KV agrees owner by owner."""
        names = [f"svc-{i}" for i in range(50)]
        await asyncio.gather(*(stack.create_service(c, n) for c in stack.clusters for n in names))
        keys = [(c, n) for c in stack.clusters for n in names]
        await eventually(
            lambda: all(vip_of(stack, c, n) for c, n in keys),
            timeout=30.0,
            what="every Service of every cluster has a VIP",
        )
        vips = {(c, n): vip_of(stack, c, n) for c, n in keys}
        counts = Counter(vips.values())
        assert max(counts.values()) == 1, [v for v, k in counts.items() if k > 1]
        claims = await kv_claims(stack)
        assert len(claims) == 100
        for (cluster, name), vip in vips.items():
            assert vip is not None
            assert claims[addr_key(vip)] == {(cluster, name)}


class TestRestarts:
    async def test_restarting_ipam_and_lbdriver_mid_burst_changes_no_vip(
        self, stack: Stack
    ) -> None:
        """Restart ipam and lbdriver while 60 Services arrive: none lost, no VIP changed."""
        first = [f"early-{i}" for i in range(20)]
        await asyncio.gather(*(stack.create_service("east", n) for n in first))
        await eventually(
            lambda: all(vip_of(stack, "east", n) for n in first),
            timeout=10.0,
            what="the early Services have their VIPs",
        )
        before = {n: vip_of(stack, "east", n) for n in first}

        burst = [f"burst-{i}" for i in range(40)]
        creating = asyncio.gather(
            *(stack.create_service(c, n) for c in stack.clusters for n in burst)
        )
        # Fence: the burst is under way (some of it in Kubernetes, not all) when both restart.
        await eventually(
            lambda: stack.emulators["east"].find("services", "default", "burst-0") is not None,
            what="the burst reached Kubernetes",
        )
        await asyncio.gather(stack.restart("ipam"), stack.restart("lbdriver"))
        await creating
        keys = [("east", n) for n in first] + [(c, n) for c in stack.clusters for n in burst]
        await eventually(
            lambda: all(vip_of(stack, c, n) for c, n in keys),
            timeout=30.0,
            what="every Service has a VIP after the restarts",
        )

        assert {n: vip_of(stack, "east", n) for n in first} == before
        all_vips = [vip_of(stack, c, n) for c, n in keys]
        assert len(set(all_vips)) == len(all_vips)
        claims = await kv_claims(stack)
        assert len(claims) == len(keys)
        on_appliance = {
            vs.address for c in stack.clusters for vs in stack.appliance.virtual_servers(c).values()
        }
        assert on_appliance == set(all_vips)


class TestPoison:
    async def test_a_malformed_message_is_termed_and_the_pipeline_goes_on(
        self, stack: Stack, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Garbage on a service subject is termed, logged, counted; the next Service converges."""
        ipam = stack.components["ipam"].runtime
        watcher = stack.components["watcher:east"].runtime  # the one that may publish there
        assert ipam is not None and watcher is not None
        with caplog.at_level(logging.ERROR, logger="vipwire.bus.consumer"):
            await watcher.bus.js.publish("vipwire.east.service.default.junk", b"\x00not json")
            await stack.create_service("east", "after-junk")
            await eventually(
                lambda: vip_of(stack, "east", "after-junk"),
                timeout=5.0,
                what="a Service created after the junk has a VIP",
            )
        assert any("vipwire.east.service.default.junk" in r.getMessage() for r in caplog.records)
        assert 'vipwire_bus_poison_total{consumer="ipam-service",subject_family="service"} 1' in (
            ipam.metrics.expose()
        )


class TestTracing:
    async def test_one_service_creation_is_one_trace_across_every_hop(
        self, stack: Stack, span_exporter: InMemorySpanExporter
    ) -> None:
        """Watcher, ipam, lbdriver, every node agent and the status write share one trace."""
        span_exporter.clear()
        await stack.create_service("west", "traced")
        await eventually(
            lambda: vip_of(stack, "west", "traced"), timeout=5.0, what="west/traced has a VIP"
        )
        node_names = set(stack.node_names("west"))

        def hop_services(trace_id: int) -> set[str]:
            return {
                str(s.resource.attributes.get("service.name"))
                + (
                    f":{s.resource.attributes.get('service.instance.id')}"
                    if s.resource.attributes.get("service.name") == "vipwire-nodeagent"
                    else ""
                )
                for s in span_exporter.get_finished_spans()
                if s.context is not None and s.context.trace_id == trace_id
            }

        def status_write_trace() -> int | None:
            for span in span_exporter.get_finished_spans():
                attrs = span.attributes or {}
                if span.name == "status write" and attrs.get("k8s.service.name") == "traced":
                    return span.context.trace_id if span.context else None
            return None

        await eventually(
            status_write_trace, timeout=5.0, what="the status write's trace is recorded"
        )
        trace_id = status_write_trace()
        assert trace_id is not None
        expected = {"vipwire-watcher", "vipwire-ipam", "vipwire-lbdriver"} | {
            f"vipwire-nodeagent:west/{node}" for node in node_names
        }
        await eventually(
            lambda: expected <= hop_services(trace_id),
            timeout=5.0,
            what="the trace has a span of every hop",
        )
        roots = [
            s
            for s in span_exporter.get_finished_spans()
            if s.context is not None and s.context.trace_id == trace_id and s.parent is None
        ]
        assert len(roots) == 1, [r.name for r in roots]


class TestSmoke:
    def test_vipwire_up_smoke_converges_and_prints_one_json_line(self, tmp_path: object) -> None:
        """`vipwire up --smoke` converges every demo Service and prints the promised JSON."""
        proc = subprocess.run(
            [sys.executable, "-m", "vipwire.cli", "up", "--smoke", "--timeout", "30"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        assert len(lines) == 1
        result = json.loads(lines[0])
        assert result["services"] == result["converged"] == 10
        assert 0 < result["p50_ms"] <= result["p99_ms"]
        # Permissions on by default: the operator's credentials are named, no warning.
        assert "operator creds: " in proc.stderr and "operator-admin.creds" in proc.stderr
        assert "WARNING" not in proc.stderr
        # Each emulated cluster's kubeconfig is named, for kubectl.
        for cluster in ("east", "west"):
            assert f"/kubeconfig-{cluster} get svc" in proc.stderr, proc.stderr

    def test_vipwire_up_insecure_bus_warns_and_still_converges(self) -> None:
        """`vipwire up --smoke --insecure-bus`: a WARNING line, no credentials, converged."""
        proc = subprocess.run(
            [sys.executable, "-m", "vipwire.cli", "up", "--smoke", "--insecure-bus",
             "--services", "1", "--clusters", "1", "--nodes", "1", "--timeout", "30"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "WARNING: --insecure-bus" in proc.stderr
        assert "operator creds" not in proc.stderr

    def test_vipwire_up_tls_smoke_converges_over_mtls(self, tmp_path: Path) -> None:
        """`vipwire up --tls --smoke`: a CA in STATE_DIR/pki, nats-server verifying clients,
        every Service converged, and a --config file for the operator commands with the
        client certificate."""
        proc = subprocess.run(
            [
                sys.executable, "-m", "vipwire.cli", "up", "--tls", "--smoke",
                "--clusters", "1", "--nodes", "1", "--services", "2",
                "--timeout", "30", "--state-dir", str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1])["converged"] == 2
        assert "verify: true" in (tmp_path / "jetstream" / "nats-server.conf").read_text()
        cli = json.loads((tmp_path / "vipwire-cli.yaml").read_text())["bus"]
        assert cli["tls"]["cert_file"] == str(tmp_path / "pki" / "client-cert.pem")
        assert cli["credentials"].endswith("operator-admin.creds")  # permissions on too
        assert f"--config {tmp_path / 'vipwire-cli.yaml'}" in proc.stderr


class TestOperatorRelease:
    async def test_ipam_release_from_the_cli_writes_an_event_naming_the_operator(
        self, stack: Stack
    ) -> None:
        """`vipwire ipam release --creds <operator-admin's>` (the real CLI, a subprocess,
        permissions on) moves the Service to a new VIP, and the Service gets a Normal
        IPReleasedByOperator naming that operator and both addresses, once."""
        creds = stack.operator_creds
        assert creds is not None
        await stack.create_service("east", "web")
        await eventually(lambda: vip_of(stack, "east", "web"), what="east/web has a VIP")
        old = vip_of(stack, "east", "web")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vipwire.cli", "ipam", "release", "east/default/web",
            "--nats", stack.nats.urls[0], "--creds", str(creds),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0, (out.decode(), err.decode())
        assert f"withdrawing {old}" in out.decode()

        def released() -> list[dict[str, Any]]:
            events = stack.emulators["east"].list("events.events.k8s.io", "default")
            return [e for e in events if e.get("reason") == "IPReleasedByOperator"]

        await eventually(
            lambda: released() and vip_of(stack, "east", "web") not in (None, old),
            what="an IPReleasedByOperator Event and the new VIP in status",
        )
        new = vip_of(stack, "east", "web")
        (event,) = released()
        assert event["type"] == "Normal"
        assert event["regarding"]["name"] == "web"
        assert event["note"].startswith(
            f"operator operator-admin released {old} (vipwire ipam release); {new} allocated"
        ), event["note"]
