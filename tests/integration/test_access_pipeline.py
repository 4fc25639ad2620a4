"""Source ranges and ClientIP affinity from a Service to the sim appliance (watcher, ipam,
lbdriver over a real nats-server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from integration.test_watcher_pipeline import NODES, Pipeline, RuntimeFactory
from vipwire.contracts import LbProgrammed, decode
from vipwire.kubeemu import KubeEmulator
from vipwire.testing import eventually


@pytest.fixture
async def pipeline(
    make_runtime: RuntimeFactory, tmp_path: Path, span_exporter: InMemorySpanExporter
) -> AsyncIterator[Pipeline]:
    emu = KubeEmulator("east", bookmark_interval=0.5)
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


async def test_ranges_and_affinity_reach_the_appliance_and_a_change_is_one_write(
    pipeline: Pipeline,
) -> None:
    """A restricted, ClientIP Service is programmed with its normalised ranges and timeout
    (and tells the nodes in LbProgrammed); changing the ranges is one write of its virtual
    server; an invalid range is refused by name and the appliance keeps the last good ones."""
    await pipeline.start_watcher()
    await pipeline.create("acl", endpoints_on=("n1",))
    await pipeline.emu.patch(
        "services",
        "default",
        "acl",
        {
            "spec": {
                "loadBalancerSourceRanges": ["203.0.113.9/24"],
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
            }
        },
    )

    def programmed() -> bool:
        servers = pipeline.servers_of("acl")
        return bool(servers) and all(
            s.source_ranges == ("203.0.113.0/24",) and s.affinity_timeout_s == 600 for s in servers
        )

    await eventually(programmed, timeout=10, what="acl programmed with its range and affinity")

    def reported() -> bool:
        return any(
            isinstance(r := decode(subject, data), LbProgrammed)
            and r.source_ranges == ("203.0.113.0/24",)
            and r.affinity_timeout_s == 600
            for subject, data, _ in pipeline.recorder.family("lb")
            if subject.endswith(".acl")
        )

    await eventually(reported, timeout=10, what="LbProgrammed tells the nodes acl's range")

    writes = pipeline.appliance.writes
    await pipeline.emu.patch(
        "services",
        "default",
        "acl",
        {"spec": {"loadBalancerSourceRanges": ["203.0.113.0/24", "198.51.100.0/25"]}},
    )
    await eventually(
        lambda: all(
            s.source_ranges == ("198.51.100.0/25", "203.0.113.0/24")
            for s in pipeline.servers_of("acl")
        ),
        timeout=10,
        what="acl's ranges changed on the appliance",
    )
    assert pipeline.appliance.writes - writes == len(pipeline.servers_of("acl")) == 1

    await pipeline.emu.patch(
        "services", "default", "acl", {"spec": {"loadBalancerSourceRanges": ["198.51.100.0"]}}
    )
    await eventually(
        lambda: any(
            '"198.51.100.0"' in e["note"] for e in pipeline.events("InvalidService", "acl")
        ),
        timeout=10,
        what="an InvalidService Event naming the bad range",
    )
    assert [s.source_ranges for s in pipeline.servers_of("acl")] == [
        ("198.51.100.0/25", "203.0.113.0/24")
    ]


async def test_client_ip_affinity_reaches_the_appliance_and_a_change_is_one_write(
    pipeline: Pipeline,
) -> None:
    """sessionAffinity ClientIP without a timeout is programmed with 10800 s; a new timeout
    is one write of the virtual server; back to None, the appliance persists nothing."""
    await pipeline.start_watcher()
    await pipeline.create("sticky", endpoints_on=("n1",))
    await pipeline.emu.patch(
        "services", "default", "sticky", {"spec": {"sessionAffinity": "ClientIP"}}
    )

    def affinity(expected: int | None) -> bool:
        servers = pipeline.servers_of("sticky")
        return bool(servers) and all(s.affinity_timeout_s == expected for s in servers)

    await eventually(lambda: affinity(10800), timeout=10, what="sticky persists 10800 s")
    writes = pipeline.appliance.writes
    await pipeline.emu.patch(
        "services",
        "default",
        "sticky",
        {"spec": {"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}}}},
    )
    await eventually(lambda: affinity(30), timeout=10, what="sticky persists 30 s")
    assert pipeline.appliance.writes - writes == 1
    await pipeline.emu.patch(
        "services",
        "default",
        "sticky",
        {"spec": {"sessionAffinity": "None", "sessionAffinityConfig": None}},
    )
    await eventually(lambda: affinity(None), timeout=10, what="sticky persists nothing")
    assert all(s.source_ranges == () for s in pipeline.servers_of("sticky"))
