"""A service's life around NATS: health before the bus, signals at any moment, quiet backoff."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from vipwire.bus import BusSettings
from vipwire.natsserver import NatsServer
from vipwire.runtime import CommonSettings, Runtime
from vipwire.testing import eventually

# Guards against a hang only; each step waits on its own fence (a log line, an answer).
READ_LIMIT_S = 60.0
#: The acceptance bound: a signalled service is gone within this many seconds.
STOP_WITHIN_S = 2.0

_HEALTH = re.compile(r"health on [^\s:]+:(\d+); connecting to NATS")


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def read_until(
    stream: asyncio.StreamReader, seen: list[str], pattern: re.Pattern[str], count: int = 1
) -> re.Match[str]:
    """Read lines into ``seen`` until ``count`` of them match ``pattern``; the last match."""
    found: list[re.Match[str]] = []
    try:
        async with asyncio.timeout(READ_LIMIT_S):
            while len(found) < count:
                raw = await stream.readline()
                assert raw, f"the process ended before {pattern.pattern!r}:\n" + "".join(seen)
                line = raw.decode()
                seen.append(line)
                if match := pattern.search(line):
                    found.append(match)
    except TimeoutError:
        pytest.fail(f"no {pattern.pattern!r} in {READ_LIMIT_S:g} s:\n" + "".join(seen[-20:]))
    return found[-1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_service_waiting_for_nats_answers_health_and_stops_on_a_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """`vipwire run` against an unreachable NATS serves /healthz, /readyz and a 0 gauge at
    once, logs one warning (not one per attempt), and exits 0 within 2 s of the signal."""
    config = tmp_path / "vipwire.yaml"
    config.write_text(
        f"bus:\n  servers: ['nats://127.0.0.1:{closed_port()}']\n"
        "  reconnect_wait_s: 0.02\n  reconnect_max_wait_s: 0.05\n"
        "http:\n  port: 0\n"
        "telemetry:\n  log_level: DEBUG\n"
        "nodeagent:\n  cluster: east\n  node: node-a\n  dry_run: true\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vipwire.cli", "run", "nodeagent", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        port = int((await read_until(proc.stderr, seen, _HEALTH)).group(1))
        # The fence for "still trying": several failed attempts after the first.
        await read_until(proc.stderr, seen, re.compile("still cannot connect"), count=3)
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 503
                assert "connecting to NATS at nats://127.0.0.1:" in await resp.text()
            async with http.get(f"{base}/metrics") as resp:
                assert "vipwire_bus_connected 0" in await resp.text()
        signalled = time.monotonic()
        proc.send_signal(sig)
        code = await asyncio.wait_for(proc.wait(), READ_LIMIT_S)
        took = time.monotonic() - signalled
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    seen += [line.decode() for line in (await proc.stderr.read()).splitlines(keepends=True)]
    log = "".join(seen)
    assert took < STOP_WITHIN_S, f"stopped {took:.1f} s after {sig.name}:\n{log}"
    assert code == 0, log
    assert sum(" WARNING " in line and "cannot connect" in line for line in seen) == 1, log
    assert not [line for line in seen if " ERROR " in line or "Traceback" in line], log


async def test_a_lost_connection_logs_once_per_change_and_backs_off(
    tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """NATS killed and started again: one warning when lost, one line when back, none per
    failed attempt; the gauge reads 0 while lost and 1 again after."""
    store = tmp_path_factory.mktemp("store")
    server = NatsServer(store)
    await server.start()
    port = server.port
    settings = BusSettings(
        servers=(server.url,), storage="memory", reconnect_wait_s=0.02, reconnect_max_wait_s=0.05
    )
    rt = Runtime("lossy", CommonSettings(bus=settings))
    await rt.start()
    gauge = rt.metrics.gauge("bus_connected", "")
    link = rt.bus.link
    assert link is not None and gauge.value() == 1
    caplog.set_level(logging.DEBUG, logger="vipwire.bus")
    try:
        server.kill()
        await server.stop()
        await eventually(lambda: gauge.value() == 0, what="the gauge says disconnected")
        await eventually(lambda: link.failures >= 5, what="five failed reconnect attempts")
        server = NatsServer(store, port=port or 0)
        await server.start()
        await eventually(lambda: gauge.value() == 1, timeout=10, what="the gauge says connected")
    finally:
        await rt.stop()
        await server.stop()
    ours = [r for r in caplog.records if r.name == "vipwire.bus" and r.levelno >= logging.INFO]
    lines = [f"{r.levelname} {r.getMessage()}" for r in ours]
    assert [r.levelno for r in ours] == [logging.WARNING, logging.INFO], lines
    assert "lost" in lines[0] and "reconnected" in lines[1], lines
