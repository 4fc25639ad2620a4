"""``burst``: thousands of Services created at once; throughput, memory and CPU per component.

Every component runs in its own process (:class:`~vipwire.bench._fleet.Fleet`:
``vipwire run`` with generated configs; a cluster's node agents share one
process): ``clusters`` emulated clusters of ``nodes`` nodes each, one watcher
per cluster, ipam, the lbdriver with the ``sim`` appliance (zero latency
unless ``appliance_latency_ms``). The emulated API servers and nats-server
run in (or under) this process and are not counted as the product.

Once everything is ready, ``services`` LoadBalancer Services per cluster (each
with an EndpointSlice of ``endpoints`` ready pods) are created as fast as the
emulator takes them, round robin over the clusters. Measured:

- ``converged_s``: from the first create until every Service shows its VIP in
  its status; ``services_per_s``; create → status percentiles within the burst;
- per component process: peak RSS (``VmHWM`` from ``/proc/<pid>/status``), the
  growth of RSS over the burst per Service it holds (``bytes_per_service``:
  peak minus the RSS measured once ready, before the burst, divided by the
  Services the process keeps state for: all of them for ipam and lbdriver, its
  cluster's for a watcher, its cluster's times its agents for a node agent
  process), the same for the RSS still resident at the end
  (``kept_bytes_per_service``: what the process keeps, without the burst's
  transient buffers) and CPU seconds spent during the burst;
- ``agents_applied_s``: until every node agent reported every VIP of its
  cluster (``NodeApplied``), which status does not wait for (status gate
  ``none``, the default). The agent processes run at ``agents_nice`` (19 by
  default: in a cluster each agent has its own node's CPU, here 250 of them
  share two cores with the control plane);
- ``bus``: messages stored per subject family, bytes, and deliveries per consumer
  (JetStream's own counters); ``bus.node_agents``: what nats-server sent to the node
  agents' connections (``/connz``: the node feed on core NATS too);
  ``bus_at_floor``: what that traffic costs at the CPU prices the floor measured
  (publishes in flight, one consumer draining), in all and without the node agents'
  share: a lower bound on the time the burst can take on this machine, whatever the
  services' own code;
- the floor (``floor`` scenario) on the same server, before the burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import msgspec
import nats
from nats.aio.msg import Msg

from vipwire.allinone.clock import StatusClock
from vipwire.bench._common import (
    HOPS,
    agent_traffic,
    bus_traffic,
    hop_times,
    kube_patcher,
    load_average,
    pool_for,
)
from vipwire.bench._fleet import Fleet, FleetSettings, endpoint_slice, proc_status, service_body
from vipwire.bench._result import BenchResult, convert_params
from vipwire.bench.floor import Floor, Stat, floor_data, measure_floor, ratio
from vipwire.contracts import MalformedMessage, NodeApplied, ServiceRef, decode
from vipwire.kubeemu import AuditEntry

NAMESPACE = "default"


class BurstOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Parameters of the burst scenario (``--set name=value``)."""

    #: Emulated clusters.
    clusters: Annotated[int, msgspec.Meta(ge=1, le=20)] = 5
    #: Services per cluster (the emulator's node port range holds 2,768 per cluster).
    services: Annotated[int, msgspec.Meta(ge=1, le=2700)] = 2000
    #: Nodes per cluster (node addresses come from one /24: clusters x nodes <= 253).
    nodes: Annotated[int, msgspec.Meta(ge=1, le=253)] = 50
    #: Ready pods per Service (on consecutive nodes).
    endpoints: Annotated[int, msgspec.Meta(ge=0, le=50)] = 3
    #: Milliseconds every simulated appliance API call takes.
    appliance_latency_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    #: Niceness of the node agent processes. In a cluster each agent has its own node's
    #: CPU; here 250 of them share two cores with everything else, so by default they
    #: only get what the rest leaves (their CPU and their traffic are still measured).
    agents_nice: Annotated[int, msgspec.Meta(ge=0, le=19)] = 19
    #: The node agents' coalescing window in ms (None: their default).
    agents_coalesce_ms: int | None = None
    #: The watchers' ``node_vip_grace_s`` (None: their default). Shorter than the node
    #: agents take in the burst, it shows what member nodes late with a VIP cost.
    node_vip_grace_s: Annotated[float, msgspec.Meta(ge=0)] | None = None
    #: The lbdriver's ``lease_ttl_s`` (None: its default). On a loaded machine a longer
    #: lease keeps the single lbdriver from losing it to its own starved renewals.
    lease_ttl_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    #: Seconds to wait for convergence.
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    #: Seconds to wait after convergence for the node agents to report every VIP.
    agents_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    #: Operations per floor measurement.
    floor_samples: Annotated[int, msgspec.Meta(ge=10)] = 300

    def __post_init__(self) -> None:
        if self.clusters * self.nodes > 253:
            raise ValueError("clusters x nodes must be at most 253 (node addresses: one /24)")
        if self.endpoints > self.nodes:
            raise ValueError("endpoints must be at most nodes (one pod per node)")


