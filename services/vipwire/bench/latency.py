"""``latency``: create → status of one Service at a time, end to end and per hop.

``clusters`` emulated clusters of ``nodes`` nodes, every real service, the
``sim`` appliance with zero latency unless ``appliance_latency_ms`` is set.
``mode=processes`` (the default) runs each component in its own process as
it is deployed (see :mod:`vipwire.bench._fleet`); ``mode=stack`` runs the
all-in-one stack, every component in this one process (as ``vipwire up``).
``services`` LoadBalancer Services are created one after another, round robin
over the clusters; each only once the one before shows its VIP in
``status.loadBalancer.ingress``, so nothing queues behind anything and the
figure is the latency of the pipeline itself.

End to end: from just before the Service is created until the emulator's
watch stream shows the status with the VIP (``p50_ms``, ``p90_ms``,
``p99_ms``). Per hop, from the time the stream stored each message (the
server's clock, the same host's), ``hops`` in the JSON:

- ``watcher_in``: create → ServiceSnapshot stored (watch event, finalizer
  PATCH, publish);
- ``ipam``: ServiceSnapshot → VipAssigned (consume, KV reads and
  compare-and-sets, publish);
- ``lbdriver``: VipAssigned → LbProgrammed (consume, appliance write, publish);
- ``watcher_status``: LbProgrammed → status visible (consume, status PATCH,
  the watch event that shows it).

``cpu_ms_per_service``: CPU the components spent per Service (all their
processes; in ``stack`` mode this process, emulators included). The floor
(``floor`` scenario) is measured on the same server first, and each figure is
also given as a multiple of one bare bus hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from vipwire.allinone import Stack, StackSettings
from vipwire.allinone.clock import StatusClock
from vipwire.bench._common import (
    HOPS,
    hop_times,
    kube_patcher,
    load_average,
    pool_for,
)
from vipwire.bench._fleet import Fleet, FleetSettings, endpoint_slice, proc_status, service_body
from vipwire.bench._result import BenchResult, convert_params
from vipwire.bench.floor import Floor, Stat, floor_data, measure_floor, ratio
from vipwire.contracts import ServiceRef
from vipwire.ipam import PoolSettings
from vipwire.kubeemu import KubeEmulator

NAMESPACE = "default"


class LatencyOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Parameters of the latency scenario (``--set name=value``)."""

    #: Services created, one after another.
    services: Annotated[int, msgspec.Meta(ge=1, le=20_000)] = 200
    #: Emulated clusters (Services go round robin over them).
    clusters: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    #: Nodes per cluster.
    nodes: Annotated[int, msgspec.Meta(ge=1, le=50)] = 3
    #: Milliseconds every simulated appliance API call takes.
    appliance_latency_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    #: Milliseconds to pause between one Service converging and the next created.
    gap_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    #: Operations per floor measurement.
    floor_samples: Annotated[int, msgspec.Meta(ge=10)] = 500
    #: Seconds one Service may take before the run gives up.
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    #: ``processes``: every component in its own process, as deployed (see ``burst``);
    #: ``stack``: the all-in-one stack, every component in this one process.
    mode: Literal["processes", "stack"] = "stack"


async def run_latency(params: Mapping[str, str]) -> BenchResult:
    return await latency(convert_params(params, LatencyOptions))


class _Setup(msgspec.Struct, kw_only=True):
    """What a run needs from the system under test, whichever shape it has."""

    nats_url: str
    clusters: list[str]
    emulators: dict[str, KubeEmulator]
    kubeconfig: Path  # of the first cluster
    create: Callable[[str, str, int], Awaitable[object]]
    #: CPU seconds the product has used so far (all of it: every process).
    cpu: Callable[[], float]


@contextlib.asynccontextmanager
async def _system(options: LatencyOptions) -> AsyncIterator[_Setup]:
    pool = pool_for(options.services)
    if options.mode == "stack":
        settings = StackSettings(
            clusters=options.clusters,
            nodes=options.nodes,
            pools=(PoolSettings(name="bench", addresses=(pool,), appliance_group="dc1"),),
            appliance_latency_ms=options.appliance_latency_ms,
            dashboard_port=None,
            # The bench reads the bus with clients of its own, and compares with runs
            # from before identities existed: no permissions.
            secure_bus=False,
        )
        async with Stack(settings) as stack:
            await stack.wait_ready(timeout=60)

            async def create(cluster: str, name: str, index: int) -> object:
                return await stack.create_service(cluster, name, namespace=NAMESPACE)

            yield _Setup(
                nats_url=stack.nats.url,
                clusters=stack.clusters,
                emulators=stack.emulators,
                kubeconfig=stack.state_dir / f"kubeconfig-{stack.clusters[0]}",
                create=create,
                # Everything runs here, the emulated API servers included.
                cpu=time.process_time,
            )
        return
    fleet_settings = FleetSettings(
        clusters=options.clusters,
        nodes=options.nodes,
        pools=({"name": "bench", "addresses": [pool], "appliance_group": "dc1"},),
        appliance_latency_ms=options.appliance_latency_ms,
    )
    async with Fleet(fleet_settings) as fleet:
        await fleet.wait_ready(timeout=120)

        async def create_in_fleet(cluster: str, name: str, index: int) -> object:
            emulator = fleet.emulators[cluster]
            nodes = fleet.node_names(cluster)
            await emulator.create(service_body(name, NAMESPACE))
            # As Stack.create_service: one ready pod on every node.
            return await emulator.create(endpoint_slice(name, nodes, 0, len(nodes), NAMESPACE))

        def fleet_cpu() -> float:
            return sum(proc_status(p.pid).get("cpu_cs", 0) for p in fleet.processes) / 100

        yield _Setup(
            nats_url=fleet.nats.url,
            clusters=fleet.clusters,
            emulators=fleet.emulators,
            kubeconfig=fleet.state_dir / f"kubeconfig-{fleet.clusters[0]}",
            create=create_in_fleet,
            cpu=fleet_cpu,
        )


