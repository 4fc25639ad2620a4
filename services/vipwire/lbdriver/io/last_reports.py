"""What the stream already says about every Service: the last ``lb`` message of each.

A restarted lbdriver compares each Service's outcome with this and publishes
only what differs; without it, a restart re-published a confirmation for
every live Service (10,000 messages, each handled by every watcher and node
agent) though the stream held the same one already.

Read once with :meth:`vipwire.bus.Bus.last_messages`: nothing of it is handled
as a delivery (no span, no ack per message).
"""

from __future__ import annotations

import logging
import time

from vipwire.bus import Bus, BusError
from vipwire.contracts import ServiceRef, family_filter
from vipwire.lbdriver.core.outcomes import fingerprint

log = logging.getLogger("vipwire.lbdriver")

__all__ = ["fingerprint", "last_reports"]


async def last_reports(bus: Bus, *, timeout_s: float = 30.0) -> dict[ServiceRef, tuple[bytes, int]]:
    """Per Service, the fingerprint of the last ``lb`` message and its stream sequence.

    Best effort: if the stream cannot be read (timeout, server error) the answer
    is empty, and every Service is simply reported again.
    """
    started = time.monotonic()
    found: dict[ServiceRef, tuple[bytes, int]] = {}
    try:
        messages = await bus.last_messages(family_filter("lb"), timeout_s=timeout_s)
    except BusError as exc:
        log.warning("could not read the last reports from the stream (%s); will report all", exc)
        return found
    for msg in messages:
        tokens = msg.subject.split(".")
        if len(tokens) == 5:
            key = ServiceRef(tokens[1], tokens[3], tokens[4])
            found[key] = (fingerprint(msg.data), msg.seq)
    log.info(
        "read %d last report(s) from the stream in %.2fs", len(found), time.monotonic() - started
    )
    return found
