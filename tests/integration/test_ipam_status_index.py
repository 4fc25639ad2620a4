"""ipam's index of status VIPs over a real nats-server: every Service snapshot on the
stream, read in order, and the fence that waits until a given snapshot is read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from vipwire.contracts import ServicePort, ServiceSnapshot
from vipwire.ipam.core.claims import Owner
from vipwire.ipam.io.status_index import StatusIndex
from vipwire.runtime import Runtime

RuntimeFactory = Callable[[str], Awaitable[Runtime]]


def snapshot(name: str, *status: str, deleting: bool = False) -> ServiceSnapshot:
    return ServiceSnapshot(
        cluster="east",
        namespace="shop",
        name=name,
        uid=f"uid-{name}",
        resource_version="1",
        ports=(ServicePort(port=80),),
        status_vips=status,
        deleting=deleting,
    )


async def test_the_index_reads_every_snapshot_before_and_after_it_starts(
    make_runtime: RuntimeFactory,
) -> None:
    """Snapshots already on the stream and those published later are reserved for their
    Service once caught_up() returns for their sequence; a deletion lets go."""
    peer = await make_runtime("peer")
    await peer.bus.publish(snapshot("db", "198.51.100.7"))
    index = StatusIndex(peer.bus)
    await index.start()
    try:
        seq = await peer.bus.publish(snapshot("web", "198.51.100.8"))
        assert await index.caught_up(seq, timeout_s=10.0)
        db, web = Owner("east", "shop", "db", "uid-db"), Owner("east", "shop", "web", "uid-web")
        assert index.vips.holders("198.51.100.7") == {db}
        assert index.vips.holders("198.51.100.8") == {web}
        seq = await peer.bus.publish(snapshot("db", deleting=True))
        assert await index.caught_up(seq, timeout_s=10.0)
        assert index.vips.holders("198.51.100.7") == frozenset()
    finally:
        await index.stop()


async def test_the_fence_gives_up_after_its_timeout(make_runtime: RuntimeFactory) -> None:
    """A sequence the stream never reaches: caught_up() says False, it does not hang."""
    peer = await make_runtime("peer")
    index = StatusIndex(peer.bus)
    await index.start()
    try:
        assert not await index.caught_up(10_000, timeout_s=0.2)
    finally:
        await index.stop()


async def test_the_index_retires_on_a_first_start_and_stays_after_a_lost_store(
    make_runtime: RuntimeFactory,
) -> None:
    """Nobody with VIPs in status after the wait: a first start, the index stops for good
    (and fences nothing); a Service with one: a lost store, the index keeps reading."""
    peer = await make_runtime("peer")
    first = StatusIndex(peer.bus)
    await first.start()
    seq = await peer.bus.publish(snapshot("web"))
    assert await first.caught_up(seq, timeout_s=10.0)
    await first.retire_when_unused(0.0)
    assert first.retired and await first.caught_up(10_000, timeout_s=0.0)

    lost = StatusIndex(peer.bus)
    await lost.start()
    try:
        seq = await peer.bus.publish(snapshot("db", "198.51.100.7"))
        assert await lost.caught_up(seq, timeout_s=10.0)
        await lost.retire_when_unused(0.0)
        assert not lost.retired
        seq = await peer.bus.publish(snapshot("api", "198.51.100.9"))
        assert await lost.caught_up(seq, timeout_s=10.0)
    finally:
        await lost.stop()
