"""The ``vipwire-ipam`` KV bucket: typed claims, records and groups, every write a CAS.

The layout is :mod:`vipwire.ipam.core.records`; this module only reads and
writes it through the bus's :class:`~vipwire.bus.KvBucket`, turning the bus's
errors into :class:`StoreError` and a lost compare-and-set
(:class:`~vipwire.bus.BusConflict`) into :class:`Conflict`.
"""

from __future__ import annotations

import logging

import msgspec

from vipwire.bus import BusConflict, BusError, KvBucket, KvEntry, KvWatch
from vipwire.ipam.core.addresses import from_kv_token
from vipwire.ipam.core.claims import Claim
from vipwire.ipam.core.records import (
    ADDR_PREFIX,
    SERVICE_PREFIX,
    UNREADABLE,
    GroupRecord,
    RecordError,
    ServiceRecord,
    addr_key,
    decode_group,
    decode_record,
    encode,
)
from vipwire.ipam.core.records import decode_claim as _decode_claim

log = logging.getLogger("vipwire.ipam.store")


class StoreError(Exception):
    """The KV bucket could not do what was asked (unreachable, timed out, refused)."""


class Conflict(StoreError):
    """A compare-and-set lost: the key exists, or changed since it was read."""


class ClaimEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A change of one ``addr.`` key seen by a watch; ``claim`` None: deleted."""

    address: str
    claim: Claim | None
    revision: int


def decode_claim(key: str, raw: bytes | None) -> Claim:
    """A claim's value (either layout), logged when it is unreadable (kept as taken)."""
    claim = _decode_claim(key, raw)
    if claim is UNREADABLE:
        log.error("claim %s in the KV is not valid JSON of a claim; keeping it as taken", key)
    return claim


