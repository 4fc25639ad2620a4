"""``ipam``: allocate and free 100,000 addresses in a /16 with 3 ipam replicas racing.

What runs, honestly: ipam's **KV-claim layer**, not the bus. Each replica is
the allocator and claim cache of :class:`~vipwire.ipam.IpamService` as they
are (:class:`~vipwire.ipam.ClaimCache`: an :class:`~vipwire.ipam.Allocator`
fed by a watch of the ``addr.`` keys) on its own NATS connection, against one
real ``nats-server`` with the ``vipwire-ipam`` bucket as the services create
it (file storage). An allocation is what the service does for a new Service:
choose an address (next fit, no scan), ``create`` its claim (the
compare-and-set), and on a conflict re-read the address and choose again. A
release is a ``delete`` at the claim's revision. No ServiceSnapshot, no
Service record, no VipAssigned: those cost the same per Service whatever the
address space, and are measured by the other scenarios. The three replicas
share one Python process (one core); nats-server runs beside it.

Duplicates are counted where they would do harm: an address whose claim a
replica created while another replica held it (the KV would have had to
accept two ``create`` of one key). At the end the bucket and every replica's
cache must be empty.
"""

from __future__ import annotations

import asyncio
import collections
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from vipwire.bench._result import BenchResult, convert_params
from vipwire.bus import Bus, BusSettings, connect
from vipwire.contracts import IPAM_BUCKET
from vipwire.ipam import Allocation, Allocator, ClaimCache, IpamStore, PoolSettings, Request
from vipwire.ipam.io.bucket import Conflict
from vipwire.metrics import Registry, percentile
from vipwire.natsserver import NatsServer
from vipwire.telemetry import make_tracer_provider

MODE = "kv-claim-layer"


class IpamOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Parameters of the ipam scenario (``--set name=value``)."""

    #: Addresses allocated (and freed again) in all.
    allocations: Annotated[int, msgspec.Meta(ge=10, le=10_000_000)] = 100_000
    #: ipam replicas racing for the same pool.
    replicas: Annotated[int, msgspec.Meta(ge=1, le=16)] = 3
    #: The pool (RFC 2544 benchmark space, never routed).
    cidr: str = "198.19.0.0/16"
    #: Allocations in flight per replica.
    parallel: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 32
    #: Share of the pool held at once before the oldest allocations are freed.
    fill: Annotated[float, msgspec.Meta(gt=0, le=0.95)] = 0.5
    #: Seconds the whole run may take.
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0


class _Shared:
    """What the replicas' workers share (one process: plain fields, no locks needed)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.next = 0
        self.allocated = 0
        self.freed = 0
        self.conflicts = 0
        self.exhausted_waits = 0
        self.duplicates = 0
        self.holders: dict[str, int] = {}
        self.latencies: list[float] = []


class _Replica:
    def __init__(self, index: int, bus: Bus, cache: ClaimCache) -> None:
        self.index = index
        self.bus = bus
        self.cache = cache
        self.held: collections.deque[tuple[str, int]] = collections.deque()
        self.allocated = 0


async def run_ipam(params: Mapping[str, str]) -> BenchResult:
    options = convert_params(params, IpamOptions)
    return await ipam_bench(options)


async def ipam_bench(options: IpamOptions) -> BenchResult:
    """Run the scenario on a nats-server of its own; the result table and JSON."""
    pool = PoolSettings(name="bench", addresses=(options.cidr,))
    size = Allocator([pool]).usage()[0].size
    hold = max(1, math.floor(size * options.fill / options.replicas))
    with tempfile.TemporaryDirectory(prefix="vipwire-bench-ipam-") as tmp:
        server = NatsServer(Path(tmp) / "jetstream")
        await server.start()
        try:
            async with asyncio.timeout(options.timeout_s):
                data = await _race(server.url, pool, options, hold)
        finally:
            await server.stop()
    data.update(
        scenario="ipam",
        mode=MODE,
        pool=options.cidr,
        pool_size=size,
        replicas=options.replicas,
        held_per_replica=hold,
        parallel=options.parallel,
    )
    rows = [
        ("driven through", "ipam's KV-claim layer (allocator + claim cache + KV CAS), no bus"),
        ("replicas", f"{options.replicas} (one process), one nats-server, file storage"),
        ("pool", f"{options.cidr} ({size} addresses), up to {hold} held per replica"),
        ("allocations", f"{data['allocations']} in {data['allocate_s']:.1f} s"),
        ("allocations/s", f"{data['allocations_per_s']:.0f}"),
        (
            "frees",
            f"{data['frees']} (a delete at the claim's revision each), all done "
            f"{data['total_s']:.1f} s after the start",
        ),
        ("allocation latency", f"p50 {data['p50_ms']:.2f} ms, p99 {data['p99_ms']:.2f} ms"),
        ("CAS conflicts", f"{data['conflicts']} (lost a create to another replica; retried)"),
        ("duplicates", str(data["duplicates"])),
        ("left in the bucket", str(data["left_in_bucket"])),
    ]
    return BenchResult(scenario="ipam", rows=tuple(rows), data=data)


