"""The bus surface services use instead of nats-py: typed errors, last-message
reads, KV compare-and-sets and watches, request/reply, against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from nats.js.api import ConsumerConfig

from vipwire.bus import (
    BusConflict,
    KvEntry,
    NoResponders,
    WrongLastSequence,
)
from vipwire.contracts import (
    STREAM,
    NodeGone,
    ServiceGone,
    ServiceSnapshot,
    VipReleased,
    caller_of,
    subject_for,
)
from vipwire.runtime import Runtime

RuntimeFactory = Callable[[str], Awaitable[Runtime]]


def gone(name: str) -> ServiceGone:
    return ServiceGone(cluster="east", namespace="default", name=name, uid="u")


class TestLastMessages:
    async def test_last_message_is_none_for_an_empty_subject_and_the_newest_otherwise(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """last_message answers None where nothing was published, else the newest
        message with its sequence, data and headers."""
        rt = await make_runtime("a")
        await rt.bus.ensure_stream()
        subject = subject_for(gone("web"))
        assert await rt.bus.last_message(subject) is None
        await rt.bus.publish(gone("web"), msg_id="one")
        seq = await rt.bus.publish(gone("web"), msg_id="two")
        last = await rt.bus.last_message(subject)
        assert last is not None
        assert (last.subject, last.seq, last.headers["Nats-Msg-Id"]) == (subject, seq, "two")
        assert b'"web"' in last.data and last.time_ns > 0

    async def test_last_messages_reads_one_per_subject_in_stream_order(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """last_messages returns the last message of every matching subject, oldest first."""
        rt = await make_runtime("a")
        await rt.bus.ensure_stream()
        for name in ("a", "b", "a"):
            await rt.bus.publish(gone(name))
        await rt.bus.publish(NodeGone(cluster="east", node="n1"))
        found = await rt.bus.last_messages("vipwire.east.service.>")
        assert [m.subject for m in found] == [subject_for(gone("b")), subject_for(gone("a"))]
        assert found[0].seq < found[1].seq

    async def test_a_publish_that_expects_an_older_last_sequence_is_refused(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """publish(expected_last_subject_seq=) raises WrongLastSequence once the subject moved on,
        for its own subject and for another one, and publishes when the sequence holds."""
        rt = await make_runtime("a")
        await rt.bus.ensure_stream()
        first = await rt.bus.publish(gone("web"))
        await rt.bus.publish(gone("web"))
        with pytest.raises(WrongLastSequence):
            await rt.bus.publish(gone("web"), expected_last_subject_seq=first)
        with pytest.raises(WrongLastSequence):
            await rt.bus.publish(
                gone("other"),
                expected_last_subject_seq=first,
                expected_last_subject=subject_for(gone("web")),
            )
        last = await rt.bus.last_message(subject_for(gone("web")))
        assert last is not None
        await rt.bus.publish(
            gone("other"),
            expected_last_subject_seq=last.seq,
            expected_last_subject=subject_for(gone("web")),
        )
        assert await rt.bus.last_message(subject_for(gone("other"))) is not None


class TestKvBucket:
    async def test_compare_and_sets_lose_with_a_conflict(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """create over a value, and update or delete at a stale revision, raise the bus's
        conflict types; get answers None for a missing or deleted key."""
        rt = await make_runtime("a")
        kv = await rt.bus.kv("vipwire-cas")
        assert await kv.get("k") is None
        first = await kv.create("k", b"1")
        with pytest.raises(BusConflict):
            await kv.create("k", b"2")
        second = await kv.update("k", b"2", last=first)
        with pytest.raises(WrongLastSequence):
            await kv.update("k", b"3", last=first)
        with pytest.raises(WrongLastSequence):
            await kv.delete("k", last=first)
        await kv.delete("k", last=second)
        assert await kv.get("k") is None
        assert await kv.create("k", b"again") > second

    async def test_scan_lists_live_keys_and_watch_follows_changes(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """scan returns exactly the live keys under a prefix; a watch delivers what exists,
        then None, then each change including delete markers."""
        rt = await make_runtime("a")
        kv = await rt.bus.kv("vipwire-scan")
        assert await kv.scan("addr.") == {}
        await kv.put("addr.1", b"a")
        await kv.put("addr.2", b"b")
        await kv.put("svc.x", b"c")
        await kv.delete("addr.2")
        scanned = await kv.scan("addr.")
        assert {k: e.value for k, e in scanned.items()} == {"addr.1": b"a"}
        assert await kv.keys() == ["addr.1", "svc.x"]
        assert await kv.last_revision("addr.") == 4

        watch = await kv.watch("addr.")
        try:
            initial: list[KvEntry] = []
            while (entry := await watch.next()) is not None:
                initial.append(entry)
            assert {(e.key, e.operation) for e in initial} == {("addr.1", "PUT"), ("addr.2", "DEL")}
            await kv.delete("addr.1")
            change = await asyncio.wait_for(watch.next(), 10)
            assert change is not None and (change.key, change.deleted, change.value) == (
                "addr.1",
                True,
                None,
            )
        finally:
            await watch.stop()


class TestRequests:
    async def test_a_request_is_answered_by_one_member_of_a_queue(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """serve answers requests on a pattern; with a queue group one replica answers each;
        the responder is told the subject the request arrived on (its caller token)."""
        a, b = await make_runtime("a"), await make_runtime("b")
        answered: list[str] = []
        subjects: list[str] = []

        def responder(name: str) -> Callable[[bytes, str], Awaitable[bytes | None]]:
            async def answer(data: bytes, subject: str) -> bytes | None:
                answered.append(name)
                subjects.append(subject)
                return data.upper()

            return answer

        serving = [
            await a.bus.serve("vipwire-ctl.test.verb.*", responder("a"), queue="q"),
            await b.bus.serve("vipwire-ctl.test.verb.*", responder("b"), queue="q"),
        ]
        try:
            for caller in ("operator-alice", "reader-bob", "anonymous", "operator-alice"):
                subject = f"vipwire-ctl.test.verb.{caller}"
                assert await a.bus.request(subject, b"hi", timeout_s=5) == b"HI"
            assert len(answered) == 4
            assert [caller_of(s) for s in subjects] == [
                "operator-alice",
                "reader-bob",
                "anonymous",
                "operator-alice",
            ]
        finally:
            for s in serving:
                await s.stop()

    async def test_a_request_nobody_serves_raises_no_responders(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """A request on a subject nobody serves raises NoResponders, not a nats-py error."""
        rt = await make_runtime("a")
        with pytest.raises(NoResponders):
            await rt.bus.request("vipwire-ctl.nobody", b"", timeout_s=2)

    async def test_server_version_is_read_from_the_connection(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """server_version names the connected server's major, minor and patch."""
        rt = await make_runtime("a")
        major, minor, _ = rt.bus.server_version
        assert (major, minor) >= (2, 10)


