"""The bus on a real 3-server JetStream cluster (R3 stream): losing any one server.

Each test starts its own cluster (half a second) and kills the server that hosts
the consumer under test, found from the consumer's cluster info.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest

from support.lbdriver import LbHarness
from support.publishing import publish_until_accepted
from vipwire.bus import (
    DONE,
    Bus,
    BusSettings,
    ConsumerSpec,
    Delivery,
    PullConsumer,
    Verdict,
)
from vipwire.contracts import (
    STREAM,
    NodeGone,
    NodeSnapshot,
    ServicePort,
    VipAssigned,
    family_filter,
)
from vipwire.lbdriver import ApplianceSettings
from vipwire.natsserver import NatsCluster, NatsServerError
from vipwire.runtime import Runtime
from vipwire.testing import eventually

log = logging.getLogger("test.nats_cluster")

RuntimeFactory = Callable[[str], Awaitable[Runtime]]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    """A 3-server JetStream cluster on loopback, for this test only."""
    nats = NatsCluster(3, tmp_path / "nats")
    await nats.start()
    try:
        yield nats
    finally:
        await nats.stop()


@pytest.fixture
def bus_settings(cluster: NatsCluster) -> BusSettings:
    """Every runtime of these tests (``make_runtime``) on the cluster, R3 stream and KV."""
    return BusSettings(
        servers=cluster.urls,
        replicas=3,
        storage="memory",
        reconnect_wait_s=0.1,
        reconnect_max_wait_s=0.5,
        request_timeout_s=2.0,
    )


async def host_of(bus: Bus, consumer: PullConsumer, cluster: NatsCluster) -> int:
    """The index of the server that leads ``consumer`` now."""
    assert consumer.name is not None
    info = await bus.js.consumer_info(STREAM, consumer.name)
    assert info.cluster is not None and info.cluster.leader
    return cluster.index_of(info.cluster.leader)


class NodesGone:
    """A consumer's handler that records the node of every NodeGone it handles, in order."""

    def __init__(self) -> None:
        self.got: list[str] = []

    async def __call__(self, d: Delivery) -> Verdict:
        assert isinstance(d.message, NodeGone)
        self.got.append(d.message.node)
        return DONE


# --- acceptance: the lbdriver -------------------------------------------------------


def assigned(name: str, vip: str) -> VipAssigned:
    return VipAssigned(
        cluster="prod",
        namespace="shop",
        name=name,
        uid=f"uid-{name}",
        vips=(vip,),
        pool="default",
        appliance_group="default",
        ports=(ServicePort(port=80),),
    )


async def test_killing_the_server_of_the_lbdriver_consumer_delays_a_new_service_by_seconds(
    cluster: NatsCluster, make_runtime: RuntimeFactory
) -> None:
    """Kill the NATS server that hosts the lbdriver's consumer: a Service created right
    after is programmed within 10 s, and the lbdriver is ready again afterwards."""
    h = LbHarness(
        make_runtime,
        await make_runtime("test"),
        defaults={
            "appliances": (ApplianceSettings(name="sim-a"),),
            "coalesce_window_ms": 1.0,
            "retry_initial_s": 0.05,
            "retry_max_s": 0.2,
        },
    )
    await h.observe()
    try:
        lbdriver = await h.start()
        bus = lbdriver.runtime.bus
        await h.publish(
            NodeSnapshot(cluster="prod", node="n1", addresses=("198.51.100.1",)),
            assigned("before", "192.0.2.10"),
        )
        await h.programmed("before")
        (vip_consumer,) = (c for c in bus.consumers if c.spec.filters == (family_filter("vip"),))
        victim = await host_of(h.publisher.bus, vip_consumer, cluster)

        killed = time.monotonic()
        cluster.kill(victim)
        await publish_until_accepted(
            h.publisher.bus, assigned("after", "192.0.2.11"), msg_id="after"
        )
        created = time.monotonic()
        await eventually(
            lambda: any("-after-" in name for name in h.servers()),
            timeout=10,
            what="the Service created after the kill programmed on the appliance",
        )
        done = time.monotonic()
        log.warning(
            "lbdriver takeover: stream took the Service %.1fs after the kill, programmed %.1fs "
            "after its creation (%.1fs after the kill)",
            created - killed,
            done - created,
            done - killed,
        )
        await eventually(
            lambda: bus.consumer_problem() is None, timeout=10, what="every consumer delivering"
        )
    finally:
        await h.close()


# --- every kind of consumer resumes without gap or duplicate --------------------------

