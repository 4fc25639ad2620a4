"""What the stream already says about every Service: the last ``lb`` message of each.

A restarted lbdriver compares each Service's outcome with this and publishes
only what differs; without it, a restart re-published a confirmation for
every live Service (10,000 messages, each handled by every watcher and node
agent) though the stream held the same one already.

Read once with :func:`vipwire.bus.last_per_subject`: nothing of it is handled
as a delivery (no span, no ack per message).
"""

from __future__ import annotations

import contextlib
import logging
import time

from vipwire.bus import Bus, BusError, last_per_subject
from vipwire.contracts import STREAM, family_filter
from vipwire.lbdriver.core.outcomes import ServiceKey, fingerprint

log = logging.getLogger("vipwire.lbdriver")

__all__ = ["fingerprint", "last_reports"]


async def last_reports(bus: Bus, *, timeout: float = 30.0) -> dict[ServiceKey, tuple[bytes, int]]:
    """Per Service, the fingerprint of the last ``lb`` message and its stream sequence.

    Best effort: whatever cannot be read (timeout, server error) is missing from
    the answer, and a missing Service is simply reported again.
    """
    started = time.monotonic()
    found: dict[ServiceKey, tuple[bytes, int]] = {}
    messages = last_per_subject(bus.js, STREAM, family_filter("lb"), timeout=timeout)
    try:
        async with contextlib.aclosing(messages):
            async for msg in messages:
                tokens = msg.subject.split(".")
                if len(tokens) == 5:
                    key = ServiceKey(tokens[1], tokens[3], tokens[4])
                    found[key] = (fingerprint(msg.data), msg.metadata.sequence.stream)
    except BusError as exc:
        log.warning(
            "read only %d last report(s) from the stream (%s); will report the rest",
            len(found),
            exc,
        )
        return found
    log.info(
        "read %d last report(s) from the stream in %.2fs", len(found), time.monotonic() - started
    )
    return found
