"""``scale``: a sweep over Services x nodes per cluster x clusters; how fan-out to nodes grows.

Each point of the sweep is a fresh :class:`~vipwire.bench._fleet.Fleet` (every
component in its own process, as ``burst`` runs them; node agents in dry-run,
``agents_per_process`` of them sharing a process, each with its own NATS
connection and subscription). Once everything is ready, ``services`` Services
per cluster (without node ports, each with ``endpoints`` ready pods) are
created at once, round robin over the clusters. Measured per point:

- ``converged_s``: until every Service shows its VIP in its status;
  ``applied_s``: until every node agent reported every VIP of its cluster
  (``NodeApplied``; None when not within ``agents_timeout_s``);
- from nats-server's monitoring endpoint: messages and bytes in and out
  (``/varz``: ``out_msgs`` counts every delivery, core NATS and JetStream, to
  every subscriber; the bench's own observer of ``NodeApplied`` is
  subtracted), JetStream consumers held at the end, in all and per filter
  (``/jsz?consumers=true``; a node agent reading the ``lb`` stream holds one on
  ``vipwire.<cluster>.lb.>``, as the cluster's watcher does), and the deliveries
  made by JetStream consumers (``lb_consumer_deliveries``: those of consumers of the
  ``lb`` family alone, the node agents' on the ``lb`` feed and the watchers');
- what the server sent to the node agents' own connections (``/connz``, connections
  named ``vipwire-nodeagent/<node>``): ``node_agent_deliveries`` (every message:
  the node feed, JetStream deliveries, replies), ``node_agent_bytes``, and
  ``node_agent_connections`` (one per agent: a missing one is an agent not counted);
- CPU seconds of nats-server (``/proc``) and of every component process, per
  kind (``ipam``, ``lbdriver``, ``watcher``, ``nodeagents``), with
  ``control_plane_cpu_s`` (ipam + lbdriver + watchers).

Then, per number of clusters (and node feed), the growth exponents: least
squares on log-log of ``applied_s`` and of each CPU figure against Services,
against nodes (both fitted together) and against Services x nodes.

The bench reads the bus with its own client, so its server runs without the
NATS permissions the Stack enables by default (as ``burst`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec
import nats
from nats.aio.msg import Msg

from vipwire.allinone.clock import StatusClock
from vipwire.bench._common import agent_traffic, bus_traffic, load_average, monitoring, pool_for
from vipwire.bench._fleet import Fleet, FleetSettings, endpoint_slice, proc_status, service_body
from vipwire.bench._result import BenchResult, convert_params
from vipwire.bench.burst import _AppliedTracker
from vipwire.contracts import ServiceRef

NAMESPACE = "default"
#: The figures the exponents are fitted for.
FITTED = (
    "applied_s",
    "nats_cpu_s",
    "control_plane_cpu_s",
    "nodeagents_cpu_s",
    "total_cpu_s",
    "deliveries",
    "node_agent_deliveries",
    "consumers_total",
)
#: ``--quick``: what the sweep is when not given (minutes on a 2-core machine).
QUICK: dict[str, tuple[int, ...]] = {"services": (100, 300), "nodes": (10, 30), "clusters": (1,)}
_LIST_KEYS = ("services", "nodes", "clusters", "feed")


class ScaleOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Parameters of the scale scenario (``--set name=value``; lists comma-separated)."""

    #: Services per cluster, one sweep axis.
    services: tuple[Annotated[int, msgspec.Meta(ge=1, le=20000)], ...] = (1000, 2000, 5000, 10000)
    #: Nodes per cluster (simulated node agents, dry-run), the other axis.
    nodes: tuple[Annotated[int, msgspec.Meta(ge=1, le=20000)], ...] = (10, 50, 200, 1000, 5000)
    #: Numbers of clusters: the whole grid once for each.
    clusters: tuple[Annotated[int, msgspec.Meta(ge=1, le=20)], ...] = (1, 5)
    #: The node agents' feed (``nodeagent.feed``), each a sweep of its own; empty:
    #: the agents' default, the setting left out.
    feed: tuple[Literal["lb", "table"], ...] = ()
    #: The quick preset: services, nodes, clusters not given take :data:`QUICK`.
    quick: bool = False
    #: Node agents per process (each with its own connection and subscription).
    agents_per_process: Annotated[int, msgspec.Meta(ge=1)] = 250
    #: Ready pods per Service (on consecutive nodes).
    endpoints: Annotated[int, msgspec.Meta(ge=0, le=50)] = 1
    #: Niceness of the node agent processes (0: the same share as the control plane).
    agents_nice: Annotated[int, msgspec.Meta(ge=0, le=19)] = 0
    #: Seconds to wait for every Service's status, per point.
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0
    #: Seconds to wait after that for every node to report every VIP, per point.
    agents_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 900.0

    def __post_init__(self) -> None:
        for axis in ("services", "nodes", "clusters"):
            if not getattr(self, axis):
                raise ValueError(f"{axis}: give at least one value")
        if any(n < self.endpoints for n in self.nodes):
            raise ValueError("endpoints must be at most the fewest nodes (one pod per node)")


