"""ipam through a store outage: a KV bucket without a leader for a moment (a NATS server
lost, or a bucket just created) neither stops its start nor strands a Service."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import pytest

from vipwire.bus import Delivery, Retry
from vipwire.contracts import ServicePort, ServiceSnapshot, parse_subject, subject_for
from vipwire.ipam import Allocator
from vipwire.ipam.io.bucket import ClaimWatch, IpamStore, StoreError
from vipwire.ipam.io.claim_cache import ClaimCache
from vipwire.ipam.io.handling import Lifecycle


class _Watch:
    def __init__(self) -> None:
        self.revision = 0
        self._stopped = asyncio.Event()

    async def next(self) -> None:
        await self._stopped.wait()
        raise StopAsyncIteration

    async def stop(self) -> None:
        self._stopped.set()


class _FlakyStore:
    """Fails the first ``failures`` reads of each kind, as a bucket without a leader does."""

    def __init__(self, failures: int) -> None:
        self.failures = {"revision": failures, "watch": failures}
        self.calls = {"revision": 0, "watch": 0}

    def _maybe_fail(self, what: str) -> None:
        self.calls[what] += 1
        if self.calls[what] <= self.failures[what]:
            raise StoreError(f"reading the last message on $KV.vipwire-ipam.addr.> failed: {what}")

    async def last_revision(self, prefix: str) -> int:
        self._maybe_fail("revision")
        return 0

    async def watch_claims(self) -> ClaimWatch:
        self._maybe_fail("watch")
        return cast(ClaimWatch, _Watch())


def _cache(store: _FlakyStore) -> ClaimCache:
    return ClaimCache(cast(IpamStore, store), Allocator([]))


async def test_start_retries_a_bucket_without_a_leader_then_loads() -> None:
    """Two failed reads of the last revision and of the watch (a bucket just created by
    another replica, or one whose server died) are retried: the cache loads."""
    store = _FlakyStore(failures=2)
    cache = _cache(store)
    try:
        await cache.start(timeout=30.0)
        assert cache.loaded.is_set()
        assert store.calls == {"revision": 3, "watch": 3}
    finally:
        await cache.stop()


async def test_start_gives_up_with_the_store_error_after_its_timeout() -> None:
    """A bucket that never answers still fails the start, with the store's own error."""
    cache = _cache(_FlakyStore(failures=1_000_000))
    with pytest.raises(StoreError, match=r"\$KV\.vipwire-ipam"):
        await cache.start(timeout=0.5)
    await cache.stop()


class _StoreDown:
    """Every use of the claim cache finds the store unavailable."""

    def __getattr__(self, name: str) -> Any:
        raise StoreError("create addr.198_19_0_58 failed: NoStreamResponseError()")


async def test_a_snapshot_that_meets_an_unavailable_store_is_retried_later_each_time() -> None:
    """A Service snapshot handled while the KV has no leader is asked again after a wait
    that doubles per delivery, so its ten deliveries outlast a failover instead of
    getting it terminated as poison within five seconds (the Service then never got a
    VIP: seen in the chaos bench)."""
    unused: Any = None
    lifecycle = Lifecycle(
        cast(ClaimCache, _StoreDown()),
        unused,
        cast(Any, SimpleNamespace(expect_subject=True)),
        unused,
        unused,
        conflict_retries=3,
        retry_delay_s=0.5,
    )
    snap = msgspec.convert(
        {
            "cluster": "east",
            "namespace": "default",
            "name": "web",
            "uid": "u1",
            "resource_version": "1",
            "ports": [ServicePort(port=80)],
        },
        ServiceSnapshot,
        from_attributes=True,
    )
    delays = []
    for delivery in range(1, 10):
        verdict = await lifecycle.handle(
            Delivery(
                subject=parse_subject(subject_for(snap)),
                message=snap,
                seq=7,
                num_delivered=delivery,
                headers={},
            )
        )
        assert isinstance(verdict, Retry), verdict
        assert "NoStreamResponseError" in verdict.reason
        delays.append(verdict.delay)
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert sum(delays) > 60.0
