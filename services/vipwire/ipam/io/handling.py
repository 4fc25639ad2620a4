"""The lifecycle shell: read, :func:`~vipwire.ipam.core.decide.decide`, carry out.

For each message of a Service's life: read its record (and, in the same
wait, whether a newer message is on its subject), ask the pure core what to
do, and have the ledger carry the plan out. A lost compare-and-set changes
nothing in memory: the record is read again and the core decides again.
One Service's messages are handled one at a time within a replica (its
``service`` and ``lb`` subjects share a lock); across replicas the Service
record's revision is the arbiter.

A new Service costs three round trips: the claim's ``create``, the record's
``create``, the VipAssigned publish. Its record is not read when no claim
names the Service (the record's create checks that belief), and "no newer
message on this Service's subject" is checked by the server as it stores the
VipAssigned (an expected last sequence of another subject) instead of by a
read before and after. Every other message reads the record and, in the same
wait, the newest message of its subject.

One module over 500 lines on purpose: :class:`Lifecycle` is the one place a
message meets the store (read, decide, carry out, retry a lost compare-and-set),
and its waits (the status VIP index, a restore window, a store outage) are
steps of that one sequence; the decisions themselves are in ``core``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Hashable

from vipwire.bus import DONE, BusError, Delivery, Retry, Verdict
from vipwire.contracts import (
    LbProgrammed,
    LbRemoved,
    ServiceGone,
    ServiceRef,
    ServiceSnapshot,
    StatusWritten,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
    service_subject,
)
from vipwire.ipam.core.claims import Owner, Request, request_of
from vipwire.ipam.core.decide import Plan, decide
from vipwire.ipam.core.messages import in_force, kept_assignment, moved, released
from vipwire.ipam.core.moves import announced
from vipwire.ipam.core.records import ServiceRecord, service_key
from vipwire.ipam.core.requested import unlike
from vipwire.ipam.core.retry import store_retry_delay_s
from vipwire.ipam.core.status_vips import StatusVips
from vipwire.ipam.io.bucket import Conflict, StoreError
from vipwire.ipam.io.claim_cache import ClaimCache
from vipwire.ipam.io.ledger import Ledger
from vipwire.ipam.io.metrics import IpamMetrics
from vipwire.ipam.io.publishing import Newest, Publisher
from vipwire.ipam.io.status_index import StatusIndex
from vipwire.ipam.io.waiting import Waiting, WaitingQueue

log = logging.getLogger("vipwire.ipam")

Read = tuple[ServiceRecord, int] | None


class Locks:
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


class Lifecycle:
    """Handles the ``service`` and ``lb`` messages of every Service."""

    def __init__(
        self,
        cache: ClaimCache,
        ledger: Ledger,
        publisher: Publisher,
        waiting: WaitingQueue,
        metrics: IpamMetrics,
        *,
        conflict_retries: int,
        retry_delay_s: float,
        status: StatusIndex | None = None,
        status_wait_s: float = 10.0,
        move_on_change: bool = True,
    ) -> None:
        self.cache = cache
        #: A served Service that asks for other VIPs moves to them (ipam.move_on_change).
        self.move_on_change = move_on_change
        self.ledger = ledger
        self.publisher = publisher
        self.waiting = waiting
        self.metrics = metrics
        self.locks = Locks()
        self.conflict_retries = conflict_retries
        self.retry_delay_s = retry_delay_s
        #: Every Service's status VIPs, reserved for it (None: nothing reserved).
        self.status = status
        self.status_wait_s = status_wait_s
        #: Loop time until which new Services wait after a start on an empty store
        #: (None: not restoring; see :meth:`restoring`).
        self.restore_until: float | None = None
        self._told_restoring = False

    async def handle(self, d: Delivery) -> Verdict:
        message = in_force(d.message)
        if isinstance(message, StatusWritten | LbProgrammed):
            if not self.move_on_change:
                return DONE
            ref = ServiceRef(message.cluster, message.namespace, message.name)
            try:
                async with self.locks.hold(ref):
                    return await self._on_step(message, d)
            except (StoreError, BusError) as exc:
                delay = store_retry_delay_s(self.retry_delay_s, d.num_delivered)
                return Retry(delay=delay, reason=str(exc))
        if not isinstance(message, ServiceSnapshot | ServiceGone | LbRemoved):
            return DONE  # LbFailed: nothing for ipam to do
        ref = ServiceRef(message.cluster, message.namespace, message.name)
        try:
            async with self.locks.hold(ref):
                if isinstance(message, ServiceSnapshot) and not message.deleting:
                    return await self.on_live(message, d)
                if isinstance(message, LbRemoved):
                    return await self._on_lb_removed(message, d)
                return await self._on_going(message, d)
        except (StoreError, BusError) as exc:
            # The store, not the message, is at fault: wait longer each time, so that a
            # failover does not use up the deliveries and get the message terminated.
            delay = store_retry_delay_s(self.retry_delay_s, d.num_delivered)
            return Retry(delay=delay, reason=str(exc))

    # --- reading ------------------------------------------------------------------------

    async def _read_record(self, key: str, d: Delivery | None) -> tuple[Read, bool]:
        """The Service's record and, with ``d``, whether ``d`` is superseded: two reads
        that do not depend on each other, so they share one round trip's wait."""
        if d is None:
            return await self.cache.store.get_record(key), False
        current, superseded = await asyncio.gather(
            self.cache.store.get_record(key), self.publisher.superseded(d)
        )
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
        return self.publisher.expect_subject and not self.cache.allocator.names(*ref)

    # --- a live Service -----------------------------------------------------------------

    async def on_live(
        self,
        snap: ServiceSnapshot,
        d: Delivery,
        *,
        quiet: bool = False,
        tag: str = "",
        check_newer: bool = True,
        honour_status: bool = True,
        released: ServiceRecord | None = None,
    ) -> Verdict:
        """Keep (or give) the Service its VIPs and say so. ``quiet``: no VipFailed.
        ``tag`` tells apart VipAssigned messages published for one delivery.
        ``check_newer``: skip ``d`` if a newer message is on its subject (False where
        ``d`` was just read as the newest). ``honour_status``: False when the Service
        must get new VIPs (an operator released its own), not those in its status;
        ``released``: that operator-released record (its VipAssigned names who asked)."""
        ref = ServiceRef(snap.cluster, snap.namespace, snap.name)
        key = service_key(*ref)
        request = request_of(snap)
        check: Delivery | None = d if check_newer else None
        # Without a read, nothing says whether a newer message exists: each publish
        # then asks the server to refuse it if one does (see publish_if_newest).
        guard = self._unrecorded(ref)
        for attempt in range(self.conflict_retries):
            current: Read = None
            if not (attempt == 0 and guard):
                guard = False
                current, superseded = await self._read_record(key, check)
                check = None
                if superseded:
                    return DONE  # a newer message on this subject decides
            try:
                if current is not None:
                    plan = decide(
                        snap,
                        current[0],
                        self.cache.allocator,
                        skip=self.cache.claiming,
                        move_on_change=self.move_on_change,
                    )
                    if plan.action != "replace":
                        return await self._keep(snap, d, plan, key, current, quiet=quiet, tag=tag)
                    if current[0].state == "releasing":
                        # Its virtual server may still be on the appliance: keep the
                        # claims until its LbRemoved (which forgets them by owner).
                        await self.ledger.drop_record(key, current[1])
                    else:
                        await self.ledger.release_record(key, *current)
                hold = self.restoring(snap)
                if hold > 0:
                    return Retry(delay=hold, reason="waiting for Services to restore their VIPs")
                await self._status_read(snap, d)
                async with self._group_lock(request):
                    group = await self.ledger.read_group(request)
                    # Nothing awaited between choosing and the commit's first step, which
                    # marks the new addresses as being claimed.
                    plan = decide(
                        snap,
                        None,
                        self.cache.allocator,
                        skip=self.cache.claiming,
                        status=self._reserved(),
                        honour_status=honour_status,
                        released=released,
                    )
                    if plan.choice is None:
                        return await self._refuse(snap, d, plan, quiet=quiet, guard=guard)
                    record = await self.ledger.commit(request, plan.choice, key, group)
            except Conflict:
                self.metrics.conflicts.inc()
                continue
            return await self._announce(snap, d, plan, record, tag)
        return Retry(
            delay=self.retry_delay_s,
            reason=f"{self.conflict_retries} compare-and-set conflicts in a row",
        )

    def restoring(self, snap: ServiceSnapshot) -> float:
        """Seconds a Service with nothing in its status waits before it gets new VIPs,
        after ipam started on a lost store (0: none).

        The status VIP index reserves the addresses of every snapshot on the stream,
        but a cluster whose watcher starts later has published nothing yet: its
        Services' addresses are unknown. While other Services show VIPs in their
        status (the store was lost, not new), new ones wait until
        ``restore_grace_s`` after the start, so that every watcher has published.
        """
        if self.restore_until is None or snap.status_vips or snap.requested_ips:
            return 0.0
        left = self.restore_until - asyncio.get_running_loop().time()
        if left <= 0:
            self.restore_until = None
            log.info("restore window over: new Services get new VIPs")
            return 0.0
        if not self._reserving or self.status is None or not len(self.status.vips):
            return 0.0  # nobody holds VIPs in status: a first start, not a lost store
        if not self._told_restoring:
            self._told_restoring = True
            log.warning(
                "ipam started on an empty store while Services hold VIPs in their status "
                "(the store was lost): new Services wait %.1f s for every cluster's "
                "watcher to publish its Services, so that no live VIP is given away",
                left,
            )
        return left

    async def _status_read(self, snap: ServiceSnapshot, d: Delivery) -> None:
        """Before choosing new addresses: wait until every snapshot published before
        this one is in the status VIP index, so that no address another Service
        holds in its status is taken (whichever is handled first). A Service naming
        its addresses does not wait: reservations do not stand in a user's way.

        Bounded: a stalled index (its consumer lost with a NATS server) must not stall
        every new Service. Past ``status_wait_s`` the choice is made with what the
        index knows; reservations matter only after a lost store, when every
        Service's claim is gone, and claims alone keep an address from being owned
        twice."""
        if self._reserving and self.status is not None and not snap.requested_ips:
            await self.status.caught_up(d.seq, self.status_wait_s)

    def _reserved(self) -> StatusVips | None:
        return self.status.vips if self.status is not None and self._reserving else None

    @property
    def _reserving(self) -> bool:
        """Whether status VIPs are reserved (an index runs: see StatusIndex)."""
        return self.status is not None and not self.status.retired

    async def _announce(
        self, snap: ServiceSnapshot, d: Delivery, plan: Plan, record: ServiceRecord, tag: str
    ) -> Verdict:
        """Publish a committed allocation, unless a newer message ended the incarnation."""
        ref = ServiceRef(snap.cluster, snap.namespace, snap.name)
        (outgoing,) = plan.publish
        msg_id = d.derive_id(outgoing.tag + tag)
        if self.publisher.expect_subject:
            # The check that nothing newer ended this incarnation, made by the
            # server as it stores the VipAssigned (no round trip of its own).
            published = await self.publisher.publish_if_newest(outgoing.message, d, msg_id)
        else:
            published = False
        if not published and await self._overtaken(snap, d):
            await self.ledger.undo(service_key(*ref), record, request_of(snap).owner)
            return DONE
        self.waiting.drop(ref)
        self.metrics.allocations.inc(pool=record.pool)
        self.metrics.changed()
        choice = plan.choice
        how = f" (sharing key {snap.sharing_key!r})" if choice and choice.joined else ""
        log.info("assigned %s to %s%s", ", ".join(record.vips), "/".join(ref), how)
        kept = len(set(snap.status_vips) & set(record.vips))
        if kept:
            self.metrics.status_vips.inc(kept, outcome="kept")
        for note in plan.warnings:
            self.metrics.status_vips.inc(outcome="not_kept")
            log.warning("%s: %s; assigned %s", "/".join(ref), note, ", ".join(record.vips))
        if not published:
            await self.publisher.publish(outgoing.message, msg_id)
        return DONE

    async def _keep(
        self,
        snap: ServiceSnapshot,
        d: Delivery,
        plan: Plan,
        key: str,
        current: tuple[ServiceRecord, int],
        *,
        quiet: bool,
        tag: str,
    ) -> Verdict:
        """The Service holds VIPs: they never move; its claims follow its changes."""
        if plan.action == "ignore":
            return DONE
        record, revision = current
        ref = ServiceRef(snap.cluster, snap.namespace, snap.name)
        if plan.reactivate is not None:
            revision = await self.ledger.write_record(key, plan.reactivate, revision)
        for update in plan.updates:
            await self.ledger.rewrite(update)
        if plan.choice is not None:
            # A move: the new claims first, then the record naming them.
            await self.ledger.take(request_of(snap), plan.choice)
        record = plan.record or plan.reactivate or record
        if plan.record is not None:
            revision = await self.ledger.write_record(key, plan.record, revision)
            if plan.record.stale is None:
                log.info("%s: its VIPs %s are no longer stale", "/".join(ref), plan.record.vips)
        for warning in plan.warnings:
            log.warning("%s", warning)
        if plan.failure is None:
            self.waiting.drop(ref)
            # A refused move is told first (VipFailed MoveRefused), then what it keeps.
            for outgoing in plan.publish:
                if isinstance(outgoing.message, VipFailed) and not quiet:
                    self.metrics.failures.inc(reason=outgoing.message.reason)
                await self.publisher.publish(outgoing.message, d.derive_id(outgoing.tag + tag))
            return DONE
        self.waiting.put(ref, d.subject.raw, request_of(snap), plan.failure.full)
        if quiet:
            return DONE
        # The appliance keeps what the last VipAssigned said: read it before
        # VipFailed is published, and say it again after, so that the last
        # word on the subject still describes the Service's VIPs.
        kept = await self._last_assigned(snap, record)
        self.metrics.failures.inc(reason=plan.failure.code)
        log.warning("change of %s refused: %s", "/".join(ref), plan.failure.full)
        for outgoing in plan.publish:
            await self.publisher.publish(outgoing.message, d.derive_id(outgoing.tag + tag))
        await self.publisher.publish(kept, d.derive_id("vip-assigned-kept" + tag))
        return DONE

    async def _on_step(self, message: StatusWritten | LbProgrammed, d: Delivery) -> Verdict:
        """A move goes on (see :mod:`vipwire.ipam.core.moves`): the record first, then the
        old claims left, then the last VipAssigned said again as the record is now."""
        ref = ServiceRef(message.cluster, message.namespace, message.name)
        key = service_key(*ref)
        for _ in range(self.conflict_retries):
            current = await self.cache.store.get_record(key)
            record = current[0] if current is not None else None
            plan = decide(message, record, self.cache.allocator)
            if plan.action != "step" or current is None:
                return DONE
            try:
                if plan.record is not None:
                    await self.ledger.write_record(key, plan.record, current[1])
            except Conflict:
                self.metrics.conflicts.inc()
                continue
            after = plan.record or current[0]
            owner = Owner(*ref, after.uid)
            if plan.leave:
                await self.ledger.leave_all(owner, plan.leave, None)
            log.info(
                "%s: move %s (serving %s%s)",
                "/".join(ref),
                after.move or "done",
                ", ".join(announced(after)),
                f"; withdrawing {', '.join(after.moving_from)}" if after.moving_from else "",
            )
            if plan.say_again:
                subject = service_subject("vip", *ref)
                last = await self.publisher.last(subject)
                said = last.message if last is not None else None
                if isinstance(said, VipAssigned) and said.uid == after.uid:
                    again = moved(said, after)
                    await self.publisher.publish(again, d.derive_id(f"vip-move-{after.move}"))
            if plan.leave and after.move == "":
                # Moved: a change made during the move (not followed then) is decided now.
                newest = await self.publisher.last(service_subject("service", *ref))
                said = newest.message if newest is not None else None
                snap = in_force(said) if said is not None else None
                if (
                    isinstance(snap, ServiceSnapshot)
                    and not snap.deleting
                    and snap.uid == after.uid
                    and unlike(self.cache.allocator, request_of(snap))
                ):
                    return await self.on_live(snap, d, check_newer=False, tag="-moved")
            return DONE
        return Retry(delay=self.retry_delay_s, reason="compare-and-set conflicts on a move")

    async def _last_assigned(self, snap: ServiceSnapshot, record: ServiceRecord) -> VipAssigned:
        subject = service_subject("vip", snap.cluster, snap.namespace, snap.name)
        try:
            last = await self.publisher.last(subject)
        except BusError:
            last = None
        return kept_assignment(
            snap, record, last.message if last is not None else None, self.cache.allocator
        )

    async def _overtaken(self, snap: ServiceSnapshot, d: Delivery) -> bool:
        """After committing, whether a newer message ends this incarnation's life.

        If so, a replica handling that message may already have found no record
        and released everything; what was just committed would then outlive the
        Service. Nothing has been published for it yet, so it is undone instead.
        """
        newest = await self.publisher.newest(d.subject.raw, d.seq)
        if newest is None:
            return False
        same_life = (
            isinstance(newest, ServiceSnapshot) and not newest.deleting and newest.uid == snap.uid
        )
        return not same_life

    async def _refuse(
        self, snap: ServiceSnapshot, d: Delivery, plan: Plan, *, quiet: bool, guard: bool
    ) -> Verdict:
        """``guard``: whether ``d`` is superseded was not asked; the publish asks it."""
        ref = ServiceRef(snap.cluster, snap.namespace, snap.name)
        failure = plan.failure
        assert failure is not None
        self.waiting.drop(ref)  # re-queue at the back
        if plan.wait:
            self.waiting.put(ref, d.subject.raw, request_of(snap), failure.full)
        if quiet:
            return DONE
        (outgoing,) = plan.publish
        msg_id = d.derive_id(outgoing.tag)
        if guard:
            if not await self.publisher.publish_if_newest(outgoing.message, d, msg_id):
                return DONE  # superseded: the newer message decides
        else:
            await self.publisher.publish(outgoing.message, msg_id)
        self.metrics.failures.inc(reason=failure.code)
        log.warning("no address for %s: %s", "/".join(ref), failure.full)
        return DONE

    @contextlib.asynccontextmanager
    async def _group_lock(self, request: Request) -> AsyncIterator[None]:
        """Within a replica, Services of one sharing key choose one at a time (across
        replicas the group key's revision decides)."""
        if request.sharing_key is None:
            yield
            return
        async with self.locks.hold(
            ("group", request.cluster, request.namespace, request.sharing_key)
        ):
            yield

    # --- a Service going away -----------------------------------------------------------

    async def _on_going(self, message: ServiceSnapshot | ServiceGone, d: Delivery) -> Verdict:
        """The Service is going away: withdraw first, release on LbRemoved."""
        ref = ServiceRef(message.cluster, message.namespace, message.name)
        key = service_key(*ref)
        owner = Owner(*ref, message.uid)
        current, superseded = await self._read_record(key, d)
        if superseded:
            return DONE  # a newer message on this subject decides
        self.waiting.drop(ref)
        for attempt in range(self.conflict_retries):
            if attempt:
                current = await self.cache.store.get_record(key)
            record, revision = current if current is not None else (None, 0)
            plan = decide(message, record, self.cache.allocator)
            if plan.action == "forget":
                await self.ledger.leave_all(owner, plan.leave, key)
            try:
                await self.withdraw(key, plan, revision, d)
            except Conflict:
                self.metrics.conflicts.inc()
                continue
            return DONE
        return Retry(delay=self.retry_delay_s, reason="compare-and-set conflicts")

    async def withdraw(
        self, key: str, plan: Plan, revision: int, d: Delivery | None, msg_id: str = ""
    ) -> None:
        """Write the plan's record (releasing) and publish its messages (VipReleasing,
        VipReleased). ``d`` names the messages; without it, ``msg_id`` does."""
        if plan.record is not None:
            await self.ledger.write_record(key, plan.record, revision)
        for outgoing in plan.publish:
            message = outgoing.message
            if isinstance(message, VipReleasing):
                log.info(
                    "releasing %s of %s/%s/%s",
                    ", ".join(message.vips),
                    message.cluster,
                    message.namespace,
                    message.name,
                )
            await self.publisher.publish(
                message, d.derive_id(outgoing.tag) if d is not None else msg_id
            )

    async def _on_lb_removed(self, message: LbRemoved, d: Delivery) -> Verdict:
        """The appliance is clean of this Service: now it can leave its claims."""
        ref = ServiceRef(message.cluster, message.namespace, message.name)
        key = service_key(*ref)
        owner = Owner(*ref, message.uid)
        for _ in range(self.conflict_retries):
            current = await self.cache.store.get_record(key)
            plan = decide(message, current[0] if current else None, self.cache.allocator)
            if plan.action == "ignore":
                return DONE
            if plan.action == "forget":
                freed = await self.ledger.leave_all(owner, plan.leave, key)
                if plan.announce_left:
                    await self.publisher.publish(
                        released(message, freed), d.derive_id("vip-released")
                    )
                return DONE
            assert current is not None
            record, revision = current
            try:
                await self.ledger.release_record(key, record, revision)
            except Conflict:
                self.metrics.conflicts.inc()
                continue
            log.info("released %s of %s", ", ".join(record.vips), "/".join(ref))
            if plan.action == "reassign":
                return await self._reallocate(ref, record, d)
            for outgoing in plan.publish:
                await self.publisher.publish(outgoing.message, d.derive_id(outgoing.tag))
            return DONE
        return Retry(delay=self.retry_delay_s, reason="compare-and-set conflicts")

    async def _reallocate(self, ref: ServiceRef, record: ServiceRecord, d: Delivery) -> Verdict:
        """After an operator release: new VIPs from the pools as they are now."""
        subject = service_subject("service", *ref)
        last = await self.publisher.last(subject)
        message = last.message if last is not None else None
        if (
            last is not None
            and isinstance(message, ServiceSnapshot)
            and not message.deleting
            and message.uid == record.uid
        ):
            delivery = last.delivery(subject)
            assert delivery is not None
            return await self.on_live(
                message,
                delivery,
                tag=f"-after-release-{d.seq}",
                check_newer=False,
                honour_status=False,
                released=record,
            )
        cluster, namespace, name = ref
        gone = VipReleased(
            cluster=cluster, namespace=namespace, name=name, uid=record.uid, vips=record.vips
        )
        await self.publisher.publish(gone, d.derive_id("vip-released"))
        return DONE

    async def retry_waiting(
        self, ref: ServiceRef, waiting: Waiting, message: ServiceSnapshot, last: Newest
    ) -> None:
        """A waiting Service, from its newest snapshot, quietly (no VipFailed again)."""
        delivery = last.delivery(waiting.subject)
        assert delivery is not None
        async with self.locks.hold(ref):
            if self.waiting.get(ref) is waiting:
                await self.on_live(message, delivery, quiet=True, tag="-retried", check_newer=False)