def options_from(params: Mapping[str, str]) -> ScaleOptions:
    """Options from ``--set`` pairs: comma-separated lists; ``quick`` fills what is not given."""
    data: dict[str, Any] = {}
    for key, value in params.items():
        if key in _LIST_KEYS:
            data[key] = [v.strip() for v in value.split(",") if v.strip()]
        else:
            data[key] = value
    options = convert_params(data, ScaleOptions)
    if options.quick:
        given = {k: v for k, v in QUICK.items() if k not in params}
        options = msgspec.structs.replace(options, **given)
    return options


async def run_scale(params: Mapping[str, str]) -> BenchResult:
    return await scale(options_from(params))


async def scale(options: ScaleOptions) -> BenchResult:
    points: list[dict[str, Any]] = []
    for feed in options.feed or (None,):
        for clusters in options.clusters:
            for nodes in options.nodes:
                for services in options.services:
                    points.append(await _point(options, clusters, services, nodes, feed))
    return _result(options, points)


async def _point(
    options: ScaleOptions, clusters: int, services: int, nodes: int, feed: str | None
) -> dict[str, Any]:
    total = clusters * services
    pool = {"name": "bench", "addresses": [pool_for(total)], "appliance_group": "dc1"}
    settings = FleetSettings(
        clusters=clusters,
        nodes=nodes,
        pools=(pool,),
        agents_nice=options.agents_nice,
        agents_per_process=options.agents_per_process,
        agents_extra={"feed": feed} if feed else {},
        nats_monitor=True,
    )
    async with Fleet(settings) as fleet:
        await fleet.wait_ready(timeout=120 + 0.5 * clusters * nodes)
        monitor = fleet.nats.monitor_port
        nats_pid = fleet.nats_pid()
        await asyncio.sleep(0.5)  # readiness traffic settles before the baseline
        nats_before = proc_status(nats_pid) if nats_pid else {}
        varz_before = await monitoring(monitor, "/varz")
        agents_before = await agent_traffic(monitor)
        js_before = await bus_traffic(fleet.nats.url)
        fleet.mark_baseline()
        tracker = _AppliedTracker(dict.fromkeys(fleet.clusters, services))
        tracker.nodes = clusters * nodes
        observed = 0

        async def observe(msg: Msg) -> None:
            nonlocal observed
            observed += 1
            await tracker.on_msg(msg)

        nc = await nats.connect(fleet.nats.url, name="vipwire-bench-scale")
        sub = await nc.subscribe("vipwire.*.applied.>", cb=observe)
        clock = StatusClock(fleet.emulators)
        await clock.start()
        load_before = load_average()
        try:
            started = time.perf_counter()
            await _create_all(fleet, clock, services, options.endpoints)
            converged = await clock.wait_all(total, options.timeout_s)
            converged_s = time.perf_counter() - started
            applied = await _wait_applied(tracker, options.agents_timeout_s)
            load = (load_before, load_average())
        finally:
            await clock.stop()
            await sub.unsubscribe()
            await nc.close()
        cpu = _cpu(fleet)
        nats_after = proc_status(nats_pid) if nats_pid else {}
        varz_after = await monitoring(monitor, "/varz")
        agents_after = await agent_traffic(monitor)
        jsz = await monitoring(monitor, "/jsz?consumers=true&config=true")
        js_after = await bus_traffic(fleet.nats.url)
    by_consumer = {
        c: n - js_before["deliveries_by_consumer"].get(c, 0)
        for c, n in js_after["deliveries_by_consumer"].items()
    }
    applied_s = tracker.done_at - started if applied and tracker.done_at else None
    kinds: dict[str, float] = {}
    for row in cpu:
        kinds[row["kind"]] = round(kinds.get(row["kind"], 0.0) + row["cpu_s"], 2)
    control = sum(kinds.get(k, 0.0) for k in ("ipam", "lbdriver", "watcher"))
    nats_cpu_s = (nats_after.get("cpu_cs", 0) - nats_before.get("cpu_cs", 0)) / 100
    return {
        "feed": feed or "default",
        "clusters": clusters,
        "services_per_cluster": services,
        "nodes_per_cluster": nodes,
        "services": total,
        "nodes": clusters * nodes,
        "all_converged": converged,
        "converged": len(clock.converged),
        "converged_s": round(converged_s, 3),
        "every_node_applied": applied,
        "nodes_applied": sum(
            1 for (c, _), n in tracker.counts.items() if n >= tracker.expected.get(c, 0)
        ),
        "applied_s": round(applied_s, 3) if applied_s is not None else None,
        "deliveries": _diff(varz_after, varz_before, "out_msgs") - observed,
        "bytes_out": _diff(varz_after, varz_before, "out_bytes"),
        "messages_in": _diff(varz_after, varz_before, "in_msgs"),
        "bytes_in": _diff(varz_after, varz_before, "in_bytes"),
        "jetstream_messages": js_after["messages"] - js_before["messages"],
        "jetstream_deliveries": sum(by_consumer.values()),
        "node_agent_deliveries": agents_after["deliveries"] - agents_before["deliveries"],
        "node_agent_bytes": agents_after["bytes"] - agents_before["bytes"],
        "node_agent_connections": agents_after["connections"],
        "lb_consumer_deliveries": by_consumer.get("lb", 0),
        "consumers": _consumers(jsz, fleet.clusters),
        "consumers_total": int(jsz.get("consumers", 0)),
        "nats_cpu_s": round(nats_cpu_s, 2),
        "nats_peak_rss_mb": round(nats_after.get("VmHWM", 0) / 2**20, 1),
        "cpu_s": kinds,
        "control_plane_cpu_s": round(control, 2),
        "nodeagents_cpu_s": kinds.get("nodeagents", 0.0),
        "total_cpu_s": round(sum(kinds.values()) + nats_cpu_s, 2),
        "processes": cpu,
        "load_average": list(load),
    }


