"""Node agents over the node feed: gaps, chunked tables, a start mid-burst, and what the
server holds per agent (see test_nodeagent_feed_consumers.py)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping

import pytest

from support.feed import CLUSTER, Feed, RuntimeFactory, programmed, removed, reported
from vipwire.bus import BusError, BusSettings
from vipwire.contracts import (
    FEED_BUCKET,
    FeedHead,
    LbFailed,
    decode_feed,
    feed_head_key,
)
from vipwire.lbdriver.io.feed import FeedPublisher
from vipwire.natsserver import NatsServer
from vipwire.nodeagent import NodeagentService
from vipwire.runtime import Runtime
from vipwire.testing import eventually


@pytest.fixture
def bus_settings(nats_server: NatsServer) -> BusSettings:
    """KV values of at most 4 KiB: a table of a few dozen Services takes several chunks."""
    return BusSettings(
        servers=(nats_server.url,),
        storage="memory",
        reconnect_wait_s=0.1,
        kv_max_value_size=4096,
    )


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


def table_reads(agent: NodeagentService, reason: str) -> int:
    text = agent._runtime.metrics.expose()
    found = re.search(rf'vipwire_nodeagent_feed_table_reads_total{{reason="{reason}"}} (\d+)', text)
    return int(found.group(1)) if found else 0


async def test_a_gap_in_the_feed_makes_the_agent_read_the_table_and_end_exact(
    feed: Feed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delta lost on the way (a sequence jump) makes the agent re-read the table (written
    at most every 0.3 s); it ends with exactly the cluster's VIPs (not another cluster's,
    not a removed one)."""
    feed.table_interval_s = 0.3
    rt = await feed.start()
    await rt.bus.publish(programmed("a", "10.0.0.1"))
    await rt.bus.publish(programmed("gone", "10.0.0.9"))
    await feed.fed()
    agent = await feed.agent("n1")
    await reported(rt, "n1", ("10.0.0.1", "10.0.0.9"))
    assert feed.publisher is not None
    bus = feed.publisher._runtime.bus
    real = bus.broadcast
    dropped: list[str] = []

    async def lossy(subject: str, data: bytes, headers: Mapping[str, str] | None = None) -> None:
        if not dropped:
            dropped.append(subject)  # this delta never reaches the agents
            return
        await real(subject, data, headers)

    monkeypatch.setattr(bus, "broadcast", lossy)
    await rt.bus.publish(programmed("b", "10.0.0.2"))
    await rt.bus.publish(removed("gone"))
    await feed.fed()
    assert dropped
    await rt.bus.publish(programmed("c", "10.0.0.3"))
    await rt.bus.publish(programmed("west-only", "10.0.0.7", cluster="west"))
    await reported(rt, "n1", ("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    assert table_reads(agent, "gap") == 1


async def test_a_lost_last_delta_is_noticed_by_reading_the_head(
    feed: Feed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last delta of a quiet spell is lost (no later one shows the gap): the agent
    reads the head within its resync interval, and the table."""
    rt = await feed.start()
    await feed.fed()
    agent = await feed.agent("n1", resync_interval_s=0.2)
    assert feed.publisher is not None
    bus = feed.publisher._runtime.bus

    async def lost(subject: str, data: bytes, headers: Mapping[str, str] | None = None) -> None:
        return None

    monkeypatch.setattr(bus, "broadcast", lost)
    await rt.bus.publish(programmed("a", "10.0.0.1"))
    await feed.fed()
    await reported(rt, "n1", ("10.0.0.1",))
    assert table_reads(agent, "stale") == 1


async def test_a_table_over_the_size_limit_round_trips_in_chunks(feed: Feed) -> None:
    """With KV values of at most 4 KiB, 120 Services take several chunks; an agent that
    starts reads them all back."""
    rt = await feed.start()
    for i in range(120):
        await rt.bus.publish(programmed(f"svc-{i:03d}", f"10.1.{i // 200}.{i % 200 + 1}"))
    await feed.fed()
    stored = await rt.bus.direct_last(
        f"KV_{FEED_BUCKET}", f"$KV.{FEED_BUCKET}.{feed_head_key(CLUSTER)}"
    )
    assert stored is not None
    head = decode_feed("head", stored.data, cluster=CLUSTER)
    assert isinstance(head, FeedHead) and head.chunks > 1 and head.services == 120
    await feed.agent("n1")
    await reported(rt, "n1", tuple(sorted(f"10.1.0.{i + 1}" for i in range(120))))


async def test_an_agent_started_in_the_middle_of_a_burst_converges(feed: Feed) -> None:
    """Services programmed while the agent starts (the table written at most every
    0.3 s, so behind the deltas): it ends with every one of them."""
    feed.table_interval_s = 0.3
    rt = await feed.start()
    await feed.fed()

    async def burst() -> None:
        for i in range(150):
            await rt.bus.publish(programmed(f"svc-{i:03d}", f"10.2.0.{i + 1}"))

    task = asyncio.create_task(burst())
    try:
        await eventually(
            lambda: feed.publisher is not None and feed.publisher.published_seq > 0,
            what="the burst has begun",
        )
        await feed.agent("n1", ready=False)
        await task
    finally:
        await task
    await reported(rt, "n1", tuple(sorted(f"10.2.0.{i + 1}" for i in range(150))))
    assert feed.publisher is not None
    text = feed.publisher._runtime.metrics.expose()
    deltas = re.search(r'lbdriver_feed_deltas_total{cluster="east"} (\d+)', text)
    tables = re.search(r'lbdriver_feed_table_writes_total{cluster="east"} (\d+)', text)
    assert deltas is not None and tables is not None
    assert int(tables.group(1)) < int(deltas.group(1))  # the table lags, the deltas carry it


def deltas_sent(feed: Feed) -> int:
    assert feed.publisher is not None
    text = feed.publisher._runtime.metrics.expose()
    found = re.search(r'lbdriver_feed_deltas_total{cluster="east"} (\d+)', text)
    return int(found.group(1)) if found else 0


async def test_a_burst_widens_the_window_so_each_node_gets_a_few_deltas(feed: Feed) -> None:
    """600 changes published one after another (each as soon as the last is stored) go
    out in a handful of deltas, the window doubling from 5 ms to at most 400 ms while
    they keep coming (a fixed 5 ms window sends dozens); the agent ends with all."""
    feed.window_max_ms = 400
    rt = await feed.start()
    await feed.agent("n1")
    await feed.fed()
    before = deltas_sent(feed)
    count = 600
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(count):
        await rt.bus.publish(programmed(f"svc-{i:03d}", f"10.3.{i // 200}.{i % 200 + 1}"))
    await feed.fed()
    took_s = loop.time() - started
    await reported(rt, "n1", tuple(sorted(f"10.3.{i // 200}.{i % 200 + 1}" for i in range(count))))
    sent = deltas_sent(feed) - before
    # The ramp (5 ms to 400 ms: 7 windows), then one per 400 ms; a fixed 5 ms window
    # sends one per few milliseconds however long the burst takes.
    most = 8 + took_s / 0.4
    assert 2 <= sent <= most, f"{sent} deltas for {count} changes in {took_s:.2f} s"


async def test_an_agent_started_while_the_table_lags_a_delta_waits_for_the_table(
    feed: Feed,
) -> None:
    """An agent (re)started after a delta went out but before the held-back table caught up
    reads the head's ``latest``, waits for the newer table, and holds the delta's VIP; it
    does not apply the older table (which would take the VIP off the node until the next
    delta or the 30 s check)."""
    feed.table_interval_s = 3.0
    rt = await feed.start()
    await feed.fed()
    await rt.bus.publish(programmed("a", "10.0.0.1"))

    async def lagging() -> bool:
        stored = await rt.bus.direct_last(
            f"KV_{FEED_BUCKET}", f"$KV.{FEED_BUCKET}.{feed_head_key(CLUSTER)}"
        )
        head = None if stored is None else decode_feed("head", stored.data, cluster=CLUSTER)
        return isinstance(head, FeedHead) and head.seq < head.latest

    await eventually(lagging, what="the delta is out and the table held back")
    agent = await feed.agent("n1", ready=False)
    assert feed.publisher is not None and feed.publisher._dirty  # still behind as it starts
    await reported(rt, "n1", ("10.0.0.1",))
    assert table_reads(agent, "start") == 1 and table_reads(agent, "stale") == 0


async def test_a_new_leader_carries_on_the_sequence_and_resets_the_agents(
    feed: Feed, make_runtime: RuntimeFactory
) -> None:
    """The publisher's leader changes: the new one continues from the head's sequence,
    keeps a Service whose last word is a failure, and agents follow it."""
    rt = await feed.start()
    await rt.bus.publish(programmed("a", "10.0.0.1"))
    await feed.fed()
    agent = await feed.agent("n1")
    await reported(rt, "n1", ("10.0.0.1",))
    assert feed.publisher is not None
    old_seq = feed.publisher.feeds[CLUSTER].seq
    await feed.publisher.stop()
    failed = LbFailed(cluster=CLUSTER, namespace="default", name="a", uid="uid-a",
                      appliance="sim-1", reason="Unavailable", message="down")  # fmt: skip
    await rt.bus.publish(failed)
    feed.publisher = FeedPublisher(await make_runtime("lbdriver-2"), window_ms=5,
                                   is_leader=lambda: True)  # fmt: skip
    await feed.publisher.start()
    await feed.fed()
    assert feed.publisher.feeds[CLUSTER].seq > old_seq
    await rt.bus.publish(programmed("b", "10.0.0.2"))
    await reported(rt, "n1", ("10.0.0.1", "10.0.0.2"))
    assert table_reads(agent, "reset") == 1


async def one_vip_on_n1(feed: Feed) -> tuple[Runtime, NodeagentService, FeedPublisher]:
    """The feed published by its leader, an agent on n1 holding one VIP from it."""
    rt = await feed.start()
    await feed.fed()
    agent = await feed.agent("n1")
    await rt.bus.publish(programmed("a", "10.0.0.1"))
    await reported(rt, "n1", ("10.0.0.1",))
    assert feed.publisher is not None
    return rt, agent, feed.publisher


async def test_a_leader_that_wins_the_lease_back_carries_on_without_a_reset(
    feed: Feed,
) -> None:
    """The lease runs out (a loaded machine) and the same replica wins it back with nobody
    having published meanwhile: its agents keep the feed (no reset, so no node reads
    the table again) and a change made while it stood by reaches them as a delta."""
    rt, agent, publisher = await one_vip_on_n1(feed)
    feed.leading = False
    await rt.bus.publish(programmed("b", "10.0.0.2"))  # wakes it: it sees the lease gone
    await eventually(lambda: not publisher._leading, what="the publisher stands by")
    feed.leading = True
    await reported(rt, "n1", ("10.0.0.1", "10.0.0.2"))
    assert table_reads(agent, "reset") == 0


async def test_a_leader_back_after_a_delta_that_did_not_go_out_resets(
    feed: Feed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window's delta is taken but its broadcast fails as the lease goes; when the lease
    comes back the agents never saw that delta (the head in KV is still ours), so the new
    term resets them: they read the table and end with the change."""
    rt, agent, publisher = await one_vip_on_n1(feed)
    bus = publisher._runtime.bus
    real_broadcast = bus.broadcast
    failed: list[str] = []

    async def broadcast(
        subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        if not failed:
            failed.append(subject)
            feed.leading = False  # the lease goes as the window fails
            raise BusError(f"broadcast on {subject} failed: TimeoutError()")
        await real_broadcast(subject, data, headers)

    monkeypatch.setattr(bus, "broadcast", broadcast)
    await rt.bus.publish(programmed("b", "10.0.0.2"))
    await eventually(
        lambda: failed and not publisher._leading, what="the window failed, the lease gone"
    )
    feed.leading = True
    await reported(rt, "n1", ("10.0.0.1", "10.0.0.2"))
    assert table_reads(agent, "reset") == 1


async def test_a_leader_back_after_another_one_published_resets(
    feed: Feed, make_runtime: RuntimeFactory
) -> None:
    """The lease goes to another replica, which publishes; when the first wins it back,
    the feed in KV is no longer its own: it resets, and the agents follow it."""
    rt, agent, first = await one_vip_on_n1(feed)
    feed.leading = False
    await rt.bus.publish(programmed("b", "10.0.0.2"))
    await eventually(lambda: not first._leading, what="the first publisher stands by")
    other = {"leading": True}
    second = FeedPublisher(await make_runtime("lbdriver-2"), window_ms=5,
                           is_leader=lambda: other["leading"])  # fmt: skip
    await second.start()
    try:
        await reported(rt, "n1", ("10.0.0.1", "10.0.0.2"))
        assert table_reads(agent, "reset") == 1  # the second one's take-over
        other["leading"] = False
        await rt.bus.publish(programmed("c", "10.0.0.3"))
        await eventually(lambda: not second._leading, what="the second publisher stands by")
        feed.leading = True
        await reported(rt, "n1", ("10.0.0.1", "10.0.0.2", "10.0.0.3"))
        assert table_reads(agent, "reset") == 2
    finally:
        await second.stop()


async def test_a_new_leader_resets_agents_that_hold_deltas_past_the_table(
    make_runtime: RuntimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last leader sent deltas past its last table, then died: the new leader's reset
    still reaches the agents (its sequence is past theirs), and a change it alone knows
    (a removal published meanwhile) reaches the nodes."""
    monkeypatch.delenv("VIPWIRE_NODE", raising=False)
    feed = Feed(make_runtime, table_interval_s=60.0)  # the table lags every delta
    try:
        rt = await feed.start()
        await feed.fed()
        await feed.agent("n1")
        await rt.bus.publish(programmed("a", "10.0.0.1"))
        await rt.bus.publish(programmed("b", "10.0.0.2"))
        await reported(rt, "n1", ("10.0.0.1", "10.0.0.2"))  # by deltas past the table
        assert feed.publisher is not None
        await feed.publisher.stop()  # dies before writing its table again
        await rt.bus.publish(removed("b"))
        feed.publisher = FeedPublisher(await make_runtime("lbdriver-2"), window_ms=5,
                                       is_leader=lambda: True, table_interval_s=60.0)  # fmt: skip
        await feed.publisher.start()
        await reported(rt, "n1", ("10.0.0.1",))
    finally:
        await feed.stop()
