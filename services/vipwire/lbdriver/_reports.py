"""What the stream already says about every Service: the last ``lb`` message of each.

A restarted lbdriver compares each Service's outcome with this and publishes
only what differs; without it, a restart re-published a confirmation for
every live Service (10,000 messages, each handled by every watcher and node
agent) though the stream held the same one already.

Read with one ephemeral consumer that needs no acknowledgements and one pull
request: nothing of it is handled as a delivery (no span, no ack per message).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from vipwire.bus import Bus
from vipwire.contracts import STREAM, family_filter

log = logging.getLogger("vipwire.lbdriver")

#: (cluster, namespace, name) of a Service.
Key = tuple[str, str, str]
#: Reports asked for per pull request.
_BATCH: Final = 1000


def fingerprint(data: bytes) -> bytes:
    """What identifies a report's content (16 bytes of its SHA-256)."""
    return hashlib.sha256(data).digest()[:16]


def _sequence(msg: Msg) -> int | None:
    """The stream sequence, from the ``$JS.ACK`` reply subject (v1 layout), else metadata."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        with contextlib.suppress(ValueError):
            return int(tokens[5])
    try:
        return int(msg.metadata.sequence.stream)
    except (ValueError, AttributeError, IndexError, nats.errors.Error):
        return None


async def last_reports(bus: Bus, *, timeout: float = 30.0) -> dict[Key, tuple[bytes, int]]:
    """Per Service, the fingerprint of the last ``lb`` message and its stream sequence.

    Best effort: whatever cannot be read (timeout, server error) is missing from
    the answer, and a missing Service is simply reported again.
    """
    started = time.monotonic()
    found: dict[Key, tuple[bytes, int]] = {}
    try:
        info = await bus.js.add_consumer(
            STREAM,
            ConsumerConfig(
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=AckPolicy.NONE,
                filter_subjects=[family_filter("lb")],
                inactive_threshold=max(timeout, 5.0),
                mem_storage=True,
            ),
        )
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
        log.warning("cannot read the last reports from the stream (%r); will report all", exc)
        return found
    name = info.name
    pending = int(info.num_pending or 0)
    try:
        if pending:
            await _read(bus, name, pending, found, timeout)
    finally:
        with contextlib.suppress(TimeoutError, nats.errors.Error, nats.js.errors.Error):
            await bus.js.delete_consumer(STREAM, name)
    log.info(
        "read %d of %d last report(s) from the stream in %.2fs",
        len(found),
        pending,
        time.monotonic() - started,
    )
    return found


async def _read(
    bus: Bus, consumer: str, pending: int, found: dict[Key, tuple[bytes, int]], timeout: float
) -> None:
    """Pull ``pending`` messages, a bounded batch per request (a batch of every Service's
    report at once could exceed what the client buffers for one subscription)."""
    deadline = time.monotonic() + timeout
    done = asyncio.Event()
    received = 0
    wanted = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal received
        headers = msg.headers or {}
        if not msg.reply and "Status" in headers:
            if headers["Status"] != "100":  # anything but a heartbeat ends the request
                done.set()
            return
        received += 1
        tokens = msg.subject.split(".")
        seq = _sequence(msg)
        if len(tokens) == 5 and seq is not None:
            found[(tokens[1], tokens[3], tokens[4])] = (fingerprint(msg.data), seq)
        if received >= wanted:
            done.set()

    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox, cb=on_msg)
    try:
        while received < pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            batch = min(_BATCH, pending - received)
            wanted = received + batch
            done.clear()
            request = {"batch": batch, "expires": int(left * 1e9)}
            await bus.nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{consumer}",
                json.dumps(request).encode(),
                reply=inbox,
            )
            try:
                await asyncio.wait_for(done.wait(), left)
            except TimeoutError:
                return
            if received < wanted:
                return  # the request ended short (the stream changed): keep what came
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
