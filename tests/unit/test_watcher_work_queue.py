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
    with caplog.at_level(logging.DEBUG, logger="vipwire.watcher"):
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


async def test_failures_in_a_row_are_told_ever_more_rarely(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In a long outage every refused Service retries every few seconds: a key's 1st, 2nd
    and 4th failure in a row are warnings, the others debug lines."""
    await _delays_after(BusError("publish failed: NoStreamResponseError()"), caplog)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [re.findall(r"failure (\d+) in a row", m) for m in warned] == [["1"], ["2"], ["4"]]


async def test_a_key_failing_for_hours_keeps_its_bound() -> None:
    """Thousands of failures in a row (hours of a bus outage at 2 s) still give the
    bounded delay: the doubling's exponent is capped, so it never overflows."""

    async def never_called(key: str, trigger: str) -> None:
        raise AssertionError("the queue is not run here")

    queue = WorkQueue(
        "services",
        never_called,
        workers=1,
        backoff_initial_s=0.5,
        backoff_max_s=30.0,
        bus_backoff_max_s=2.0,
        metrics=Registry(),
    )
    queue._failures["default/web"] = 5000
    queue._retry_later("default/web", "added", BusError("publish failed"))
    timer = queue._timers.pop("default/web")
    timer.cancel()
    assert timer.when() - asyncio.get_running_loop().time() == pytest.approx(2.0, abs=0.1)