def _diff(after: Mapping[str, Any], before: Mapping[str, Any], key: str) -> int:
    return int(after.get(key, 0)) - int(before.get(key, 0))


def _consumers(jsz: Mapping[str, Any], clusters: Sequence[str]) -> dict[str, Any]:
    """JetStream consumers the server holds: in all, and per filter (a cluster's name
    written ``<cluster>``, so that one count covers every cluster's)."""
    by_filter: dict[str, int] = {}
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            for consumer in stream.get("consumer_detail") or []:
                config = consumer.get("config") or {}
                filters = list(config.get("filter_subjects") or [])
                if config.get("filter_subject"):
                    filters.append(config["filter_subject"])
                parts = [f.split(".") for f in filters] or [["(all)"]]
                for part in parts:
                    if len(part) > 1 and part[1] in clusters:
                        part[1] = "<cluster>"
                label = ",".join(sorted(".".join(part) for part in parts))
                by_filter[label] = by_filter.get(label, 0) + 1
    return {"total": int(jsz.get("consumers", 0)), "by_filter": dict(sorted(by_filter.items()))}


async def _create_all(fleet: Fleet, clock: StatusClock, services: int, endpoints: int) -> None:
    nodes = {c: fleet.node_names(c) for c in fleet.clusters}
    for i in range(services):
        for c, cluster in enumerate(fleet.clusters):
            name = f"scale-{i:05d}"
            emulator = fleet.emulators[cluster]
            clock.mark_created(ServiceRef(cluster, NAMESPACE, name))
            await emulator.create(service_body(name, NAMESPACE, node_ports=False))
            if endpoints:
                await emulator.create(endpoint_slice(name, nodes[cluster], i + c, endpoints))
        if i % 50 == 49:
            await asyncio.sleep(0)  # an API server serves its watches while it takes writes


async def _wait_applied(tracker: _AppliedTracker, timeout: float) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while tracker.done_at is None:  # noqa: ASYNC110 - set by a subscription callback
                await asyncio.sleep(0.05)
            return True
    return False


def _cpu(fleet: Fleet) -> list[dict[str, Any]]:
    rows = []
    for process in fleet.processes:
        now = proc_status(process.pid)
        cpu_s = (now.get("cpu_cs", 0) - process.baseline.get("cpu_cs", 0)) / 100
        rows.append(
            {
                "name": process.name,
                "kind": process.kind,
                "agents": process.agents,
                "cpu_s": round(cpu_s, 2),
                "peak_rss_mb": round(now.get("VmHWM", 0) / 2**20, 1),
            }
        )
    return rows


Axis = Literal["services", "nodes", "services_x_nodes"]


