"""``churn``: rolling updates of many Services; how many appliance writes do they cost?

The all-in-one stack (NATS, one emulated cluster, every real service, the
``sim`` appliance with zero latency) gets ``services`` LoadBalancer Services
with ``externalTrafficPolicy: Local`` and ``endpoints`` ready pods each, one
per node on nodes ``0 … endpoints-1`` of a cluster with one spare node. Once
all are programmed, every Service is rolled out (``parallel`` at a time), one
pod at a time: step ``i`` replaces the pod on node ``i`` by one on the node
the previous step freed (the spare node for the first step), as a scheduler
spreading pods would. Each step is one EndpointSlice update, so one endpoint
event.

Local makes every step meaningful: the appliance's members are exactly the
nodes with a ready pod, and each step takes one node out and puts another
back, so a naive driver would write once per event. (With Cluster, endpoint
events change no member and cost no write anyway.)

Measured: ``appliance_writes`` (write requests the appliance served during
the rollouts), ``naive_writes`` (one per endpoint event, i.e. EndpointSlice
update; ``endpoints_snapshots`` says how many of them the watcher published
separately), ``writes_per_service_per_window`` (the most writes one Service
got within any one coalescing window: the guarantee is 1) and the time from
the last event until the appliance holds the final members everywhere.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import msgspec
import nats

from vipwire.allinone import Stack, StackSettings
from vipwire.bench._result import BenchResult, convert_params
from vipwire.bus import fence
from vipwire.lbdriver import LbdriverService, Operation, SimAppliance
from vipwire.lbdriver.core.virtual_servers import (
    CreateVirtualServer,
    UpdateMembers,
    UpdateVirtualServer,
)

log = logging.getLogger("vipwire.bench")

NAMESPACE = "default"


class ChurnOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Parameters of the churn scenario (``--set name=value``)."""

    #: LoadBalancer Services rolled out at once.
    services: int = 100
    #: Ready pods per Service, replaced one at a time (the cluster has one node more).
    endpoints: int = 10
    #: Services rolled out at the same time (the others wait for a free slot).
    parallel: int = 10
    #: Milliseconds between two steps of one Service's rollout.
    step_ms: float = 10.0
    #: Seconds to wait for each convergence before giving up.
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not 1 <= self.services <= 200:
            raise ValueError("services must be 1..200 (the VIP pool is one /24)")
        if not 1 <= self.endpoints <= 60:
            raise ValueError("endpoints must be 1..60 (nodes come from one /24)")
        if self.parallel < 1:
            raise ValueError("parallel must be at least 1")
        if self.step_ms < 0 or self.timeout_s <= 0:
            raise ValueError("step_ms must be >= 0 and timeout_s > 0")


def rollout(endpoints: int) -> list[list[int]]:
    """The node indices holding a pod after each step of a rollout over ``endpoints + 1`` nodes.

    Step ``i`` replaces the pod on node ``i`` by one on the node freed by the
    step before (the spare node ``endpoints`` for the first): every step
    changes the set of nodes with a pod.
    """
    on = set(range(endpoints))
    steps = []
    for i in range(endpoints):
        on.discard(i)
        on.add(i - 1 if i > 0 else endpoints)
        steps.append(sorted(on))
    return steps