async def latency(options: LatencyOptions) -> BenchResult:
    async with _system(options) as system:
        first = system.clusters[0]
        patch, client = await kube_patcher(system.emulators[first], system.kubeconfig, first)
        try:
            floor = await measure_floor(
                system.nats_url, samples=options.floor_samples, kube_patch=patch
            )
        finally:
            await client.close()
        await asyncio.sleep(0.5)  # the floor's traffic settles
        clock = StatusClock(system.emulators)
        await clock.start()
        load_before = load_average()
        try:
            started, cpu = time.perf_counter(), system.cpu()
            for i in range(options.services):
                cluster = system.clusters[i % len(system.clusters)]
                key = ServiceRef(cluster, NAMESPACE, f"lat-{i:05d}")
                clock.mark_created(key)
                await system.create(cluster, key[2], i)
                await clock.wait_for(key, options.timeout_s)
                if options.gap_ms:
                    await asyncio.sleep(options.gap_ms / 1000)
            elapsed = time.perf_counter() - started
            cpu = system.cpu() - cpu
            load = (load_before, load_average())
        finally:
            await clock.stop()
        hops = await hop_times(system.nats_url, clock)
    return _result(options, clock, hops, floor, elapsed=elapsed, cpu=cpu, load=load)


def _result(
    options: LatencyOptions,
    clock: StatusClock,
    hops: dict[str, list[float]],
    floor: Floor,
    *,
    elapsed: float,
    cpu: float,
    load: tuple[float, float],
) -> BenchResult:
    latencies = [s for k in clock.created if (s := clock.latency_s(k)) is not None]
    total = Stat.of(latencies)
    hop_stats = {hop: Stat.of(values) for hop, values in hops.items() if values}
    hop_floor = floor.hop.p50_ms
    # The least the path could cost: three bus hops, ipam's three KV writes (claim,
    # record; read first) and the watcher's two API writes (finalizer, status).
    kube = floor.kube_patch.p50_ms if floor.kube_patch is not None else 0.0
    path_floor = 3 * hop_floor + 3 * floor.kv_cas.p50_ms + 2 * kube
    data: dict[str, Any] = {
        "scenario": "latency",
        "services": options.services,
        "clusters": options.clusters,
        "nodes": options.nodes,
        "converged": len(latencies),
        "appliance_latency_ms": options.appliance_latency_ms,
        "p50_ms": total.p50_ms,
        "p90_ms": total.p90_ms,
        "p99_ms": total.p99_ms,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3) if latencies else None,
        "max_ms": round(max(latencies) * 1000, 3) if latencies else None,
        "elapsed_s": round(elapsed, 3),
        "mode": options.mode,
        "load_average": list(load),
        # CPU the components used per Service (stack: this process, emulators included).
        "cpu_ms_per_service": round(cpu * 1000 / max(1, options.services), 3),
        "hops": {hop: msgspec.to_builtins(stat) for hop, stat in hop_stats.items()},
        "floor": floor_data(floor),
        "path_floor_ms": round(path_floor, 3),
        "p50_over_hop_floor": ratio(total.p50_ms, hop_floor),
        "p50_over_path_floor": ratio(total.p50_ms, path_floor),
    }
    rows: list[tuple[str, str]] = [
        (
            "Services",
            f"{options.services} one after another, {options.clusters} clusters x "
            f"{options.nodes} nodes, appliance latency {options.appliance_latency_ms:g} ms, "
            f"{'all in one process' if options.mode == 'stack' else 'a process per component'}",
        ),
        ("converged", f"{len(latencies)} of {options.services} in {elapsed:.1f} s"),
        ("machine load (1 min, start/end)", f"{load[0]} / {load[1]}"),
        ("components' CPU", f"{data['cpu_ms_per_service']} ms per Service"),
        ("create -> status", f"{total.text()} (x{ratio(total.p50_ms, hop_floor)} one hop)"),
    ]
    for hop in HOPS:
        stat = hop_stats.get(hop)
        if stat is not None:
            rows.append(
                (f"  hop {hop}", f"{stat.text()} (x{ratio(stat.p50_ms, hop_floor)} one hop)")
            )
    rows += floor.rows()
    rows.append(
        (
            "path floor",
            f"{path_floor:.2f} ms (3 hops + 3 KV CAS + 2 kube PATCH); "
            f"p50 is x{ratio(total.p50_ms, path_floor)}",
        )
    )
    return BenchResult(scenario="latency", rows=tuple(rows), data=data)