KINDS = {
    "durable": ConsumerSpec(filters=("vipwire.*.node.>",), durable="d", heartbeat=0.5),
    "ephemeral": ConsumerSpec(
        filters=("vipwire.*.node.>",), deliver="last_per_subject", heartbeat=0.5
    ),
    "ephemeral-no-acks": ConsumerSpec(
        filters=("vipwire.*.node.>",), deliver="last_per_subject", ack="none", heartbeat=0.5
    ),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_a_consumer_resumes_on_a_surviving_server_without_gap_or_duplicate(
    cluster: NatsCluster, make_runtime: RuntimeFactory, kind: str
) -> None:
    """Every message published before, during and after the loss of the consumer's server
    is handed over exactly once."""
    rt = await make_runtime(f"consumer-{kind}")
    publisher = await make_runtime("publisher")
    handler = NodesGone()
    got = handler.got

    consumer = rt.bus.consumer(KINDS[kind], handler)
    await consumer.start()
    published: list[str] = []

    async def publish(name: str) -> None:
        await publish_until_accepted(
            publisher.bus, NodeGone(cluster="east", node=name), msg_id=name
        )
        published.append(name)

    for i in range(20):
        await publish(f"before-{i}")
    await eventually(lambda: len(got) == 20, what="the first 20 handled")
    victim = await host_of(publisher.bus, consumer, cluster)

    killed = time.monotonic()
    cluster.kill(victim)
    for i in range(20):
        await publish(f"during-{i}")
    await eventually(lambda: set(got) >= set(published), timeout=15, what="all handled")
    log.warning("%s consumer: all handled %.1fs after the kill", kind, time.monotonic() - killed)
    await publish("marker")
    await eventually(lambda: "marker" in got, what="the marker handled")
    assert sorted(got) == sorted(published), "a message lost or handed over twice"
    await eventually(
        lambda: rt.bus.consumer_problem() is None, what="the consumer reported delivering"
    )


# A hung server accepts TCP connections (the kernel does) but never greets: nats-py drops
# such a reconnect attempt after its timeout without closing that socket.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_consumer_whose_server_hangs_moves_to_a_surviving_one(
    cluster: NatsCluster, make_runtime: RuntimeFactory
) -> None:
    """SIGSTOP the server a consumer's connection is on: its TCP connection stays open, yet
    the client takes it for dead (unanswered pings) and the consumer resumes elsewhere,
    instead of waiting minutes for nats-py's default ping timeout."""
    rt = await make_runtime("hung")
    publisher = await make_runtime("publisher")
    handler = NodesGone()
    got = handler.got

    consumer = rt.bus.consumer(KINDS["ephemeral"], handler)
    await consumer.start()
    await publish_until_accepted(publisher.bus, NodeGone(cluster="east", node="before"), msg_id="b")
    await eventually(lambda: got == ["before"], what="'before' handled")
    url = rt.bus.nc.connected_url
    assert url is not None
    (hung,) = (s.index for s in cluster.servers if s.url.endswith(f":{url.port}"))
    paused = time.monotonic()
    cluster.pause(hung)
    try:
        await publish_until_accepted(
            publisher.bus, NodeGone(cluster="east", node="after"), msg_id="a"
        )
        await eventually(lambda: "after" in got, timeout=20, what="'after' handled elsewhere")
        log.warning("hung server: handled %.1fs after the SIGSTOP", time.monotonic() - paused)
    finally:
        cluster.resume(hung)
    assert got == ["before", "after"]


async def test_a_consumer_started_while_jetstream_has_no_quorum_waits_for_it(
    cluster: NatsCluster, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A consumer started while two of the three servers hang (its create goes unanswered,
    as in an election) keeps asking under one name, and starts once they are back,
    instead of failing its service's start (what CI once saw on a loaded machine)."""
    rt = await make_runtime("waiting")
    publisher = await make_runtime("publisher")
    handler = NodesGone()
    got = handler.got

    url = rt.bus.nc.connected_url
    assert url is not None
    others = [s.index for s in cluster.servers if not s.url.endswith(f":{url.port}")]
    consumer = rt.bus.consumer(KINDS["ephemeral"], handler)
    with caplog.at_level(logging.WARNING, logger="vipwire.bus"):
        for index in others:
            cluster.pause(index)
        try:
            starting = asyncio.create_task(consumer.start())
            await eventually(
                lambda: "JetStream does not answer yet" in caplog.text,
                timeout=20,
                what="the consumer's create retried",
            )
            assert not starting.done()
        finally:
            for index in others:
                cluster.resume(index)
        await asyncio.wait_for(starting, 30)
    await publish_until_accepted(publisher.bus, NodeGone(cluster="east", node="n1"), msg_id="n1")
    await eventually(lambda: got == ["n1"], what="'n1' handled")
    names = {c.name for c in await rt.bus.js.consumers_info(STREAM)}
    assert consumer.name in names
    assert len([n for n in names if n.startswith(rt.bus.identity or "vipwire")]) == 1


# --- a stalled consumer is reported, then clears ---------------------------------------


async def readyz(runtime: Runtime) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{runtime.http_port}/readyz") as response,
    ):
        return response.status, await response.text()


