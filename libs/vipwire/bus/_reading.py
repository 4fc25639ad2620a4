"""Reading what a stream already holds: the last message of one subject, or of
every subject a filter matches.

A direct read, outside any consumer: for a handler that must know whether a
newer message exists, and for start-up reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from vipwire.bus._errors import NATS_ERRORS, NotFound, translate
from vipwire.bus._history import reader_name


class StoredMessage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A message as the stream stores it.

    Not tracked by the garbage collector (its headers are a dict of strings,
    never a cycle): start-up reads make one per subject.
    """

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
    return _stored(raw, subject)


def _stored(raw: Any, subject: str) -> StoredMessage:
    stamp = raw.time
    return StoredMessage(
        subject=raw.subject or subject,
        seq=int(raw.seq or 0),
        data=raw.data or b"",
        headers=dict(raw.headers or {}),
        time_ns=int(stamp.timestamp() * 1e9) if stamp is not None else 0,
    )


async def _next_on(
    js: JetStreamContext, stream: str, subject: str, seq: int
) -> StoredMessage | None:
    """The first message on ``subject`` at or after stream sequence ``seq``; None: none."""
    try:
        raw = await js.get_msg(stream, seq=seq, subject=subject, next=True)
    except NATS_ERRORS as exc:
        error = translate(exc, f"reading {subject} from sequence {seq}")
        if isinstance(error, NotFound):
            return None
        raise error from exc
    return _stored(raw, subject)


#: Stream sequences the first window of :func:`newest_before` covers (each next one is
#: four times as wide).
_FIRST_WINDOW = 64


async def newest_before(
    js: JetStreamContext,
    stream: str,
    subject: str,
    before_seq: int,
    accept: Callable[[StoredMessage], bool],
    *,
    max_reads: int = 256,
) -> StoredMessage | None:
    """The newest message on ``subject`` stored before ``before_seq`` that ``accept`` takes;
    None: there is none, or it was not found within ``max_reads`` reads.

    JetStream reads a subject forwards only (next message on a subject from a
    sequence), so this walks back in windows of stream sequences, each four
    times as wide as the one after it, and reads forward inside each: one read
    per message of the subject in the window, one for a window without any.
    """
    hi = before_seq
    window = _FIRST_WINDOW
    reads = 0
    while hi > 1:
        lo = max(1, hi - window)
        found: StoredMessage | None = None
        seq = lo
        while True:
            if reads >= max_reads:
                # What was found so far may not be the newest: better none than an older one.
                return None
            msg = await _next_on(js, stream, subject, seq)
            reads += 1
            if msg is None or msg.seq >= hi:
                break
            if accept(msg):
                found = msg
            seq = msg.seq + 1
        if found is not None:
            return found
        hi = lo
        window *= 4
    return None


async def last_messages(
    js: JetStreamContext, stream: str, subjects: str, *, timeout_s: float = 30.0
) -> list[StoredMessage]:
    """The last message of every subject matching ``subjects``, in stream order.

    Collected by a callback, not read one ``next_msg`` at a time: each of
    those is a ``wait_for`` of its own, four times the cost over 10,000
    subjects (a restarted ipam reads every ``vip`` subject this way). The end
    is the server's own count of what is pending, as in :func:`last_per_subject`.
    """
    # By subject: an ordered consumer that resets after a gap delivers again.
    found: dict[str, StoredMessage] = {}
    done = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        meta = msg.metadata
        found[msg.subject] = StoredMessage(
            subject=msg.subject,
            seq=meta.sequence.stream,
            data=msg.data,
            headers=msg.headers or {},
            time_ns=int(meta.timestamp.timestamp() * 1e9),
        )
        if not meta.num_pending:
            done.set()

    what = f"reading {subjects} from stream {stream}"
    try:
        sub = await js.subscribe(
            subjects,
            stream=stream,
            cb=on_msg,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            # Named, with its one filter: see vipwire.bus._history.reader_name.
            config=ConsumerConfig(name=reader_name(js)),
        )
    except NATS_ERRORS as exc:
        raise translate(exc, what) from exc
    try:
        info = await sub.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered is not None else 0
        if info.num_pending or delivered:
            await asyncio.wait_for(done.wait(), timeout_s)
    except NATS_ERRORS as exc:
        raise translate(exc, what) from exc
    finally:
        with contextlib.suppress(*NATS_ERRORS):
            await sub.unsubscribe()
    return sorted(found.values(), key=lambda m: m.seq)
