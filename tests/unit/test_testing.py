"""eventually: waits for a condition and, when it never holds, says which one."""

from __future__ import annotations

import pytest

from vipwire.testing import NeverHeld, eventually


async def test_eventually_returns_once_the_check_holds() -> None:
    """A check that turns true on the third poll ends the wait without error."""
    polls: list[int] = []

    def third_time() -> bool:
        polls.append(1)
        return len(polls) >= 3

    await eventually(third_time, every=0, what="the third poll")
    assert len(polls) == 3


async def test_a_timeout_names_the_condition_and_the_last_value() -> None:
    """The failure names what was awaited and what the check last returned."""
    queue = [7]
    with pytest.raises(NeverHeld, match=r"the queue drains: never held .*returned False"):
        await eventually(lambda: not queue, timeout=0.05, what="the queue drains")
    with pytest.raises(NeverHeld, match=r"a reply comes: never held .*returned None"):
        await eventually(lambda: None, timeout=0.05, what="a reply comes")


async def test_a_timeout_without_what_quotes_the_check() -> None:
    """Without ``what`` the check's own source stands in for the description."""
    not_yet = [False]
    with pytest.raises(NeverHeld, match=r"lambda: not_yet\[0\]"):
        await eventually(lambda: not_yet[0], timeout=0.05)


async def test_never_held_is_still_a_timeout_error() -> None:
    """Callers that caught TimeoutError before keep working."""
    with pytest.raises(TimeoutError):
        await eventually(lambda: False, timeout=0.01, what="never")
    with pytest.raises(AssertionError):
        await eventually(lambda: False, timeout=0.01, what="never")


async def test_an_async_check_is_awaited() -> None:
    """A coroutine check (a question to a server) is awaited, not taken as truthy."""
    answers = iter([0, 0, 5])

    async def ask() -> int:
        return next(answers)

    await eventually(ask, every=0, what="the server answers 5")
    with pytest.raises(NeverHeld, match=r"returned 0"):

        async def never() -> int:
            return 0

        await eventually(never, timeout=0.05, what="a zero turns")
