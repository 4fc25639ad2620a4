"""The ``vipwire-ipam`` KV bucket: typed claims, records and groups, every write a CAS.

The layout is :mod:`vipwire.ipam.core.records`; this module only reads and
writes it, turning the client's errors into :class:`StoreError` and a lost
compare-and-set into :class:`Conflict`.
"""

from __future__ import annotations

import logging

import msgspec
import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from vipwire.bus import BusError, kv_purge_markers
from vipwire.contracts import IPAM_BUCKET
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

_WRONG_LAST_SEQUENCE = (10071, 10164)


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


def _is_wrong_last(exc: BaseException) -> bool:
    return isinstance(exc, nats.js.errors.KeyWrongLastSequenceError) or (
        isinstance(exc, nats.js.errors.APIError) and exc.err_code in _WRONG_LAST_SEQUENCE
    )


class IpamStore:
    """Typed, compare-and-set access to the ipam bucket.

    ``js``: the JetStream context the bucket was opened with; with it, listings
    and the start-up load know exactly when they have seen everything (see
    :meth:`last_revision`), without it they trust the client's end-of-initial-
    values marker, which nats-py may deliver before the values under load.
    """

    def __init__(
        self, kv: KeyValue, js: JetStreamContext | None = None, *, bucket: str = IPAM_BUCKET
    ) -> None:
        self.kv = kv
        self.js = js
        self.bucket = bucket

    async def last_revision(self, prefix: str) -> int | None:
        """The revision of the newest entry (value or delete marker) under ``prefix``
        (``"addr."``); 0: none; None: unknown (no JetStream context).

        A watch delivers the last entry of every key in revision order, so once
        it has delivered this revision it has delivered every key that existed.
        """
        if self.js is None:
            return None
        try:
            last = await self.js.get_last_msg(f"KV_{self.bucket}", f"$KV.{self.bucket}.{prefix}>")
        except nats.js.errors.NotFoundError:
            return 0
        except (TimeoutError, nats.errors.Error) as exc:
            raise StoreError(f"cannot read the last revision under {prefix}: {exc!r}") from exc
        return int(last.seq or 0)

    async def purge_markers(self, older_than: float) -> int:
        """Drop the delete markers written more than ``older_than`` seconds ago; returns
        how many (0 without a JetStream context)."""
        if self.js is None:
            return 0
        try:
            return await kv_purge_markers(self.js, self.bucket, older_than)
        except BusError as exc:
            raise StoreError(f"cannot drop old delete markers: {exc}") from exc

    async def scan(self, prefix: str) -> dict[str, KeyValue.Entry]:
        """Every live entry under ``prefix`` now, by key."""
        threshold = await self.last_revision(prefix)
        if threshold == 0:
            return {}
        try:
            watcher = await self.kv.watch(prefix + ">")
        except (TimeoutError, nats.errors.Error) as exc:
            raise StoreError(f"cannot list {prefix}: {exc!r}") from exc
        found: dict[str, KeyValue.Entry] = {}
        seen = 0
        try:
            while True:
                entry = await watcher.__anext__()  # type: ignore[no-untyped-call]
                if entry is None:
                    if threshold is None:
                        return found
                    continue
                seen = max(seen, _revision(entry))
                if entry.operation in (KV_DEL, KV_PURGE):
                    found.pop(entry.key, None)
                else:
                    found[entry.key] = entry
                if threshold is not None and seen >= threshold:
                    return found
        except (TimeoutError, nats.errors.Error) as exc:
            raise StoreError(f"cannot list {prefix}: {exc!r}") from exc
        finally:
            try:
                await watcher.stop()  # type: ignore[no-untyped-call]
            except (TimeoutError, nats.errors.Error) as exc:
                log.debug("stopping the listing of %s: %r", prefix, exc)

    # --- claims -------------------------------------------------------------------

    async def get_claim(self, address: str) -> tuple[Claim, int] | None:
        key = addr_key(address)
        entry = await self._get(key)
        if entry is None:
            return None
        return decode_claim(key, entry.value), _revision(entry)

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
            except (TimeoutError, nats.errors.Error) as exc:
                if not _is_wrong_last(exc):
                    raise self._error("create", key, exc) from exc
                # Changed since the marker: a plain create tells whether it is free.
        try:
            return await self.kv.create(key, value)
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._error("create", key, exc) from exc

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
            return decode_record(key, entry.value), _revision(entry)
        except RecordError as exc:
            raise StoreError(str(exc)) from exc

    async def create_record(self, key: str, record: ServiceRecord) -> int:
        try:
            return await self.kv.create(key, encode(record))
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._error("create", key, exc) from exc

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
            return GroupRecord(key=""), _revision(entry)
        return group, _revision(entry)

    async def put_group(self, key: str, group: GroupRecord, last: int | None) -> int:
        """Create (``last`` None) or CAS-update a group; :class:`Conflict` if it changed."""
        if last is None:
            try:
                return await self.kv.create(key, encode(group))
            except (TimeoutError, nats.errors.Error) as exc:
                raise self._error("create", key, exc) from exc
        return await self._update(key, encode(group), last)

    async def delete_group(self, key: str, last: int) -> None:
        await self._delete(key, last)

    # --- watching ----------------------------------------------------------------------

    async def records(self) -> dict[str, tuple[ServiceRecord, int]]:
        """Every Service record now, by key."""
        found: dict[str, tuple[ServiceRecord, int]] = {}
        for key, entry in (await self.scan(SERVICE_PREFIX)).items():
            try:
                found[key] = (decode_record(key, entry.value), _revision(entry))
            except RecordError as exc:
                log.warning("%s", exc)
        return found

    async def watch_claims(self) -> ClaimWatch:
        """Every current claim, then a ``None`` marker, then every change as it happens."""
        try:
            watcher = await self.kv.watch(ADDR_PREFIX + ">")
        except (TimeoutError, nats.errors.Error) as exc:
            raise StoreError(f"cannot watch claims: {exc!r}") from exc
        return ClaimWatch(watcher)

    # --- plumbing --------------------------------------------------------------------------

    async def _get(self, key: str) -> KeyValue.Entry | None:
        try:
            return await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._error("get", key, exc) from exc

    async def _update(self, key: str, value: bytes, last: int) -> int:
        try:
            return await self.kv.update(key, value, last=last)
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._error("update", key, exc) from exc

    async def _delete(self, key: str, last: int) -> None:
        try:
            await self.kv.delete(key, last=last)
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._error("delete", key, exc) from exc

    @staticmethod
    def _error(op: str, key: str, exc: BaseException) -> StoreError:
        if _is_wrong_last(exc):
            return Conflict(f"{op} {key}: changed concurrently")
        return StoreError(f"{op} {key} failed: {exc!r}")


