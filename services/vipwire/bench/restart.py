"""``restart``: restart ipam, the lbdriver and every node agent under live VIPs.

The all-in-one stack (one process: the ``sim`` appliance and the nodes'
dry-run appliers outlive the components' restarts, as an appliance and a
node's kernel do) gets ``clusters`` x ``services`` Services, ``nodes`` node
agents per cluster; once everything is converged, applied and quiet, each
phase restarts components (a fresh object built from settings, its state only
from the bus and the KV bucket) and waits until they are ready and quiet again:

1. ``ipam``; 2. ``lbdriver``; 3. one node agent; 4. every node agent at once.

Per phase: ``ready_s`` (from the restart until the restarted components report
ready: for the lbdriver that includes its start-up reconcile of every Service)
and the writes made from the restart until quiet: ``appliance_writes`` (API
write calls the appliance served), ``node_applies`` (node agent applies that
changed a node), ``kv_writes`` (ipam KV bucket), ``kube_writes`` (writes to the
emulated API servers) — the target for all of them is zero — and
``bus_messages`` (messages published on the stream, informational:
confirmations a restarted component owes its consumers).

Process start (imports, about half a second for ``vipwire run``) is not part
of ``ready_s``: the components restart inside this process, which also runs
every other component; whatever a restart makes the others do (the lbdriver's
confirmations reach every watcher and node agent) competes for the same core.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
import nats
from nats.js import JetStreamContext

from vipwire.allinone import Stack, StackSettings
from vipwire.allinone.clock import StatusClock
from vipwire.bench._common import load_average, pool_for
from vipwire.bench._result import BenchResult, convert_params
from vipwire.bench.floor import Floor, floor_data, measure_floor
from vipwire.contracts import IPAM_BUCKET, STREAM, ServiceRef
from vipwire.ipam import PoolSettings
from vipwire.kubeemu import Change
from vipwire.nodeagent import DryRunApplier

NAMESPACE = "default"


class RestartOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Parameters of the restart scenario (``--set name=value``)."""

    #: Emulated clusters.
    clusters: Annotated[int, msgspec.Meta(ge=1, le=20)] = 5
    #: Services per cluster (all live while the components restart).
    services: Annotated[int, msgspec.Meta(ge=1, le=2700)] = 2000
    #: Node agents (nodes) per cluster.
    nodes: Annotated[int, msgspec.Meta(ge=1, le=50)] = 3
    #: Seconds without any new message on the stream that count as quiet.
    quiet_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    #: Seconds to wait for the initial convergence and for each phase.
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0
    #: Operations per floor measurement.
    floor_samples: Annotated[int, msgspec.Meta(ge=10)] = 300

    def __post_init__(self) -> None:
        if self.clusters * self.nodes > 253:
            raise ValueError("clusters x nodes must be at most 253 (node addresses: one /24)")


class _Counters(msgspec.Struct, frozen=True, kw_only=True):
    appliance_writes: int
    node_applies: int
    kv_writes: int
    kube_writes: int
    bus_messages: int

    def minus(self, other: _Counters) -> dict[str, int]:
        mine, theirs = msgspec.structs.asdict(self), msgspec.structs.asdict(other)
        return {k: mine[k] - theirs[k] for k in mine}


async def run_restart(params: Mapping[str, str]) -> BenchResult:
    return await restart(convert_params(params, RestartOptions))


async def restart(options: RestartOptions) -> BenchResult:
    total = options.clusters * options.services
    settings = StackSettings(
        clusters=options.clusters,
        nodes=options.nodes,
        pools=(PoolSettings(name="bench", addresses=(pool_for(total),), appliance_group="dc1"),),
        dashboard_port=None,
        # The bench reads the bus with clients of its own, and compares with runs from
        # before identities existed: no permissions.
        secure_bus=False,
    )
    async with Stack(settings) as stack:
        await stack.wait_ready(timeout=120)
        floor = await measure_floor(stack.nats.url, samples=options.floor_samples)
        nc = await nats.connect(stack.nats.url, name="vipwire-bench-restart")
        js = nc.jetstream()
        try:
            setup_s = await _populate(stack, options)
            await _quiet(js, options.quiet_s, options.timeout_s)
            phases: dict[str, dict[str, Any]] = {}
            agents = [n for n in stack.components if n.startswith("nodeagent:")]
            kube = _KubeWrites(stack)
            try:
                for phase, names in (
                    ("ipam", ["ipam"]),
                    ("lbdriver", ["lbdriver"]),
                    ("nodeagent", agents[:1]),
                    ("nodeagents", agents),
                ):
                    phases[phase] = await _phase(stack, js, kube, names, options)
            finally:
                kube.close()
        finally:
            await nc.close()
    return _result(options, floor, setup_s, phases)