class _AppliedTracker:
    """The VIP count each node agent last reported (core NATS: observes, consumes nothing)."""

    def __init__(self, expected: dict[str, int]) -> None:
        self.expected = expected  # cluster -> VIPs each of its nodes must report
        self.counts: dict[tuple[str, str], int] = {}
        self.done_at: float | None = None
        self.nodes = 0

    async def on_msg(self, msg: Msg) -> None:
        with contextlib.suppress(MalformedMessage):
            message = decode(msg.subject, msg.data)
            if isinstance(message, NodeApplied):
                self.counts[(message.cluster, message.node)] = len(message.vips)
                if self.done_at is None and self.complete():
                    self.done_at = time.perf_counter()

    def complete(self) -> bool:
        if len(self.counts) < self.nodes:
            return False
        return all(n >= self.expected.get(c, 0) for (c, _), n in self.counts.items())


async def run_burst(params: Mapping[str, str]) -> BenchResult:
    return await burst(convert_params(params, BurstOptions))


async def burst(options: BurstOptions) -> BenchResult:
    total = options.clusters * options.services
    pool = {"name": "bench", "addresses": [pool_for(total)], "appliance_group": "dc1"}
    settings = FleetSettings(
        clusters=options.clusters,
        nodes=options.nodes,
        pools=(pool,),
        appliance_latency_ms=options.appliance_latency_ms,
        agents_nice=options.agents_nice,
        agents_coalesce_ms=options.agents_coalesce_ms,
        lbdriver_extra={} if options.lease_ttl_s is None else {"lease_ttl_s": options.lease_ttl_s},
        watcher_extra={}
        if options.node_vip_grace_s is None
        else {"node_vip_grace_s": options.node_vip_grace_s},
        nats_monitor=True,  # /connz: what the node agents' connections received
    )
    async with Fleet(settings) as fleet:
        await fleet.wait_ready(timeout=120 + 2 * options.clusters * options.nodes)
        first = fleet.clusters[0]
        patch, client = await kube_patcher(
            fleet.emulators[first], fleet.state_dir / f"kubeconfig-{first}", first
        )
        try:
            floor = await measure_floor(
                fleet.nats.url, samples=options.floor_samples, kube_patch=patch
            )
        finally:
            await client.close()
        nats_pid = fleet.nats_pid()
        nats_before = proc_status(nats_pid) if nats_pid else {}
        await asyncio.sleep(1.0)  # let the floor's traffic settle before the baseline
        traffic_before = await bus_traffic(fleet.nats.url)
        agents_before = await agent_traffic(fleet.nats.monitor_port)
        fleet.mark_baseline()
        # Every request the components make to the API servers from here on, in RBAC's
        # terms (the benchmark's own creates and its status clock go in-process).
        audits = [fleet.emulators[c].record_requests() for c in fleet.clusters]
        audits_from = [len(a) for a in audits]
        tracker = _AppliedTracker(dict.fromkeys(fleet.clusters, options.services))
        tracker.nodes = options.clusters * options.nodes
        nc = await nats.connect(fleet.nats.url, name="vipwire-bench-burst")
        sub = await nc.subscribe("vipwire.*.applied.>", cb=tracker.on_msg)
        clock = StatusClock(fleet.emulators)
        await clock.start()
        load_before = load_average()
        try:
            started, cpu = time.perf_counter(), time.process_time()
            await _create_all(fleet, clock, options)
            created_s = time.perf_counter() - started
            converged = await clock.wait_all(total, options.timeout_s)
            converged_s = time.perf_counter() - started
            applied = await _wait_applied(tracker, options.agents_timeout_s)
            here_cpu = time.process_time() - cpu
            load = (load_before, load_average())
        finally:
            await clock.stop()
            await sub.unsubscribe()
            await nc.close()
        usage = _usage(fleet, options)
        kube = _kube_requests(a[n:] for a, n in zip(audits, audits_from, strict=True))
        nats_after = proc_status(nats_pid) if nats_pid else {}
        traffic = _delta(await bus_traffic(fleet.nats.url), traffic_before)
        agents_after = await agent_traffic(fleet.nats.monitor_port)
        traffic["node_agents"] = {
            "deliveries": agents_after["deliveries"] - agents_before["deliveries"],
            "bytes": agents_after["bytes"] - agents_before["bytes"],
            "connections": agents_after["connections"],
        }
        hops = await hop_times(fleet.nats.url, clock)
    nats_cpu = (nats_after.get("cpu_cs", 0) - nats_before.get("cpu_cs", 0)) / 100
    return _result(
        options,
        clock,
        floor,
        usage,
        hops=hops,
        traffic=traffic,
        created_s=created_s,
        converged=converged,
        converged_s=converged_s,
        agents_applied_s=(tracker.done_at - started) if applied and tracker.done_at else None,
        emulator_cpu_s=here_cpu,
        load=load,
        nats_cpu_s=nats_cpu,
        nats_hwm=nats_after.get("VmHWM", 0),
        kube=kube,
    )