async def test_a_stalled_consumer_makes_readyz_false_until_it_delivers_again(
    cluster: NatsCluster, make_runtime: RuntimeFactory
) -> None:
    """A consumer whose server holds messages for it but hands none over is reported by
    consumer_problem() and /readyz (naming it) while it lasts, and no longer after."""
    rt = await make_runtime("stalled")
    rt.set_readiness(lambda: None)  # ready but for its consumers
    handler = NodesGone()
    got = handler.got

    spec = ConsumerSpec(
        filters=("vipwire.*.node.>",), durable="stuck", heartbeat=0.3, stall_after_s=1.0
    )
    consumer = rt.bus.consumer(spec, handler)
    await consumer.start()
    assert (await readyz(rt))[0] == 200
    # A paused consumer is the server's own way to hold messages back from a live consumer.
    await rt.bus.js.pause_consumer(STREAM, "stuck", "2099-01-01T00:00:00Z")
    await rt.bus.publish(NodeGone(cluster="east", node="held"))
    await eventually(lambda: rt.bus.consumer_problem() is not None, what="the stall reported")
    problem = rt.bus.consumer_problem()
    assert problem is not None and "stuck" in problem and "stalled" in problem
    status, text = await readyz(rt)
    assert status == 503 and "stuck" in text
    assert got == []

    await rt.bus.js.resume_consumer(STREAM, "stuck")
    await eventually(lambda: got == ["held"], what="the held message handled")
    await eventually(lambda: rt.bus.consumer_problem() is None, what="the stall cleared")
    assert (await readyz(rt))[0] == 200


# --- the cluster itself -----------------------------------------------------------------


async def test_stream_and_kv_get_the_replicas_of_the_bus_settings(
    make_runtime: RuntimeFactory,
) -> None:
    """With replicas 3, the VIPWIRE stream and a KV bucket are R3 (any one server may go)."""
    rt = await make_runtime("declarer")
    await rt.bus.kv("replicated")
    assert (await rt.bus.js.stream_info(STREAM)).config.num_replicas == 3
    assert (await rt.bus.js.stream_info("KV_replicated")).config.num_replicas == 3


async def test_a_killed_server_rejoins_on_its_ports_and_catches_up(
    cluster: NatsCluster, bus_settings: BusSettings, make_runtime: RuntimeFactory
) -> None:
    """kill(i) then restart(i): the server rejoins on the same URL, and a client of that
    server alone reads what was published while it was down (the R3 stream caught up)."""
    rt = await make_runtime("writer")
    url = cluster.servers[2].url
    cluster.kill(2)
    await publish_until_accepted(rt.bus, NodeGone(cluster="east", node="while-down"), msg_id="down")
    await cluster.restart(2)
    assert cluster.servers[2].url == url and cluster.servers[2].alive
    only = await make_runtime_on(bus_settings, (url,))
    try:
        await eventually(
            lambda: only.bus.last_message("vipwire.east.node.while-down"),
            what="the message published while it was down, read through it",
        )
    finally:
        await only.stop()


async def test_a_server_that_dies_by_itself_fails_the_wait_at_once(cluster: NatsCluster) -> None:
    """A server that exits without kill() (a port taken, a bad store) is an error with its
    log lines, not a wait until the timeout."""
    proc = cluster.servers[1].proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    with pytest.raises(NatsServerError, match="n1 exited"):
        await cluster.wait_ready(timeout=30)


async def make_runtime_on(settings: BusSettings, servers: tuple[str, ...]) -> Runtime:
    from vipwire.runtime import CommonSettings

    runtime = Runtime(
        "one-server",
        CommonSettings(bus=msgspec.structs.replace(settings, servers=servers)),
        connect_attempts=20,
    )
    await runtime.start()
    return runtime
