"""Fixtures shared by every test: a real nats-server, runtimes, and a leak check."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from support.secure_nats import secured_nats  # noqa: F401  (a fixture for every test)
from vipwire.bus import BusSettings
from vipwire.natsserver import NatsServer, Pki, make_pki
from vipwire.runtime import CommonSettings, Runtime


@pytest.fixture(autouse=True, scope="session")
def private_runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`vipwire up` in tests points at itself (vipwire.cli.current) in a private
    XDG_RUNTIME_DIR, and operator commands never find a developer's running stack."""
    import os

    os.environ["XDG_RUNTIME_DIR"] = str(tmp_path_factory.mktemp("xdg-runtime"))


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running behind it."""
    before = asyncio.all_tasks()
    yield
    await asyncio.sleep(0)  # one loop turn for tasks that are ending
    leaked = {
        t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()
    }
    # nats-py and aiohttp may need a few loop turns to finish their own cleanup.
    for _ in range(50):
        if not leaked:
            break
        await asyncio.sleep(0.02)  # polling third-party cleanup, which has no hook
        leaked = {t for t in leaked if not t.done()}
    if leaked:
        names = sorted(f"{t.get_name()}: {t.get_coro()!r}" for t in leaked)
        for t in leaked:
            t.cancel()
        pytest.fail("test leaked asyncio tasks:\n  " + "\n  ".join(names))


@pytest.fixture
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    """A real nats-server with JetStream, on a free port, for this test only."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA (openssl), its server and client certificates: made once a run."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second throwaway CA: a server certificate of ``pki`` is not one of its."""
    return make_pki(tmp_path_factory.mktemp("other-pki"))


@pytest.fixture
def bus_settings(nats_server: NatsServer) -> BusSettings:
    return BusSettings(servers=(nats_server.url,), storage="memory", reconnect_wait_s=0.1)


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    """Collects every span of every runtime made by ``make_runtime``."""
    return InMemorySpanExporter()


RuntimeFactory = Callable[[str], Awaitable[Runtime]]


@pytest.fixture
async def make_runtime(
    bus_settings: BusSettings, span_exporter: InMemorySpanExporter
) -> AsyncIterator[RuntimeFactory]:
    """Start runtimes (bus + tracer + metrics + health) for services under test."""
    started: list[Runtime] = []

    async def make(name: str) -> Runtime:
        runtime = Runtime(
            name,
            CommonSettings(bus=bus_settings),
            span_processors=[SimpleSpanProcessor(span_exporter)],
            connect_attempts=20,
        )
        await runtime.start()
        started.append(runtime)
        return runtime

    yield make
    for runtime in reversed(started):
        await runtime.stop()
