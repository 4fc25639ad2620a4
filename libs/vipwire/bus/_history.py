"""Reading a KV bucket's keys without nats-py's ``KeyValue.keys()``.

That call ends on the watcher's "initial values done" marker, which can
arrive before the values (or say there are none when there are some): under
load it returns a partial list or raises ``NoKeysError`` for a full bucket.
Here the end is decided by the server's own count of what is pending.
"""

from __future__ import annotations

import contextlib

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from vipwire.bus._bus import BusError

_GONE = frozenset({"DEL", "PURGE"})


async def kv_keys(
    js: JetStreamContext, bucket: str, pattern: str = ">", *, timeout: float = 30.0
) -> list[str]:
    """The keys of ``bucket`` matching ``pattern`` that hold a value now, sorted."""
    prefix = f"$KV.{bucket}."
    try:
        sub = await js.subscribe(
            prefix + pattern,
            stream=f"KV_{bucket}",
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, headers_only=True),
        )
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
        raise BusError(f"cannot read the keys of KV bucket {bucket}: {exc!r}") from exc
    keys: list[str] = []
    try:
        info = await sub.consumer_info()
        # Messages may be delivered before the info is read: then they wait in
        # the subscription, and each says how many were still pending after it.
        delivered = info.delivered.consumer_seq if info.delivered is not None else 0
        more = bool(info.num_pending) or bool(delivered)
        while more:
            msg = await sub.next_msg(timeout=timeout)
            more = bool(msg.metadata.num_pending)
            if (msg.headers or {}).get("KV-Operation") not in _GONE:
                keys.append(msg.subject[len(prefix) :])
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
        raise BusError(f"cannot read the keys of KV bucket {bucket}: {exc!r}") from exc
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return sorted(keys)
