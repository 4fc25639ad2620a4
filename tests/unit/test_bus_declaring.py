"""Declarations wait out a JetStream election and give up on anything else."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
import pytest

from vipwire.bus import Backoff, BusError
from vipwire.bus._declaring import transient, waiting_out_elections

NO_WAIT = Backoff(0.0, 0.0)


def failing(*errors: BaseException) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "declared"

    return calls, attempt


async def test_timeouts_and_503s_are_waited_out_with_one_line_each_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A timeout, a 503 and a BusError raised from "no responders", then success: the
    result, one warning line and one recovery line."""
    try:
        raise BusError("wrapped") from nats.errors.NoRespondersError()
    except BusError as exc:
        wrapped = exc
    calls, attempt = failing(
        nats.errors.TimeoutError(), nats.js.errors.ServiceUnavailableError(), wrapped
    )
    with caplog.at_level(logging.INFO, logger="vipwire.bus"):
        result = await waiting_out_elections("declaring x", attempt, NO_WAIT, attempts=None)
    assert result == "declared" and len(calls) == 4
    lines = [r.getMessage() for r in caplog.records]
    assert sum("does not answer yet" in line for line in lines) == 1
    assert sum("done after 4 attempts" in line for line in lines) == 1


async def test_a_final_answer_is_raised_at_once() -> None:
    """A refusal that is not an election's (a bad config, no room) is not retried."""
    bad = nats.js.errors.BadRequestError()
    calls, attempt = failing(bad)
    with pytest.raises(nats.js.errors.BadRequestError):
        await waiting_out_elections("declaring x", attempt, NO_WAIT, attempts=None)
    assert len(calls) == 1
    assert not transient(bad)


async def test_a_bounded_caller_gives_up_after_its_attempts() -> None:
    """Command-line tools bound the tries: the last transient error is raised."""
    calls, attempt = failing(*(nats.errors.TimeoutError() for _ in range(5)))
    with pytest.raises(nats.errors.TimeoutError):
        await waiting_out_elections("declaring x", attempt, NO_WAIT, attempts=3)
    assert len(calls) == 3
