"""The ``vipwire-ipam`` KV bucket: claims and Service records, every write a CAS.

Layout (bucket ``vipwire-ipam``, history 1):

``addr.<token>``
    One key per owned address (``192_0_2_10``, ``2001-db8--a``). Value: a
    :class:`~vipwire.ipam.allocator.Claim` as JSON ``{cluster, namespace, name,
    uid, pool}``. Created with ``create`` (fails if the key exists), so two
    replicas can never both own an address.
``svc.<cluster>.<namespace>.<name>``
    One key per Service holding addresses. Value: a :class:`ServiceRecord`.
    Updated and deleted with the revision it was read at.

Rules that keep the two consistent across replicas and crashes: a claim is
created before any record names its address, and deleted only after the
record stopped naming it (with the revision read before that record write).
"""

from __future__ import annotations

import logging
from typing import Literal

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from vipwire.ipam.addresses import from_kv_token, kv_token
from vipwire.ipam.allocator import Claim

log = logging.getLogger("vipwire.ipam.store")

_WRONG_LAST_SEQUENCE = (10071, 10164)


class StoreError(Exception):
    """The KV bucket could not do what was asked (unreachable, timed out, refused)."""


class Conflict(StoreError):
    """A compare-and-set lost: the key exists, or changed since it was read."""


class ServiceRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON value of ``svc.<cluster>.<ns>.<name>``: what one Service holds."""

    uid: str
    vips: tuple[str, ...]
    pool: str
    appliance_group: str
    #: ``releasing``: the Service is going away; its claims are held until the
    #: appliance reports it clean (LbRemoved).
    state: Literal["active", "releasing"] = "active"


class ClaimEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A change of one ``addr.`` key seen by a watch; ``claim`` None: deleted."""

    address: str
    claim: Claim | None
    revision: int


# Owned but unreadable: still taken, never handed out, named so an operator sees it.
UNREADABLE = Claim(cluster="?", namespace="?", name="?", uid="?", pool="?")

_ADDR = "addr."
_claim_decoder = msgspec.json.Decoder(Claim)
_record_decoder = msgspec.json.Decoder(ServiceRecord)
_encoder = msgspec.json.Encoder()


def addr_key(address: str) -> str:
    return _ADDR + kv_token(address)


def service_key(cluster: str, namespace: str, name: str) -> str:
    return f"svc.{cluster}.{namespace}.{name}"


def _decode_claim(key: str, raw: bytes | None) -> Claim:
    try:
        return _claim_decoder.decode(raw or b"")
    except msgspec.DecodeError:
        log.error("claim %s in the KV is not valid JSON of a claim; keeping it as taken", key)
        return UNREADABLE


def _is_wrong_last(exc: BaseException) -> bool:
    return isinstance(exc, nats.js.errors.KeyWrongLastSequenceError) or (
        isinstance(exc, nats.js.errors.APIError) and exc.err_code in _WRONG_LAST_SEQUENCE
    )


class IpamStore:
    """Typed, compare-and-set access to the ipam bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    # --- claims -------------------------------------------------------------------

    async def get_claim(self, address: str) -> tuple[Claim, int] | None:
        key = addr_key(address)
        entry = await self._get(key)
        if entry is None:
            return None
        return _decode_claim(key, entry.value), _revision(entry)

    async def create_claim(self, address: str, claim: Claim) -> int:
        """Claim ``address``; :class:`Conflict` if anyone owns it."""
        key = addr_key(address)
        try:
            return await self.kv.create(key, _encoder.encode(claim))
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._error("create", key, exc) from exc

    async def touch_claim(self, address: str, claim: Claim, last: int) -> int:
        """Rewrite a claim we hold, so a concurrent delete of its old revision fails."""
        return await self._update(addr_key(address), _encoder.encode(claim), last)

    async def delete_claim(self, address: str, last: int) -> None:
        await self._delete(addr_key(address), last)

    # --- Service records ------------------------------------------------------------

    async def get_record(self, key: str) -> tuple[ServiceRecord, int] | None:
        entry = await self._get(key)
        if entry is None:
            return None
        try:
            return _record_decoder.decode(entry.value or b""), _revision(entry)
        except msgspec.DecodeError as exc:
            raise StoreError(f"record {key} in the KV is not a Service record: {exc}") from exc

    async def create_record(self, key: str, record: ServiceRecord) -> int:
        try:
            return await self.kv.create(key, _encoder.encode(record))
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._error("create", key, exc) from exc

    async def update_record(self, key: str, record: ServiceRecord, last: int) -> int:
        return await self._update(key, _encoder.encode(record), last)

    async def delete_record(self, key: str, last: int) -> None:
        await self._delete(key, last)

    # --- watching ----------------------------------------------------------------------

    async def watch_claims(self) -> ClaimWatch:
        """Every current claim, then a ``None`` marker, then every change as it happens."""
        try:
            watcher = await self.kv.watch(_ADDR + ">")
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

    async def next(self) -> ClaimEvent | None:
        """The next change; ``None`` once, when every claim that existed has been seen.

        Raises StopAsyncIteration after :meth:`stop`.
        """
        while True:
            entry = await self._watcher.__anext__()  # type: ignore[no-untyped-call]
            if entry is None:
                return None
            token = entry.key[len(_ADDR) :]
            try:
                address = from_kv_token(token)
            except ValueError:
                log.warning("ignoring KV key %s: not an address claim", entry.key)
                continue
            deleted = entry.operation in (KV_DEL, KV_PURGE)
            return ClaimEvent(
                address=address,
                claim=None if deleted else _decode_claim(entry.key, entry.value),
                revision=_revision(entry),
            )

    async def stop(self) -> None:
        try:
            await self._watcher.stop()  # type: ignore[no-untyped-call]
        except (TimeoutError, nats.errors.Error) as exc:
            log.debug("stopping the claim watch: %r", exc)
