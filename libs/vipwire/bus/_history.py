"""Reading the last message of every subject a filter matches, once (and, built on
it, dropping a KV bucket's old delete markers and the stream's ended subjects).

For start-up reads of what the stream (or a KV bucket's stream) already says,
outside any consumer's deliveries: no span, no ack per message. The end is
decided by the server's own count of what is pending, never by a marker or a
timeout: nats-py's ``KeyValue.keys()`` ends on the watcher's "initial values
done" marker, which can arrive before the values (or say there are none when
there are some), and under load returns a partial list or raises
``NoKeysError`` for a full bucket.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncGenerator

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from vipwire.bus._errors import BusError
from vipwire.bus._sweeping import LastOnSubject, ended_subjects
from vipwire.contracts import MalformedMessage, Message, decode

_GONE = frozenset({"DEL", "PURGE"})


def reader_name(js: JetStreamContext) -> str | None:
    """A fresh name for the short-lived (ordered) consumer of one read, when the
    connection has an identity (its inboxes are ``_INBOX.<identity>``): named, the
    consumer is created on the API subject that carries its filter, which the server
    checks against the identity's permissions. Without one, None: unnamed, as before
    identities, since nats-py re-creates an ordered consumer under the same name
    after a gap (a failover mid-read), which the server refuses for a name in use."""
    prefix = bytes(getattr(getattr(js, "_nc", None), "_inbox_prefix", b"_INBOX"))
    return f"read-{uuid.uuid4().hex[:16]}" if prefix != b"_INBOX" else None


async def last_per_subject(
    js: JetStreamContext,
    stream: str,
    subjects: str,
    *,
    headers_only: bool = False,
    timeout: float = 30.0,
) -> AsyncGenerator[Msg, None]:
    """The last message of each subject of ``stream`` matching ``subjects``, in stream order.

    An ordered consumer (flow-controlled: the client never buffers more than it
    reads); ``timeout`` bounds the wait for each message.
    """
    try:
        sub = await js.subscribe(
            subjects,
            stream=stream,
            ordered_consumer=True,
            config=ConsumerConfig(
                # Named, with its one filter: created on the API subject that carries the
                # filter, which the server checks against the identity's permissions.
                name=reader_name(js),
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                headers_only=headers_only or None,
            ),
        )
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
        raise BusError(f"cannot read {subjects} from stream {stream}: {exc!r}") from exc
    try:
        info = await sub.consumer_info()
        # Messages may be delivered before the info is read: then they wait in
        # the subscription, and each says how many were still pending after it.
        delivered = info.delivered.consumer_seq if info.delivered is not None else 0
        more = bool(info.num_pending) or bool(delivered)
        while more:
            msg = await sub.next_msg(timeout=timeout)
            more = bool(msg.metadata.num_pending)
            yield msg
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
        raise BusError(f"cannot read {subjects} from stream {stream}: {exc!r}") from exc
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def kv_keys(
    js: JetStreamContext, bucket: str, pattern: str = ">", *, timeout: float = 30.0
) -> list[str]:
    """The keys of ``bucket`` matching ``pattern`` that hold a value now, sorted."""
    prefix = f"$KV.{bucket}."
    keys: list[str] = []
    messages = last_per_subject(
        js, f"KV_{bucket}", prefix + pattern, headers_only=True, timeout=timeout
    )
    async with contextlib.aclosing(messages):
        async for msg in messages:
            if (msg.headers or {}).get("KV-Operation") not in _GONE:
                keys.append(msg.subject[len(prefix) :])
    return sorted(keys)


async def kv_purge_markers(
    js: JetStreamContext, bucket: str, older_than: float, *, timeout: float = 30.0
) -> int:
    """Drop the delete markers of ``bucket`` written more than ``older_than`` seconds ago;
    returns how many.

    A deleted key leaves a marker for good (every Service name ever released
    by ipam, say), and every start-up read goes through them all. Each marker
    is purged with its stream sequence as the bound, so a key written again
    since keeps its new value whatever the timing.
    """
    prefix = f"$KV.{bucket}."
    stream = f"KV_{bucket}"
    cutoff = time.time() - older_than
    old: list[tuple[str, int]] = []
    messages = last_per_subject(js, stream, prefix + ">", headers_only=True, timeout=timeout)
    async with contextlib.aclosing(messages):
        async for msg in messages:
            if (msg.headers or {}).get("KV-Operation") not in _GONE:
                continue
            meta = msg.metadata
            if meta.timestamp.timestamp() <= cutoff:
                old.append((msg.subject, meta.sequence.stream))
    for subject, seq in old:
        try:
            # Everything of the subject below seq + 1: the marker and nothing newer.
            await js.purge_stream(stream, seq=seq + 1, subject=subject)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            raise BusError(f"cannot purge {subject} from stream {stream}: {exc!r}") from exc
    return len(old)


async def purge_ended(
    js: JetStreamContext, stream: str, subjects: str, max_age_s: float, *, timeout: float = 60.0
) -> list[str]:
    """Purge every subject of the Services and Nodes that ended over ``max_age_s`` ago
    (see :mod:`vipwire.bus._sweeping`); returns the subjects purged.

    Each subject is purged below the sequence after the last message read, so a
    message published since (a new Service of the same name) stays.
    """
    last: list[LastOnSubject] = []
    messages = last_per_subject(js, stream, subjects, headers_only=False, timeout=timeout)
    async with contextlib.aclosing(messages):
        async for msg in messages:
            try:
                message: Message | None = decode(msg.subject, msg.data)
            except MalformedMessage:
                message = None
            meta = msg.metadata
            stamp = int(meta.timestamp.timestamp() * 1e9)
            last.append(LastOnSubject(msg.subject, meta.sequence.stream, stamp, message))
    try:
        acked = await _durables_acked_through(js, stream)
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
        raise BusError(f"cannot read the consumers of stream {stream}: {exc!r}") from exc
    purges = ended_subjects(last, now_ns=time.time_ns(), max_age_s=max_age_s, acked_through=acked)
    for purge in purges:
        try:
            await js.purge_stream(stream, seq=purge.below_seq, subject=purge.subject)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            raise BusError(f"cannot purge {purge.subject} from stream {stream}: {exc!r}") from exc
    return [p.subject for p in purges]


async def _durables_acked_through(js: JetStreamContext, stream: str) -> int | None:
    """The lowest stream sequence every durable consumer has acknowledged (None: none)."""
    floors = [
        int(info.ack_floor.stream_seq if info.ack_floor is not None else 0)
        for info in await js.consumers_info(stream)
        if info.config.durable_name
    ]
    return min(floors) if floors else None