def _kube_requests(audits: Iterable[list[AuditEntry]]) -> dict[str, int]:
    """Requests to the API servers by verb and resource (``patch services/status``)."""
    counts: Counter[str] = Counter()
    for audit in audits:
        for e in audit:
            resource = f"{e.resource}/{e.subresource}" if e.subresource else e.resource
            counts[f"{e.verb} {resource}"] += 1
    return dict(counts.most_common())


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    was = before["deliveries_by_consumer"]
    return {
        "messages": after["messages"] - before["messages"],
        "bytes": after["bytes"] - before["bytes"],
        "deliveries": after["deliveries"] - before["deliveries"],
        "by_family": {f: n - before["by_family"].get(f, 0) for f, n in after["by_family"].items()},
        "deliveries_by_consumer": {
            c: n - was.get(c, 0) for c, n in after["deliveries_by_consumer"].items()
        },
    }


def _floor_estimate(floor: Floor, traffic: dict[str, Any], total: int) -> dict[str, Any]:
    """What the bus traffic of the burst costs at the floor's CPU prices (no Python of
    ours but the bus client): a lower bound on the CPU the burst needs."""
    b = floor.batched
    if b is None:
        return {}
    publish_ms = traffic["messages"] * b.publish_cpu_us / 1000
    deliver_ms = traffic["deliveries"] * b.delivery_cpu_us / 1000
    # The control plane alone: without the node agents' deliveries (a consumer of
    # ``lb`` only) and their NodeApplied messages.
    agents = traffic["deliveries_by_consumer"].get("lb", 0)
    applied = traffic["by_family"].get("applied", 0)
    core_ms = (traffic["messages"] - applied) * b.publish_cpu_us / 1000
    core_ms += (traffic["deliveries"] - agents) * b.delivery_cpu_us / 1000
    return {
        "messages_per_service": round(traffic["messages"] / total, 1),
        "deliveries_per_service": round(traffic["deliveries"] / total, 1),
        "bytes_per_service": round(traffic["bytes"] / total),
        "cpu_s_at_floor": round((publish_ms + deliver_ms) / 1000, 1),
        # Two cores: the least wall time that CPU takes, were it perfectly parallel.
        "seconds_at_floor_on_2_cores": round((publish_ms + deliver_ms) / 2000, 1),
        "control_plane_cpu_s_at_floor": round(core_ms / 1000, 1),
        "control_plane_seconds_at_floor_on_2_cores": round(core_ms / 2000, 1),
    }