async def _race(url: str, pool: PoolSettings, options: IpamOptions, hold: int) -> dict[str, Any]:
    provider = make_tracer_provider("vipwire-bench-ipam")
    settings = BusSettings(servers=(url,), reconnect_wait_s=0.2)
    replicas: list[_Replica] = []
    try:
        for i in range(options.replicas):
            bus = await connect(
                settings,
                name=f"vipwire-bench-ipam-{i}",
                tracer=provider.get_tracer("vipwire"),
                metrics=Registry(),
                attempts=20,
            )
            bucket = await bus.kv(IPAM_BUCKET)
            cache = ClaimCache(IpamStore(bucket), Allocator([pool]))
            replicas.append(_Replica(i, bus, cache))
            await cache.start(60.0)
        shared = _Shared(options.allocations)
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _worker(replica, shared, hold, worker)
                for replica in replicas
                for worker in range(options.parallel)
            )
        )
        allocate_s = time.perf_counter() - started
        freeing = time.perf_counter()
        await asyncio.gather(*(_drain(replica, shared) for replica in replicas))
        drain_s = time.perf_counter() - freeing
        total_s = time.perf_counter() - started
        left = await _left(replicas[0])
        # Every replica's cache must come back to empty (the watch delivers the deletes).
        async with asyncio.timeout(30):
            while any(r.cache.allocator.claims() for r in replicas):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        latencies = sorted(shared.latencies)
        return {
            "allocations": shared.allocated,
            "frees": shared.freed,
            "allocate_s": round(allocate_s, 3),
            "total_s": round(total_s, 3),
            "allocations_per_s": round(shared.allocated / allocate_s, 1),
            "kv_writes_per_s": round(
                (shared.allocated + shared.freed + shared.conflicts) / total_s, 1
            ),
            "drain_s": round(drain_s, 3),
            "p50_ms": round(percentile(latencies, 50) * 1000, 3),
            "p99_ms": round(percentile(latencies, 99) * 1000, 3),
            "conflicts": shared.conflicts,
            "exhausted_waits": shared.exhausted_waits,
            "duplicates": shared.duplicates,
            "left_in_bucket": left,
            "per_replica": [r.allocated for r in replicas],
        }
    finally:
        for replica in replicas:
            await replica.cache.stop()
            await replica.bus.close()


async def _worker(replica: _Replica, shared: _Shared, hold: int, worker: int) -> None:
    """Allocate one address after another (each a new Service), freeing the replica's
    oldest once it holds ``hold``, until the total is reached."""
    store = replica.cache.store
    while shared.next < shared.total:
        n = shared.next
        shared.next += 1
        request = Request(cluster=f"c{n % 5}", namespace="bench", name=f"s{n}", uid=f"u{n}")
        begun = time.perf_counter()
        cache = replica.cache
        while True:
            result = cache.allocator.choose(request, skip=cache.claiming)
            if not isinstance(result, Allocation):
                shared.exhausted_waits += 1
                await asyncio.sleep(0.01)  # full: wait for a free, as a Service would
                continue
            (address,) = result.new
            claim = result.claims[address]
            # As the ledger does: the choice is being claimed, the next one starts after it.
            cache.claiming.add(address)
            cache.allocator.advance(result)
            try:
                revision = await store.create_claim(
                    address, claim, deleted_at=cache.deleted_at(address)
                )
            except Conflict:
                shared.conflicts += 1
                await cache.lost(address)
                continue
            finally:
                cache.claiming.discard(address)
            cache.learn(address, claim, revision)
            break
        shared.latencies.append(time.perf_counter() - begun)
        if address in shared.holders:
            shared.duplicates += 1
        shared.holders[address] = replica.index
        shared.allocated += 1
        replica.allocated += 1
        replica.held.append((address, revision))
        while len(replica.held) > hold:
            await _free(replica, shared, *replica.held.popleft())


async def _drain(replica: _Replica, shared: _Shared) -> None:
    while replica.held:
        batch = [replica.held.popleft() for _ in range(min(64, len(replica.held)))]
        await asyncio.gather(*(_free(replica, shared, a, r) for a, r in batch))


async def _free(replica: _Replica, shared: _Shared, address: str, revision: int) -> None:
    # Let go in the books first: a create by another replica between this and the
    # delete fails in the KV, so it can never be counted as a duplicate wrongly.
    shared.holders.pop(address, None)
    await replica.cache.store.delete_claim(address, revision)
    replica.cache.forget(address)
    shared.freed += 1


async def _left(replica: _Replica) -> int:
    return len(await (await replica.bus.kv(IPAM_BUCKET)).keys())
