"""The lbdriver election gives up a lease read that gets no answer, and asks again.

A NATS server killed with the lease stream's leader leaves a read unanswered until
the stream elects another; nats-py waits out its own 5 s request timeout. The
election must not: it asks again soon, and takes the lease once the stream answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vipwire.lbdriver.io.election import Election
from vipwire.lbdriver.settings import ApplianceSettings, LbdriverSettings
from vipwire.metrics import Registry

# Guards against a hang only: without the bound the first read never ends.
LIMIT_S = 10.0


class _LostStreamKv:
    """A lease bucket whose first read is never answered (the stream had no leader)."""

    def __init__(self) -> None:
        self.reads = 0
        self.abandoned = 0

    async def get(self, key: str) -> None:
        """None (nobody holds it) from the second read on."""
        self.reads += 1
        if self.reads == 1:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.abandoned += 1
                raise

    async def create(self, key: str, value: bytes) -> int:
        return 1

    async def delete(self, key: str, *, last: int | None = None) -> None:
        pass

    async def watch(self, prefix: str) -> Any:
        await asyncio.Event().wait()


class _Bus:
    def __init__(self, kv: _LostStreamKv) -> None:
        self._kv = kv

    async def kv(self, bucket: str) -> _LostStreamKv:
        return self._kv


async def test_an_unanswered_lease_read_is_given_up_and_asked_again() -> None:
    """The first read hangs: it is cancelled after the read bound, read again, and the
    replica takes the free lease."""
    kv = _LostStreamKv()
    elected: list[str] = []

    async def on_elected(reason: str) -> None:
        elected.append(reason)

    async def on_deposed(reason: str) -> None:
        pass

    election = Election(
        _Bus(kv),  # type: ignore[arg-type]
        LbdriverSettings(appliances=(ApplianceSettings(name="sim-a"),)),
        me="lbdriver-a",
        metrics=Registry(),
        on_elected=on_elected,
        on_deposed=on_deposed,
    )
    await election.start()
    try:
        await asyncio.wait_for(election.decided.wait(), LIMIT_S)
    finally:
        await election.stop()
    assert kv.abandoned == 1 and kv.reads >= 2
    assert elected == ["nobody holds the lease"]