def fit_exponents(
    points: Sequence[tuple[float, float, float]],
) -> dict[Axis, float | None]:
    """Growth exponents of y from (services, nodes, y) points: least squares of
    ``log y = a + b log services + c log nodes`` (b, c: each with the other held),
    and of ``log y = a + d log (services x nodes)``. A figure is None when the
    points do not vary along its axis (or are too few); points with y <= 0 are left out."""
    logs = [
        (math.log(s), math.log(n), math.log(y)) for s, n, y in points if s > 0 and n > 0 and y > 0
    ]
    result: dict[Axis, float | None] = {"services": None, "nodes": None, "services_x_nodes": None}
    if len(logs) < 2:
        return result
    products = [(s + n, y) for s, n, y in logs]
    result["services_x_nodes"] = _slope(products)
    vary_s = len({round(s, 9) for s, _, _ in logs}) > 1
    vary_n = len({round(n, 9) for _, n, _ in logs}) > 1
    if vary_s and vary_n and len(logs) >= 3:
        solved = _two_way(logs)
        if solved is not None:
            result["services"], result["nodes"] = solved
    elif vary_s:
        result["services"] = _slope([(s, y) for s, _, y in logs])
    elif vary_n:
        result["nodes"] = _slope([(n, y) for _, n, y in logs])
    return {k: (round(v, 3) if v is not None else None) for k, v in result.items()}


def _slope(pairs: Sequence[tuple[float, float]]) -> float | None:
    n = len(pairs)
    mx = sum(x for x, _ in pairs) / n
    my = sum(y for _, y in pairs) / n
    sxx = sum((x - mx) ** 2 for x, _ in pairs)
    if sxx <= 1e-12:
        return None
    return sum((x - mx) * (y - my) for x, y in pairs) / sxx


def _two_way(logs: Sequence[tuple[float, float, float]]) -> tuple[float, float] | None:
    """Least squares of y on two centred regressors (normal equations, 2x2)."""
    n = len(logs)
    ms = sum(s for s, _, _ in logs) / n
    mn = sum(v for _, v, _ in logs) / n
    my = sum(y for _, _, y in logs) / n
    sss = sum((s - ms) ** 2 for s, _, _ in logs)
    snn = sum((v - mn) ** 2 for _, v, _ in logs)
    ssn = sum((s - ms) * (v - mn) for s, v, _ in logs)
    ssy = sum((s - ms) * (y - my) for s, _, y in logs)
    sny = sum((v - mn) * (y - my) for _, v, y in logs)
    det = sss * snn - ssn * ssn
    if abs(det) <= 1e-12:
        return None
    return (ssy * snn - sny * ssn) / det, (sny * sss - ssy * ssn) / det


def exponents(points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (feed, clusters): the exponents of every :data:`FITTED` figure."""
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for point in points:
        groups.setdefault((point["feed"], point["clusters"]), []).append(point)
    fits = []
    for (feed, clusters), group in groups.items():
        fitted = {
            figure: fit_exponents(
                [
                    (p["services_per_cluster"], p["nodes_per_cluster"], p[figure])
                    for p in group
                    if p.get(figure) is not None
                ]
            )
            for figure in FITTED
        }
        fits.append({"feed": feed, "clusters": clusters, "points": len(group), "fits": fitted})
    return fits


def _result(options: ScaleOptions, points: list[dict[str, Any]]) -> BenchResult:
    fits = exponents(points)
    data: dict[str, Any] = {
        "scenario": "scale",
        "quick": options.quick,
        "sweep": {
            "services": list(options.services),
            "nodes": list(options.nodes),
            "clusters": list(options.clusters),
            "feed": list(options.feed) or ["default"],
        },
        "endpoints_per_service": options.endpoints,
        "agents_per_process": options.agents_per_process,
        "agents_nice": options.agents_nice,
        "points": points,
        "exponents": fits,
    }
    rows: list[tuple[str, str]] = [
        (
            "columns",
            "feed clusters x Services x nodes: status s, applied s | deliveries (to agents), "
            "MB out | JS consumers | CPU s: nats, control plane, agents | load",
        )
    ]
    for p in points:
        applied = f"{p['applied_s']:.2f}" if p["applied_s"] is not None else "NOT ALL"
        rows.append(
            (
                f"{p['feed']} {p['clusters']} x {p['services_per_cluster']} x "
                f"{p['nodes_per_cluster']}",
                f"{p['converged_s']:.2f}, {applied} | {p['deliveries']} "
                f"({p['node_agent_deliveries']}), "
                f"{p['bytes_out'] / 2**20:.1f} | {p['consumers_total']} | {p['nats_cpu_s']}, "
                f"{p['control_plane_cpu_s']}, {p['nodeagents_cpu_s']} | "
                f"{p['load_average'][0]}/{p['load_average'][1]}",
            )
        )
    for fit in fits:
        for figure, exps in fit["fits"].items():
            text = ", ".join(
                f"{axis} {value if value is not None else '-'}" for axis, value in exps.items()
            )
            rows.append((f"exponent {fit['feed']} {fit['clusters']}c {figure}", text))
    return BenchResult(scenario="scale", rows=tuple(rows), data=data)
