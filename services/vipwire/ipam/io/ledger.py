"""The ledger: ipam's decisions made durable as compare-and-sets on the KV bucket.

Every write here is a CAS (a ``create`` that fails if the key exists, an
``update`` or ``delete`` at the revision read), raising :class:`Conflict`
when another writer got there first; the claim cache (the allocator) learns
what landed. The allocator reserved nothing when it chose, so a lost CAS
leaves it as it was: the shell re-reads and decides again. What the KV must
not keep of a half-done commit (claims no record names) is given back here.

Rules that keep claims and records consistent across replicas and crashes
(see :mod:`vipwire.ipam.core.records`): a Service is added to a claim before
any record of it names the address, and removed from it only after its
record stopped naming it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable

import msgspec

from vipwire.ipam.core.addresses import canonical
from vipwire.ipam.core.choices import Allocation
from vipwire.ipam.core.claims import Claim, ClaimUpdate, Owner, Request
from vipwire.ipam.core.records import GroupRecord, ServiceRecord, group_key, ref_of_key
from vipwire.ipam.io.bucket import Conflict, IpamStore, StoreError
from vipwire.ipam.io.claim_cache import ClaimCache
from vipwire.ipam.io.metrics import IpamMetrics

log = logging.getLogger("vipwire.ipam")

#: A sharing group as read before choosing: its key, its value, its revision.
GroupRead = tuple[str, GroupRecord | None, int | None]
NO_GROUP: GroupRead = ("", None, None)


class Ledger:
    """Claims, records and sharing groups, written by compare-and-set."""

    def __init__(
        self,
        cache: ClaimCache,
        metrics: IpamMetrics,
        *,
        conflict_retries: int,
        on_freed: Callable[[], None],
    ) -> None:
        self.cache = cache
        self.metrics = metrics
        self.conflict_retries = conflict_retries
        self._on_freed = on_freed

    @property
    def store(self) -> IpamStore:
        return self.cache.store

    # --- records ------------------------------------------------------------------------

    async def write_record(self, key: str, record: ServiceRecord, revision: int) -> int:
        return await self.store.update_record(key, record, revision)

    async def release_record(self, key: str, record: ServiceRecord, revision: int) -> None:
        """Delete a record, then leave its claims (read before, so an adopter's rewrite wins)."""
        ref = ref_of_key(key)
        assert ref is not None
        owner = Owner(*ref, record.uid)
        read: dict[str, tuple[Claim, int]] = {}
        for address in record.vips:
            got = await self.store.get_claim(address)
            if got is not None and got[0].holds(owner):
                read[address] = got
        await self.store.delete_record(key, revision)
        for address, got in read.items():
            await self.leave(owner, address, key, got)
        self.metrics.releases.inc(pool=record.pool)
        self.metrics.changed()
        self._on_freed()

    async def drop_record(self, key: str, revision: int) -> None:
        """Delete a record and keep its claims (their owner leaves them on LbRemoved)."""
        await self.store.delete_record(key, revision)

    async def undo(self, key: str, record: ServiceRecord, owner: Owner) -> None:
        """Take back an allocation whose Service went away before it was published."""
        for _ in range(self.conflict_retries):
            current = await self.store.get_record(key)
            if current is None or current[0].uid != record.uid:
                break
            if current[0].state != "active":
                return  # a withdrawal is under way and will release the claims
            try:
                await self.store.delete_record(key, current[1])
            except Conflict:
                self.metrics.conflicts.inc()
                continue
            break
        await self.leave_all(owner, record.vips, key)
        log.info("allocation of %s to %s undone: the Service went away", record.vips, owner)

    # --- claims -------------------------------------------------------------------------

    async def rewrite(self, update: ClaimUpdate) -> int:
        """CAS one claim from ``before`` to ``after``; :class:`Conflict` if it is not
        ``before`` any more (the cache then learns what it is). Returns the revision."""
        got = await self.store.get_claim(update.address)
        if got is None or got[0] != update.before:
            await self.cache.refresh(update.address)
            raise Conflict(f"claim on {update.address} changed")
        revision = await self.store.update_claim(update.address, update.after, got[1])
        self.cache.learn(update.address, update.after, revision)
        return revision

    async def commit(
        self, request: Request, allocation: Allocation, key: str, group: GroupRead = NO_GROUP
    ) -> ServiceRecord:
        """Make an allocation durable: claims first, then the record naming them.

        A new address of a sharing key is also entered in the key's group (CAS at
        the revision read before choosing): the arbiter between replicas that
        give the key's first VIP at the same time.

        On :class:`Conflict` the claims this attempt wrote are given back (at the
        revision it wrote, so a claim a concurrent attempt adopted stays); on any
        other failure they stay (the write may have landed) and a retry adopts
        them, as they carry this Service's uid.
        """
        owner = request.owner
        written: dict[str, tuple[Claim, int]] = {}
        claiming = self.cache.claiming
        new = [a for a in allocation.new if a not in claiming]
        claiming.update(new)
        # The choice is being taken: the next one starts after it (next fit).
        self.cache.allocator.advance(allocation)
        try:
            await self._write_claims(allocation, written)
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
            await self._give_back(owner, written)
            raise
        finally:
            claiming.difference_update(new)
        # Claims this incarnation held but did not use (left by an interrupted
        # attempt) are not named by any record: give them back.
        leftovers = set(self.cache.allocator.held_by(owner)) - set(allocation.addresses)
        if leftovers:
            with contextlib.suppress(StoreError):
                await self.leave_all(owner, sorted(leftovers), None)
        return record

    async def _write_claims(
        self, allocation: Allocation, written: dict[str, tuple[Claim, int]]
    ) -> None:
        """Create the allocation's new claims and join its shared ones, noting each
        in ``written`` as it lands (what a Conflict later gives back)."""
        for address in allocation.new:
            claim = allocation.claims[address]
            try:
                revision = await self.store.create_claim(
                    address, claim, deleted_at=self.cache.deleted_at(address)
                )
            except Conflict:
                await self.cache.lost(address)
                raise
            written[address] = (claim, revision)
            self.cache.learn(address, claim, revision)
        for address in allocation.joined:
            claim = allocation.claims[address]
            revision = await self.rewrite(ClaimUpdate(address, allocation.bases[address], claim))
            written[address] = (claim, revision)

    async def _give_back(self, owner: Owner, written: dict[str, tuple[Claim, int]]) -> None:
        """Undo what an attempt wrote, each at the revision it wrote (a claim a concurrent
        attempt adopted since stays); best effort: a retry adopts what is left."""
        for address, (claim, revision) in written.items():
            rest = claim.without(owner)
            with contextlib.suppress(StoreError):
                if rest is None:
                    await self.store.delete_claim(address, revision)
                    self.cache.forget(address)
                else:
                    rewritten = await self.store.update_claim(address, rest, revision)
                    self.cache.learn(address, rest, rewritten)

    async def take(self, request: Request, allocation: Allocation) -> None:
        """Claim a move's new addresses (and join shared ones) before the record names
        them (see :mod:`vipwire.ipam.core.moves`). On :class:`Conflict` the claims this
        attempt wrote are given back; a retry adopts whatever else it wrote (its uid)."""
        owner = request.owner
        written: dict[str, tuple[Claim, int]] = {}
        claiming = self.cache.claiming
        new = [a for a in allocation.new if a not in claiming]
        claiming.update(new)
        self.cache.allocator.advance(allocation)
        try:
            await self._write_claims(allocation, written)
        except Conflict:
            await self._give_back(owner, written)
            raise
        finally:
            claiming.difference_update(new)

    async def leave_all(
        self, owner: Owner, addresses: Iterable[str], key: str | None
    ) -> tuple[str, ...]:
        """``owner`` leaves the claims on ``addresses`` that no record of it names;
        returns the addresses it left."""
        left = [a for a in addresses if await self.leave(owner, a, key)]
        if left:
            log.info("%s left its claims on %s", owner.service, ", ".join(left))
            self.metrics.changed()
            self._on_freed()
        return tuple(left)

    async def leave(
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
        for attempt in range(self.conflict_retries):
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
                self.metrics.conflicts.inc()
                if key is not None:
                    current = await self.store.get_record(key)
                    if current is not None and current[0].uid == owner.uid:
                        await self.cache.refresh(address)
                        return False
        raise Conflict(f"could not leave the claim on {address}")

    # --- sharing groups -----------------------------------------------------------------

    async def read_group(self, request: Request) -> GroupRead:
        """The request's sharing group as the KV holds it, its claims refreshed into the
        cache (another replica's may not have come through the watch yet)."""
        if request.sharing_key is None:
            return NO_GROUP
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
            claim = self.cache.allocator.claim_of(address)
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
