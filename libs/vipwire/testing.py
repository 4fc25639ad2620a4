"""Helpers for tests of vipwire and of code built on it."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


class NeverHeld(AssertionError, TimeoutError):
    """A condition a test waited for did not hold in time.

    Both an AssertionError (pytest shows it as a failed expectation) and a
    TimeoutError (what ``eventually`` raised before it said why).
    """


async def eventually(
    check: Callable[[], object | Awaitable[object]],
    timeout: float = 5.0,
    every: float = 0.01,
    *,
    what: str | None = None,
) -> None:
    """Wait until ``check()`` is truthy, or fail with NeverHeld after ``timeout`` seconds.

    ``what`` says in words what was awaited ("the watcher leads"); the failure
    names it with the last falsy value ``check()`` returned, so a timeout says
    which condition never held and how far it got. Without ``what`` the check's
    source line stands in.

    ``check`` may be a coroutine function (a question to a server): it is awaited.

    Polling, not events: the things tests wait for (a KV entry, an emulator
    object, a recorded apply) belong to other components with no hook to await.
    """
    last: object = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = check()
                if inspect.isawaitable(last):
                    last = await last
                if last:
                    return
                await asyncio.sleep(every)
    except TimeoutError as timed_out:
        raise NeverHeld(
            f"{what or _describe(check)}: never held within {timeout} s"
            f" (check last returned {last!r})"
        ) from timed_out


def _describe(check: Callable[[], object | Awaitable[object]]) -> str:
    """The check's source line, or its name when the source is not at hand."""
    try:
        return inspect.getsource(check).strip()
    except (OSError, TypeError):
        return getattr(check, "__qualname__", repr(check))
