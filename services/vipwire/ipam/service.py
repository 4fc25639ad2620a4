"""The ipam shell: KV bucket in, allocator in the middle, VIP messages out.

Correctness never rests on this replica's memory. The allocator is a cache of
the ``addr.`` keys, fed by a KV watch (every claim before the first message is
handled, then every change made by any replica); every decision is made
durable with a compare-and-set, and a lost one means "re-read and try again".
One Service's messages are handled one at a time within a replica (its
``service`` and ``lb`` subjects share a lock); across replicas the Service
record's revision is the arbiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Hashable
from typing import Final, Protocol

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from vipwire.bus import DONE, BusError, ConsumerSpec, Delivery, Retry, Verdict
from vipwire.contracts import (
    IPAM_BUCKET,
    STREAM,
    LbRemoved,
    MalformedMessage,
    ServiceGone,
    ServiceSnapshot,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
    decode,
    family_filter,
    parse_subject,
    service_subject,
)
from vipwire.ipam.allocator import (
    Allocation,
    AllocationFailure,
    Allocator,
    Claim,
    Owner,
    Request,
)
from vipwire.ipam.settings import IpamSettings
from vipwire.ipam.store import (
    ClaimEvent,
    ClaimWatch,
    Conflict,
    IpamStore,
    ServiceRecord,
    StoreError,
    service_key,
)
from vipwire.runtime import Runtime
from vipwire.telemetry import extract_context

log = logging.getLogger("vipwire.ipam")

DURABLE: Final = "ipam"
FILTERS: Final = (family_filter("service"), family_filter("lb"))
FAILED_REASON: Final = "AllocationFailed"
#: Seconds loading every claim at start may take before start fails.
LOAD_TIMEOUT: Final = 60.0
#: Seconds the start-up scan for Services left waiting by a previous run may take.
RESUME_TIMEOUT: Final = 30.0

ServiceRef = tuple[str, str, str]  # cluster, namespace, name


class _Consumer(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _Waiting(msgspec.Struct, frozen=True, kw_only=True):
    """A live Service that got no address; retried when one is released."""

    subject: str
    request: Request


class _Locks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def request_of(snapshot: ServiceSnapshot) -> Request:
    return Request(
        cluster=snapshot.cluster,
        namespace=snapshot.namespace,
        name=snapshot.name,
        uid=snapshot.uid,
        pool=snapshot.pool or None,
        requested_ips=snapshot.requested_ips,
        ip_families=snapshot.ip_families,
        ip_family_policy=snapshot.ip_family_policy,
        sharing_key=snapshot.sharing_key,
    )


class IpamService:
    """Assigns VIPs to Services from pools, shared safely by replicas and clusters."""

    def __init__(self, settings: IpamSettings, runtime: Runtime) -> None:
        self.settings = settings
        self.runtime = runtime
        self.allocator = Allocator(settings.pools)
        self._store: IpamStore | None = None
        self._watch: ClaimWatch | None = None
        self._consumer: _Consumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loaded = asyncio.Event()
        self._freed = asyncio.Event()
        # Last KV revision seen per address: a watch event older than what this
        # replica already knows (from its own write) must not undo it.
        self._revisions: dict[str, int] = {}
        self._waiting: dict[ServiceRef, _Waiting] = {}
        self._locks = _Locks()
        self._started = False
        m = runtime.metrics
        self._m_allocations = m.counter(
            "ipam_allocations_total", "Services given addresses, by pool", ["pool"]
        )
        self._m_releases = m.counter(
            "ipam_releases_total", "Services whose addresses were released, by pool", ["pool"]
        )
        self._m_failures = m.counter(
            "ipam_allocation_failures_total", "Allocations refused, by reason", ["reason"]
        )
        self._m_conflicts = m.counter(
            "ipam_conflicts_total", "Compare-and-set writes lost to another writer"
        )
        self._m_size = m.gauge(
            "ipam_pool_addresses", "Addresses a pool can hand out", ["pool", "family"]
        )
        self._m_in_use = m.gauge(
            "ipam_pool_addresses_in_use", "Addresses of a pool owned now", ["pool", "family"]
        )
        m.gauge(
            "ipam_waiting_services",
            "Services waiting for an address to be released",
            fn=lambda: float(len(self._waiting)),
        )

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
        try:
            self._store = IpamStore(await bus.kv(IPAM_BUCKET))
        except (TimeoutError, nats.errors.Error) as exc:
            raise StoreError(f"cannot open KV bucket {IPAM_BUCKET}: {exc!r}") from exc
        self._watch = await self._store.watch_claims()
        follow = asyncio.create_task(self._follow_claims(self._watch), name="ipam-claims")
        self._tasks.append(follow)
        loaded = asyncio.create_task(self._loaded.wait())
        await asyncio.wait(
            {follow, loaded}, timeout=LOAD_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if not self._loaded.is_set():
            loaded.cancel()
            await asyncio.gather(loaded, return_exceptions=True)
            raise StoreError(f"the claims in {IPAM_BUCKET} did not load within {LOAD_TIMEOUT:.0f}s")
        log.info("loaded %d address claims", len(self.allocator.claims()))
        self._update_gauges()
        await self._resume_waiting()
        spec = ConsumerSpec(
            filters=FILTERS,
            durable=DURABLE,
            deliver="all",
            concurrency=self.settings.concurrency,
            batch=self.settings.prefetch,
        )
        self._consumer = bus.consumer(spec, self._handle)
        await self._consumer.start()
        self._tasks.append(asyncio.create_task(self._retry_waiting(), name="ipam-waiting"))
        if self._waiting:
            self._freed.set()  # addresses may have been released while nobody watched
        self._started = True

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._started = False

    def readiness(self) -> str | None:
        if not self._loaded.is_set():
            return "loading address claims"
        if not self._started:
            return "not consuming"
        return None

    # --- the claim cache -------------------------------------------------------------

    async def _follow_claims(self, watch: ClaimWatch) -> None:
        while True:
            try:
                event = await watch.next()
            except StopAsyncIteration:
                return
            if event is None:
                self._loaded.set()
                continue
            try:
                self._apply(event)
            except Exception:  # a bad event must not end the cache: the KV stays the judge
                log.exception("could not apply claim event %s", event)
            if self._loaded.is_set():
                self._update_gauges()

    def _apply(self, event: ClaimEvent) -> None:
        if event.revision <= self._revisions.get(event.address, 0):
            return
        self._revisions[event.address] = event.revision
        if event.claim is None:
            if self.allocator.release(event.address) is not None:
                self._freed.set()
        else:
            self.allocator.claim(event.address, event.claim)

    def _learn(self, address: str, claim: Claim, revision: int) -> None:
        """Our own write landed: remember it (a watch event may already have)."""
        self.allocator.claim(address, claim)
        self._revisions[address] = max(revision, self._revisions.get(address, 0))

    async def _refresh(self, address: str) -> None:
        """The KV disagreed with the cache: read the truth about one address."""
        got = await self.store.get_claim(address)
        if got is None:
            self.allocator.release(address)
        else:
            self._learn(address, *got)

    def _update_gauges(self) -> None:
        for usage in self.allocator.usage():
            self._m_size.set(usage.size, pool=usage.pool, family=usage.family)
            self._m_in_use.set(usage.in_use, pool=usage.pool, family=usage.family)

    @property
    def store(self) -> IpamStore:
        if self._store is None:
            raise RuntimeError("IpamService is not started")
        return self._store

    # --- handling -----------------------------------------------------------------

    async def _handle(self, d: Delivery) -> Verdict:
        message = d.message
        if isinstance(message, ServiceSnapshot | ServiceGone):
            if await self._superseded(d):
                return DONE
        elif not isinstance(message, LbRemoved):
            return DONE  # LbProgrammed / LbFailed: nothing for ipam to do
        ref = (message.cluster, message.namespace, message.name)
        try:
            async with self._locks.hold(ref):
                if isinstance(message, ServiceSnapshot) and not message.deleting:
                    return await self._on_live(message, d)
                if isinstance(message, LbRemoved):
                    return await self._on_lb_removed(message, d)
                return await self._on_going(message, d)
        except (StoreError, BusError) as exc:
            return Retry(delay=self.settings.retry_delay_s, reason=str(exc))

    async def _superseded(self, d: Delivery) -> bool:
        """A newer message on this Service's subject exists: let that one decide.

        The consumer skips older snapshots within a replica; this catches one
        that replicas handle out of order (redelivered here, newer one elsewhere).
        """
        try:
            last = await self.runtime.bus.js.get_last_msg(STREAM, d.subject.raw)
        except (TimeoutError, nats.errors.Error):
            return False  # not found, or unknown: handle it; every step is idempotent
        return bool(last.seq and last.seq > d.seq)

    async def _on_live(self, snap: ServiceSnapshot, d: Delivery, *, quiet: bool = False) -> Verdict:
        """Keep (or give) the Service its VIPs and say so. ``quiet``: no VipFailed."""
        ref = (snap.cluster, snap.namespace, snap.name)
        key = service_key(*ref)
        request = request_of(snap)
        for _ in range(self.settings.conflict_retries):
            current = await self.store.get_record(key)
            if current is not None and current[0].uid == snap.uid:
                record, revision = current
                if record.state == "releasing":
                    # Back before the appliance was cleaned (type changed back):
                    # the claims are still held, so the Service keeps its VIPs.
                    record = msgspec.structs.replace(record, state="active")
                    try:
                        await self.store.update_record(key, record, revision)
                    except Conflict:
                        self._m_conflicts.inc()
                        continue
                self._waiting.pop(ref, None)
                await self._publish_assigned(snap, record, d.derive_id("vip-assigned"))
                return DONE
            if current is not None:
                # The name now belongs to a new incarnation: free the old one's claims.
                try:
                    await self._release_record(key, *current)
                except Conflict:
                    self._m_conflicts.inc()
                    continue
            result = self.allocator.allocate(request)
            if isinstance(result, AllocationFailure):
                return await self._fail(snap, d, result, quiet=quiet)
            try:
                record = await self._commit(request, result, key)
            except Conflict:
                self._m_conflicts.inc()
                continue
            self._waiting.pop(ref, None)
            self._m_allocations.inc(pool=record.pool)
            self._update_gauges()
            log.info("assigned %s to %s", ", ".join(record.vips), request.service)
            await self._publish_assigned(snap, record, d.derive_id("vip-assigned"))
            return DONE
        return Retry(
            delay=self.settings.retry_delay_s,
            reason=f"{self.settings.conflict_retries} compare-and-set conflicts in a row",
        )

    async def _fail(
        self, snap: ServiceSnapshot, d: Delivery, failure: AllocationFailure, *, quiet: bool
    ) -> Verdict:
        ref = (snap.cluster, snap.namespace, snap.name)
        if failure.retryable:
            self._waiting.pop(ref, None)  # re-queue at the back
            self._waiting[ref] = _Waiting(subject=d.subject.raw, request=request_of(snap))
        else:
            self._waiting.pop(ref, None)
        if quiet:
            return DONE
        self._m_failures.inc(reason=failure.code)
        log.warning("no address for %s/%s/%s: %s", *ref, failure.message)
        await self.runtime.bus.publish(
            VipFailed(
                cluster=snap.cluster,
                namespace=snap.namespace,
                name=snap.name,
                uid=snap.uid,
                reason=FAILED_REASON,
                message=failure.message,
            ),
            msg_id=d.derive_id("vip-failed"),
        )
        return DONE

    async def _commit(self, request: Request, allocation: Allocation, key: str) -> ServiceRecord:
        """Make an allocation durable: claims first, then the record naming them.

        On :class:`Conflict` everything this attempt claimed is given back and the
        cache corrected; on any other failure the claims stay (the write may have
        landed) and a retry adopts them, as they carry this Service's uid.
        """
        claim = request.claim(allocation.pool)
        created: dict[str, int] = {}
        pending = list(allocation.new)
        try:
            while pending:
                address = pending[0]
                try:
                    created[address] = await self.store.create_claim(address, claim)
                except Conflict:
                    await self._refresh(address)
                    raise
                pending.pop(0)
                self._learn(address, claim, created[address])
            for address in allocation.held:
                got = await self.store.get_claim(address)
                if got is None or got[0].owner != request.owner:
                    await self._refresh(address)
                    raise Conflict(f"claim on {address} changed while adopting it")
                # Rewriting it makes a concurrent delete (of the revision it read) fail.
                self._learn(address, claim, await self.store.touch_claim(address, claim, got[1]))
            record = ServiceRecord(
                uid=request.uid,
                vips=allocation.addresses,
                pool=allocation.pool,
                appliance_group=allocation.appliance_group,
            )
            await self.store.create_record(key, record)
        except Conflict:
            for address in pending:
                self.allocator.release(address, uid=request.uid)
            for address, revision in created.items():
                with contextlib.suppress(StoreError):
                    await self.store.delete_claim(address, revision)
                    self.allocator.release(address, uid=request.uid)
            raise
        except BaseException:
            for address in pending:
                self.allocator.release(address, uid=request.uid)
            raise
        # Claims this incarnation held but did not use (left by an interrupted
        # attempt) are not named by any record: give them back.
        leftovers = set(self.allocator.held_by(request.owner)) - set(allocation.addresses)
        if leftovers:
            with contextlib.suppress(StoreError):
                await self._drop_claims(request.owner, sorted(leftovers))
        return record

    async def _on_going(self, message: ServiceSnapshot | ServiceGone, d: Delivery) -> Verdict:
        """The Service is going away: withdraw first, release on LbRemoved."""
        ref = (message.cluster, message.namespace, message.name)
        key = service_key(*ref)
        self._waiting.pop(ref, None)
        owner = Owner(*ref, message.uid)
        for _ in range(self.settings.conflict_retries):
            current = await self.store.get_record(key)
            if current is not None and current[0].uid == message.uid:
                try:
                    await self._withdraw(key, *current, ref, d.derive_id("vip-releasing"))
                except Conflict:
                    self._m_conflicts.inc()
                    continue
                return DONE
            # This incarnation has no record: whatever it claimed was never
            # published, so it is on no appliance and can go at once.
            await self._drop_claims(owner, self.allocator.held_by(owner))
            if current is not None:
                # An older incarnation's record outlived it (its deletion was never
                # seen; this message is the newest about the name): withdraw it too.
                try:
                    await self._withdraw(key, *current, ref, d.derive_id("vip-releasing-older"))
                except Conflict:
                    self._m_conflicts.inc()
                    continue
            await self._publish_released(message, (), d.derive_id("vip-released"))
            return DONE
        return Retry(delay=self.settings.retry_delay_s, reason="compare-and-set conflicts")

    async def _withdraw(
        self, key: str, record: ServiceRecord, revision: int, ref: ServiceRef, msg_id: str
    ) -> None:
        """Mark a record releasing (its claims stay) and ask for its VIPs' withdrawal."""
        if record.state == "active":
            record = msgspec.structs.replace(record, state="releasing")
            await self.store.update_record(key, record, revision)
        log.info("releasing %s of %s/%s/%s", ", ".join(record.vips), *ref)
        cluster, namespace, name = ref
        await self.runtime.bus.publish(
            VipReleasing(
                cluster=cluster,
                namespace=namespace,
                name=name,
                uid=record.uid,
                vips=record.vips,
                appliance_group=record.appliance_group,
            ),
            msg_id=msg_id,
        )

    async def _on_lb_removed(self, message: LbRemoved, d: Delivery) -> Verdict:
        """The appliance is clean: now the claims can go."""
        ref = (message.cluster, message.namespace, message.name)
        key = service_key(*ref)
        owner = Owner(*ref, message.uid)
        for _ in range(self.settings.conflict_retries):
            current = await self.store.get_record(key)
            if current is not None and current[0].uid == message.uid:
                record, revision = current
                if record.state == "active":
                    return DONE  # it came back before the removal was reported
                try:
                    await self._release_record(key, record, revision)
                except Conflict:
                    self._m_conflicts.inc()
                    continue
                log.info("released %s of %s/%s/%s", ", ".join(record.vips), *ref)
                await self._publish_released(message, record.vips, d.derive_id("vip-released"))
                return DONE
            # Already released (a redelivery), or never recorded: finish the job.
            freed = await self._drop_claims(owner, self.allocator.held_by(owner))
            if current is None:
                await self._publish_released(message, freed, d.derive_id("vip-released"))
            return DONE
        return Retry(delay=self.settings.retry_delay_s, reason="compare-and-set conflicts")

    async def _release_record(self, key: str, record: ServiceRecord, revision: int) -> None:
        """Delete a record, then its claims (read before, so an adopter's rewrite wins)."""
        owner_revisions: dict[str, int] = {}
        for address in record.vips:
            got = await self.store.get_claim(address)
            if got is not None and got[0].uid == record.uid:
                owner_revisions[address] = got[1]
        await self.store.delete_record(key, revision)
        for address, claim_revision in owner_revisions.items():
            try:
                await self.store.delete_claim(address, claim_revision)
            except Conflict:
                self._m_conflicts.inc()
                await self._refresh(address)
                continue
            self.allocator.release(address, uid=record.uid)
        self._m_releases.inc(pool=record.pool)
        self._update_gauges()
        self._freed.set()

    async def _drop_claims(
        self, owner: Owner, addresses: tuple[str, ...] | list[str]
    ) -> tuple[str, ...]:
        """Delete claims of ``owner`` that no record names; returns those deleted."""
        dropped: list[str] = []
        for address in addresses:
            got = await self.store.get_claim(address)
            if got is None or got[0].owner != owner:
                await self._refresh(address)
                continue
            try:
                await self.store.delete_claim(address, got[1])
            except Conflict:
                self._m_conflicts.inc()
                await self._refresh(address)
                continue
            self.allocator.release(address, uid=owner.uid)
            dropped.append(address)
        if dropped:
            log.info("dropped unrecorded claims %s of %s", ", ".join(dropped), owner)
            self._update_gauges()
            self._freed.set()
        return tuple(dropped)

    # --- publishing -------------------------------------------------------------------

    async def _publish_assigned(
        self, snap: ServiceSnapshot, record: ServiceRecord, msg_id: str
    ) -> None:
        await self.runtime.bus.publish(
            VipAssigned(
                cluster=snap.cluster,
                namespace=snap.namespace,
                name=snap.name,
                uid=snap.uid,
                vips=record.vips,
                pool=record.pool,
                appliance_group=record.appliance_group,
                ports=snap.ports,
                external_traffic_policy=snap.external_traffic_policy,
                health_check_node_port=snap.health_check_node_port,
            ),
            msg_id=msg_id,
        )

    async def _publish_released(
        self, about: ServiceSnapshot | ServiceGone | LbRemoved, vips: tuple[str, ...], msg_id: str
    ) -> None:
        await self.runtime.bus.publish(
            VipReleased(
                cluster=about.cluster,
                namespace=about.namespace,
                name=about.name,
                uid=about.uid,
                vips=vips,
            ),
            msg_id=msg_id,
        )

    # --- waiting Services -----------------------------------------------------------------

    async def _retry_waiting(self) -> None:
        """When an address is released, give it to Services that are waiting for one."""
        while True:
            await self._freed.wait()
            self._freed.clear()
            trouble = False
            for ref, waiting in list(self._waiting.items()):
                if self._waiting.get(ref) is not waiting:
                    continue
                if isinstance(
                    self.allocator.allocate(waiting.request, reserve=False), AllocationFailure
                ):
                    continue
                try:
                    await self._retry_one(ref, waiting)
                except (StoreError, BusError) as exc:
                    log.warning("retrying the allocation of %s/%s/%s: %s", *ref, exc)
                    trouble = True
                except Exception:
                    log.exception("retrying the allocation of %s/%s/%s failed", *ref)
                    trouble = True
            if trouble:
                await asyncio.sleep(self.settings.retry_delay_s)
                self._freed.set()

    async def _resume_waiting(self) -> None:
        """Find the Services a previous run left waiting: their last ``vip`` message is
        a VipFailed. Without this, a restart (a rolling update) would strand them until
        their Service next changed."""
        try:
            failed = await self._last_failures()
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("could not look for Services waiting for an address: %r", exc)
            return
        for vip_subject, failure in failed.items():
            parsed = parse_subject(vip_subject)
            subject = service_subject("service", parsed.cluster, failure.namespace, failure.name)
            try:
                raw = await self.runtime.bus.js.get_last_msg(STREAM, subject)
                message = decode(subject, raw.data or b"")
            except (TimeoutError, nats.errors.Error, MalformedMessage):
                continue
            if (
                isinstance(message, ServiceSnapshot)
                and not message.deleting
                and message.uid == failure.uid
            ):
                ref = (message.cluster, message.namespace, message.name)
                self._waiting[ref] = _Waiting(subject=subject, request=request_of(message))
        if self._waiting:
            log.info("%d Services are waiting for an address", len(self._waiting))

    async def _last_failures(self) -> dict[str, VipFailed]:
        """The ``vip`` subjects whose last message is a VipFailed (one pass, no acks)."""
        failed: dict[str, VipFailed] = {}
        done = asyncio.Event()

        async def on_msg(msg: Msg) -> None:
            try:
                message = decode(msg.subject, msg.data)
            except MalformedMessage:
                message = None
            if isinstance(message, VipFailed):
                failed[msg.subject] = message
            if msg.metadata.num_pending == 0:
                done.set()

        sub = await self.runtime.bus.js.subscribe(
            family_filter("vip"),
            stream=STREAM,
            cb=on_msg,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        try:
            info = await sub.consumer_info()
            if not info.num_pending and not sub.delivered:
                done.set()
            await asyncio.wait_for(done.wait(), RESUME_TIMEOUT)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return failed

    async def _retry_one(self, ref: ServiceRef, waiting: _Waiting) -> None:
        """Allocate for a waiting Service, from its newest snapshot on the stream.

        The newest one, because the Service may have changed or gone since it
        started waiting; its trace continues the one that snapshot started.
        """
        try:
            raw = await self.runtime.bus.js.get_last_msg(STREAM, waiting.subject)
        except nats.js.errors.NotFoundError:
            self._waiting.pop(ref, None)
            return
        except (TimeoutError, nats.errors.Error) as exc:
            raise BusError(f"cannot read the last message of {waiting.subject}: {exc!r}") from exc
        try:
            message = decode(waiting.subject, raw.data or b"")
        except MalformedMessage:
            self._waiting.pop(ref, None)
            return
        if not isinstance(message, ServiceSnapshot) or message.deleting:
            self._waiting.pop(ref, None)  # the consumer handles (or handled) that one
            return
        headers = dict(raw.headers or {})
        delivery = Delivery(
            subject=parse_subject(waiting.subject),
            message=message,
            seq=int(raw.seq or 0),
            num_delivered=1,
            headers=headers,
        )
        with self.runtime.tracer.start_as_current_span(
            "retry allocation", context=extract_context(headers)
        ):
            async with self._locks.hold(ref):
                if self._waiting.get(ref) is waiting:
                    await self._on_live(message, delivery, quiet=True)


__all__ = ["DURABLE", "FILTERS", "IpamService", "request_of"]
