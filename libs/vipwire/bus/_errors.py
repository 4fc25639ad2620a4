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


def is_wrong_last_sequence(exc: BaseException) -> bool:
    return isinstance(exc, nats.js.errors.KeyWrongLastSequenceError) or (
        isinstance(exc, nats.js.errors.APIError)
        and getattr(exc, "err_code", None) in _WRONG_LAST_SEQUENCE
    )


def translate(exc: BaseException, what: str) -> BusError:
    """The bus error for a nats-py failure of ``what`` (the caller raises it ``from exc``)."""
    if is_wrong_last_sequence(exc):
        return WrongLastSequence(f"{what}: changed concurrently")
    if isinstance(exc, nats.errors.NoRespondersError):
        return NoResponders(f"{what}: nobody answers")
    if isinstance(exc, nats.js.errors.NotFoundError | nats.js.errors.KeyNotFoundError):
        return NotFound(f"{what}: not found")
    return BusError(f"{what} failed: {exc!r}")
