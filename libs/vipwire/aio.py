"""Small asyncio helpers every layer needs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], every: float = 0.5) -> None:
    """Cancel ``tasks`` and wait until every one has ended, whatever it was awaiting.

    Cancelled again and again: on Python 3.11 ``asyncio.wait_for`` (nats-py uses
    it for every request) swallows a cancellation that arrives just as what it
    waits for completes, so one ``cancel()`` can leave a task running its loop
    and a plain ``await task`` waiting forever.
    """
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
    await asyncio.gather(*tasks, return_exceptions=True)
