"""The bus's one exception family, so that no service has to know nats-py's.

Callers decide on the kind, never on a server error code: a lost
compare-and-set is a :class:`BusConflict` whichever of JetStream's codes
said so.
"""

from __future__ import annotations

import nats.errors
import nats.js.errors

#: JetStream's "wrong last sequence" answers: 10071 for a stream publish
#: (and a KV update through it), 10164 for the same test on a KV direct update.
_WRONG_LAST_SEQUENCE = frozenset({10071, 10164})

#: JetStream's "message size exceeds maximum allowed" (the stream's max_msg_size).
_TOO_LARGE = frozenset({10054})
#: JetStream refusing to store for want of room: 10077 "store failed" (the stream's
#: max_bytes / max_msgs / max_msgs_per_subject with DiscardNew), 10023 "insufficient
#: resources" (the server's JetStream store is exhausted), 10047 and 10028 (storage
#: or memory resources exceeded).
_STORE_FULL = frozenset({10077, 10023, 10047, 10028})

#: What nats-py raises for a bus operation that did not happen.
NATS_ERRORS = (TimeoutError, nats.errors.Error, nats.js.errors.Error)


class BusError(Exception):
    """The bus could not do what was asked (server unreachable, API refused)."""


class BusConflict(BusError):
    """A compare-and-set lost: the key exists (create) or changed since it was read."""


class WrongLastSequence(BusConflict):
    """The subject's or key's last sequence was not the one the write named."""


class NotFound(BusError):
    """Nothing there: no such message, key, stream or bucket."""


class NoResponders(BusError):
    """A request found nobody subscribed to answer it."""


class TooLarge(BusError):
    """The message is larger than the bus accepts (the connection's max_payload or the
    stream's max_msg_size): it will never be stored, so retrying it cannot help."""

    def __init__(self, message: str, *, size: int, limit: int | None) -> None:
        super().__init__(message)
        #: The encoded message's size in bytes.
        self.size = size
        #: The limit it is over (bytes), where known.
        self.limit = limit


def passes(exc: BaseException) -> bool:
    """Whether ``exc`` is a bus failure that passes by itself (a server gone, a stream
    between leaders, a loaded server): worth a short retry, without a traceback. Not
    :class:`TooLarge`, which no retry cures."""
    return isinstance(exc, BusError) and not isinstance(exc, TooLarge)


class StoreFull(BusError):
    """The stream (its byte or message limits) or the server's JetStream store has no
    room: nothing new is stored until room is made. Retrying later may succeed."""


def too_large_or_full(exc: BaseException) -> str | None:
    """``"too_large"`` or ``"store_full"`` when ``exc`` is JetStream refusing to store
    a message for its size or for want of room; else None."""
    if isinstance(exc, nats.errors.MaxPayloadError):
        return "too_large"
    if isinstance(exc, nats.js.errors.APIError):
        code = getattr(exc, "err_code", None)
        if code in _TOO_LARGE:
            return "too_large"
        if code in _STORE_FULL:
            return "store_full"
    return None


def server_says(exc: BaseException) -> str:
    """What the server said, for a message (nats-py's repr of an API error says nothing)."""
    description = getattr(exc, "description", None)
    return str(description) if description else repr(exc)


def is_wrong_last_sequence(exc: BaseException) -> bool:
    return isinstance(exc, nats.js.errors.KeyWrongLastSequenceError) or (
        isinstance(exc, nats.js.errors.APIError)
        and getattr(exc, "err_code", None) in _WRONG_LAST_SEQUENCE
    )


def translate(exc: BaseException, what: str) -> BusError:
    """The bus error for a nats-py failure of ``what`` (the caller raises it ``from exc``)."""
    if is_wrong_last_sequence(exc):
        return WrongLastSequence(f"{what}: changed concurrently")
    refused = too_large_or_full(exc)
    if refused == "too_large":
        return TooLarge(f"{what}: too large ({server_says(exc)})", size=0, limit=None)
    if refused == "store_full":
        return StoreFull(f"{what}: no room in the store ({server_says(exc)})")
    if isinstance(exc, nats.errors.NoRespondersError):
        return NoResponders(f"{what}: nobody answers")
    if isinstance(exc, nats.js.errors.NotFoundError | nats.js.errors.KeyNotFoundError):
        return NotFound(f"{what}: not found")
    return BusError(f"{what} failed: {exc!r}")
