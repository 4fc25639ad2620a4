"""A JetStream KV bucket behind the bus's own types and errors.

Every write that names a revision is a compare-and-set; losing one raises
:class:`~vipwire.bus.BusConflict`, never a nats-py error, so a ledger built on
this decides on kinds, not on server codes.
"""

from __future__ import annotations

import datetime
import logging
from typing import Literal

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from vipwire.bus._errors import (
    NATS_ERRORS,
    BusConflict,
    BusError,
    NotFound,
    StoreFull,
    TooLarge,
    is_wrong_last_sequence,
    translate,
)
from vipwire.bus._history import kv_keys, kv_purge_markers
from vipwire.bus._limits import STORE_FULL, TOO_LARGE, StoreHealth
from vipwire.bus._reading import last_message

log = logging.getLogger("vipwire.bus.kv")

Operation = Literal["PUT", "DEL", "PURGE"]


class KvEntry(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One revision of a key: a value, or a delete or purge marker (``value`` None).

    Not tracked by the garbage collector (it holds no containers): a start-up
    load makes one per key, and in a process with a large heap each tracked
    allocation brings the next full collection nearer.
    """

    key: str
    value: bytes | None
    revision: int
    operation: Operation = "PUT"
    #: When it was written (ns since the epoch; 0 where not told).
    created_ns: int = 0

    @property
    def deleted(self) -> bool:
        return self.operation != "PUT"


def _entry(raw: KeyValue.Entry) -> KvEntry:
    gone = raw.operation in (KV_DEL, KV_PURGE)
    operation: Operation = "PUT" if not gone else ("DEL" if raw.operation == KV_DEL else "PURGE")
    return KvEntry(
        key=raw.key,
        value=None if gone else (raw.value or b""),
        revision=int(raw.revision or 0),
        operation=operation,
        created_ns=_ns(raw.created),
    )


def _ns(created: object) -> int:
    # nats-py types it int, but a watch hands a datetime (and a get, nothing).
    if isinstance(created, datetime.datetime):
        return int(created.timestamp() * 1e9)
    return int(created) if isinstance(created, int) else 0


class KvWatch:
    """A running watch: every current entry, one ``None`` once they are all seen,
    then every change as it happens (delete markers included)."""

    def __init__(self, watcher: KeyValue.KeyWatcher, what: str) -> None:
        self._watcher = watcher
        self._what = what

    async def next(self) -> KvEntry | None:
        """The next entry; None once, when every entry that existed has been seen.

        Raises StopAsyncIteration after :meth:`stop`.
        """
        try:
            raw = await self._watcher.__anext__()  # type: ignore[no-untyped-call]
        except NATS_ERRORS as exc:
            raise translate(exc, self._what) from exc
        return None if raw is None else _entry(raw)

    async def stop(self) -> None:
        try:
            await self._watcher.stop()  # type: ignore[no-untyped-call]
        except NATS_ERRORS as exc:
            log.debug("stopping %s: %r", self._what, exc)


class KvBucket:
    """One KV bucket."""

    def __init__(
        self, kv: KeyValue, js: JetStreamContext, bucket: str, *, stores: StoreHealth | None = None
    ) -> None:
        self._kv = kv
        self._js = js
        self.bucket = bucket
        self._stores = stores

    def _write_failed(self, exc: BaseException, what: str) -> BusError:
        """The bus error for a failed write; a refusal for size or room is counted, and a
        full bucket reported (every component is not ready until it has room)."""
        error = translate(exc, f"{what} in KV bucket {self.bucket}")
        if self._stores is not None and isinstance(error, TooLarge | StoreFull):
            reason = TOO_LARGE if isinstance(error, TooLarge) else STORE_FULL
            self._stores.rejected.inc(family=f"kv:{self.bucket}", reason=reason)
            if isinstance(error, StoreFull):
                own_limits = getattr(exc, "err_code", None) == 10077
                self._stores.refused(
                    f"KV_{self.bucket}",
                    f"KV bucket {self.bucket} is full: {error}; raise bus.kv_max_bytes "
                    f"(and the server's JetStream store) or find what filled it",
                    own_limits=own_limits,
                )
        return error

    def _written(self) -> None:
        if self._stores is not None:
            self._stores.stored(f"KV_{self.bucket}")

    async def get(self, key: str) -> KvEntry | None:
        """The key's value now; None: never written, deleted or purged."""
        try:
            raw = await self._kv.get(key)
        except NATS_ERRORS as exc:
            error = translate(exc, f"get {key}")
            if isinstance(error, NotFound):
                return None
            raise error from exc
        return _entry(raw)

    async def revision(self, key: str) -> int:
        """The revision of ``key``'s last entry (value or marker); 0: none. Asked of the
        bucket's leader, not of a replica that may lag behind it (as a direct get may)."""
        last = await last_message(self._js, f"KV_{self.bucket}", f"$KV.{self.bucket}.{key}")
        return 0 if last is None else last.seq

    async def put(self, key: str, value: bytes) -> int:
        """Write ``key`` whatever it holds; returns the revision."""
        try:
            revision = await self._kv.put(key, value)
        except NATS_ERRORS as exc:
            raise self._write_failed(exc, f"put {key}") from exc
        self._written()
        return revision

    async def create(self, key: str, value: bytes) -> int:
        """Write ``key`` only if it holds no value; returns the revision.

        :class:`BusConflict` if it holds one.
        """
        try:
            revision = await self._kv.create(key, value)
        except NATS_ERRORS as exc:
            if is_wrong_last_sequence(exc):
                raise BusConflict(f"create {key}: it exists") from exc
            raise self._write_failed(exc, f"create {key}") from exc
        self._written()
        return revision

    async def update(self, key: str, value: bytes, *, last: int) -> int:
        """Write ``key`` only if its last revision (value or marker) is ``last``.

        :class:`~vipwire.bus.WrongLastSequence` if it changed since.
        """
        try:
            revision = await self._kv.update(key, value, last=last)
        except NATS_ERRORS as exc:
            raise self._write_failed(exc, f"update {key}") from exc
        self._written()
        return revision

    async def delete(self, key: str, *, last: int | None = None) -> None:
        """Leave a delete marker on ``key`` (only if its last revision is ``last``)."""
        try:
            await self._kv.delete(key, last=last)
        except NATS_ERRORS as exc:
            raise self._write_failed(exc, f"delete {key}") from exc
        self._written()

    async def purge(self, key: str) -> None:
        """Drop every revision of ``key``, leaving one purge marker."""
        try:
            await self._kv.purge(key)
        except NATS_ERRORS as exc:
            raise self._write_failed(exc, f"purge {key}") from exc
        self._written()

    async def watch(self, prefix: str) -> KvWatch:
        """Watch every key under ``prefix`` (``"addr."``)."""
        what = f"the watch of {self.bucket}/{prefix}"
        try:
            watcher = await self._kv.watch(prefix + ">")
        except NATS_ERRORS as exc:
            raise translate(exc, what) from exc
        return KvWatch(watcher, what)

    async def last_revision(self, prefix: str) -> int:
        """The revision of the newest entry (value or marker) under ``prefix``; 0: none.

        A watch delivers the last entry of every key in revision order, so once
        it has delivered this revision it has delivered every key that existed.
        """
        last = await last_message(self._js, f"KV_{self.bucket}", f"$KV.{self.bucket}.{prefix}>")
        return 0 if last is None else last.seq

    async def scan(self, prefix: str) -> dict[str, KvEntry]:
        """Every key under ``prefix`` that holds a value now."""
        threshold = await self.last_revision(prefix)
        if threshold == 0:
            return {}
        watch = await self.watch(prefix)
        found: dict[str, KvEntry] = {}
        try:
            # The watch's own "initial values done" marker can come before the
            # values, so the end is the revision read above, not the marker.
            while True:
                entry = await watch.next()
                if entry is None:
                    continue
                if entry.deleted:
                    found.pop(entry.key, None)
                else:
                    found[entry.key] = entry
                if entry.revision >= threshold:
                    return found
        finally:
            await watch.stop()

    async def keys(self, pattern: str = ">", *, timeout_s: float = 30.0) -> list[str]:
        """The keys matching ``pattern`` that hold a value now, sorted."""
        return await kv_keys(self._js, self.bucket, pattern, timeout=timeout_s)

    async def purge_markers(self, older_than_s: float) -> int:
        """Drop delete markers older than ``older_than_s``; returns how many."""
        return await kv_purge_markers(self._js, self.bucket, older_than_s)
