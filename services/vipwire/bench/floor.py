"""``floor``: what the bus itself costs, so every other figure can be read against it.

Measured one operation at a time (nothing queues behind anything), on the
nats-server the scenario runs on:

- ``publish_ack``: a JetStream publish awaited until the server's ack, with
  nats-py alone (no span, no encoding): the round trip to the stream.
- ``bus_publish``: the same through :meth:`vipwire.bus.Bus.publish` (contract
  encoding, a PRODUCER span, trace headers, de-duplication id).
- ``hop``: from the start of a :meth:`Bus.publish` until the handler of a
  :class:`~vipwire.bus.PullConsumer` is called with the message: one hop of
  the pipeline with nothing else in it (its publish ack overlaps the delivery,
  as in the services).
- ``kv_cas``: a KV compare-and-set (``update`` at the revision read), the
  write ipam makes for every claim; ``kv_get``: a KV read.
- ``kube_patch`` (when run against a stack): a merge PATCH of a Service through
  kubernetes-asyncio to the emulated API server, the watcher's write.

Messages go to ``vipwire.floor.applied.<node>`` (a cluster no service
watches) and KV writes to their own bucket, so a running stack sees nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

import msgspec
import nats
from nats.js.api import KeyValueConfig, StorageType

from vipwire.bench._fleet import child_pids, proc_status
from vipwire.bench._result import BenchResult, convert_params
from vipwire.bus import DONE, Bus, BusSettings, ConsumerSpec, Delivery, Verdict, connect
from vipwire.contracts import NodeApplied
from vipwire.metrics import Registry, percentile
from vipwire.natsserver import NatsServer
from vipwire.telemetry import make_tracer_provider

FLOOR_CLUSTER = "floor"
#: The batched measure's own cluster: one subject per message, since the stream keeps
#: only ``bus.stream_max_msgs_per_subject`` messages of each subject.
BATCH_CLUSTER = "floor-batch"
FLOOR_BUCKET = "vipwire-bench-floor"


class FloorOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Parameters of the floor scenario (``--set name=value``)."""

    #: Operations timed per measurement (after a warm-up of a tenth as many).
    samples: Annotated[int, msgspec.Meta(ge=10, le=100_000)] = 1000


