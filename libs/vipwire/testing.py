"""Helpers for tests of vipwire and of code built on it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(
    check: Callable[[], object], timeout: float = 5.0, every: float = 0.01
) -> None:
    """Wait until ``check()`` is truthy, or fail with TimeoutError after ``timeout`` seconds.

    Polling, not events: the things tests wait for (a KV entry, an emulator
    object, a recorded apply) belong to other components with no hook to await.
    """
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(every)