class TestEndedSubjects:
    async def test_purge_ended_drops_a_deleted_services_subjects_and_keeps_the_living(
        self, make_runtime: RuntimeFactory
    ) -> None:
        """purge_ended empties every subject of a Service whose last message is its
        ServiceGone, keeps a live one, and holds back while a durable consumer has not
        acknowledged the end."""
        rt = await make_runtime("a")
        await rt.bus.ensure_stream()
        ref = {"cluster": "east", "namespace": "default", "name": "old", "uid": "u1"}
        live = ServiceSnapshot(
            cluster="east", namespace="default", name="live", uid="u2", resource_version="1"
        )
        await rt.bus.publish(VipReleased(**ref))
        await rt.bus.publish(ServiceGone(**ref))
        await rt.bus.publish(live)
        # A durable consumer that has acknowledged nothing: the end must wait for it.
        await rt.bus.js.add_consumer(STREAM, ConsumerConfig(durable_name="slow"))
        assert await rt.bus.purge_ended(max_age_s=0) == []
        await rt.bus.js.delete_consumer(STREAM, "slow")

        purged = await rt.bus.purge_ended(max_age_s=0)
        assert sorted(purged) == [
            "vipwire.east.service.default.old",
            "vipwire.east.vip.default.old",
        ]
        assert await rt.bus.last_message("vipwire.east.service.default.old") is None
        assert await rt.bus.last_message("vipwire.east.vip.default.old") is None
        assert await rt.bus.last_message(subject_for(live)) is not None
        assert await rt.bus.purge_ended(max_age_s=0) == []
