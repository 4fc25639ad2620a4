"""The convergence benchmarks, tiny: each runs the real services and reports its documented keys.

Figures are not checked against targets (a loaded CI machine would fail
them); only that each scenario runs end to end and reports sane values.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vipwire.bench import SCENARIOS
from vipwire.bench.burst import BurstOptions, burst
from vipwire.bench.floor import measure_floor
from vipwire.bench.latency import LatencyOptions, latency
from vipwire.bench.restart import RestartOptions, restart
from vipwire.bench.scale import options_from, scale
from vipwire.cli.bench import bench
from vipwire.natsserver import NatsServer


async def test_floor_measures_the_bus_and_the_kv_bucket(nats_server: NatsServer) -> None:
    """Publish, one hop, KV compare-and-set and get are timed; a hop costs at least a
    publish's ack."""
    floor = await measure_floor(nats_server.url, samples=20)
    for stat in (floor.publish_ack, floor.bus_publish, floor.hop, floor.kv_cas, floor.kv_get):
        assert 0 < stat.p50_ms <= stat.p90_ms <= stat.p99_ms
    assert floor.kube_patch is None


async def test_latency_reports_percentiles_and_every_hop() -> None:
    """Every Service converges; p50 <= p90 <= p99, and each hop has a positive median."""
    result = await latency(
        LatencyOptions(services=6, clusters=2, nodes=1, floor_samples=10, timeout_s=20)
    )
    data = result.data
    assert data["converged"] == 6
    assert 0 < data["p50_ms"] <= data["p90_ms"] <= data["p99_ms"] < 20_000
    assert set(data["hops"]) == {"watcher_in", "ipam", "lbdriver", "watcher_status"}
    assert all(hop["p50_ms"] > 0 for hop in data["hops"].values())
    assert data["floor"]["kube_patch"]["p50_ms"] > 0
    assert data["p50_over_hop_floor"] > 1
    assert "create -> status" in result.table()


async def test_burst_runs_each_component_in_its_own_process() -> None:
    """All Services converge; every process reports its peak memory and CPU, the node
    agents report every VIP, and the components' API requests are counted."""
    result = await burst(
        BurstOptions(clusters=1, services=5, nodes=2, endpoints=1, floor_samples=10, timeout_s=30)
    )
    data = result.data
    assert data["all_converged"] and data["converged"] == 5
    assert data["services_per_s"] > 0 and data["converged_s"] > 0
    assert set(data["components"]) == {"ipam", "lbdriver", "watcher", "nodeagents"}
    for row in data["processes"]:
        assert row["peak_rss_mb"] >= row["ready_rss_mb"] > 10
        assert row["cpu_s"] >= 0
    assert data["agents_applied_s"] is not None
    assert data["p50_ms"] <= data["p99_ms"]
    # The watcher's requests to the API server: a status write per Service at least.
    assert data["kube_requests"].get("patch services/status", 0) >= 5
    # What the server sent to each node agent's own connection (named by its node).
    agents = data["bus"]["node_agents"]
    assert agents["connections"] == 2 and agents["deliveries"] > 0 and agents["bytes"] > 0


async def test_restart_of_every_component_writes_nothing() -> None:
    """With live VIPs, restarting ipam, the lbdriver and the node agents becomes ready
    and makes no write anywhere."""
    result = await restart(
        RestartOptions(clusters=1, services=4, nodes=2, quiet_s=0.3, floor_samples=10)
    )
    data = result.data
    assert set(data["phases"]) == {"ipam", "lbdriver", "nodeagent", "nodeagents"}
    for phase in data["phases"].values():
        assert phase["ready_s"] > 0
        assert phase["writes"] == 0, phase
    assert data["phases"]["nodeagents"]["components"] == 2


async def test_the_command_writes_the_scenarios_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``vipwire bench --scenario floor --json FILE`` prints the table and writes the
    floor's keys; a bad parameter is a usage error."""
    assert {"latency", "burst", "restart", "floor"} <= set(SCENARIOS)
    out = tmp_path / "floor.json"
    assert await bench("floor", ["samples=10"], str(out)) == 0
    assert "one hop" in capsys.readouterr().out
    document = json.loads(out.read_text())
    assert document["hop"]["p50_ms"] > 0
    assert await bench("latency", ["services=0"], None) == 2


async def test_scale_sweeps_services_and_nodes_and_every_node_converges() -> None:
    """A tiny sweep (20 Services x 3 and 6 nodes, both node feeds, two agent processes for
    6 nodes): every node converges at every point, each point reports deliveries, bytes,
    consumers and CPU, exponents are fitted per feed, and only the old feed holds
    JetStream consumers in proportion to nodes."""
    result = await scale(
        options_from(
            {
                "services": "20",
                "nodes": "3,6",
                "clusters": "1",
                "feed": "lb,table",
                "agents_per_process": "4",
            }
        )
    )
    data = result.data
    assert data["sweep"] == {
        "services": [20],
        "nodes": [3, 6],
        "clusters": [1],
        "feed": ["lb", "table"],
    }
    points = {(p["feed"], p["nodes_per_cluster"]): p for p in data["points"]}
    assert set(points) == {("lb", 3), ("lb", 6), ("table", 3), ("table", 6)}
    for point in points.values():
        assert point["all_converged"] and point["every_node_applied"], point
        assert point["nodes_applied"] == point["nodes"]
        assert point["applied_s"] > 0
        assert point["deliveries"] > point["services"] and point["bytes_out"] > 0
        assert point["jetstream_deliveries"] >= point["lb_consumer_deliveries"] > 0
        # Every agent's own connection is counted (named by its node), and each was
        # sent something on either feed.
        assert point["node_agent_connections"] == point["nodes"]
        assert point["node_agent_deliveries"] >= point["nodes"] and point["node_agent_bytes"] > 0
        assert point["consumers_total"] == sum(point["consumers"]["by_filter"].values()) > 0
        assert set(point["cpu_s"]) == {"ipam", "lbdriver", "watcher", "nodeagents"}
        assert point["nats_cpu_s"] >= 0 and point["total_cpu_s"] > 0
    assert points["lb", 6]["consumers_total"] >= points["lb", 3]["consumers_total"] + 3
    # On the feed, no consumer per node: the lb consumers (watcher, lbdriver, feed) stay
    # as they are with 3 more nodes. The total is not compared for equality: a consumer
    # another component stops at the end (the watcher's catch-up of its own families)
    # may still be on the server when it is counted.
    lb = "vipwire.<cluster>.lb.>"
    table_3, table_6 = points["table", 3], points["table", 6]
    assert table_6["consumers"]["by_filter"][lb] == table_3["consumers"]["by_filter"][lb]
    assert table_6["consumers_total"] < table_3["consumers_total"] + 3
    assert [r["name"] for r in points["table", 6]["processes"] if r["kind"] == "nodeagents"] == [
        "nodeagents:east:1",
        "nodeagents:east:2",
    ]
    assert [(f["feed"], f["clusters"]) for f in data["exponents"]] == [("lb", 1), ("table", 1)]
    for fit in data["exponents"]:
        assert set(fit["fits"]) == {
            "applied_s", "nats_cpu_s", "control_plane_cpu_s", "nodeagents_cpu_s",
            "total_cpu_s", "deliveries", "node_agent_deliveries", "consumers_total",
        }  # fmt: skip
        assert fit["fits"]["applied_s"]["nodes"] is not None
        assert fit["fits"]["applied_s"]["services"] is None  # one Services value: no fit
    assert "exponent table 1c applied_s" in result.table()
