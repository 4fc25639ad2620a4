"""The ipam shell: KV bucket in, allocator in the middle, VIP messages out.

Correctness never rests on this replica's memory. The allocator is a cache of
the ``addr.`` keys (:class:`~vipwire.ipam.cache.ClaimCache`: every claim
before the first message is handled, then every change made by any replica);
every decision is made durable with a compare-and-set, and a lost one means
"re-read and try again". One Service's messages are handled one at a time
within a replica (its ``service`` and ``lb`` subjects share a lock); across
replicas the Service record's revision is the arbiter.

A new Service costs three round trips: the claim's ``create``, the record's
``create``, the VipAssigned publish. Its record is not read when no claim
names the Service (the record's create checks that belief), and "no newer
message on this Service's subject" is checked by the server as it stores the
VipAssigned (an expected last sequence of another subject) instead of by a
read before and after. Every other message reads the record and, in the same
wait, the newest message of its subject.

Sharing: a Service that leaves a shared VIP withdraws only its own virtual
servers (the lbdriver names and tags them per Service), so its VipReleasing
and LbRemoved are its own; on LbRemoved it leaves the claim, and the last one
to leave deletes it.

Reload (the config file changed, or ``vipwire ipam reload``) swaps the
allocator for one built on the new pools holding every claim as it is: no
live VIP moves; those the new pools would not give are flagged stale in their
Service records, in the metrics and in ``vipwire ipam status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Hashable, Iterable
from typing import Final, Protocol

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import ServerVersion
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy

from vipwire.aio import cancel_and_wait
from vipwire.bus import DONE, BusError, ConsumerSpec, Delivery, Retry, Verdict
from vipwire.contracts import (
    IPAM_BUCKET,
    STREAM,
    LbRemoved,
    MalformedMessage,
    Message,
    ServiceGone,
    ServicePort,
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
from vipwire.ipam.addresses import canonical
from vipwire.ipam.allocator import (
    Allocation,
    AllocationFailure,
    Allocator,
    Claim,
    ClaimUpdate,
    Owner,
    Request,
)
from vipwire.ipam.cache import ClaimCache
from vipwire.ipam.control import (
    QUEUE,
    RELEASE_SUBJECT,
    RELOAD_SUBJECT,
    SHOW_SUBJECT,
    STATUS_SUBJECT,
    AddressView,
    ClusterStatus,
    IpamStatus,
    PoolStatus,
    ReleaseReply,
    ReleaseRequest,
    ReloadReply,
    ServiceView,
    ShowReply,
    ShowRequest,
    StaleAllocation,
    claim_view,
    parse_service,
    record_view,
)
from vipwire.ipam.settings import IpamConfigError, IpamSettings
from vipwire.ipam.store import (
    Conflict,
    GroupRecord,
    IpamStore,
    ServiceRecord,
    StoreError,
    group_key,
    service_key,
)
from vipwire.runtime import ConfigError, Runtime, read_config, section
from vipwire.telemetry import extract_context

log = logging.getLogger("vipwire.ipam")

DURABLE: Final = "ipam"
FILTERS: Final = (family_filter("service"), family_filter("lb"))
FAILED_REASON: Final = "AllocationFailed"
#: Seconds loading every claim at start may take before start fails.
LOAD_TIMEOUT: Final = 60.0
#: Seconds the start-up scan for Services left waiting by a previous run may take.
RESUME_TIMEOUT: Final = 30.0
#: Stale allocations listed by name in a status answer (all are counted).
STATUS_STALE_LIMIT: Final = 100
#: JetStream's error code for a publish whose expected last sequence did not hold.
_WRONG_LAST_SEQ: Final = 10071
#: The first nats-server that checks an expected last sequence of another subject.
_EXPECT_SUBJECT_SINCE: Final = (2, 11)

ServiceRef = tuple[str, str, str]  # cluster, namespace, name


class _Consumer(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _Waiting(msgspec.Struct, frozen=True, kw_only=True):
    """A live Service that got no address (or whose change was refused); retried
    when a claim is released or changes."""

    subject: str
    request: Request
    message: str = ""


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


def port_keys(ports: Iterable[ServicePort]) -> tuple[str, ...]:
    """``80/TCP``, …: what two Services sharing a VIP must not both use."""
    return tuple(sorted({f"{p.port}/{p.protocol}" for p in ports}))


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
        sharing_key=snapshot.sharing_key or None,
        ports=port_keys(snapshot.ports),
        external_traffic_policy=snapshot.external_traffic_policy,
        labels=dict(snapshot.labels),
    )


def _server_checks_other_subjects(version: ServerVersion) -> bool:
    try:
        return (version.major, version.minor) >= _EXPECT_SUBJECT_SINCE
    except ValueError:  # not a semantic version: assume the worst
        return False


def _ref_of_key(key: str) -> ServiceRef | None:
    parts = key.split(".")
    if len(parts) != 4 or parts[0] != "svc":
        return None
    return parts[1], parts[2], parts[3]


class IpamService:
    """Assigns VIPs to Services from pools, shared safely by replicas and clusters.

    ``config_path``: the file the settings came from; pools are reloaded from it
    when it changes (``reload_interval_s``) or on ``vipwire ipam reload``.
    """

    def __init__(
        self, settings: IpamSettings, runtime: Runtime, *, config_path: str | None = None
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.config_path = config_path
        self.instance = f"{runtime.name}-{uuid.uuid4().hex[:8]}"
        self._initial = Allocator(settings.pools)
        self._cache: ClaimCache | None = None
        self._consumer: _Consumer | None = None
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._freed = asyncio.Event()
        self._waiting: dict[ServiceRef, _Waiting] = {}
        self._locks = _Locks()
        self._reload_lock = asyncio.Lock()
        self._reloaded_at: float | None = None
        self._config_stamp: tuple[int, int] | None = None
        self._started = False
        # Whether the server can check "nothing newer on that subject" as it stores a
        # publish (older ones ignore the header: the check is then a read of its own).
        self._expect_subject = False
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
        self._m_stale = m.gauge(
            "ipam_stale_allocations",
            "Addresses given from a pool that it would not give now (kept, never moved)",
            ["pool", "family"],
        )
        self._m_reloads = m.counter(
            "ipam_reloads_total", "Pool configuration reloads, by result", ["result"]
        )
        self._m_operator_releases = m.counter(
            "ipam_operator_releases_total", "Allocations released by an operator"
        )
        self._m_markers = m.counter(
            "ipam_kv_markers_dropped_total", "Old delete markers dropped from the bucket"
        )
        self._gauges_stale = True
        m.on_collect(self._collect_gauges)
        m.gauge(
            "ipam_waiting_services",
            "Services waiting for an address to be released",
            fn=lambda: float(len(self._waiting)),
        )

    @property
    def allocator(self) -> Allocator:
        return self._cache.allocator if self._cache is not None else self._initial

    @property
    def store(self) -> IpamStore:
        if self._cache is None:
            raise RuntimeError("IpamService is not started")
        return self._cache.store

    @property
    def cache(self) -> ClaimCache:
        if self._cache is None:
            raise RuntimeError("IpamService is not started")
        return self._cache

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
            store = IpamStore((await bus.kv(IPAM_BUCKET)).raw, bus.js)
        except (TimeoutError, nats.errors.Error) as exc:
            raise StoreError(f"cannot open KV bucket {IPAM_BUCKET}: {exc!r}") from exc
        self._config_stamp = self._stamp()
        self._expect_subject = _server_checks_other_subjects(bus.nc.connected_server_version)
        self._cache = ClaimCache(store, self._initial, on_change=self._on_claim_change)
        await self._cache.start(LOAD_TIMEOUT)
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
        nc = bus.nc
        self._subs = [
            await nc.subscribe(STATUS_SUBJECT, queue=QUEUE, cb=self._on_status_request),
            await nc.subscribe(SHOW_SUBJECT, queue=QUEUE, cb=self._on_show_request),
            await nc.subscribe(RELEASE_SUBJECT, queue=QUEUE, cb=self._on_release_request),
            await nc.subscribe(RELOAD_SUBJECT, cb=self._on_reload_request),
        ]
        await nc.flush()  # answering from the moment start returns
        self._tasks.append(asyncio.create_task(self._retry_waiting(), name="ipam-waiting"))
        # Pools may have changed while nobody ran: flag (or unflag) stale records.
        self._tasks.append(asyncio.create_task(self._reflag_quietly(), name="ipam-reflag"))
        if self.config_path is not None and self.settings.reload_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._watch_config(), name="ipam-config"))
        if self.settings.marker_sweep_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._sweep_markers(), name="ipam-markers"))
        if self._waiting:
            self._freed.set()  # addresses may have been released while nobody watched
        self._started = True

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        self._subs.clear()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
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

    # --- the claim cache -------------------------------------------------------------

    def _on_claim_change(self, address: str, before: Claim | None, after: Claim | None) -> None:
        # Someone may be waiting for this address, or for a port on it.
        if after is None or (before is not None and before.sharers != after.sharers):
            self._freed.set()
        if self._cache is not None and self._cache.loaded.is_set():
            self._update_gauges()

    def _update_gauges(self) -> None:
        # Computed per scrape, not per change: usage() walks every pool, family and
        # cluster, and claims change on every allocation of every replica.
        self._gauges_stale = True

    def _collect_gauges(self) -> None:
        if not self._gauges_stale:
            return
        self._gauges_stale = False
        for usage in self.allocator.usage():
            self._m_size.set(usage.size, pool=usage.pool, family=usage.family)
            self._m_in_use.set(usage.in_use, pool=usage.pool, family=usage.family)
            self._m_stale.set(usage.stale, pool=usage.pool, family=usage.family)

    # --- handling -----------------------------------------------------------------

    async def _handle(self, d: Delivery) -> Verdict:
        message = d.message
        if not isinstance(message, ServiceSnapshot | ServiceGone | LbRemoved):
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

    async def _newest(self, subject: str, seq: int) -> Message | None:
        """The newest message on ``subject`` if it is newer than ``seq``; None otherwise
        (or when unknown: every step is idempotent, so handling it is safe)."""
        try:
            last = await self.runtime.bus.js.get_last_msg(STREAM, subject)
        except (TimeoutError, nats.errors.Error):
            return None
        if not last.seq or last.seq <= seq:
            return None
        try:
            return decode(subject, last.data or b"")
        except MalformedMessage:
            return None

    async def _superseded(self, d: Delivery) -> bool:
        """A newer message on this Service's subject exists: let that one decide.

        The consumer skips older snapshots within a replica; this catches one
        that replicas handle out of order (redelivered here, newer one elsewhere).
        """
        try:
            last = await self.runtime.bus.js.get_last_msg(STREAM, d.subject.raw)
        except (TimeoutError, nats.errors.Error):
            return False
        return bool(last.seq and last.seq > d.seq)

    async def _read_record(
        self, key: str, d: Delivery | None
    ) -> tuple[tuple[ServiceRecord, int] | None, bool]:
        """The Service's record and, with ``d``, whether ``d`` is superseded: two reads
        that do not depend on each other, so they share one round trip's wait."""
        if d is None:
            return await self.store.get_record(key), False
        current, superseded = await asyncio.gather(self.store.get_record(key), self._superseded(d))
        return current, superseded

    def _unrecorded(self, ref: ServiceRef) -> bool:
        """Whether this replica may skip reading the Service's record: it knows of no
        claim naming the Service (any incarnation) and the server checks a publish
        against the newest message of another subject.

        Claims are written before the record that names them and left only after
        the record is gone, so no claim means no record, unless the claim watch
        lags another replica. What is done on that belief is safe either way: the
        record is then *created*, a compare-and-set that fails if one exists (a
        :class:`Conflict`: the claims written are given back and the KV is read).
        """
        return self._expect_subject and not self.allocator.names(*ref)

    async def _on_live(
        self,
        snap: ServiceSnapshot,
        d: Delivery,
        *,
        quiet: bool = False,
        tag: str = "",
        check_newer: bool = True,
    ) -> Verdict:
        """Keep (or give) the Service its VIPs and say so. ``quiet``: no VipFailed.
        ``tag`` tells apart VipAssigned messages published for one delivery.
        ``check_newer``: skip ``d`` if a newer message is on its subject (False where
        ``d`` was just read as the newest)."""
        ref = (snap.cluster, snap.namespace, snap.name)
        key = service_key(*ref)
        request = request_of(snap)
        check: Delivery | None = d if check_newer else None
        # Without a read, nothing says whether a newer message exists: each publish
        # then asks the server to refuse it if one does (see _publish_if_newest).
        guard = self._unrecorded(ref)
        for attempt in range(self.settings.conflict_retries):
            if attempt == 0 and guard:
                current = None
            else:
                guard = False
                current, superseded = await self._read_record(key, check)
                check = None
                if superseded:
                    return DONE  # a newer message on this subject decides
            if current is not None and current[0].uid == snap.uid:
                try:
                    return await self._keep(snap, d, current, quiet=quiet, tag=tag)
                except Conflict:
                    self._m_conflicts.inc()
                    continue
            if current is not None:
                # The name now belongs to a new incarnation: free the old one's claims.
                try:
                    await self._release_record(key, *current)
                except Conflict:
                    self._m_conflicts.inc()
                    continue
            try:
                async with self._group_lock(request):
                    group = await self._read_group(request)
                    result = self.allocator.allocate(request)
                    if isinstance(result, AllocationFailure):
                        return await self._fail(snap, d, result, quiet=quiet, guard=guard)
                    record = await self._commit(request, result, key, group)
            except Conflict:
                self._m_conflicts.inc()
                continue
            msg_id = d.derive_id("vip-assigned" + tag)
            assigned = self._assigned(snap, record)
            if self._expect_subject:
                # The check that nothing newer ended this incarnation, made by the
                # server as it stores the VipAssigned (no round trip of its own).
                published = await self._publish_if_newest(assigned, d, msg_id)
            else:
                published = False
            if not published and await self._overtaken(snap, d):
                await self._undo(key, record, request.owner)
                return DONE
            self._waiting.pop(ref, None)
            self._m_allocations.inc(pool=record.pool)
            self._update_gauges()
            how = f" (sharing key {request.sharing_key!r})" if result.joined else ""
            log.info("assigned %s to %s%s", ", ".join(record.vips), request.service, how)
            if not published:
                await self.runtime.bus.publish(assigned, msg_id=msg_id)
            return DONE
        return Retry(
            delay=self.settings.retry_delay_s,
            reason=f"{self.settings.conflict_retries} compare-and-set conflicts in a row",
        )

    async def _keep(
        self,
        snap: ServiceSnapshot,
        d: Delivery,
        current: tuple[ServiceRecord, int],
        *,
        quiet: bool,
        tag: str,
    ) -> Verdict:
        """The Service holds VIPs: they never move; its claims follow its changes."""
        ref = (snap.cluster, snap.namespace, snap.name)
        key = service_key(*ref)
        request = request_of(snap)
        record, revision = current
        if record.state == "releasing":
            if record.reassign:
                return DONE  # an operator release is under way: LbRemoved re-allocates
            # Back before the appliance was cleaned (type changed back):
            # the claims are still held, so the Service keeps its VIPs.
            record = msgspec.structs.replace(record, state="active")
            revision = await self.store.update_record(key, record, revision)
        refused = self.allocator.refresh(request)
        if not isinstance(refused, AllocationFailure):
            for update in refused:
                await self._rewrite(update)
        stale = "; ".join(self.allocator.stale_reasons(request.owner)) or None
        if stale != record.stale:
            record = msgspec.structs.replace(record, stale=stale)
            revision = await self.store.update_record(key, record, revision)
            if stale is None:
                log.info("%s: its VIPs %s are no longer stale", request.service, record.vips)
        if stale is not None:
            log.warning(
                "%s keeps %s although stale: %s (release it with: vipwire ipam release %s)",
                request.service,
                ", ".join(record.vips),
                stale,
                request.service,
            )
        unlike = self.allocator.unlike(request)
        if unlike:
            log.warning(
                "%s keeps %s although it %s (live VIPs never move; release it with: "
                "vipwire ipam release %s)",
                request.service,
                ", ".join(record.vips),
                "; ".join(unlike),
                request.service,
            )
        if isinstance(refused, AllocationFailure):
            self._waiting.pop(ref, None)
            self._waiting[ref] = _Waiting(
                subject=d.subject.raw, request=request, message=refused.message
            )
            if quiet:
                return DONE
            # The appliance keeps what the last VipAssigned said: read it before
            # VipFailed is published, and say it again after, so that the last
            # word on the subject still describes the Service's VIPs.
            kept = await self._last_assigned(snap, record)
            self._m_failures.inc(reason=refused.code)
            log.warning("change of %s refused: %s", request.service, refused.message)
            await self._publish_failed(snap, refused.message, d.derive_id("vip-failed" + tag))
            await self.runtime.bus.publish(kept, msg_id=d.derive_id("vip-assigned-kept" + tag))
            return DONE
        self._waiting.pop(ref, None)
        await self._publish_assigned(snap, record, d.derive_id("vip-assigned" + tag))
        return DONE

    async def _last_assigned(self, snap: ServiceSnapshot, record: ServiceRecord) -> VipAssigned:
        """What the lbdriver was last told about this Service (rebuilt from the claims
        when the stream no longer says)."""
        subject = service_subject("vip", snap.cluster, snap.namespace, snap.name)
        try:
            raw = await self.runtime.bus.js.get_last_msg(STREAM, subject)
            last = decode(subject, raw.data or b"")
        except (TimeoutError, nats.errors.Error, MalformedMessage):
            last = None
        if isinstance(last, VipAssigned) and last.uid == snap.uid and last.vips == record.vips:
            return last
        ports: dict[str, ServicePort] = {}
        owner = request_of(snap).owner
        for vip in record.vips:
            claim = self.allocator.claim_of(vip)
            entry = claim.sharer(owner) if claim is not None else None
            for text in entry.ports if entry is not None else ():
                port, _, protocol = text.partition("/")
                ports[text] = msgspec.convert(
                    {"port": int(port), "protocol": protocol}, ServicePort
                )
        previous = last if isinstance(last, VipAssigned) and last.uid == snap.uid else None
        return VipAssigned(
            cluster=snap.cluster,
            namespace=snap.namespace,
            name=snap.name,
            uid=snap.uid,
            vips=record.vips,
            pool=record.pool,
            appliance_group=record.appliance_group,
            ports=tuple(ports.values()) or (previous.ports if previous else snap.ports),
            external_traffic_policy=(
                previous.external_traffic_policy if previous else snap.external_traffic_policy
            ),
            health_check_node_port=(
                previous.health_check_node_port if previous else snap.health_check_node_port
            ),
        )

    async def _rewrite(self, update: ClaimUpdate) -> int:
        """CAS one claim from ``before`` to ``after``; :class:`Conflict` if it is not
        ``before`` any more (the cache then learns what it is). Returns the revision."""
        got = await self.store.get_claim(update.address)
        if got is None or got[0] != update.before:
            await self.cache.refresh(update.address)
            raise Conflict(f"claim on {update.address} changed")
        revision = await self.store.update_claim(update.address, update.after, got[1])
        self.cache.learn(update.address, update.after, revision)
        return revision

    async def _overtaken(self, snap: ServiceSnapshot, d: Delivery) -> bool:
        """After committing, whether a newer message ends this incarnation's life.

        If so, a replica handling that message may already have found no record
        and released everything; what was just committed would then outlive the
        Service. Nothing has been published for it yet, so it is undone instead.
        """
        newest = await self._newest(d.subject.raw, d.seq)
        if newest is None:
            return False
        same_life = (
            isinstance(newest, ServiceSnapshot) and not newest.deleting and newest.uid == snap.uid
        )
        return not same_life

    async def _undo(self, key: str, record: ServiceRecord, owner: Owner) -> None:
        for _ in range(self.settings.conflict_retries):
            current = await self.store.get_record(key)
            if current is None or current[0].uid != record.uid:
                break
            if current[0].state != "active":
                return  # a withdrawal is under way and will release the claims
            try:
                await self.store.delete_record(key, current[1])
            except Conflict:
                self._m_conflicts.inc()
                continue
            break
        await self._leave_all(owner, record.vips, key)
        log.info("allocation of %s to %s undone: the Service went away", record.vips, owner)

    async def _fail(
        self,
        snap: ServiceSnapshot,
        d: Delivery,
        failure: AllocationFailure,
        *,
        quiet: bool,
        guard: bool = False,
    ) -> Verdict:
        """``guard``: whether ``d`` is superseded was not asked; the publish asks it."""
        ref = (snap.cluster, snap.namespace, snap.name)
        self._waiting.pop(ref, None)  # re-queue at the back
        if failure.retryable:
            self._waiting[ref] = _Waiting(
                subject=d.subject.raw, request=request_of(snap), message=failure.message
            )
        if quiet:
            return DONE
        msg_id = d.derive_id("vip-failed")
        failed = self._failed(snap, failure.message)
        if guard:
            if not await self._publish_if_newest(failed, d, msg_id):
                return DONE  # superseded: the newer message decides
        else:
            await self.runtime.bus.publish(failed, msg_id=msg_id)
        self._m_failures.inc(reason=failure.code)
        log.warning("no address for %s/%s/%s: %s", *ref, failure.message)
        return DONE

    @contextlib.asynccontextmanager
    async def _group_lock(self, request: Request) -> AsyncIterator[None]:
        """Within a replica, Services of one sharing key choose one at a time (across
        replicas the group key's revision decides)."""
        if request.sharing_key is None:
            yield
            return
        async with self._locks.hold(
            ("group", request.cluster, request.namespace, request.sharing_key)
        ):
            yield

    async def _read_group(self, request: Request) -> tuple[str, GroupRecord | None, int | None]:
        """The request's sharing group as the KV holds it, its claims refreshed into the
        cache (another replica's may not have come through the watch yet)."""
        if request.sharing_key is None:
            return "", None, None
        gkey = group_key(request.cluster, request.namespace, request.sharing_key)
        got = await self.store.get_group(gkey)
        if got is None:
            return gkey, None, None
        group, revision = got
        for address in group.addresses:
            with contextlib.suppress(ValueError):
                await self.cache.refresh(canonical(address))
        return gkey, group, revision

    def _group_after(
        self, request: Request, group: GroupRecord | None, new: Iterable[str]
    ) -> GroupRecord:
        """The group once ``new`` addresses join it (addresses no longer of it dropped)."""
        key = request.sharing_key or ""
        kept = []
        for address in group.addresses if group is not None else ():
            claim = self.allocator.claim_of(address)
            if (
                claim is not None
                and claim.sharing_key == key
                and (claim.cluster, claim.namespace) == (request.cluster, request.namespace)
            ):
                kept.append(address)
        return GroupRecord(key=key, addresses=tuple(dict.fromkeys([*kept, *new])))

    async def _prune_group(self, address: str, claim: Claim) -> None:
        """Drop a freed address from its sharing group (best effort: the next writer
        drops it too)."""
        if claim.sharing_key is None:
            return
        gkey = group_key(claim.cluster, claim.namespace, claim.sharing_key)
        for _ in range(3):
            try:
                got = await self.store.get_group(gkey)
                if got is None or address not in got[0].addresses:
                    return
                rest = tuple(a for a in got[0].addresses if a != address)
                if rest:
                    await self.store.put_group(
                        gkey, msgspec.structs.replace(got[0], addresses=rest), got[1]
                    )
                else:
                    await self.store.delete_group(gkey, got[1])
                return
            except Conflict:
                continue
            except StoreError as exc:
                log.debug("pruning %s from %s: %s", address, gkey, exc)
                return

    async def _commit(
        self,
        request: Request,
        allocation: Allocation,
        key: str,
        group: tuple[str, GroupRecord | None, int | None] = ("", None, None),
    ) -> ServiceRecord:
        """Make an allocation durable: claims first, then the record naming them.

        A new address of a sharing key is also entered in the key's group (CAS at
        the revision read before choosing): the arbiter between replicas that
        give the key's first VIP at the same time.

        On :class:`Conflict` everything this attempt claimed is given back (at
        the revision it wrote, so a claim a concurrent attempt adopted stays) and
        the cache corrected; on any other failure the claims stay (the write may
        have landed) and a retry adopts them, as they carry this Service's uid.
        """
        owner = request.owner
        written: dict[str, tuple[Claim, int]] = {}
        pending = [*allocation.new, *allocation.joined]
        try:
            for address in allocation.new:
                claim = allocation.claims[address]
                try:
                    revision = await self.store.create_claim(
                        address, claim, deleted_at=self.cache.deleted_at(address)
                    )
                except Conflict:
                    await self.cache.lost(address)
                    raise
                pending.remove(address)
                written[address] = (claim, revision)
                self.cache.learn(address, claim, revision)
            for address in allocation.joined:
                claim = allocation.claims[address]
                revision = await self._rewrite(
                    ClaimUpdate(address, allocation.bases[address], claim)
                )
                pending.remove(address)
                written[address] = (claim, revision)
            for address in allocation.held:
                got = await self.store.get_claim(address)
                if got is None or not got[0].holds(owner):
                    await self.cache.refresh(address)
                    raise Conflict(f"claim on {address} changed while adopting it")
                # Rewriting it makes a concurrent delete (of the revision it read) fail.
                touched = await self.store.update_claim(address, got[0], got[1])
                self.cache.learn(address, got[0], touched)
            gkey, current_group, group_revision = group
            if request.sharing_key is not None and allocation.new:
                after = self._group_after(request, current_group, allocation.new)
                await self.store.put_group(gkey, after, group_revision)
            record = ServiceRecord(
                uid=request.uid,
                vips=allocation.addresses,
                pool=allocation.pool,
                appliance_group=allocation.appliance_group,
            )
            await self.store.create_record(key, record)
        except Conflict:
            for address in pending:
                self.allocator.leave(address, owner)
            for address, (claim, revision) in written.items():
                rest = claim.without(owner)
                with contextlib.suppress(StoreError):
                    if rest is None:
                        await self.store.delete_claim(address, revision)
                        self.cache.forget(address)
                    else:
                        rewritten = await self.store.update_claim(address, rest, revision)
                        self.cache.learn(address, rest, rewritten)
            raise
        except BaseException:
            for address in pending:
                self.allocator.leave(address, owner)
            raise
        # Claims this incarnation held but did not use (left by an interrupted
        # attempt) are not named by any record: give them back.
        leftovers = set(self.allocator.held_by(owner)) - set(allocation.addresses)
        if leftovers:
            with contextlib.suppress(StoreError):
                await self._leave_all(owner, sorted(leftovers), None)
        return record

    async def _on_going(self, message: ServiceSnapshot | ServiceGone, d: Delivery) -> Verdict:
        """The Service is going away: withdraw first, release on LbRemoved."""
        ref = (message.cluster, message.namespace, message.name)
        key = service_key(*ref)
        owner = Owner(*ref, message.uid)
        current, superseded = await self._read_record(key, d)
        if superseded:
            return DONE  # a newer message on this subject decides
        self._waiting.pop(ref, None)
        for attempt in range(self.settings.conflict_retries):
            if attempt:
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
            await self._leave_all(owner, self.allocator.held_by(owner), key)
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
        self,
        key: str,
        record: ServiceRecord,
        revision: int,
        ref: ServiceRef,
        msg_id: str,
        *,
        reassign: bool = False,
    ) -> ServiceRecord:
        """Mark a record releasing (its claims stay) and ask for its VIPs' withdrawal.

        The lbdriver removes this Service's own virtual servers only, so a VIP it
        shares keeps serving the others.
        """
        if record.state == "active" or record.reassign != reassign:
            record = msgspec.structs.replace(record, state="releasing", reassign=reassign)
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
        return record

    async def _on_lb_removed(self, message: LbRemoved, d: Delivery) -> Verdict:
        """The appliance is clean of this Service: now it can leave its claims."""
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
                if record.reassign:
                    return await self._reallocate(ref, record, d)
                await self._publish_released(message, record.vips, d.derive_id("vip-released"))
                return DONE
            # Already released (a redelivery), or never recorded: finish the job.
            freed = await self._leave_all(owner, self.allocator.held_by(owner), key)
            if current is None:
                await self._publish_released(message, freed, d.derive_id("vip-released"))
            return DONE
        return Retry(delay=self.settings.retry_delay_s, reason="compare-and-set conflicts")

    async def _reallocate(self, ref: ServiceRef, record: ServiceRecord, d: Delivery) -> Verdict:
        """After an operator release: new VIPs from the pools as they are now."""
        cluster, namespace, name = ref
        subject = service_subject("service", cluster, namespace, name)
        try:
            raw = await self.runtime.bus.js.get_last_msg(STREAM, subject)
            message = decode(subject, raw.data or b"")
        except nats.js.errors.NotFoundError:
            message = None
        except (TimeoutError, nats.errors.Error) as exc:
            raise BusError(f"cannot read the last message of {subject}: {exc!r}") from exc
        except MalformedMessage:
            message = None
        if (
            isinstance(message, ServiceSnapshot)
            and not message.deleting
            and message.uid == record.uid
        ):
            delivery = Delivery(
                subject=parse_subject(subject),
                message=message,
                seq=int(raw.seq or 0),
                num_delivered=1,
                headers=dict(raw.headers or {}),
            )
            return await self._on_live(
                message, delivery, tag=f"-after-release-{d.seq}", check_newer=False
            )
        gone = VipReleased(
            cluster=cluster, namespace=namespace, name=name, uid=record.uid, vips=record.vips
        )
        await self.runtime.bus.publish(gone, msg_id=d.derive_id("vip-released"))
        return DONE

    async def _release_record(self, key: str, record: ServiceRecord, revision: int) -> None:
        """Delete a record, then leave its claims (read before, so an adopter's rewrite wins)."""
        ref = _ref_of_key(key)
        assert ref is not None
        owner = Owner(*ref, record.uid)
        read: dict[str, tuple[Claim, int]] = {}
        for address in record.vips:
            got = await self.store.get_claim(address)
            if got is not None and got[0].holds(owner):
                read[address] = got
        await self.store.delete_record(key, revision)
        for address, got in read.items():
            await self._leave(owner, address, key, got)
        self._m_releases.inc(pool=record.pool)
        self._update_gauges()
        self._freed.set()

    async def _leave_all(
        self, owner: Owner, addresses: Iterable[str], key: str | None
    ) -> tuple[str, ...]:
        """``owner`` leaves the claims on ``addresses`` that no record of it names;
        returns the addresses it left."""
        left = [a for a in addresses if await self._leave(owner, a, key)]
        if left:
            log.info("%s left its claims on %s", owner.service, ", ".join(left))
            self._update_gauges()
            self._freed.set()
        return tuple(left)

    async def _leave(
        self,
        owner: Owner,
        address: str,
        key: str | None,
        read: tuple[Claim, int] | None = None,
    ) -> bool:
        """Take ``owner`` off one claim (deleting it if nobody is left), by CAS.

        A conflict is retried (another sharer came or went), unless a record of
        this very incarnation appeared meanwhile: then a retry of its allocation
        adopted the claim, and it must stay.
        """
        got = read
        for attempt in range(self.settings.conflict_retries):
            if got is None or attempt:
                got = await self.store.get_claim(address)
            if got is None or not got[0].holds(owner):
                await self.cache.refresh(address)
                return False
            claim, revision = got
            rest = claim.without(owner)
            try:
                if rest is None:
                    await self.store.delete_claim(address, revision)
                    self.cache.forget(address)
                    await self._prune_group(address, claim)
                else:
                    self.cache.learn(
                        address, rest, await self.store.update_claim(address, rest, revision)
                    )
                return True
            except Conflict:
                self._m_conflicts.inc()
                if key is not None:
                    current = await self.store.get_record(key)
                    if current is not None and current[0].uid == owner.uid:
                        await self.cache.refresh(address)
                        return False
        raise Conflict(f"could not leave the claim on {address}")

    # --- publishing -------------------------------------------------------------------

    @staticmethod
    def _assigned(snap: ServiceSnapshot, record: ServiceRecord) -> VipAssigned:
        return VipAssigned(
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
        )

    @staticmethod
    def _failed(snap: ServiceSnapshot, message: str) -> VipFailed:
        return VipFailed(
            cluster=snap.cluster,
            namespace=snap.namespace,
            name=snap.name,
            uid=snap.uid,
            reason=FAILED_REASON,
            message=message,
        )

    async def _publish_assigned(
        self, snap: ServiceSnapshot, record: ServiceRecord, msg_id: str
    ) -> None:
        await self.runtime.bus.publish(self._assigned(snap, record), msg_id=msg_id)

    async def _publish_failed(self, snap: ServiceSnapshot, message: str, msg_id: str) -> None:
        await self.runtime.bus.publish(self._failed(snap, message), msg_id=msg_id)

    async def _publish_if_newest(self, message: Message, d: Delivery, msg_id: str) -> bool:
        """Publish ``message`` unless a message newer than ``d`` is on ``d``'s subject;
        False: there is one (or ``d``'s is gone), nothing was published.

        One atomic step on the server: the publish names the sequence the last
        message of ``d``'s subject must have (JetStream's expected last subject
        sequence, of another subject than the one published to: nats-server 2.11+).
        """
        headers = {
            "Nats-Expected-Last-Subject-Sequence": str(d.seq),
            "Nats-Expected-Last-Subject-Sequence-Subject": d.subject.raw,
        }
        try:
            await self.runtime.bus.publish(message, msg_id=msg_id, headers=headers)
        except BusError as exc:
            cause = exc.__cause__
            if isinstance(cause, nats.js.errors.APIError) and cause.err_code == _WRONG_LAST_SEQ:
                return False
            raise
        return True

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

    def _would_succeed(self, request: Request) -> bool:
        if self.allocator.held_by(request.owner):
            return not isinstance(self.allocator.refresh(request), AllocationFailure)
        return not isinstance(self.allocator.allocate(request, reserve=False), AllocationFailure)

    async def _retry_waiting(self) -> None:
        """When an address is released, give it to Services that are waiting for one."""
        while True:
            await self._freed.wait()
            self._freed.clear()
            trouble = False
            for ref, waiting in list(self._waiting.items()):
                if self._waiting.get(ref) is not waiting:
                    continue
                if not self._would_succeed(waiting.request):
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
        """Find the Services a previous run (or the pools before a reload) left without
        an address: their last ``vip`` message is a VipFailed. Without this, a restart
        (a rolling update) would strand them until their Service next changed."""
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
                self._waiting.setdefault(
                    ref,
                    _Waiting(subject=subject, request=request_of(message), message=failure.message),
                )
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
                    await self._on_live(
                        message, delivery, quiet=True, tag="-retried", check_newer=False
                    )

    # --- reload and stale flags -----------------------------------------------------------

    def _stamp(self) -> tuple[int, int] | None:
        if self.config_path is None:
            return None
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    async def _watch_config(self) -> None:
        """Reload when the config file changes (polled: works for ConfigMap volumes,
        whose files are swapped by symlink, as for any editor)."""
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            stamp = self._stamp()
            if stamp is None or stamp == self._config_stamp:
                continue
            self._config_stamp = stamp
            log.info("config file %s changed: reloading the pools", self.config_path)
            reply = await self.reload()
            if reply.error is not None:
                log.error("reload of %s refused: %s", self.config_path, reply.error)

    async def _sweep_markers(self) -> None:
        """Now and then, drop the bucket's old delete markers (see IpamSettings)."""
        s = self.settings
        while True:
            await asyncio.sleep(s.marker_sweep_interval_s)
            try:
                count = await self.store.purge_markers(s.marker_max_age_s)
            except StoreError as exc:
                log.warning(
                    "could not drop old delete markers (%s); next try in %.0fs",
                    exc,
                    s.marker_sweep_interval_s,
                )
                continue
            if count:
                self._m_markers.inc(count)
                log.info("dropped %d delete markers older than %.0fs", count, s.marker_max_age_s)

    async def reload(self, settings: IpamSettings | None = None) -> ReloadReply:
        """Apply new pools (given, or read from the config file). Never moves a VIP.

        Only the pools change; other ipam settings take effect at the next start.
        """
        async with self._reload_lock:
            try:
                if settings is None:
                    settings = self._read_settings()
            except ConfigError as exc:
                self._m_reloads.inc(result="refused")
                return ReloadReply(
                    instance=self.instance, config_path=self.config_path, error=str(exc)
                )
            ignored = tuple(
                name
                for name in self.settings.__struct_fields__
                if name != "pools" and getattr(settings, name) != getattr(self.settings, name)
            )
            cache = self.cache
            cache.allocator = cache.allocator.reconfigured(settings.pools)
            self.settings = msgspec.structs.replace(self.settings, pools=settings.pools)
            self._reloaded_at = time.time()
            self._update_gauges()
            stale = self.allocator.usage()
            for usage in stale:
                if not usage.configured:
                    self._m_stale.set(usage.stale, pool=usage.pool, family=usage.family)
            stale_total = sum(u.stale for u in stale)
            log.info(
                "pools reloaded: %s; %d stale allocation(s) kept",
                ", ".join(p.name for p in settings.pools) or "none",
                stale_total,
            )
            if ignored:
                log.warning("changed settings %s take effect on restart only", ", ".join(ignored))
            self._m_reloads.inc(result="applied")
            flagged = await self._reflag()
            await self._resume_waiting()
            self._freed.set()
            return ReloadReply(
                instance=self.instance,
                config_path=self.config_path,
                pools=tuple(p.name for p in settings.pools),
                stale=stale_total,
                flagged=flagged,
                ignored=ignored,
            )

    def _read_settings(self) -> IpamSettings:
        if self.config_path is None:
            raise IpamConfigError("this ipam was started without a config file to reload")
        data = read_config(self.config_path)
        return section(data, "ipam", IpamSettings, source=self.config_path)

    async def _reflag_quietly(self) -> None:
        try:
            await self._reflag()
        except (StoreError, BusError) as exc:
            log.warning("could not flag stale allocations at start: %s", exc)

    async def _reflag(self) -> int:
        """Bring every record's stale flag in line with the pools; returns how many changed."""
        changed = 0
        for key, (record, _) in (await self.store.records()).items():
            ref = _ref_of_key(key)
            if ref is None:
                continue
            stale = "; ".join(self.allocator.stale_reasons(Owner(*ref, record.uid))) or None
            if stale == record.stale:
                continue
            async with self._locks.hold(ref):
                if await self._flag(key, record.uid, ref):
                    changed += 1
        return changed

    async def _flag(self, key: str, uid: str, ref: ServiceRef) -> bool:
        for _ in range(self.settings.conflict_retries):
            current = await self.store.get_record(key)
            if current is None or current[0].uid != uid:
                return False
            record, revision = current
            stale = "; ".join(self.allocator.stale_reasons(Owner(*ref, uid))) or None
            if stale == record.stale:
                return False
            try:
                await self.store.update_record(
                    key, msgspec.structs.replace(record, stale=stale), revision
                )
            except Conflict:
                self._m_conflicts.inc()
                continue
            service = "/".join(ref)
            if stale is None:
                log.info("%s: %s no longer stale", service, ", ".join(record.vips))
            else:
                log.warning(
                    "%s keeps %s although stale: %s (release it with: vipwire ipam release %s)",
                    service,
                    ", ".join(record.vips),
                    stale,
                    service,
                )
            return True
        return False

    # --- operator requests ------------------------------------------------------------------

    def status(self) -> IpamStatus:
        """What ``vipwire ipam status`` (and the dashboard) shows."""
        allocator = self.allocator
        pools = {p.name: p for p in self.settings.pools}
        entries = []
        for usage in allocator.usage():
            pool = pools.get(usage.pool)
            entries.append(
                PoolStatus(
                    name=usage.pool,
                    family=usage.family,
                    appliance_group=usage.appliance_group,
                    configured=usage.configured,
                    auto_assign=pool.auto_assign if pool else False,
                    priority=pool.priority if pool else 0,
                    size=usage.size,
                    used=usage.in_use,
                    free=usage.size - usage.in_use,
                    stale=usage.stale,
                    clusters=tuple(
                        ClusterStatus(cluster=c.cluster, used=c.used, stale=c.stale)
                        for c in usage.clusters
                    ),
                )
            )
        claims = allocator.claims()
        stale = [a for a in claims if allocator.is_stale(a)]
        listed = tuple(
            StaleAllocation(
                address=address,
                pool=claims[address].pool,
                services=tuple(o.service for o in claims[address].owners),
                reasons=allocator.address_stale_reasons(address),
            )
            for address in sorted(stale)[:STATUS_STALE_LIMIT]
        )
        return IpamStatus(
            instance=self.instance,
            now=time.time(),
            ready=self.readiness() is None,
            config_path=self.config_path,
            reloaded_at=self._reloaded_at,
            claims=len(claims),
            services=len(allocator.owners()),
            waiting=len(self._waiting),
            pools=tuple(entries),
            stale=listed,
            stale_total=len(stale),
        )

    async def show(self, target: str) -> ShowReply:
        """One address or one Service, as the KV holds it and the pools judge it."""
        if "/" in target:
            try:
                ref = parse_service(target)
            except ValueError as exc:
                return ShowReply(instance=self.instance, error=str(exc))
            got = await self.store.get_record(service_key(*ref))
            waiting = self._waiting.get(ref)
            view = ServiceView(service="/".join(ref), waiting=waiting.message if waiting else None)
            if got is not None:
                record, revision = got
                claims = {}
                for vip in record.vips:
                    claim = await self.store.get_claim(vip)
                    claims[vip] = claim_view(claim[0]) if claim else None
                view = msgspec.structs.replace(
                    view,
                    record=record_view(record),
                    revision=revision,
                    claims=claims,
                    stale=self.allocator.stale_reasons(Owner(*ref, record.uid)),
                )
            return ShowReply(instance=self.instance, service=view)
        try:
            address = canonical(target)
        except ValueError as exc:
            return ShowReply(instance=self.instance, error=str(exc))
        allocator = self.allocator
        pool = allocator.pool_of(address)
        found = await self.store.get_claim(address)
        return ShowReply(
            instance=self.instance,
            address=AddressView(
                address=address,
                pool=pool,
                usable=pool is not None and allocator.usable(address),
                claim=claim_view(found[0]) if found else None,
                revision=found[1] if found else None,
                stale=allocator.address_stale_reasons(address) if found else (),
            ),
        )

    async def release(self, target: str) -> ReleaseReply:
        """Withdraw a Service's VIPs on an operator's word; once the appliance is clean
        it gets new ones from the pools as they are now."""
        try:
            ref = parse_service(target)
        except ValueError as exc:
            return ReleaseReply(instance=self.instance, service=target, error=str(exc))
        service = "/".join(ref)
        key = service_key(*ref)
        with self.runtime.tracer.start_as_current_span(
            "operator release", attributes={"vipwire.service": service}
        ):
            async with self._locks.hold(ref):
                for _ in range(self.settings.conflict_retries):
                    current = await self.store.get_record(key)
                    if current is None:
                        return ReleaseReply(
                            instance=self.instance,
                            service=service,
                            error=f"{service} holds no addresses",
                        )
                    record, revision = current
                    if record.state == "releasing":
                        return ReleaseReply(
                            instance=self.instance,
                            service=service,
                            vips=record.vips,
                            error=f"{service} is already releasing {', '.join(record.vips)}",
                        )
                    msg_id = f"ipam-release:{service}:{record.uid}:{revision}"
                    try:
                        await self._withdraw(key, record, revision, ref, msg_id, reassign=True)
                    except Conflict:
                        self._m_conflicts.inc()
                        continue
                    self._m_operator_releases.inc()
                    log.warning(
                        "operator released %s of %s: new VIPs follow once the appliance is clean",
                        ", ".join(record.vips),
                        service,
                    )
                    return ReleaseReply(instance=self.instance, service=service, vips=record.vips)
        return ReleaseReply(
            instance=self.instance, service=service, error="compare-and-set conflicts; try again"
        )

    async def _on_status_request(self, msg: Msg) -> None:
        await self._respond(msg, msgspec.json.encode(self.status()))

    async def _on_show_request(self, msg: Msg) -> None:
        try:
            request = msgspec.json.decode(msg.data, type=ShowRequest)
            reply = await self.show(request.target)
        except msgspec.DecodeError as exc:
            reply = ShowReply(instance=self.instance, error=f"bad request: {exc}")
        except StoreError as exc:
            reply = ShowReply(instance=self.instance, error=str(exc))
        await self._respond(msg, msgspec.json.encode(reply))

    async def _on_release_request(self, msg: Msg) -> None:
        try:
            request = msgspec.json.decode(msg.data, type=ReleaseRequest)
            reply = await self.release(request.service)
        except msgspec.DecodeError as exc:
            reply = ReleaseReply(instance=self.instance, service="", error=f"bad request: {exc}")
        except (StoreError, BusError) as exc:
            reply = ReleaseReply(instance=self.instance, service="", error=str(exc))
        await self._respond(msg, msgspec.json.encode(reply))

    async def _on_reload_request(self, msg: Msg) -> None:
        try:
            reply = await self.reload()
        except (StoreError, BusError) as exc:
            reply = ReloadReply(
                instance=self.instance, config_path=self.config_path, error=str(exc)
            )
        await self._respond(msg, msgspec.json.encode(reply))

    async def _respond(self, msg: Msg, data: bytes) -> None:
        if not msg.reply:
            return
        try:
            await msg.respond(data)
        except (TimeoutError, nats.errors.Error) as exc:
            log.debug("control request not answered: %r", exc)


__all__ = ["DURABLE", "FILTERS", "IpamService", "port_keys", "request_of"]
