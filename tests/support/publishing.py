"""Publishing while the bus comes back (a restarted server, a stream's election)."""

from __future__ import annotations

import asyncio

from vipwire.bus import Bus, BusError
from vipwire.contracts import Message


async def publish_until_accepted(
    bus: Bus, message: Message, *, msg_id: str | None = None, timeout_s: float = 20.0
) -> None:
    """Publish, retrying while the stream cannot take it yet (``msg_id`` drops a repeat)."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                await bus.publish(message, msg_id=msg_id)
                return
            except BusError:
                await asyncio.sleep(0.1)  # pacing retries, not a wait for an outcome
