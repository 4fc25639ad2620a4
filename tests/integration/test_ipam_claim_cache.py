"""ipam's claim cache starts on a KV bucket that has no leader for a moment."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from vipwire.ipam import Allocator
from vipwire.ipam.io.bucket import ClaimWatch, IpamStore, StoreError
from vipwire.ipam.io.claim_cache import ClaimCache


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
