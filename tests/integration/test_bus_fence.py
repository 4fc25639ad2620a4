"""A fence orders after a subscription: the server knows of it before the fence returns.

The peer here is a tiny NATS protocol speaker that records the commands in the
order they reach it, so the order is observed, not hoped for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import nats
import pytest

from vipwire.bus import fence

INFO = {
    "server_id": "FENCE",
    "version": "2.10.0",
    "proto": 1,
    "headers": True,
    "max_payload": 1048576,
}


class Recorder:
    """Accepts one client, answers CONNECT/PING, and records each command's verb."""

    def __init__(self) -> None:
        self.verbs: list[str] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"INFO {json.dumps(INFO)}\r\n".encode())
        await writer.drain()
        while line := await reader.readline():
            verb = line.split(b" ", 1)[0].strip().decode()
            self.verbs.append(verb)
            if verb == "PING":
                writer.write(b"PONG\r\n")
                await writer.drain()
        writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    peer = Recorder()
    yield peer
    await peer.close()


async def test_one_flush_may_overtake_a_subscription(recorder: Recorder) -> None:
    """nats-py writes its PING before a buffered SUB: a lone flush is no fence."""
    nc = await nats.connect(f"nats://127.0.0.1:{await recorder.start()}")
    try:
        start = len(recorder.verbs)
        await nc.subscribe("vipwire-ctl.x")
        await nc.flush()
        # The PING went out first. If nats-py ever orders them, this fails, and the
        # fence's second flush can go.
        assert recorder.verbs[start] == "PING", recorder.verbs[start:]
    finally:
        await nc.close()


async def test_the_fence_returns_after_the_server_has_the_subscription(
    recorder: Recorder,
) -> None:
    """After subscribe + fence, the recorded SUB precedes the PING whose PONG ended it."""
    nc = await nats.connect(f"nats://127.0.0.1:{await recorder.start()}")
    try:
        start = len(recorder.verbs)
        await nc.subscribe("vipwire-ctl.x")
        await fence(nc)
        seen = recorder.verbs[start:]
        assert "SUB" in seen, seen
        last_ping = len(seen) - 1 - seen[::-1].index("PING")
        assert seen.index("SUB") < last_ping, seen
    finally:
        await nc.close()
