"""The event backbone against a real nats-server: publish, consume, verdicts, poison."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import pytest
from nats.js.api import AckPolicy
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind

from support.publishing import publish_until_accepted
from vipwire.bus import (
    DONE,
    ConsumerSpec,
    Delivery,
    Reject,
    Retry,
    Unreadable,
    Verdict,
    kv_keys,
    kv_purge_markers,
)
from vipwire.contracts import STREAM, NodeGone, ServiceGone, encode, subject_for
from vipwire.natsserver import NatsServer
from vipwire.runtime import Runtime
from vipwire.testing import eventually

RuntimeFactory = Callable[[str], Awaitable[Runtime]]


def gone(name: str, uid: str = "u") -> ServiceGone:
    return ServiceGone(cluster="east", namespace="default", name=name, uid=uid)


def recording(got: list[str]) -> Callable[[Delivery], Awaitable[Verdict]]:
    """A handler that appends the node of every NodeGone it is handed to ``got``."""

    async def handler(d: Delivery) -> Verdict:
        assert isinstance(d.message, NodeGone)
        got.append(d.message.node)
        return DONE

    return handler


async def restarted(server: NatsServer, store: Path) -> NatsServer:
    """Kill nats-server, then start a new one on the same port and store."""
    port = server.port
    server.kill()
    await server.stop()
    again = NatsServer(store, port=port or 0)
    await again.start()
    return again


SERVICES = ("vipwire.*.service.>",)


async def owes_nothing(rt: Runtime, durable: str) -> bool:
    """Fence: the server holds nothing more for this consumer to deliver or redeliver.

    Every message delivered and settled (acked or termed), none waiting: whatever a
    test asserts did not come (again) can no longer come.
    """
    info = await rt.bus.js.consumer_info(STREAM, durable)
    return info.num_ack_pending == 0 and info.num_pending == 0


class TestDeclarations:
    async def test_stream_and_buckets_are_declared_idempotently(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """Declaring the stream and a KV bucket twice, from two services, is harmless."""
        a, b = await make_runtime("a"), await make_runtime("b")
        await a.bus.ensure_stream()
        await b.bus.ensure_stream()
        kv1 = await a.bus.kv("vipwire-test")
        kv2 = await b.bus.kv("vipwire-test")
        await kv1.put("k", b"v")
        assert (await kv2.get("k")).value == b"v"
        info = await a.bus.js.stream_info(STREAM)
        assert info.config.subjects == ["vipwire.>"]


class TestKvKeys:
    async def test_keys_are_the_live_ones_whatever_was_deleted_or_purged(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """kv_keys lists exactly the keys holding a value: none for an empty bucket,
        none of the deleted or purged ones, all of 2,000 read at once."""
        rt = await make_runtime("a")
        kv = await rt.bus.kv("vipwire-keys")
        assert await kv_keys(rt.bus.js, "vipwire-keys") == []
        await asyncio.gather(*(kv.put(f"addr.{i:04d}", b"x") for i in range(2000)))
        await kv.put("svc.other", b"y")
        for i in range(0, 2000, 3):
            await kv.delete(f"addr.{i:04d}")
        await kv.purge("addr.0001")
        live = sorted(f"addr.{i:04d}" for i in range(2000) if i % 3 and i != 1)
        assert await kv_keys(rt.bus.js, "vipwire-keys", "addr.>") == live
        assert await kv_keys(rt.bus.js, "vipwire-keys") == [*live, "svc.other"]

    async def test_old_delete_markers_are_purged_and_nothing_else(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """kv_purge_markers drops the markers older than asked, and only them: values,
        keys written again after their delete, and young markers stay; a purged key
        can be created again."""
        rt = await make_runtime("a")
        kv = await rt.bus.kv("vipwire-markers")
        for key in ("a", "b", "c", "d"):
            await kv.put(key, b"1")
        for key in ("a", "b", "d"):
            await kv.delete(key)
        await kv.put("b", b"2")  # written again after its delete
        assert await kv_purge_markers(rt.bus.js, "vipwire-markers", older_than=3600) == 0
        assert await kv_purge_markers(rt.bus.js, "vipwire-markers", older_than=0) == 2
        info = await rt.bus.js.stream_info("KV_vipwire-markers", subjects_filter=">")
        assert set(info.state.subjects or {}) == {"$KV.vipwire-markers.b", "$KV.vipwire-markers.c"}
        assert await kv_keys(rt.bus.js, "vipwire-markers") == ["b", "c"]
        entry = await kv.get("b")
        assert entry.value == b"2"
        await kv.create("a", b"3")
        assert await kv_keys(rt.bus.js, "vipwire-markers") == ["a", "b", "c"]


class TestPublish:
    async def test_publish_sets_msg_id_and_trace_context(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """A published message carries Nats-Msg-Id and a W3C traceparent header."""
        rt = await make_runtime("pub")
        seq = await rt.bus.publish(gone("web"), msg_id="east/u/1")
        raw = await rt.bus.js.get_msg(STREAM, seq)
        assert raw.headers is not None
        assert raw.headers["Nats-Msg-Id"] == "east/u/1"
        assert raw.headers["traceparent"].startswith("00-")

    async def test_same_msg_id_is_stored_once(self, make_runtime: RuntimeFactory) -> None:
        """JetStream drops a repeat of a Nats-Msg-Id inside the duplicate window."""
        rt = await make_runtime("pub")
        first = await rt.bus.publish(gone("web"), msg_id="same")
        second = await rt.bus.publish(gone("web"), msg_id="same")
        assert first == second
        info = await rt.bus.js.stream_info(STREAM)
        assert info.state.messages == 1


class TestConsume:
    async def test_per_subject_order_is_kept_under_concurrency(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """With many lanes and uneven handler times, each subject is handled in order."""
        rt = await make_runtime("order")
        seen: dict[str, list[int]] = defaultdict(list)
        rng = random.Random(7)

        async def handler(d: Delivery) -> Verdict:
            await asyncio.sleep(rng.random() / 500)  # uneven handler times, on purpose
            assert isinstance(d.message, ServiceGone)
            seen[d.message.name].append(int(d.message.uid))
            return DONE

        consumer = rt.bus.consumer(
            ConsumerSpec(filters=SERVICES, durable="order", concurrency=8, supersede=False),
            handler,
        )
        await consumer.start()
        for i in range(40):
            await asyncio.gather(*(rt.bus.publish(gone(f"s{k}", str(i))) for k in range(10)))
        await eventually(
            lambda: sum(map(len, seen.values())) == 400, what="all 400 messages handled"
        )
        await consumer.stop()
        assert all(v == list(range(40)) for v in seen.values()), seen

    async def test_retry_redelivers_after_its_delay(self, make_runtime: RuntimeFactory) -> None:
        """Retry naks with a delay; the message comes back and is then acknowledged."""
        rt = await make_runtime("retry")
        deliveries: list[int] = []

        async def handler(d: Delivery) -> Verdict:
            deliveries.append(d.num_delivered)
            return Retry(delay=0.05, reason="not yet") if d.num_delivered < 3 else DONE

        consumer = rt.bus.consumer(ConsumerSpec(filters=SERVICES, durable="retry"), handler)
        await consumer.start()
        await rt.bus.publish(gone("web"))
        await eventually(lambda: deliveries == [1, 2, 3], what="three deliveries")
        await eventually(lambda: owes_nothing(rt, "retry"), what="the third delivery acknowledged")
        assert deliveries == [1, 2, 3]
        await consumer.stop()

    async def test_reject_terminates_without_redelivery(self, make_runtime: RuntimeFactory) -> None:
        """Reject terms the message: it is never delivered again."""
        rt = await make_runtime("reject")
        deliveries: list[int] = []

        async def handler(d: Delivery) -> Verdict:
            deliveries.append(d.seq)
            return Reject(reason="cannot ever work")

        spec = ConsumerSpec(filters=SERVICES, durable="reject", ack_wait=0.5)
        consumer = rt.bus.consumer(spec, handler)
        await consumer.start()
        await rt.bus.publish(gone("web"))
        await eventually(lambda: len(deliveries) == 1, what="one delivery")
        await eventually(lambda: owes_nothing(rt, "reject"), what="the message terminated")
        assert len(deliveries) == 1
        await consumer.stop()

    async def test_a_consumer_without_acks_gets_each_message_once(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """ack="none": the server keeps no acknowledgements and redelivers nothing, not even
        after a Retry; the delivery still carries its stream sequence."""
        rt = await make_runtime("noack")
        seen: list[tuple[str, int]] = []

        async def handler(d: Delivery) -> Verdict:
            assert isinstance(d.message, ServiceGone)
            seen.append((d.message.name, d.seq))
            return Retry(delay=0.05, reason="ignored") if d.message.name == "a" else DONE

        spec = ConsumerSpec(filters=SERVICES, durable="noack", ack="none")
        consumer = rt.bus.consumer(spec, handler)
        await consumer.start()
        await rt.bus.publish(gone("a"))
        await rt.bus.publish(gone("b"))
        await eventually(lambda: len(seen) == 2, what="both messages delivered")
        await eventually(lambda: owes_nothing(rt, "noack"), what="the server owes nothing")
        assert sorted(name for name, _ in seen) == ["a", "b"]
        assert all(seq > 0 for _, seq in seen)
        info = await rt.bus.js.consumer_info(STREAM, "noack")
        assert info.config.ack_policy == AckPolicy.NONE
        assert info.num_redelivered == 0
        await consumer.stop()

    async def test_older_snapshot_is_superseded(self, make_runtime: RuntimeFactory) -> None:
        """A redelivered message older than one already handled on its subject is skipped."""
        rt = await make_runtime("supersede")
        handled: list[str] = []

        async def handler(d: Delivery) -> Verdict:
            assert isinstance(d.message, ServiceGone)
            if d.message.uid == "old" and d.num_delivered == 1:
                return Retry(delay=0.2, reason="let the newer one overtake")
            handled.append(d.message.uid)
            return DONE

        consumer = rt.bus.consumer(ConsumerSpec(filters=SERVICES, durable="sup"), handler)
        await consumer.start()
        await rt.bus.publish(gone("web", "old"))
        await rt.bus.publish(gone("web", "new"))
        await eventually(lambda: handled == ["new"], what="the newer one handled")
        # The older one comes back after its 0.2 s delay and is settled without a handler.
        await eventually(lambda: owes_nothing(rt, "sup"), what="the older one redelivered, settled")
        assert handled == ["new"]
        await consumer.stop()

    async def test_last_per_subject_rebuilds_and_reports_caught_up(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """A new consumer sees only the newest message per subject, then says caught up."""
        rt = await make_runtime("rebuild")
        for uid in ("1", "2", "3"):
            await rt.bus.publish(gone("a", uid))
            await rt.bus.publish(gone("b", uid))
        seen: list[tuple[str, str]] = []

        async def handler(d: Delivery) -> Verdict:
            assert isinstance(d.message, ServiceGone)
            seen.append((d.message.name, d.message.uid))
            return DONE

        consumer = rt.bus.consumer(
            ConsumerSpec(filters=SERVICES, deliver="last_per_subject"), handler
        )
        await consumer.start()
        await consumer.caught_up(timeout=5)
        assert sorted(seen) == [("a", "3"), ("b", "3")]
        await consumer.stop()


class TestPoison:
    async def test_malformed_message_is_termed_logged_counted_and_the_pipeline_goes_on(
        self, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Garbage on a subject is terminated once, logged with subject and sequence, counted."""
        rt = await make_runtime("poison")
        handled: list[str] = []

        async def handler(d: Delivery) -> Verdict:
            assert isinstance(d.message, ServiceGone)
            handled.append(d.message.name)
            return DONE

        consumer = rt.bus.consumer(
            ConsumerSpec(filters=SERVICES, durable="poison", ack_wait=0.5), handler
        )
        await consumer.start()
        bad = await rt.bus.js.publish("vipwire.east.service.default.bad", b'{"kind": "nope"}')
        await rt.bus.publish(gone("good"))
        with caplog.at_level(logging.ERROR, logger="vipwire.bus.consumer"):
            await eventually(lambda: handled == ["good"], what="the good message handled")
            # Both settled on the server (the poison one termed): neither can come back.
            await eventually(lambda: owes_nothing(rt, "poison"), what="nothing owed")
        assert handled == ["good"]
        poison_logs = [r.getMessage() for r in caplog.records if "poison" in r.getMessage()]
        assert len(poison_logs) == 1
        assert "vipwire.east.service.default.bad" in poison_logs[0]
        assert f"seq {bad.seq}" in poison_logs[0]
        assert "vipwire_bus_poison_total" in rt.metrics.expose()
        info = await rt.bus.js.consumer_info(STREAM, "poison")
        assert info.num_ack_pending == 0
        await consumer.stop()

    async def test_last_valid_message_walks_back_over_garbage_and_other_subjects(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """The newest message of a subject that decodes is found behind garbage and many
        messages of other subjects; before it there is none."""
        rt = await make_runtime("walk")
        subject = subject_for(gone("web"))
        valid = await rt.bus.publish(gone("web", uid="kept"))
        for i in range(300):
            await rt.bus.publish(gone(f"other-{i}"))
        for _ in range(3):
            await rt.bus.js.publish(subject, b"\x00garbage")
        found = await rt.bus.last_valid_message(subject)
        assert found is not None
        stored, message = found
        assert stored.seq == valid
        assert isinstance(message, ServiceGone) and message.uid == "kept"
        assert await rt.bus.last_valid_message(subject, before_seq=valid) is None

    async def test_an_unreadable_last_message_hands_over_the_valid_one_before_it(
        self, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With deliver last_per_subject, garbage last on a subject: the handler gets the
        valid message before it, the subject is reported (callback, log with subject and
        sequence, metric) and stays unreadable until a valid newer message arrives."""
        rt = await make_runtime("unreadable")
        subject = subject_for(gone("web"))
        valid = await rt.bus.publish(gone("web", uid="kept"))
        bad = await rt.bus.js.publish(subject, b'{"kind": "nope"}')
        handled: list[tuple[str, int]] = []
        reported: list[Unreadable] = []

        async def handler(d: Delivery) -> Verdict:
            assert isinstance(d.message, ServiceGone)
            handled.append((d.message.uid, d.seq))
            return DONE

        async def on_unreadable(u: Unreadable) -> None:
            reported.append(u)

        consumer = rt.bus.consumer(
            ConsumerSpec(filters=SERVICES, deliver="last_per_subject"),
            handler,
            on_unreadable=on_unreadable,
        )
        await consumer.start()
        await consumer.caught_up(5)
        assert handled == [("kept", valid)]
        assert [(u.subject.raw, u.seq, u.in_force) for u in reported] == [(subject, bad.seq, valid)]
        assert consumer.unreadable == {subject: bad.seq}
        assert 'vipwire_bus_unreadable_total{family="service"} 1' in rt.metrics.expose()
        logged = [r.getMessage() for r in caplog.records if subject in r.getMessage()]
        assert any(f"seq {bad.seq}" in line for line in logged), logged

        newer = await rt.bus.publish(gone("web", uid="newer"))
        await eventually(lambda: handled[-1] == ("newer", newer), what="the newer one handled")
        assert consumer.unreadable == {}
        await consumer.stop()

    async def test_a_payload_disagreeing_with_its_subject_is_refused_before_any_handler(
        self, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A payload naming another cluster/name than its subject: never handled (the
        last agreeing message before it is handed over instead), no on_unreadable call,
        counted as subject-mismatch, logged once per subject with what disagreed."""
        rt = await make_runtime("mismatch")
        subject = subject_for(gone("web"))
        valid = await rt.bus.publish(gone("web", uid="kept"))
        forged = ServiceGone(cluster="west", namespace="default", name="api", uid="forged")
        for _ in range(3):
            await rt.bus.js.publish(subject, encode(forged))
        handled: list[tuple[str, int]] = []
        reported: list[Unreadable] = []

        async def handler(d: Delivery) -> Verdict:
            assert isinstance(d.message, ServiceGone)
            handled.append((d.message.uid, d.seq))
            return DONE

        async def on_unreadable(u: Unreadable) -> None:
            reported.append(u)

        consumer = rt.bus.consumer(
            ConsumerSpec(filters=SERVICES, deliver="last_per_subject", ack="none"),
            handler,
            on_unreadable=on_unreadable,
        )
        await consumer.start()
        await consumer.caught_up(5)
        assert handled == [("kept", valid)]
        assert reported == [] and consumer.unreadable == {}
        live = ConsumerSpec(filters=SERVICES, durable="mismatch-live")
        live_handled: list[str] = []

        async def live_handler(d: Delivery) -> Verdict:
            assert isinstance(d.message, ServiceGone)
            live_handled.append(d.message.uid)
            return DONE

        second = rt.bus.consumer(live, live_handler)
        await second.start()
        await eventually(lambda: owes_nothing(rt, "mismatch-live"), what="all settled")
        assert live_handled == ["kept"]
        exposed = rt.metrics.expose()
        assert (
            'vipwire_bus_rejected_total{family="service",reason="subject-mismatch"} 4' in exposed
        ), exposed
        lines = [r.getMessage() for r in caplog.records if "refused " + subject in r.getMessage()]
        assert len(lines) == 2, lines  # one per consumer, the repeats held back
        # Live, a forgery is only refused: the message in force was handled already and
        # is not looked up (a flood costs no stream reads) nor handed over again.
        await rt.bus.js.publish(subject, encode(forged))
        newer = await rt.bus.publish(gone("web", uid="newer"))  # a fence: same subject, after
        await eventually(lambda: handled[-1] == ("newer", newer), what="the newer one handled")
        assert handled == [("kept", valid), ("newer", newer)]
        assert "cluster 'west' (subject says 'east')" in lines[0]
        assert "name 'api' (subject says 'web')" in lines[0]
        await second.stop()
        await consumer.stop()

    async def test_a_handler_that_keeps_failing_is_poisoned_after_max_deliveries(
        self, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An exception retries with backoff; after max_deliveries the message is termed."""
        rt = await make_runtime("fail")
        attempts: list[int] = []

        async def handler(d: Delivery) -> Verdict:
            attempts.append(d.num_delivered)
            raise RuntimeError("boom")

        spec = ConsumerSpec(filters=SERVICES, durable="fail", max_deliveries=3)
        consumer = rt.bus.consumer(spec, handler)
        await consumer.start()
        with caplog.at_level(logging.ERROR):
            await rt.bus.publish(gone("web"))
            await eventually(lambda: attempts == [1, 2, 3], what="three attempts")
            await eventually(lambda: owes_nothing(rt, "fail"), what="the message terminated")
        assert attempts == [1, 2, 3]
        assert any("still failing after 3 deliveries" in r.getMessage() for r in caplog.records)
        await consumer.stop()


class TestTracing:
    async def test_consumer_span_continues_the_publishers_trace(
        self, make_runtime: RuntimeFactory, span_exporter: InMemorySpanExporter
    ) -> None:
        """The process span is a CONSUMER child of the PRODUCER span, with messaging attributes."""
        producer, receiver = await make_runtime("producer"), await make_runtime("receiver")
        done = asyncio.Event()

        async def handler(d: Delivery) -> Verdict:
            done.set()
            return DONE

        consumer = receiver.bus.consumer(ConsumerSpec(filters=SERVICES, durable="t"), handler)
        await consumer.start()
        await producer.bus.publish(gone("web"), msg_id="id-1")
        await asyncio.wait_for(done.wait(), 5)
        await consumer.stop()
        spans = {s.name: s for s in span_exporter.get_finished_spans()}
        send, process = spans["publish service"], spans["process service"]
        assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
        assert process.context is not None and send.context is not None
        assert process.context.trace_id == send.context.trace_id
        assert process.parent is not None and process.parent.span_id == send.context.span_id
        assert process.attributes is not None
        assert process.attributes["messaging.system"] == "nats"
        assert process.attributes["messaging.message.id"] == "id-1"
        assert process.attributes["messaging.destination.name"] == subject_for(gone("web"))

    async def test_an_untraced_consumer_still_names_the_publishers_span(
        self, make_runtime: RuntimeFactory, span_exporter: InMemorySpanExporter
    ) -> None:
        """traced=False records no process span, yet a delivery names the PRODUCER span, for
        a handler that links its own later work to it."""
        rt = await make_runtime("untraced")
        got: list[SpanContext] = []

        async def handler(d: Delivery) -> Verdict:
            got.append(d.span_context())
            return DONE

        spec = ConsumerSpec(filters=SERVICES, durable="u", traced=False, ack="none")
        consumer = rt.bus.consumer(spec, handler)
        await consumer.start()
        await rt.bus.publish(gone("web"))
        await eventually(lambda: len(got) == 1, what="one delivery to the untraced consumer")
        await consumer.stop()
        spans = {s.name: s for s in span_exporter.get_finished_spans()}
        assert "process service" not in spans
        send = spans["publish service"].context
        assert send is not None
        assert (got[0].trace_id, got[0].span_id) == (send.trace_id, send.span_id)


class TestResilience:
    async def test_consumer_carries_on_across_a_nats_restart(
        self, tmp_path_factory: pytest.TempPathFactory, span_exporter: InMemorySpanExporter
    ) -> None:
        """Kill nats-server and start it again on the same port: publishing and consuming resume."""
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        from vipwire.bus import BusSettings
        from vipwire.runtime import CommonSettings

        store = tmp_path_factory.mktemp("store")
        server = NatsServer(store)
        await server.start()
        settings = BusSettings(servers=(server.url,), reconnect_wait_s=0.1)
        rt = Runtime(
            "resilient",
            CommonSettings(bus=settings),
            span_processors=[SimpleSpanProcessor(span_exporter)],
        )
        await rt.start()
        got: list[str] = []
        # Short pull requests: should one taken by the restarting server go unanswered,
        # the next comes within 2 s, not 30 (a full run once waited out the 10 s below).
        spec = ConsumerSpec(
            filters=("vipwire.*.node.>",), durable="r", heartbeat=0.2, pull_expires=2.0
        )
        consumer = rt.bus.consumer(spec, recording(got))
        await consumer.start()
        await rt.bus.publish(NodeGone(cluster="east", node="before"))
        await eventually(lambda: got == ["before"], what="'before' handled")
        # Delivery is at least once: an ack still on its way when the server dies is
        # lost with it, and 'before' comes again. Kill only once the server has it.
        await eventually(lambda: owes_nothing(rt, "r"), what="the server has the ack of 'before'")
        server = await restarted(server, store)
        try:
            await publish_until_accepted(
                rt.bus, NodeGone(cluster="east", node="after"), timeout_s=10
            )
            await eventually(
                lambda: "after" in got, timeout=10, what="'after' handled once the server is back"
            )
            assert got == ["before", "after"]
        finally:
            await rt.stop()
            await server.stop()

    async def test_a_consumer_without_acks_resumes_after_a_reconnect_without_gap_or_replay(
        self, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        """ack="none" loses what was in flight when the connection dropped, so the consumer is
        created anew on reconnect from the first sequence it did not finish: what came
        meanwhile is handed over, what it handled before is not handed over again."""
        from vipwire.bus import BusSettings
        from vipwire.runtime import CommonSettings

        store = tmp_path_factory.mktemp("store")
        server = NatsServer(store)
        await server.start()
        rt = Runtime(
            "replaying",
            CommonSettings(bus=BusSettings(servers=(server.url,), reconnect_wait_s=0.1)),
        )
        await rt.start()
        got: list[str] = []
        spec = ConsumerSpec(
            filters=("vipwire.*.node.>",), deliver="last_per_subject", ack="none", heartbeat=0.2
        )
        consumer = rt.bus.consumer(spec, recording(got))
        await consumer.start()
        await rt.bus.publish(NodeGone(cluster="east", node="before"))
        await eventually(lambda: got == ["before"], what="'before' handled")
        server = await restarted(server, store)
        try:
            await publish_until_accepted(
                rt.bus, NodeGone(cluster="east", node="after"), timeout_s=10
            )
            await eventually(
                lambda: "after" in got, timeout=10, what="'after' handled after the reconnect"
            )
            assert got == ["before", "after"]
        finally:
            await rt.stop()
            await server.stop()

    @pytest.mark.parametrize("ack", ["none", "explicit"])
    async def test_a_busy_consumer_is_not_taken_for_a_dead_one(
        self, make_runtime: RuntimeFactory, ack: Literal["none", "explicit"]
    ) -> None:
        """A consumer whose every credit sits in a slow handler hears nothing from the
        server (it has no request open) for longer than three heartbeats. That is not a
        lost request: it must not be re-created, which for an ephemeral consumer
        replays its subjects and hands every message over twice."""
        rt = await make_runtime("busy")
        for node in ("a", "b", "c"):
            await rt.bus.publish(NodeGone(cluster="east", node=node))
        got: list[str] = []

        async def handler(d: Delivery) -> Verdict:
            assert isinstance(d.message, NodeGone)
            got.append(d.message.node)
            if d.message.node == "a":
                await asyncio.sleep(1.0)  # > 3 heartbeats, with the only credit taken
            return DONE

        spec = ConsumerSpec(
            filters=("vipwire.*.node.>",),
            deliver="last_per_subject",
            ack=ack,
            batch=1,
            heartbeat=0.2,
        )
        consumer = rt.bus.consumer(spec, handler)
        await consumer.start()
        try:
            await eventually(lambda: set(got) == {"a", "b", "c"}, timeout=5, what="a, b, c")
            # Marker: a re-created consumer would replay a, b and c (older sequences)
            # before it; by now the busy spell is over and every request was heard.
            await rt.bus.publish(NodeGone(cluster="east", node="marker"))
            await eventually(lambda: "marker" in got, what="the marker handled")
            assert sorted(got) == ["a", "b", "c", "marker"]
            consumers = await rt.bus.js.consumers_info(STREAM)
            assert len(consumers) == 1
        finally:
            await consumer.stop()

    async def test_a_stop_cancelled_halfway_still_finishes(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """Cancelling whoever awaits stop() does not cut the stop short: the handler in
        flight finishes, and a second stop() waits for the first instead of returning
        while lanes still run."""
        rt = await make_runtime("stopper")
        await rt.bus.publish(NodeGone(cluster="east", node="slow"))
        started, finished = asyncio.Event(), asyncio.Event()

        async def handler(d: Delivery) -> Verdict:
            started.set()
            await asyncio.sleep(0.3)  # a slow handler, on purpose: stop() must wait for it
            finished.set()
            return DONE

        consumer = rt.bus.consumer(ConsumerSpec(filters=("vipwire.*.node.>",)), handler)
        await consumer.start()
        await asyncio.wait_for(started.wait(), 5)
        first = asyncio.create_task(consumer.stop())
        await asyncio.sleep(0.05)  # pacing: stop() gets halfway (the handler takes 0.3 s)
        first.cancel()
        await consumer.stop()
        assert finished.is_set()
        assert first.cancelled()

    async def test_a_stopped_consumer_hands_on_what_was_already_sent_to_it(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """Stopping mid-stream loses nothing to ack_wait: the next instance of the durable
        consumer gets every message at once, not after the 30 s redelivery."""
        rt = await make_runtime("a")
        nodes = [f"n{i}" for i in range(400)]
        got: set[str] = set()

        async def handler(d: Delivery) -> Verdict:
            assert isinstance(d.message, NodeGone)
            got.add(d.message.node)
            # A busy event loop (as in a loaded service): deliveries queue up in the
            # client faster than they reach the lanes.
            time.sleep(0.002)  # noqa: ASYNC251
            return DONE

        spec = ConsumerSpec(filters=("vipwire.*.node.>",), durable="handover", ack_wait=30.0)
        first = rt.bus.consumer(spec, handler)
        await first.start()
        # Stop while the server is still pushing: some messages are on the wire or
        # queued in the client, not yet in a lane.
        publishing = [
            asyncio.ensure_future(rt.bus.publish(NodeGone(cluster="east", node=n))) for n in nodes
        ]
        await eventually(
            lambda: len(got) >= 50, timeout=10, what="50 messages handled before the stop"
        )
        await first.stop()
        await asyncio.gather(*publishing)
        second = rt.bus.consumer(spec, handler)
        await second.start()
        try:
            await eventually(
                lambda: got == set(nodes), timeout=5, what="the second consumer got every message"
            )
        finally:
            await second.stop()

    async def test_a_consumer_stopped_while_messages_stream_in_leaves_none_to_ack_wait(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """A stop while the server is delivering takes in what the server picked for it:
        it leaves once its pull requests are used up, so nothing goes to an inbox that
        is gone and waits out ack_wait (30 s) before anyone else gets it."""
        rt = await make_runtime("a")
        publisher = await make_runtime("b")

        async def stop_midstream(cluster: str) -> None:
            got: list[str] = []
            stopping = asyncio.Event()
            after_stop: list[str] = []
            streaming = asyncio.Event()
            streaming.set()

            async def handler(d: Delivery) -> Verdict:
                assert isinstance(d.message, NodeGone)
                got.append(d.message.node)
                if stopping.is_set():
                    after_stop.append(d.message.node)
                return DONE

            async def stream() -> None:
                n = 0
                while streaming.is_set():
                    batch = [NodeGone(cluster=cluster, node=f"n{n + i}") for i in range(20)]
                    await asyncio.gather(*(publisher.bus.publish(m) for m in batch))
                    n += len(batch)

            spec = ConsumerSpec(filters=(f"vipwire.{cluster}.node.>",), durable=cluster, batch=40)
            consumer = rt.bus.consumer(spec, handler)
            # The stream never pauses on purpose, but a loaded machine may stall it for
            # more than the 100 ms quiet: the stop is to leave on its requests alone.
            consumer._STOP_QUIET_S = consumer._STOP_SETTLE_S = 10.0
            await consumer.start()
            task = asyncio.ensure_future(stream())
            try:
                await eventually(lambda: len(got) >= 100, timeout=10, what="100 handled")
                stopping.set()
                await consumer.stop()
            finally:
                streaming.clear()
                await task
            # The stream never paused, so the stop waited until the server had sent
            # everything it was asked for. Which messages nats-server would otherwise
            # lose is a race inside it, so the requests left open are what is checked.
            assert after_stop, f"{cluster}: nothing taken in after the stop began"
            assert consumer._outstanding == 0, f"{cluster}: left with requests open"

            async def settled() -> bool:
                info = await rt.bus.js.consumer_info(STREAM, cluster)
                return info.num_ack_pending == 0

            await eventually(settled, timeout=5, what=f"{cluster}: nothing left unacknowledged")

        for cluster in ("c0", "c1", "c2"):
            await stop_midstream(cluster)
