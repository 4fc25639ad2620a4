"""Reading what a stream already holds: the last message of one subject, or of
every subject a filter matches.

A direct read, outside any consumer: for a handler that must know whether a
newer message exists, and for start-up reads.
"""

from __future__ import annotations

import contextlib

import msgspec
from nats.js import JetStreamContext

from vipwire.bus._errors import NATS_ERRORS, NotFound, translate
from vipwire.bus._history import last_per_subject


class StoredMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message as the stream stores it."""

    subject: str
    #: Its stream sequence.
    seq: int
    data: bytes
    headers: dict[str, str] = {}
    #: When the server stored it (ns since the epoch; 0 where not told).
    time_ns: int = 0


async def last_message(js: JetStreamContext, stream: str, subject: str) -> StoredMessage | None:
    """The last message on ``subject`` (which may hold wildcards), or None: none there."""
    try:
        raw = await js.get_last_msg(stream, subject)
    except NATS_ERRORS as exc:
        error = translate(exc, f"reading the last message on {subject}")
        if isinstance(error, NotFound):
            return None
        raise error from exc
    stamp = raw.time
    return StoredMessage(
        subject=raw.subject or subject,
        seq=int(raw.seq or 0),
        data=raw.data or b"",
        headers=dict(raw.headers or {}),
        time_ns=int(stamp.timestamp() * 1e9) if stamp is not None else 0,
    )


async def last_messages(
    js: JetStreamContext, stream: str, subjects: str, *, timeout_s: float = 30.0
) -> list[StoredMessage]:
    """The last message of every subject matching ``subjects``, in stream order."""
    found: list[StoredMessage] = []
    messages = last_per_subject(js, stream, subjects, timeout=timeout_s)
    async with contextlib.aclosing(messages):
        async for msg in messages:
            meta = msg.metadata
            found.append(
                StoredMessage(
                    subject=msg.subject,
                    seq=meta.sequence.stream,
                    data=msg.data,
                    headers=dict(msg.headers or {}),
                    time_ns=int(meta.timestamp.timestamp() * 1e9),
                )
            )
    return found