def _revision(entry: KeyValue.Entry) -> int:
    return int(entry.revision or 0)


class ClaimWatch:
    """A running watch of the ``addr.`` keys."""

    def __init__(self, watcher: KeyValue.KeyWatcher) -> None:
        self._watcher = watcher
        #: The newest revision delivered so far (of any ``addr.`` key, even unreadable).
        self.revision = 0

    async def next(self) -> ClaimEvent | None:
        """The next change; ``None`` once, when every claim that existed has been seen.

        Raises StopAsyncIteration after :meth:`stop`.
        """
        while True:
            entry = await self._watcher.__anext__()  # type: ignore[no-untyped-call]
            if entry is None:
                return None
            self.revision = max(self.revision, _revision(entry))
            token = entry.key[len(ADDR_PREFIX) :]
            try:
                address = from_kv_token(token)
            except ValueError:
                log.warning("ignoring KV key %s: not an address claim", entry.key)
                continue
            deleted = entry.operation in (KV_DEL, KV_PURGE)
            return ClaimEvent(
                address=address,
                claim=None if deleted else decode_claim(entry.key, entry.value),
                revision=_revision(entry),
            )

    async def stop(self) -> None:
        try:
            await self._watcher.stop()  # type: ignore[no-untyped-call]
        except (TimeoutError, nats.errors.Error) as exc:
            log.debug("stopping the claim watch: %r", exc)