class Stat(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Milliseconds: median, 90th and 99th percentile (nearest rank) of one measurement;
    for floor operations also the CPU each one cost (µs) here and in nats-server."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    client_cpu_us: float | None = None
    server_cpu_us: float | None = None

    @classmethod
    def of(cls, values_s: list[float]) -> Stat:
        ms = [v * 1000 for v in values_s]
        return cls(
            p50_ms=round(percentile(ms, 50), 3),
            p90_ms=round(percentile(ms, 90), 3),
            p99_ms=round(percentile(ms, 99), 3),
        )

    @property
    def cpu_us(self) -> float:
        """CPU per operation, client and server together (0 when not measured)."""
        return (self.client_cpu_us or 0.0) + (self.server_cpu_us or 0.0)

    def text(self) -> str:
        text = f"p50 {self.p50_ms:.3f} ms, p90 {self.p90_ms:.3f}, p99 {self.p99_ms:.3f}"
        if self.client_cpu_us is not None:
            text += f"; CPU {self.client_cpu_us:.0f} µs here"
            if self.server_cpu_us is not None:
                text += f" + {self.server_cpu_us:.0f} µs nats-server"
        return text


class Batched(msgspec.Struct, frozen=True, kw_only=True):
    """Throughput floor: publishes kept in flight, and one consumer draining them."""

    messages: int
    publish_per_s: int
    publish_client_cpu_us: float
    publish_server_cpu_us: float | None
    consume_per_s: int
    #: CPU per message delivered, handled (nothing) and acknowledged.
    consume_client_cpu_us: float
    consume_server_cpu_us: float | None

    @property
    def delivery_cpu_us(self) -> float:
        """CPU per delivery, consumer and server together."""
        return self.consume_client_cpu_us + (self.consume_server_cpu_us or 0.0)

    @property
    def publish_cpu_us(self) -> float:
        return self.publish_client_cpu_us + (self.publish_server_cpu_us or 0.0)


class Floor(msgspec.Struct, frozen=True, kw_only=True):
    """The floor figures of one run."""

    samples: int
    publish_ack: Stat
    bus_publish: Stat
    hop: Stat
    kv_cas: Stat
    kv_get: Stat
    kube_patch: Stat | None = None
    batched: Batched | None = None

    def rows(self) -> list[tuple[str, str]]:
        rows = [
            ("floor: JetStream publish+ack (nats-py)", self.publish_ack.text()),
            ("floor: Bus.publish (+span, encode)", self.bus_publish.text()),
            ("floor: one hop (publish -> handler)", self.hop.text()),
            ("floor: KV compare-and-set", self.kv_cas.text()),
            ("floor: KV get", self.kv_get.text()),
        ]
        if self.kube_patch is not None:
            rows.append(("floor: kube PATCH (emulator)", self.kube_patch.text()))
        b = self.batched
        if b is not None:
            server = (
                f" + {b.publish_server_cpu_us:.0f} µs nats-server"
                if b.publish_server_cpu_us
                else ""
            )
            rows.append(
                (
                    "floor: publishes, 64 in flight",
                    f"{b.publish_per_s}/s; CPU {b.publish_client_cpu_us:.0f} µs here{server}",
                )
            )
            server = (
                f" + {b.consume_server_cpu_us:.0f} µs nats-server"
                if b.consume_server_cpu_us
                else ""
            )
            rows.append(
                (
                    "floor: one consumer draining",
                    f"{b.consume_per_s}/s; CPU {b.consume_client_cpu_us:.0f} µs here{server}",
                )
            )
        return rows


def ratio(value_ms: float, floor_ms: float) -> float:
    """``value_ms`` as a multiple of ``floor_ms`` (rounded; 0 when the floor is 0)."""
    return round(value_ms / floor_ms, 1) if floor_ms > 0 else 0.0


def _server_cpu_s(pid: int | None) -> float | None:
    if pid is None:
        return None
    cs = proc_status(pid).get("cpu_cs")
    return None if cs is None else cs / 100


async def _timed(
    samples: int,
    step: Callable[[int], Awaitable[float | None]],
    server_pid: int | None = None,
) -> Stat:
    """Run ``step(i)`` serially: warm-up, then ``samples`` timed ones. A step may
    return its own duration (seconds); otherwise the wall time of the call counts.
    CPU per step is this process's and (with ``server_pid``) nats-server's."""
    for i in range(max(1, samples // 10)):
        await step(-1 - i)
    times: list[float] = []
    cpu, server = time.process_time(), _server_cpu_s(server_pid)
    for i in range(samples):
        started = time.perf_counter()
        own = await step(i)
        times.append(own if own is not None else time.perf_counter() - started)
    cpu = time.process_time() - cpu
    server_after = _server_cpu_s(server_pid)
    stat = Stat.of(times)
    return msgspec.structs.replace(
        stat,
        client_cpu_us=round(cpu / samples * 1e6, 1),
        server_cpu_us=(
            round((server_after - server) / samples * 1e6, 1)
            if server is not None and server_after is not None
            else None
        ),
    )


async def measure_floor(
    nats_url: str,
    *,
    samples: int = 1000,
    kube_patch: Callable[[], Awaitable[None]] | None = None,
    server_pid: int | None = None,
) -> Floor:
    """Measure the floor on the nats-server at ``nats_url`` (see the module docstring).

    ``kube_patch``: one Kubernetes API write, timed as ``kube_patch`` if given.
    ``server_pid``: nats-server's pid, for its CPU per operation (default: the
    nats-server child of this process, if there is exactly one).
    """
    if server_pid is None:
        children = child_pids("nats-server")
        server_pid = children[0] if len(children) == 1 else None
    provider = make_tracer_provider("vipwire-bench-floor")
    settings = BusSettings(servers=(nats_url,), reconnect_wait_s=0.2)
    bus = await connect(
        settings, name="vipwire-bench-floor", tracer=provider.get_tracer("vipwire"),
        metrics=Registry(), attempts=20,
    )  # fmt: skip
    nc = await nats.connect(nats_url, name="vipwire-bench-floor-raw")
    try:
        await bus.ensure_stream()
        js = nc.jetstream()

        def message(i: int) -> NodeApplied:
            return NodeApplied(cluster=FLOOR_CLUSTER, node="n-1", generation=i, vips=())

        payload = msgspec.json.encode(message(0))

        async def raw_publish(i: int) -> None:
            await js.publish(f"vipwire.{FLOOR_CLUSTER}.applied.n-2", payload)

        publish_ack = await _timed(samples, raw_publish, server_pid)

        async def bus_publish(i: int) -> None:
            await bus.publish(message(i))

        bus_pub = await _timed(samples, bus_publish, server_pid)

        arrived: asyncio.Queue[float] = asyncio.Queue()

        async def handler(d: Delivery) -> Verdict:
            arrived.put_nowait(time.perf_counter())
            return DONE

        consumer = bus.consumer(
            ConsumerSpec(filters=(f"vipwire.{FLOOR_CLUSTER}.applied.n-3",), deliver="new"),
            handler,
        )
        await consumer.start()

        async def hop(i: int) -> float:
            started = time.perf_counter()
            await bus.publish(NodeApplied(cluster=FLOOR_CLUSTER, node="n-3", generation=i, vips=()))
            return await arrived.get() - started

        hops = await _timed(samples, hop, server_pid)
        await consumer.stop()
        batched = await _batched(bus, samples * 4, server_pid)

        kv = await js.create_key_value(
            KeyValueConfig(bucket=FLOOR_BUCKET, history=1, storage=StorageType.FILE)
        )
        revision = await kv.put("k", b"0")

        async def cas(i: int) -> None:
            nonlocal revision
            revision = await kv.update("k", b"%d" % i, last=revision)

        kv_cas = await _timed(samples, cas, server_pid)

        async def get(i: int) -> None:
            await kv.get("k")

        kv_get = await _timed(samples, get, server_pid)
        await js.delete_key_value(FLOOR_BUCKET)

        kube: Stat | None = None
        if kube_patch is not None:
            patch = kube_patch

            async def kube_step(i: int) -> None:
                await patch()

            kube = await _timed(max(10, samples // 4), kube_step)
        return Floor(
            samples=samples,
            publish_ack=publish_ack,
            bus_publish=bus_pub,
            hop=hops,
            kv_cas=kv_cas,
            kv_get=kv_get,
            kube_patch=kube,
            batched=batched,
        )
    finally:
        await nc.close()
        await bus.close()
        provider.shutdown()


async def _batched(bus: Bus, count: int, server_pid: int | None) -> Batched:
    """Throughput with nothing waited for one at a time: ``count`` publishes kept in
    flight 64 at a time, then one consumer handling them all (handler: nothing)."""
    window = 64
    cpu, server, started = time.process_time(), _server_cpu_s(server_pid), time.perf_counter()
    for first in range(0, count, window):
        await asyncio.gather(
            *(
                bus.publish(
                    NodeApplied(cluster=BATCH_CLUSTER, node=f"n-{i}", generation=i, vips=())
                )
                for i in range(first, min(count, first + window))
            )
        )
    publish_s, publish_cpu = time.perf_counter() - started, time.process_time() - cpu
    publish_server = _server_cpu_s(server_pid)
    handled = 0
    done = asyncio.Event()

    async def handler(d: Delivery) -> Verdict:
        nonlocal handled
        handled += 1
        if handled >= count:
            done.set()
        return DONE

    consumer = bus.consumer(
        ConsumerSpec(filters=(f"vipwire.{BATCH_CLUSTER}.applied.*",), deliver="all"),
        handler,
    )
    cpu, started = time.process_time(), time.perf_counter()
    await consumer.start()
    await asyncio.wait_for(done.wait(), 120)
    consume_s, consume_cpu = time.perf_counter() - started, time.process_time() - cpu
    consume_server = _server_cpu_s(server_pid)
    await consumer.stop()

    def per(value: float | None, base: float | None) -> float | None:
        if value is None or base is None:
            return None
        return round((value - base) / count * 1e6, 1)

    return Batched(
        messages=count,
        publish_per_s=round(count / publish_s),
        publish_client_cpu_us=round(publish_cpu / count * 1e6, 1),
        publish_server_cpu_us=per(publish_server, server),
        consume_per_s=round(count / consume_s),
        consume_client_cpu_us=round(consume_cpu / count * 1e6, 1),
        consume_server_cpu_us=per(consume_server, publish_server),
    )


def floor_data(floor: Floor) -> dict[str, Any]:
    """The floor as JSON-ready data (``floor`` key of every scenario's document)."""
    data: dict[str, Any] = msgspec.to_builtins(floor)
    return data


async def run_floor(params: Mapping[str, str]) -> BenchResult:
    options = convert_params(params, FloorOptions)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="vipwire-floor-") as tmp:
        server = NatsServer(Path(tmp) / "jetstream")
        await server.start()
        try:
            floor = await measure_floor(server.url, samples=options.samples)
        finally:
            await server.stop()
    data = {"scenario": "floor", **floor_data(floor)}
    rows = [("samples per measurement", str(floor.samples)), *floor.rows()]
    rows.append(
        (
            "Bus overhead over nats-py",
            f"{floor.bus_publish.p50_ms - floor.publish_ack.p50_ms:+.3f} ms per publish (p50)",
        )
    )
    return BenchResult(scenario="floor", rows=tuple(rows), data=data)
