"""The allocator as a cache of the ``addr.`` keys: the KV-claim layer of ipam.

A replica never trusts its memory for correctness: every claim it learns of
(the start-up load, its own writes, other replicas' writes seen by a KV
watch) goes into its allocator, and every decision is then made durable with
a compare-and-set, a lost one meaning "re-read that address and decide
again". The allocator reserves nothing when it chooses; the addresses this
replica is creating claims for right now (:attr:`ClaimCache.claiming`) are
passed over by its next choices, so that concurrent Services of one replica
do not race each other for one address. :class:`ClaimCache` is that loop's
state, shared by the ipam service and by the ipam benchmark (which drives it
without the bus).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from vipwire.aio import cancel_and_wait
from vipwire.ipam.core.allocator import Allocator
from vipwire.ipam.core.claims import Claim
from vipwire.ipam.io.bucket import ClaimEvent, ClaimWatch, IpamStore, StoreError

log = logging.getLogger("vipwire.ipam.cache")

T = TypeVar("T")

#: ``(address, claim before, claim after)``; None: no claim.
ChangeHook = Callable[[str, Claim | None, Claim | None], None]


class ClaimCache:
    """An :class:`Allocator` kept in step with the KV bucket."""

    def __init__(
        self,
        store: IpamStore,
        allocator: Allocator,
        *,
        on_change: ChangeHook | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        #: Replaced (never mutated into another config) on reload.
        self.allocator = allocator
        self.loaded = asyncio.Event()
        self._on_change = on_change
        self._rng = rng or random.Random()
        # Last KV revision seen per address: a watch event older than what this
        # replica already knows (from its own write) must not undo it.
        self._revisions: dict[str, int] = {}
        # Revision of the delete marker on keys that are deleted now.
        self._deleted: dict[str, int] = {}
        self._watch: ClaimWatch | None = None
        self._task: asyncio.Task[None] | None = None
        self._threshold: int | None = None
        #: Addresses whose claims this replica is creating now (never chosen again meanwhile).
        self.claiming: set[str] = set()

    async def start(self, timeout: float) -> None:
        """Load every claim (a restart must never hand out a held address), then follow."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Read first: every claim that exists now has a revision up to this one.
        self._threshold = await self._retrying(deadline, lambda: self.store.last_revision("addr."))
        if self._threshold == 0:
            self.loaded.set()
        self._watch = await self._retrying(deadline, self.store.watch_claims)
        self._task = asyncio.create_task(self._follow(self._watch), name="ipam-claims")
        loaded = asyncio.create_task(self.loaded.wait())
        await asyncio.wait(
            {self._task, loaded}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not self.loaded.is_set():
            loaded.cancel()
            await asyncio.gather(loaded, return_exceptions=True)
            if self._task.done() and self._task.exception() is not None:
                raise StoreError("the claim watch failed") from self._task.exception()
            raise StoreError(f"the claims did not load within {timeout:.0f}s")

    async def _retrying(self, deadline: float, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, tried again on a StoreError until ``deadline`` (loop time): a bucket
        just created, or one whose NATS server was lost, has no leader for a moment."""
        loop = asyncio.get_running_loop()
        delay = 0.2
        while True:
            try:
                return await call()
            except StoreError as exc:
                if loop.time() + delay > deadline:
                    raise
                log.warning(
                    "%s; trying again in %.1f s (the KV bucket may have no leader yet)", exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def stop(self) -> None:
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def _follow(self, watch: ClaimWatch) -> None:
        marker = False
        while True:
            try:
                event = await watch.next()
            except StopAsyncIteration:
                return
            if event is None:
                marker = True
            else:
                try:
                    self.apply(event)
                except Exception:  # a bad event must not end the cache: the KV stays the judge
                    log.exception("could not apply claim event %s", event)
            if not self.loaded.is_set():
                # nats-py's end-of-initial-values marker may come before the values;
                # the revision read before watching cannot be wrong.
                threshold = self._threshold
                if (threshold is None and marker) or (
                    threshold is not None and watch.revision >= threshold
                ):
                    self.loaded.set()

    def apply(self, event: ClaimEvent) -> None:
        """A change seen by the watch (any replica's)."""
        if event.revision <= self._revisions.get(event.address, 0):
            return
        self._revisions[event.address] = event.revision
        if event.claim is None:
            self._deleted[event.address] = event.revision
        else:
            self._deleted.pop(event.address, None)
        self._set(event.address, event.claim)

    def deleted_at(self, address: str) -> int | None:
        """The revision of the delete marker on ``address``'s key, if that is the last
        thing seen of it (see :meth:`IpamStore.create_claim`)."""
        return self._deleted.get(address)

    def learn(self, address: str, claim: Claim, revision: int) -> None:
        """Our own write landed: remember it (a watch event may already have)."""
        if revision < self._revisions.get(address, 0):
            return  # the watch already brought something newer
        self._revisions[address] = revision
        self._deleted.pop(address, None)
        self._set(address, claim)

    def forget(self, address: str) -> None:
        """Our own delete landed (its revision is unknown: the watch brings it)."""
        self._deleted.pop(address, None)
        self._set(address, None)

    async def lost(self, address: str) -> tuple[Claim, int] | None:
        """Our ``create`` of ``address`` lost to another replica: learn its claim, and
        choose the next new address elsewhere in the pool (the winner is about to take
        the ones after it)."""
        self.allocator.scatter(address, self._rng.random())
        return await self.refresh(address)

    async def refresh(self, address: str) -> tuple[Claim, int] | None:
        """The KV disagreed with the cache: read the truth about one address."""
        got = await self.store.get_claim(address)
        if got is None:
            self._set(address, None)
        else:
            self.learn(address, *got)
        return got

    def _set(self, address: str, claim: Claim | None) -> None:
        before = self.allocator.claim_of(address)
        if claim is None:
            if before is None:
                return
            self.allocator.release(address)
        else:
            if before == claim:
                return
            self.allocator.claim(address, claim)
        if self._on_change is not None:
            self._on_change(address, before, claim)
