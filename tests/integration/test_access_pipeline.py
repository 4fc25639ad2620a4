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
    reports = [
        decode(subject, data)
        for subject, data, _ in pipeline.recorder.family("lb")
        if subject.endswith(".acl")
    ]
    assert any(
        isinstance(r, LbProgrammed) and r.source_ranges == ("203.0.113.0/24",) for r in reports
    )

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
