"""What the NATS server holds for node agents over the feed, from its own monitoring."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from support.feed import Feed, RuntimeFactory, programmed, reported
from vipwire.bus import BusSettings
from vipwire.natsserver import NatsCluster


@pytest.fixture
async def monitored() -> AsyncIterator[NatsCluster]:
    """nats-servers with their monitoring endpoints (a cluster: NatsServer has none)."""
    cluster = NatsCluster(2)
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
def bus_settings(monitored: NatsCluster) -> BusSettings:
    return BusSettings(servers=monitored.urls, storage="memory", reconnect_wait_s=0.1)


@pytest.fixture
async def feed(
    make_runtime: RuntimeFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Feed]:
    """A feed publisher and node agents over its feed; all stopped at teardown."""
    monkeypatch.delenv("VIPWIRE_NODE", raising=False)
    harness = Feed(make_runtime)
    try:
        yield harness
    finally:
        await harness.stop()


def consumers(jsz: dict[str, Any]) -> int:
    return int(jsz.get("consumers", 0))


async def test_the_server_holds_no_consumer_per_agent(
    feed: Feed,
    monitored: NatsCluster,
) -> None:
    """Four agents over the feed: /jsz?consumers=true counts as many consumers as with
    none (the publisher's, and ipam's in a real fleet): O(1) per cluster, not O(nodes)."""
    rt = await feed.start()
    await rt.bus.publish(programmed("a", "10.0.0.1"))
    await feed.fed()
    before = consumers(await monitored.jsz(0, "?consumers=true"))
    for n in range(4):
        await feed.agent(f"n{n}")
    for n in range(4):
        await reported(rt, f"n{n}", ("10.0.0.1",))
    after = await monitored.jsz(0, "?consumers=true")
    assert consumers(after) == before, after
