"""A headless Chromium for browser tests, driven over the Chrome DevTools Protocol.

No node, no chromedriver: Chromium is started with a DevTools port and we
speak CDP over its websocket with aiohttp (``Page.navigate``,
``Runtime.evaluate``, ``Page.captureScreenshot``). The flags keep it off the
network: no background requests, no component updates, no sync.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-port=0",
)


class CdpError(RuntimeError):
    """Chromium refused a command, or a page script threw."""


class PageChanged(CdpError):
    """The page navigated while a command ran in it: its answer is lost, not wrong."""


#: How Chromium says that an evaluate outlived the document it ran in.
_PAGE_CHANGED = ("Inspected target navigated or closed", "Execution context was destroyed")


class Browser:
    """One Chromium process with one page, controlled over one DevTools websocket."""

    def __init__(self, executable: str, *, width: int = 1440, height: int = 900) -> None:
        self.executable = executable
        self.width, self.height = width, height
        self._profile = tempfile.TemporaryDirectory(
            # Chromium's helper processes may still be writing as it goes away.
            prefix="vipwire-chromium-",
            ignore_cleanup_errors=True,
        )
        self._proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._session: str | None = None
        #: Uncaught exceptions and console errors of the page, as text.
        self.errors: list[str] = []

    async def start(self, timeout: float = 15.0) -> None:
        profile = Path(self._profile.name)
        self._proc = await asyncio.create_subprocess_exec(
            self.executable,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={self.width},{self.height}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        async with asyncio.timeout(timeout):
            while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                if self._proc.returncode is not None:
                    raise CdpError(f"chromium exited with {self._proc.returncode} on start")
                await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        self._session = attached["sessionId"]
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None:
                if not future.done():
                    future.set_result(data)
                continue
            method = data.get("method")
            params = data.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                text = (details.get("exception") or {}).get("description") or details.get("text")
                self.errors.append(f"exception: {text}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
                self.errors.append("console.error: " + " ".join(map(str, args)))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CdpError("the DevTools connection closed"))

    async def send(self, method: str, timeout: float = 10.0, **params: Any) -> dict[str, Any]:
        assert self._ws is not None
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session is not None and not method.startswith("Target."):
            message["sessionId"] = self._session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        await self._ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, timeout)
        if "error" in reply:
            text = str(reply["error"].get("message", ""))
            kind = PageChanged if text.startswith(_PAGE_CHANGED) else CdpError
            raise kind(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = (details.get("exception") or {}).get("description") or details.get("text")
            raise CdpError(f"{expression!r} threw: {text}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0, every: float = 0.05) -> Any:
        """Poll until the expression is truthy; return its value."""
        last: Any = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        last = await self.evaluate(expression)
                    except PageChanged:
                        last = None  # asked of the page that was: ask the new one
                    if last:
                        return last
                    await asyncio.sleep(every)
        except TimeoutError:
            raise AssertionError(
                f"not true after {timeout:g}s: {expression} (last value {last!r}; "
                f"page errors {self.errors})"
            ) from None

    async def navigate(self, url: str, timeout: float = 10.0) -> None:
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CdpError(f"navigating to {url}: {result['errorText']}")
        base = url.split("?", maxsplit=1)[0]
        await self.wait_for(
            f"document.readyState === 'complete' && location.href.startsWith({base!r})", timeout
        )

    async def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = await self.send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params["captureBeyondViewport"] = True
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": self.width,
                "height": max(self.height, int(size["height"])),
                "scale": 1,
            }
        shot = await self.send("Page.captureScreenshot", timeout=20.0, **params)
        data = base64.b64decode(shot["data"])
        await asyncio.to_thread(_write, path, data)
        return path

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self.send("Browser.close", timeout=2.0)
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 5.0)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        self._profile.cleanup()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A started headless Chromium; skipped where there is none, except in CI."""
    executable = find_chromium()
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if executable is None:
        if in_ci:
            pytest.fail("chromium is not installed, and CI must run the browser tests")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    chromium = Browser(executable)
    try:
        await chromium.start()
    except (CdpError, OSError, TimeoutError) as exc:
        await chromium.close()
        if in_ci:
            pytest.fail(f"chromium did not start: {exc!r}")
        pytest.skip(f"chromium did not start: {exc!r}")
    try:
        yield chromium
    finally:
        await chromium.close()
