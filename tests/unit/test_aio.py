"""cancel_and_wait: a stop that cannot hang on a task that swallowed its cancellation."""

from __future__ import annotations

import asyncio

import pytest

from vipwire.aio import cancel_and_wait


async def test_a_task_that_swallows_a_cancellation_still_ends() -> None:
    """A task that ignores its first two cancellations (as Python 3.11's wait_for can make
    one do) is cancelled again until it ends; finished tasks are left as they are."""
    ignored = 0

    async def stubborn() -> None:
        nonlocal ignored
        while ignored < 2:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                ignored += 1
        await asyncio.sleep(10)

    async def finished() -> str:
        return "done"

    task = asyncio.create_task(stubborn())
    done = asyncio.create_task(finished())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task, done], every=0.01), 2.0)
    assert task.cancelled()
    assert ignored == 2
    assert done.result() == "done"


async def test_nothing_to_cancel_returns_at_once() -> None:
    """No tasks, or only finished ones: nothing waits."""
    await asyncio.wait_for(cancel_and_wait([]), 0.1)
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    await asyncio.wait_for(cancel_and_wait([task]), 0.1)
    assert task.done() and not task.cancelled()


async def test_serve_http_serves_on_a_free_port_until_closed() -> None:
    """serve_http on port 0 reports the port it bound, answers there, and close() stops it."""
    import aiohttp
    from aiohttp import web

    from vipwire.aio import serve_http

    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_get("/", hello)
    server = await serve_http(app, host="127.0.0.1", port=0)
    assert server.port > 0
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{server.port}/") as resp:
            assert await resp.text() == "hi"
        await server.close()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(f"http://127.0.0.1:{server.port}/"):
                pass