async def _create_all(fleet: Fleet, clock: StatusClock, options: BurstOptions) -> None:
    nodes = {c: fleet.node_names(c) for c in fleet.clusters}
    for i in range(options.services):
        for c, cluster in enumerate(fleet.clusters):
            name = f"burst-{i:05d}"
            emulator = fleet.emulators[cluster]
            clock.mark_created(ServiceRef(cluster, NAMESPACE, name))
            await emulator.create(service_body(name, NAMESPACE))
            if options.endpoints:
                slice_ = endpoint_slice(name, nodes[cluster], i + c, options.endpoints)
                await emulator.create(slice_)
        if i % 50 == 49:
            await asyncio.sleep(0)  # an API server serves its watches while it takes writes


async def _wait_applied(tracker: _AppliedTracker, timeout: float) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while tracker.done_at is None:  # noqa: ASYNC110 - set by a subscription callback
                await asyncio.sleep(0.05)
            return True
    return False


def _usage(fleet: Fleet, options: BurstOptions) -> list[dict[str, Any]]:
    rows = []
    for process in fleet.processes:
        now = proc_status(process.pid)
        held = {
            "ipam": options.clusters * options.services,
            "lbdriver": options.clusters * options.services,
            "watcher": options.services,
            "nodeagents": options.services * process.agents,
        }[process.kind]
        base_rss = process.baseline.get("VmRSS", 0)
        peak = now.get("VmHWM", 0)
        kept = now.get("VmRSS", 0)
        cpu_s = (now.get("cpu_cs", 0) - process.baseline.get("cpu_cs", 0)) / 100
        rows.append(
            {
                "name": process.name,
                "kind": process.kind,
                "agents": process.agents,
                "peak_rss_mb": round(peak / 2**20, 1),
                "ready_rss_mb": round(base_rss / 2**20, 1),
                "bytes_per_service": round(max(0, peak - base_rss) / held),
                # Still resident once everything converged: what the process keeps,
                # without the burst's transient buffers (queues, batches in flight).
                "kept_bytes_per_service": round(max(0, kept - base_rss) / held),
                "cpu_s": round(cpu_s, 2),
                # Per Service of what the process serves (its cluster, or all of them).
                "cpu_ms_per_service": round(cpu_s * 1000 / (held // process.agents), 3),
            }
        )
    return rows


def _by_kind(usage: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per kind: the worst process (most bytes per Service), and CPU summed."""
    kinds: dict[str, dict[str, Any]] = {}
    for row in usage:
        kind = kinds.setdefault(
            row["kind"],
            {
                "processes": 0,
                "cpu_s": 0.0,
                "peak_rss_mb": 0.0,
                "bytes_per_service": 0,
                "kept_bytes_per_service": 0,
            },
        )
        kind["processes"] += 1
        kind["cpu_s"] = round(kind["cpu_s"] + row["cpu_s"], 2)
        kind["peak_rss_mb"] = max(kind["peak_rss_mb"], row["peak_rss_mb"])
        kind["bytes_per_service"] = max(kind["bytes_per_service"], row["bytes_per_service"])
        kind["kept_bytes_per_service"] = max(
            kind["kept_bytes_per_service"], row["kept_bytes_per_service"]
        )
    return kinds


def _result(
    options: BurstOptions,
    clock: StatusClock,
    floor: Floor,
    usage: list[dict[str, Any]],
    *,
    hops: dict[str, list[float]],
    traffic: dict[str, Any],
    created_s: float,
    converged: bool,
    converged_s: float,
    agents_applied_s: float | None,
    emulator_cpu_s: float,
    load: tuple[float, float],
    nats_cpu_s: float,
    nats_hwm: int,
    kube: dict[str, int],
) -> BenchResult:
    total = options.clusters * options.services
    done = len(clock.converged)
    latencies = [s for k in clock.created if (s := clock.latency_s(k)) is not None]
    stat = Stat.of(latencies)
    kinds = _by_kind(usage)
    per_s = done / converged_s if converged_s > 0 else 0.0
    data: dict[str, Any] = {
        "scenario": "burst",
        "clusters": options.clusters,
        "services_per_cluster": options.services,
        "services": total,
        "nodes_per_cluster": options.nodes,
        "endpoints_per_service": options.endpoints,
        "appliance_latency_ms": options.appliance_latency_ms,
        "agents_nice": options.agents_nice,
        "converged": done,
        "all_converged": converged,
        "created_s": round(created_s, 3),
        "converged_s": round(converged_s, 3),
        "services_per_s": round(per_s, 1),
        "p50_ms": stat.p50_ms,
        "p90_ms": stat.p90_ms,
        "p99_ms": stat.p99_ms,
        "agents_applied_s": round(agents_applied_s, 3) if agents_applied_s else None,
        "hops": {h: msgspec.to_builtins(Stat.of(v)) for h, v in hops.items() if v},
        "components": kinds,
        "processes": usage,
        "emulator_cpu_s": round(emulator_cpu_s, 2),
        "load_average": list(load),
        "nats_cpu_s": round(nats_cpu_s, 2),
        "nats_peak_rss_mb": round(nats_hwm / 2**20, 1),
        "kube_requests": kube,
        "floor": floor_data(floor),
        "bus": traffic,
        "bus_at_floor": _floor_estimate(floor, traffic, total),
        "converged_s_over_serial_hops": ratio(converged_s * 1000, total * floor.hop.p50_ms),
    }
    state = "all" if converged else f"{done} of {total} (timed out)"
    rows: list[tuple[str, str]] = [
        (
            "Services",
            f"{total} = {options.clusters} clusters x {options.services}, {options.nodes} nodes "
            f"each, {options.endpoints} endpoints per Service",
        ),
        ("machine load (1 min, start/end)", f"{load[0]} / {load[1]}"),
        ("created in", f"{created_s:.2f} s (emulator, in this process)"),
        ("converged", f"{state} in {converged_s:.2f} s: {per_s:.0f} Services/s"),
        ("create -> status within the burst", stat.text()),
        *(
            (f"  hop {hop} (time in it)", Stat.of(hops[hop]).text())
            for hop in HOPS
            if hops.get(hop)
        ),
        (
            "node agents applied everything",
            f"{agents_applied_s:.2f} s"
            if agents_applied_s
            else f"not within {options.agents_timeout_s:g} s after convergence",
        ),
    ]
    for kind, info in kinds.items():
        rows.append(
            (
                f"{kind} ({info['processes']} process{'es' if info['processes'] > 1 else ''})",
                f"peak RSS {info['peak_rss_mb']} MB, {info['bytes_per_service']} B/Service "
                f"at the peak, {info['kept_bytes_per_service']} B/Service kept, "
                f"CPU {info['cpu_s']} s",
            )
        )
    if kube:
        requests = sum(kube.values())
        rows.append(
            (
                "kube requests (components)",
                f"{requests} = {requests / total:.1f} per Service: "
                + ", ".join(f"{k} {n}" for k, n in kube.items()),
            )
        )
    at_floor = data["bus_at_floor"]
    if at_floor:
        agents = traffic["node_agents"]
        families = ", ".join(f"{f} {n}" for f, n in traffic["by_family"].items() if n)
        rows += [
            (
                "bus traffic",
                f"{traffic['messages']} messages ({families}), "
                f"{traffic['bytes'] / 2**20:.1f} MB, {traffic['deliveries']} deliveries",
            ),
            (
                "node agents received (/connz)",
                f"{agents['deliveries']} messages (node feed, JetStream, replies), "
                f"{agents['bytes'] / 2**20:.1f} MB, over {agents['connections']} connections",
            ),
            (
                "per Service",
                f"{at_floor['messages_per_service']} messages, "
                f"{at_floor['deliveries_per_service']} deliveries, "
                f"{at_floor['bytes_per_service']} bytes",
            ),
            (
                "that traffic at the floor's CPU cost",
                f"{at_floor['cpu_s_at_floor']} CPU s = at least "
                f"{at_floor['seconds_at_floor_on_2_cores']} s on 2 cores; without the node "
                f"agents' share {at_floor['control_plane_cpu_s_at_floor']} CPU s = "
                f"{at_floor['control_plane_seconds_at_floor_on_2_cores']} s",
            ),
        ]
    rows += [
        ("emulated API servers (this process)", f"CPU {emulator_cpu_s:.2f} s"),
        ("nats-server", f"CPU {nats_cpu_s:.2f} s, peak RSS {data['nats_peak_rss_mb']} MB"),
        *floor.rows(),
    ]
    return BenchResult(scenario="burst", rows=tuple(rows), data=data)