class RecordingSim(SimAppliance):
    """The sim appliance, also noting when each Service's objects were written."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        #: (monotonic time the write completed, owner tags it touched)
        self.log: list[tuple[float, frozenset[str]]] = []

    async def apply(self, partition: str, ops: Sequence[Operation]) -> None:
        before = self.virtual_servers(partition)
        await super().apply(partition, ops)
        owners = set()
        for op in ops:
            match op:
                case CreateVirtualServer(server=server) | UpdateVirtualServer(server=server):
                    owners.add(server.owner)
                case UpdateMembers(name=name):
                    owners.add(before[name].owner)
                case _:
                    if op.name in before:
                        owners.add(before[op.name].owner)
        self.log.append((time.monotonic(), frozenset(owners)))


def most_in_window(times: Sequence[float], window: float) -> int:
    """The largest number of ``times`` (sorted) inside any half-open interval of ``window``."""
    best = 0
    for i, start in enumerate(times):
        best = max(best, bisect.bisect_left(times, start + window, lo=i) - i)
    return best


async def run_churn(params: Mapping[str, str]) -> BenchResult:
    return await churn(convert_params(params, ChurnOptions))


async def churn(options: ChurnOptions) -> BenchResult:
    # The bench reads the bus with a client of its own: no permissions.
    stack = Stack(StackSettings(clusters=1, nodes=options.endpoints + 1, secure_bus=False))
    sim = RecordingSim("sim-1")
    stack.appliance = sim  # before start: the lbdriver is built around it
    async with stack:
        await stack.wait_ready(timeout=options.timeout_s)
        return await _run(stack, sim, options)


async def _run(stack: Stack, sim: RecordingSim, options: ChurnOptions) -> BenchResult:
    cluster = stack.clusters[0]
    nodes = stack.node_names(cluster)
    n, e = options.services, options.endpoints
    names = [f"svc-{i:03d}" for i in range(n)]
    lbdriver = cast(LbdriverService, stack.components["lbdriver"].service)
    window = lbdriver.settings.coalesce_window_ms / 1000

    def members_everywhere(want: list[str]) -> bool:
        by_owner: dict[str, set[str]] = {}
        for server in sim.virtual_servers(cluster).values():
            by_owner.setdefault(server.owner, set()).update(m.node for m in server.members)
        return all(by_owner.get(f"{cluster}/{NAMESPACE}/{s}") == set(want) for s in names)

    async def converge(want: list[str]) -> float:
        started = time.perf_counter()
        async with asyncio.timeout(options.timeout_s):
            while not members_everywhere(want):  # noqa: ASYNC110 - the sim has no hook to await
                await asyncio.sleep(0.002)
        return time.perf_counter() - started

    created = time.perf_counter()
    for name in names:
        await stack.create_service(
            cluster,
            name,
            namespace=NAMESPACE,
            external_traffic_policy="Local",
            endpoints_on=range(e),
        )
    await converge(nodes[:e])
    initial_s = time.perf_counter() - created

    events = 0

    async def count(_: Any) -> None:
        nonlocal events
        events += 1

    steps = rollout(e)
    slots = asyncio.Semaphore(options.parallel)

    async def roll(name: str) -> None:
        async with slots:
            for on in steps:
                await stack.set_endpoints(cluster, name, on, namespace=NAMESPACE)
                if options.step_ms:
                    await asyncio.sleep(options.step_ms / 1000)

    nc = await nats.connect(stack.nats.url, name="vipwire-bench")
    try:
        await nc.subscribe(f"vipwire.{cluster}.endpoints.{NAMESPACE}.>", cb=count)
        await fence(nc)
        calls, ops, mark = sim.apply_calls, sim.writes, len(sim.log)
        started = time.perf_counter()
        await asyncio.gather(*(roll(name) for name in names))
        last_event = time.perf_counter()
        converge_s = await converge([nodes[i] for i in steps[-1]])
        # Every snapshot the watcher published is counted (it may merge quick slice
        # changes), and a straggling write would show, before the books are closed.
        async with asyncio.timeout(options.timeout_s):
            seen = -1
            while seen != events:
                seen = events
                await asyncio.sleep(max(window, 0.5))
    finally:
        await nc.close()

    appliance_writes = sim.apply_calls - calls
    per_service: dict[str, list[float]] = {f"{cluster}/{NAMESPACE}/{s}": [] for s in names}
    for at, owners in sim.log[mark:]:
        for owner in owners:
            if owner in per_service:
                per_service[owner].append(at)
    counts = [len(times) for times in per_service.values()]
    per_window = max((most_in_window(sorted(t), window) for t in per_service.values()), default=0)
    data: dict[str, Any] = {
        "scenario": "churn",
        "services": n,
        "endpoints_per_service": e,
        "parallel_rollouts": options.parallel,
        "endpoint_events": n * e,
        "endpoints_snapshots": events,
        "naive_writes": n * e,
        "appliance_writes": appliance_writes,
        "appliance_ops": sim.writes - ops,
        "writes_per_service_per_window": per_window,
        "mean_writes_per_service": round(sum(counts) / len(counts), 2),
        "max_writes_per_service": max(counts),
        "coalesce_window_ms": lbdriver.settings.coalesce_window_ms,
        "rollout_ms": round((last_event - started) * 1000, 1),
        "converge_after_last_event_ms": round(converge_s * 1000, 1),
        "initial_converge_ms": round(initial_s * 1000, 1),
    }
    saved = 1 - appliance_writes / (n * e)
    rows = (
        ("services x endpoints", f"{n} x {e} (externalTrafficPolicy Local)"),
        ("rollouts at once", f"{options.parallel}, {options.step_ms:g} ms between steps"),
        ("endpoint events (slice updates)", str(n * e)),
        ("endpoints snapshots published", str(events)),
        ("naive writes (one per event)", str(n * e)),
        ("appliance writes", f"{appliance_writes} ({saved:.0%} fewer)"),
        ("virtual server operations", str(data["appliance_ops"])),
        ("writes per Service", f"mean {data['mean_writes_per_service']}, max {max(counts)}"),
        ("writes per Service per window", f"{per_window} (window {window * 1000:g} ms)"),
        ("rollout took", f"{data['rollout_ms']} ms"),
        ("converged after last event", f"{data['converge_after_last_event_ms']} ms"),
        ("initial convergence", f"{data['initial_converge_ms']} ms for {n} Services"),
    )
    return BenchResult(scenario="churn", rows=rows, data=data)
