"""Small asyncio helpers every layer needs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from aiohttp import web


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


T = TypeVar("T")


async def unless_set(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> tuple[bool, T | None]:
    """Run ``work`` unless ``stop`` is set first, which cancels it (and waits until it ended).

    ``(True, result)`` when ``work`` finished; ``(False, None)`` when stopped. What
    ``work`` raised is raised here.
    """
    task = asyncio.create_task(work)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            await cancel_and_wait([task])
        await cancel_and_wait([stopped])
    if task.cancelled():
        return False, None
    return True, task.result()


class HttpServer:
    """An aiohttp application being served; made by :func:`serve_http`."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner = runner
        #: The port bound (the one asked for, or the free one picked for 0).
        self.port = port

    async def close(self) -> None:
        """Stop listening, let handlers finish (up to the shutdown timeout), close connections."""
        await self.runner.cleanup()


async def serve_http(
    app: web.Application,
    *,
    host: str,
    port: int,
    shutdown_timeout_s: float = 2.0,
    handler_cancellation: bool = False,
) -> HttpServer:
    """Serve ``app`` on ``host:port`` (0: a free port) until the result is closed.

    No signal handlers (the caller owns the process) and no access log.
    ``handler_cancellation`` cancels a handler whose client hung up (a watch
    stream ends at once instead of at its next write).
    """
    # Imported here: the CLI's light commands use this module without a server.
    from aiohttp import web

    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        handler_cancellation=handler_cancellation,
        shutdown_timeout=shutdown_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        raise
    addresses = runner.addresses
    return HttpServer(runner, int(addresses[0][1]) if addresses else port)
