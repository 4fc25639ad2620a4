"""Declarations (the stream, a KV bucket) that wait out a JetStream election.

While a NATS server of a cluster is down or just back, the stream's (or a
bucket's) leader is being elected: JetStream API requests time out or answer
503 for a few seconds. A service starting then must wait, not exit: a
crashing standby is one that cannot take over (the chaos bench saw exactly
that). Anything else the server says (a bad config, no room) is final.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors

from vipwire.bus._link import Backoff

log = logging.getLogger("vipwire.bus")

T = TypeVar("T")


class NotDeclaredYet(Exception):
    """What we may only look at (the stream, for an identity without the right to
    declare it) does not exist yet: whoever may declare it (ipam) has not yet."""


def transient(exc: BaseException) -> bool:
    """Whether a JetStream API failure is the kind an election causes (retry it)."""
    if isinstance(exc, NotDeclaredYet):
        return True
    if isinstance(exc, TimeoutError | nats.errors.TimeoutError | nats.errors.NoRespondersError):
        return True
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return True
    return isinstance(exc, nats.js.errors.APIError) and exc.code == 503


async def waiting_out_elections(
    what: str, attempt: Callable[[], Awaitable[T]], backoff: Backoff, *, attempts: int | None
) -> T:
    """``attempt()`` until it succeeds or fails for a reason that is not transient.

    Retries back off like reconnects; one log line when it starts waiting, one
    when it is through. ``attempts`` bounds the tries (None: until cancelled).
    """
    tried = 0
    while True:
        tried += 1
        try:
            result = await attempt()
        except Exception as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            if isinstance(exc, NotDeclaredYet):
                cause = exc
            if not transient(cause) or (attempts is not None and tried >= attempts):
                raise
            if tried == 1 and isinstance(cause, NotDeclaredYet):
                log.warning("%s: %s; waiting for it, not ready meanwhile", what, cause)
            elif tried == 1:
                log.warning(
                    "%s: JetStream does not answer yet (%r), as while a stream leader is "
                    "elected; retrying with backoff, not ready meanwhile",
                    what,
                    cause,
                )
            await asyncio.sleep(backoff.delay(tried - 1))
            continue
        if tried > 1:
            log.info("%s: done after %d attempts", what, tried)
        return result