async def _populate(stack: Stack, options: RestartOptions) -> float:
    """Create every Service; wait until every status and every node holds every VIP."""
    clock = StatusClock(stack.emulators)
    await clock.start()
    started = time.perf_counter()
    try:
        for i in range(options.services):
            for cluster in stack.clusters:
                name = f"live-{i:05d}"
                clock.mark_created(ServiceRef(cluster, NAMESPACE, name))
                await stack.create_service(cluster, name, namespace=NAMESPACE, endpoints_on=[0])
            if i % 50 == 49:
                await asyncio.sleep(0)
        total = options.clusters * options.services
        if not await clock.wait_all(total, options.timeout_s):
            raise TimeoutError(f"only {len(clock.converged)} of {total} Services converged")
    finally:
        await clock.stop()

    def applied() -> bool:
        return all(
            isinstance(a, DryRunApplier) and len(a.state.addresses) >= options.services
            for a in stack.appliers.values()
        )

    async with asyncio.timeout(options.timeout_s):
        while not applied():  # noqa: ASYNC110 - the dry-run appliers have no hook to await
            await asyncio.sleep(0.1)
    return time.perf_counter() - started


class _KubeWrites:
    """Writes to Services and Events in every emulated cluster (not Leases: the watchers'
    leader election renews its Lease every few seconds, restart or not)."""

    def __init__(self, stack: Stack) -> None:
        self.count = 0
        self._unsubscribe = [e.store.subscribe(self._on_change) for e in stack.emulators.values()]

    def _on_change(self, change: Change) -> None:
        if change.resource.plural in ("services", "events", "endpointslices"):
            self.count += 1

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()


async def _counters(stack: Stack, js: JetStreamContext, kube: _KubeWrites) -> _Counters:
    bus = await js.stream_info(STREAM)
    kv = await js.stream_info(f"KV_{IPAM_BUCKET}")
    return _Counters(
        appliance_writes=stack.appliance.apply_calls,
        node_applies=sum(a.writes for a in stack.appliers.values() if isinstance(a, DryRunApplier)),
        kv_writes=kv.state.last_seq,
        kube_writes=kube.count,
        bus_messages=bus.state.last_seq,
    )


async def _quiet(js: JetStreamContext, quiet_s: float, timeout: float) -> float:
    """Wait until no message reached the stream for ``quiet_s``; returns when the last came."""
    last_seq, last_change = -1, time.perf_counter()
    async with asyncio.timeout(timeout):
        while True:
            seq = (await js.stream_info(STREAM)).state.last_seq
            now = time.perf_counter()
            if seq != last_seq:
                last_seq, last_change = seq, now
            elif now - last_change >= quiet_s:
                return last_change
            await asyncio.sleep(0.05)


async def _phase(
    stack: Stack,
    js: JetStreamContext,
    kube: _KubeWrites,
    names: list[str],
    options: RestartOptions,
) -> dict[str, Any]:
    before = await _counters(stack, js, kube)
    load = load_average()
    started = time.perf_counter()
    await asyncio.gather(*(stack.restart(name) for name in names))
    async with asyncio.timeout(options.timeout_s):
        while any(stack.components[n].readiness() is not None for n in names):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    ready_s = time.perf_counter() - started
    last_message = await _quiet(js, options.quiet_s, options.timeout_s)
    after = await _counters(stack, js, kube)
    writes = after.minus(before)
    return {
        "components": len(names),
        "ready_s": round(ready_s, 3),
        "quiet_after_s": round(max(ready_s, last_message - started), 3),
        **writes,
        "writes": sum(v for k, v in writes.items() if k != "bus_messages"),
        "load_average": load,
    }


def _result(
    options: RestartOptions, floor: Floor, setup_s: float, phases: dict[str, dict[str, Any]]
) -> BenchResult:
    total = options.clusters * options.services
    data: dict[str, Any] = {
        "scenario": "restart",
        "clusters": options.clusters,
        "services": total,
        "nodes_per_cluster": options.nodes,
        "live_vips": total,
        "setup_s": round(setup_s, 3),
        "phases": phases,
        "max_ready_s": max(p["ready_s"] for p in phases.values()),
        "total_writes": sum(p["writes"] for p in phases.values()),
        "floor": floor_data(floor),
    }
    rows: list[tuple[str, str]] = [
        (
            "live VIPs",
            f"{total} ({options.clusters} clusters x {options.services} Services, "
            f"{options.nodes} node agents each); set up in {setup_s:.1f} s",
        )
    ]
    for phase, p in phases.items():
        rows.append(
            (
                f"restart {phase} ({p['components']})",
                f"ready in {p['ready_s']:.3f} s; writes {p['writes']} (appliance "
                f"{p['appliance_writes']}, node {p['node_applies']}, KV {p['kv_writes']}, "
                f"kube {p['kube_writes']}); bus messages {p['bus_messages']}; "
                f"load {p['load_average']}",
            )
        )
    rows += floor.rows()
    return BenchResult(scenario="restart", rows=tuple(rows), data=data)
