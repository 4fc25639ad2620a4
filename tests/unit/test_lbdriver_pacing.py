"""Long passes over every Service let the event loop turn between slices."""

from __future__ import annotations

import asyncio

from vipwire.lbdriver.io.pacing import Pacer


async def test_a_used_up_slice_lets_another_task_run() -> None:
    """With its slice used up, a turn lets a waiting task run before the pass goes on."""
    pacer = Pacer(slice_s=0.0)
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.create_task(other())
    ran.append("pass")
    await pacer.turn()
    ran.append("pass")
    await task
    assert ran == ["pass", "other", "pass"]
    assert pacer.yields == 1


async def test_a_slice_not_used_up_does_not_yield() -> None:
    """Within its slice a turn goes straight on: a pass is not slowed item by item."""
    pacer = Pacer(slice_s=3600.0)
    for _ in range(1000):
        await pacer.turn()
    assert pacer.yields == 0
