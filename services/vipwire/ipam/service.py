"""The ipam shell: KV bucket in, the pure core in the middle, VIP messages out.

Only wiring. Correctness never rests on this replica's memory: the allocator
is a cache of the ``addr.`` keys (:class:`~vipwire.ipam.io.claim_cache.ClaimCache`:
every claim before the first message is handled, then every change made by
any replica); each message is decided by :func:`vipwire.ipam.core.decide.decide`
and made durable by the ledger (:mod:`vipwire.ipam.io.ledger`), a lost
compare-and-set meaning "re-read and decide again" (:mod:`vipwire.ipam.io.handling`).

Sharing: a Service that leaves a shared VIP withdraws only its own virtual
servers (the lbdriver names and tags them per Service), so its VipReleasing
and LbRemoved are its own; on LbRemoved it leaves the claim, and the last one
to leave deletes it.

Around it: the waiting queue (:mod:`~vipwire.ipam.io.waiting`), config reload
and stale flags (:mod:`~vipwire.ipam.io.reload`), the delete-marker sweep
(:mod:`~vipwire.ipam.io.markers`), the operator control server
(:mod:`~vipwire.ipam.io.control`) and the metrics (:mod:`~vipwire.ipam.io.metrics`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Collection, Coroutine
from typing import Any, Final, Protocol

from vipwire.aio import cancel_and_wait
from vipwire.bus import DONE, BusError, ConsumerSpec, Delivery, Verdict
from vipwire.contracts import (
    ANONYMOUS,
    IPAM_BUCKET,
    IpamStatus,
    ReleaseReply,
    ReloadReply,
    ShowReply,
    family_filter,
)
from vipwire.ipam.core.allocator import Allocator
from vipwire.ipam.core.claims import Claim, port_keys, request_of
from vipwire.ipam.core.views import ipam_status
from vipwire.ipam.io.bucket import IpamStore, StoreError
from vipwire.ipam.io.claim_cache import ClaimCache
from vipwire.ipam.io.control import OperatorControl
from vipwire.ipam.io.gate import ClusterGate
from vipwire.ipam.io.handling import Lifecycle
from vipwire.ipam.io.ledger import Ledger
from vipwire.ipam.io.markers import sweep_ended, sweep_markers
from vipwire.ipam.io.metrics import IpamMetrics
from vipwire.ipam.io.pools import PoolsPublisher
from vipwire.ipam.io.publishing import Publisher
from vipwire.ipam.io.reload import Reloader
from vipwire.ipam.io.status_index import StatusIndex
from vipwire.ipam.io.waiting import WaitingQueue, WaitingRetrier
from vipwire.ipam.settings import IpamSettings, check_pool_profiles
from vipwire.runtime import Runtime

log = logging.getLogger("vipwire.ipam")

DURABLE: Final = "ipam"
#: The one durable with both filters of versions before per-identity permissions.
LEGACY_DURABLE: Final = "ipam"
#: ``status``: StatusWritten, which moves a move on (the new VIPs are in status).
FILTERS: Final = (family_filter("service"), family_filter("lb"), family_filter("status"))
#: Seconds loading every claim at start may take before start fails.
LOAD_TIMEOUT: Final = 60.0


class _Consumer(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class IpamService:
    """Assigns VIPs to Services from pools, shared safely by replicas and clusters.

    ``config_path``: the file the settings came from; pools are reloaded from it
    when it changes (``reload_interval_s``) or on ``vipwire ipam reload``.
    """

    def __init__(
        self,
        settings: IpamSettings,
        runtime: Runtime,
        *,
        config_path: str | None = None,
        profiles: Collection[str] = (),
    ) -> None:
        check_pool_profiles(settings.pools, profiles)
        self._settings = settings
        self.runtime = runtime
        self.config_path = config_path
        self.instance = f"{runtime.name}-{uuid.uuid4().hex[:8]}"
        #: The appliance profiles configured (names only: the lbdriver programs them).
        self.profiles = tuple(sorted(profiles))
        self._initial = Allocator(settings.pools, profiles=self.profiles)
        self._cache: ClaimCache | None = None
        self.waiting = WaitingQueue()
        self.metrics = IpamMetrics(
            runtime.metrics, lambda: self.allocator, lambda: len(self.waiting)
        )
        self.gate = ClusterGate(lambda: self.settings, self.metrics)
        self.lifecycle: Lifecycle | None = None
        self.status_index: StatusIndex | None = None
        self.consumer: _Consumer | None = None
        self._control: OperatorControl | None = None
        self._reloader: Reloader | None = None
        self.pools: PoolsPublisher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    @property
    def settings(self) -> IpamSettings:
        """As started, with the pools as last reloaded."""
        return self._reloader.settings if self._reloader is not None else self._settings

    @property
    def allocator(self) -> Allocator:
        return self._cache.allocator if self._cache is not None else self._initial

    @property
    def cache(self) -> ClaimCache:
        if self._cache is None:
            raise RuntimeError("IpamService is not started")
        return self._cache

    @property
    def store(self) -> IpamStore:
        return self.cache.store

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load every claim, then consume: a restart must never hand out an owned address."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        bus = self.runtime.bus
        s = self.settings
        try:
            store = IpamStore(await bus.kv(IPAM_BUCKET))
        except BusError as exc:
            raise StoreError(f"cannot open KV bucket {IPAM_BUCKET}: {exc}") from exc
        cache = self._cache = ClaimCache(store, self._initial, on_change=self._on_claim_change)
        publisher = Publisher(bus)
        ledger = Ledger(
            cache,
            self.metrics,
            conflict_retries=s.conflict_retries,
            on_freed=self.waiting.freed.set,
        )
        lifecycle = self.lifecycle = Lifecycle(
            cache,
            ledger,
            publisher,
            self.waiting,
            self.metrics,
            conflict_retries=s.conflict_retries,
            retry_delay_s=s.retry_delay_s,
            status_wait_s=s.status_wait_s,
            move_on_change=s.move_on_change,
        )
        retrier = WaitingRetrier(
            self.waiting,
            publisher,
            self.runtime.tracer,
            lambda: self.allocator,
            lifecycle.retry_waiting,
            retry_delay_s=s.retry_delay_s,
        )

        pools = self.pools = PoolsPublisher(bus, lambda: self.settings, lambda: self.allocator)

        async def after_reload() -> None:
            await retrier.resume()
            self.waiting.freed.set()
            pools.changed()

        reloader = self._reloader = Reloader(
            s,
            cache,
            lifecycle.locks,
            self.metrics,
            instance=self.instance,
            config_path=self.config_path,
            after_reload=after_reload,
        )
        self._control = OperatorControl(
            cache,
            lifecycle,
            reloader,
            self.waiting,
            instance=self.instance,
            ready=lambda: self.readiness() is None,
            tracer_span=self.runtime.tracer.start_as_current_span,
        )
        await cache.start(LOAD_TIMEOUT)
        log.info("loaded %d address claims", len(self.allocator.claims()))
        if not self.allocator.claims():
            # No claim at all: a first start, or a lost store. Every Service's status VIPs
            # are then reserved for it (a store that was not lost holds claims for all of
            # them, and this index is not needed), and Services with none wait a while
            # for every watcher to publish (see Lifecycle.restoring).
            lifecycle.status = self.status_index = StatusIndex(bus, s.serves)
            if s.restore_grace_s > 0:
                lifecycle.restore_until = asyncio.get_running_loop().time() + s.restore_grace_s
        self.metrics.changed()
        await retrier.resume()
        spec = ConsumerSpec(
            filters=FILTERS,
            durable=DURABLE,
            deliver="all",
            concurrency=s.concurrency,
            batch=s.prefetch,
        )
        # Every Service's status VIPs, reserved for it: read before new addresses are
        # chosen (see vipwire.ipam.core.status_vips).
        if self.status_index is not None:
            await self.status_index.start()
            after = max(s.restore_grace_s, s.status_wait_s)
            self._spawn(self.status_index.retire_when_unused(after), "ipam-status-index")
        # One durable per family (ipam-service, ipam-lb): the server checks a consumer's
        # filter only when it has one. The durable of both, from before, goes.
        await bus.forget_durable(LEGACY_DURABLE)
        self.consumer = bus.consumer_group(spec, self.handle)
        await self.consumer.start()
        await self._control.start(bus)
        self._spawn(retrier.run(), "ipam-waiting")
        self._spawn(pools.run(), "ipam-pools")
        # Pools may have changed while nobody ran: flag (or unflag) stale records.
        self._spawn(reloader.reflag_quietly(), "ipam-reflag")
        if self.config_path is not None and s.reload_interval_s > 0:
            self._spawn(reloader.watch(), "ipam-config")
        if s.marker_sweep_interval_s > 0:
            sweep = sweep_markers(
                cache,
                self.metrics,
                interval_s=s.marker_sweep_interval_s,
                max_age_s=s.marker_max_age_s,
            )
            self._spawn(sweep, "ipam-markers")
        if s.ended_sweep_interval_s > 0:
            ended = sweep_ended(
                bus,
                self.metrics,
                interval_s=s.ended_sweep_interval_s,
                max_age_s=s.ended_max_age_s,
            )
            self._spawn(ended, "ipam-ended")
        if self.waiting:
            self.waiting.freed.set()  # addresses may have been released while nobody watched
        self._started = True

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(work, name=name))

    async def stop(self) -> None:
        if self._control is not None:
            await self._control.stop()
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None
        if self.status_index is not None:
            await self.status_index.stop()
        if self._cache is not None:
            await self._cache.stop()
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        self._started = False

    def readiness(self) -> str | None:
        if self._cache is None or not self._cache.loaded.is_set():
            return "loading address claims"
        if not self._started:
            return "not consuming"
        return None

    def _on_claim_change(self, address: str, before: Claim | None, after: Claim | None) -> None:
        # Someone may be waiting for this address, or for a port on it.
        if after is None or (before is not None and before.sharers != after.sharers):
            self.waiting.freed.set()
        if self._cache is not None and self._cache.loaded.is_set():
            self.metrics.changed()

    # --- what the consumer and operators call ------------------------------------------

    async def handle(self, d: Delivery) -> Verdict:
        assert self.lifecycle is not None
        if not self.gate.admits(d.subject):
            return DONE
        if self.pools is not None:
            self.pools.heard_from(d.subject.cluster)
        return await self.lifecycle.handle(d)

    async def reload(self, settings: IpamSettings | None = None) -> ReloadReply:
        assert self._reloader is not None
        return await self._reloader.reload(settings)

    def status(self) -> IpamStatus:
        if self._control is not None:
            return self._control.status()
        return ipam_status(  # not started: the pools as configured, nothing claimed yet
            self.allocator,
            self.settings.pools,
            instance=self.instance,
            now=time.time(),
            ready=False,
            config_path=self.config_path,
            reloaded_at=None,
            waiting=len(self.waiting),
        )

    async def show(self, target: str) -> ShowReply:
        assert self._control is not None
        return await self._control.show(target)

    async def release(self, target: str, *, caller: str = ANONYMOUS) -> ReleaseReply:
        assert self._control is not None
        return await self._control.release(target, caller=caller)


__all__ = ["DURABLE", "FILTERS", "IpamService", "port_keys", "request_of"]
