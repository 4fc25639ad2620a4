"""The REST drivers' transport: one timeout per class of request (issue 18, F5 item 9 / A10 5)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from vipwire.lbdriver import ApplianceSettings, ApplianceTimeouts, ApplianceUnavailable
from vipwire.lbdriver.io.drivers._rest import RestTransport

#: How long the slow endpoint takes: beyond read_s and write_s below, within commit_s.
SLOW_S = 0.5
TIMEOUTS = ApplianceTimeouts(login_s=0.2, read_s=0.2, write_s=0.2, commit_s=10)


@pytest.fixture
async def slow_server() -> AsyncIterator[str]:
    """An HTTP server whose every answer takes SLOW_S (an appliance saving a large config)."""

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(SLOW_S)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_commit_may_take_longer_than_a_write(slow_server: str) -> None:
    """Issue 18 item 9: a commit (or save) gets timeouts.commit_s, not the write's timeout."""
    http = RestTransport("bigip", slow_server, timeouts=TIMEOUTS)
    try:
        resp = await http.send("PATCH", "/mgmt/tm/transaction/1", json={}, kind="commit")
        assert resp.status == 200
    finally:
        await http.close()


@pytest.mark.parametrize(
    ("method", "kind", "setting"),
    [("GET", None, "read_s"), ("POST", None, "write_s"), ("POST", "login", "login_s")],
)
async def test_each_class_has_its_own_timeout_named_in_the_error(
    slow_server: str, method: str, kind: str | None, setting: str
) -> None:
    """A read, a write and a login time out after their own class's timeout, and the error
    names the setting to raise."""
    http = RestTransport("bigip", slow_server, timeouts=TIMEOUTS)
    try:
        with pytest.raises(ApplianceUnavailable, match=rf"timeouts\.{setting}") as caught:
            await http.send(method, "/mgmt/x", json={}, kind=kind)  # type: ignore[arg-type]
        assert "'bigip'" in str(caught.value)
    finally:
        await http.close()


def test_timeouts_are_settings_with_vendor_sized_defaults() -> None:
    """An appliance's timeouts come from its settings; save/commit is the longest by default."""
    s = ApplianceSettings(name="a", timeouts=ApplianceTimeouts(commit_s=600))
    assert s.timeouts.commit_s == 600
    d = ApplianceTimeouts()
    assert d.commit_s >= 300 > max(d.login_s, d.read_s, d.write_s)
    assert d.call_s() >= d.login_s + d.read_s + d.write_s + 2 * d.commit_s