class IpamStore:
    """Typed, compare-and-set access to the ipam bucket."""

    def __init__(self, bucket: KvBucket) -> None:
        self.kv = bucket
        self.bucket = bucket.bucket

    async def last_revision(self, prefix: str) -> int:
        """The revision of the newest entry (value or delete marker) under ``prefix``
        (``"addr."``); 0: none.

        A watch delivers the last entry of every key in revision order, so once
        it has delivered this revision it has delivered every key that existed.
        """
        try:
            return await self.kv.last_revision(prefix)
        except BusError as exc:
            raise StoreError(f"cannot read the last revision under {prefix}: {exc}") from exc

    async def purge_markers(self, older_than: float) -> int:
        """Drop the delete markers written more than ``older_than`` seconds ago; returns
        how many."""
        try:
            return await self.kv.purge_markers(older_than)
        except BusError as exc:
            raise StoreError(f"cannot drop old delete markers: {exc}") from exc

    async def scan(self, prefix: str) -> dict[str, KvEntry]:
        """Every live entry under ``prefix`` now, by key."""
        try:
            return await self.kv.scan(prefix)
        except BusError as exc:
            raise StoreError(f"cannot list {prefix}: {exc}") from exc

    # --- claims -------------------------------------------------------------------

    async def get_claim(self, address: str) -> tuple[Claim, int] | None:
        key = addr_key(address)
        entry = await self._get(key)
        if entry is None:
            return None
        return decode_claim(key, entry.value), entry.revision

    async def create_claim(
        self, address: str, claim: Claim, *, deleted_at: int | None = None
    ) -> int:
        """Claim ``address``; :class:`Conflict` if anyone owns it.

        ``deleted_at``: the revision of the delete marker last seen on the key. A
        ``create`` over a marker costs three round trips (a failed create, a read,
        an update); an ``update`` at the marker's revision is the same test (the
        key is deleted, unchanged since) in one.
        """
        key = addr_key(address)
        value = encode(claim)
        if deleted_at:
            try:
                return await self.kv.update(key, value, last=deleted_at)
            except BusConflict:
                pass  # changed since the marker: a plain create tells whether it is free
            except BusError as exc:
                raise self._error("create", key, exc) from exc
        return await self._create(key, value)

    async def update_claim(self, address: str, claim: Claim, last: int) -> int:
        """Rewrite a claim as it was at revision ``last``; :class:`Conflict` if it changed.

        Also how a claim we hold is *touched*: rewritten unchanged, so that a
        concurrent delete of its old revision fails.
        """
        return await self._update(addr_key(address), encode(claim), last)

    async def delete_claim(self, address: str, last: int) -> None:
        await self._delete(addr_key(address), last)

    # --- Service records ------------------------------------------------------------

    async def get_record(self, key: str) -> tuple[ServiceRecord, int] | None:
        entry = await self._get(key)
        if entry is None:
            return None
        try:
            return decode_record(key, entry.value), entry.revision
        except RecordError as exc:
            raise StoreError(str(exc)) from exc

    async def create_record(self, key: str, record: ServiceRecord) -> int:
        return await self._create(key, encode(record))

    async def update_record(self, key: str, record: ServiceRecord, last: int) -> int:
        return await self._update(key, encode(record), last)

    async def delete_record(self, key: str, last: int) -> None:
        await self._delete(key, last)

    # --- sharing groups --------------------------------------------------------------

    async def get_group(self, key: str) -> tuple[GroupRecord, int] | None:
        entry = await self._get(key)
        if entry is None:
            return None
        group = decode_group(entry.value)
        if group is None:
            log.error("group %s in the KV is unreadable; it will be rewritten", key)
            return GroupRecord(key=""), entry.revision
        return group, entry.revision

    async def put_group(self, key: str, group: GroupRecord, last: int | None) -> int:
        """Create (``last`` None) or CAS-update a group; :class:`Conflict` if it changed."""
        if last is None:
            return await self._create(key, encode(group))
        return await self._update(key, encode(group), last)

    async def delete_group(self, key: str, last: int) -> None:
        await self._delete(key, last)

    # --- watching ----------------------------------------------------------------------

    async def records(self) -> dict[str, tuple[ServiceRecord, int]]:
        """Every Service record now, by key."""
        found: dict[str, tuple[ServiceRecord, int]] = {}
        for key, entry in (await self.scan(SERVICE_PREFIX)).items():
            try:
                found[key] = (decode_record(key, entry.value), entry.revision)
            except RecordError as exc:
                log.warning("%s", exc)
        return found

    async def watch_claims(self) -> ClaimWatch:
        """Every current claim, then a ``None`` marker, then every change as it happens."""
        try:
            watch = await self.kv.watch(ADDR_PREFIX)
        except BusError as exc:
            raise StoreError(f"cannot watch claims: {exc}") from exc
        return ClaimWatch(watch)

    # --- plumbing --------------------------------------------------------------------------

    async def _get(self, key: str) -> KvEntry | None:
        try:
            return await self.kv.get(key)
        except BusError as exc:
            raise self._error("get", key, exc) from exc

    async def _create(self, key: str, value: bytes) -> int:
        try:
            return await self.kv.create(key, value)
        except BusError as exc:
            raise self._error("create", key, exc) from exc

    async def _update(self, key: str, value: bytes, last: int) -> int:
        try:
            return await self.kv.update(key, value, last=last)
        except BusError as exc:
            raise self._error("update", key, exc) from exc

    async def _delete(self, key: str, last: int) -> None:
        try:
            await self.kv.delete(key, last=last)
        except BusError as exc:
            raise self._error("delete", key, exc) from exc

    @staticmethod
    def _error(op: str, key: str, exc: BusError) -> StoreError:
        if isinstance(exc, BusConflict):
            return Conflict(f"{op} {key}: changed concurrently")
        return StoreError(f"{op} {key} failed: {exc}")


class ClaimWatch:
    """A running watch of the ``addr.`` keys."""

    def __init__(self, watch: KvWatch) -> None:
        self._watch = watch
        #: The newest revision delivered so far (of any ``addr.`` key, even unreadable).
        self.revision = 0

    async def next(self) -> ClaimEvent | None:
        """The next change; ``None`` once, when every claim that existed has been seen.

        Raises StopAsyncIteration after :meth:`stop`; StoreError if the watch fails.
        """
        while True:
            try:
                entry = await self._watch.next()
            except BusError as exc:
                raise StoreError(f"the claim watch failed: {exc}") from exc
            if entry is None:
                return None
            self.revision = max(self.revision, entry.revision)
            token = entry.key[len(ADDR_PREFIX) :]
            try:
                address = from_kv_token(token)
            except ValueError:
                log.warning("ignoring KV key %s: not an address claim", entry.key)
                continue
            return ClaimEvent(
                address=address,
                claim=None if entry.deleted else decode_claim(entry.key, entry.value),
                revision=entry.revision,
            )

    async def stop(self) -> None:
        await self._watch.stop()
