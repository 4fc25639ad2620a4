"""Traces without Jaeger: the all-in-one stack with the file exporter, read by `vipwire trace`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from vipwire.allinone import Stack, StackSettings
from vipwire.testing import eventually

TRACE_ANNOTATION = "vipwire.io/last-trace-id"
JAEGER = "http://jaeger.example.internal:16686"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    settings = StackSettings(
        clusters=1,
        nodes=2,
        state_dir=str(tmp_path / "state"),
        trace_exporter="file",
        jaeger_url=JAEGER,
    )
    async with Stack(settings) as s:
        await s.wait_ready()
        yield s


def trace_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vipwire.cli", "trace", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_vipwire_trace_shows_every_hop_of_a_service_creation(stack: Stack) -> None:
    """`vipwire trace <last-trace-id>` draws the spans of watcher, ipam, lbdriver, every
    node agent and the status write of one Service creation, from the span files."""
    await stack.create_service("east", "traced")

    def trace_id() -> str | None:
        svc = stack.service("east", "traced") or {}
        return ((svc.get("metadata") or {}).get("annotations") or {}).get(TRACE_ANNOTATION)

    await eventually(trace_id, timeout=10.0, what="east/traced has a last-trace-id annotation")
    tid = trace_id()
    assert tid is not None
    assert stack.trace_dir is not None
    expected = [
        "vipwire-watcher",
        "vipwire-ipam",
        "vipwire-lbdriver",
        *(f"vipwire-nodeagent:east/{node}" for node in stack.node_names("east")),
        "status write",
    ]
    result: subprocess.CompletedProcess[str] | None = None

    async def every_hop_printed() -> bool:
        nonlocal result
        # The state directory itself works as --store (its spans are in traces/).
        result = await asyncio.to_thread(trace_cli, tid, "--store", str(stack.state_dir))
        return result.returncode == 0 and all(word in result.stdout for word in expected)

    await eventually(
        every_hop_printed, timeout=15.0, every=0.2, what="vipwire trace shows every hop"
    )
    assert result is not None
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"trace {tid}:")
    # One root: the watcher's; every other span is indented under it.
    body = lines[2:]
    roots = [line for line in body if "  vipwire-watcher" in line and "not recorded" not in line]
    assert roots, result.stdout
    assert "not recorded" not in result.stdout, result.stdout


def test_vipwire_trace_names_what_is_missing(tmp_path: Path) -> None:
    """A bad id or store is a usage error (2); an unknown trace fails (1), naming the store."""
    bad = trace_cli("nothex", "--store", str(tmp_path))
    assert bad.returncode == 2 and "32 hex digits" in bad.stderr
    missing = trace_cli("0" * 31 + "1", "--store", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "nope" in missing.stderr
    unknown = trace_cli("0" * 31 + "1", "--store", str(tmp_path))
    assert unknown.returncode == 1 and str(tmp_path) in unknown.stderr
    assert "Traceback" not in bad.stderr + missing.stderr + unknown.stderr


async def test_the_stack_hands_its_jaeger_url_to_the_dashboard(stack: Stack) -> None:
    """`vipwire up --jaeger-url` reaches the dashboard, which then links trace ids."""
    url = stack.dashboard_url
    assert url is not None
    async with aiohttp.ClientSession() as session, session.get(url + "api/overview") as resp:
        body = await resp.json()
    assert body["jaeger_url"] == JAEGER


def test_vipwire_up_refuses_a_jaeger_url_that_is_not_one() -> None:
    """`vipwire up --jaeger-url foo` is a usage error (2) naming the flag; nothing starts."""
    result = subprocess.run(
        [sys.executable, "-m", "vipwire.cli", "up", "--jaeger-url", "foo"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--jaeger-url" in result.stderr and "Traceback" not in result.stderr
