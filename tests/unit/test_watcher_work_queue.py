"""The watcher's work queue: how long a failed key waits before it is handled again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

import pytest

from vipwire.bus import BusError
from vipwire.metrics import Registry
from vipwire.watcher.io.work_queue import WorkQueue


async def _delays_after(failure: Exception, caplog: pytest.LogCaptureFixture) -> list[float]:
    """Fail one key six times in a row; the delays the queue announced before each retry."""
    attempts = 0
    sixth = asyncio.Event()

    async def handler(key: str, trigger: str) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 6:
            sixth.set()
            return
        raise failure

    queue = WorkQueue(
        "services",
        handler,
        workers=1,
        backoff_initial_s=0.01,
        backoff_max_s=1.0,
        bus_backoff_max_s=0.04,
        metrics=Registry(),
    )
    runner = asyncio.create_task(queue.run())
    with caplog.at_level(logging.WARNING, logger="vipwire.watcher"):
        queue.add("default/web", "added")
        await asyncio.wait_for(sixth.wait(), 5)
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    return [float(m) for m in re.findall(r"again in ([0-9.]+)s", caplog.text)]


async def test_a_key_the_bus_refused_backs_off_to_the_bus_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A publish the bus refused (a stream between leaders) doubles only up to
    bus_backoff_max_s: the Service is tried again within seconds of the bus's return."""
    delays = await _delays_after(BusError("publish failed: NoStreamResponseError()"), caplog)
    assert delays == [0.01, 0.02, 0.04, 0.04, 0.04]


async def test_any_other_failure_backs_off_to_the_long_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Any other failure (an API server down may stay down for minutes) keeps doubling
    towards backoff_max_s."""
    delays = await _delays_after(RuntimeError("the API server refused"), caplog)
    assert delays == [0.01, 0.02, 0.04, 0.08, 0.16]
