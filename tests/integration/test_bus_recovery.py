"""Consumer recovery against a real nats-server: a lost consumer, a shared durable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from vipwire.bus import DONE, ConsumerSpec, Delivery, Verdict
from vipwire.contracts import STREAM, NodeGone
from vipwire.runtime import Runtime
from vipwire.testing import eventually

RuntimeFactory = Callable[[str], Awaitable[Runtime]]


def recording(got: list[str]) -> Callable[[Delivery], Awaitable[Verdict]]:
    async def handler(d: Delivery) -> Verdict:
        assert isinstance(d.message, NodeGone)
        got.append(d.message.node)
        return DONE

    return handler


async def test_a_durable_re_created_elsewhere_from_another_start_is_bound_as_is(
    make_runtime: RuntimeFactory,
) -> None:
    """A durable that a replica re-created from its own resume point (another deliver
    policy than ours) is bound to, not refused: the service still starts."""
    rt = await make_runtime("binder")
    for node in ("a", "b", "c"):
        await rt.bus.publish(NodeGone(cluster="east", node=node))
    await rt.bus.js.add_consumer(
        STREAM,
        ConsumerConfig(
            durable_name="shared",
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=2,
            ack_policy=AckPolicy.EXPLICIT,
            filter_subjects=["vipwire.*.node.>"],
        ),
    )
    got: list[str] = []
    consumer = rt.bus.consumer(
        ConsumerSpec(filters=("vipwire.*.node.>",), durable="shared"), recording(got)
    )
    await consumer.start()
    await eventually(lambda: sorted(got) == ["b", "c"], what="b and c, from seq 2")


async def test_a_consumer_deleted_on_the_server_resumes_where_it_was(
    make_runtime: RuntimeFactory,
) -> None:
    """Deleted behind its back, an ephemeral consumer is created anew from the first
    sequence it had not finished: no replay of what it handled, nothing skipped."""
    rt = await make_runtime("deleted")
    got: list[str] = []
    consumer = rt.bus.consumer(
        ConsumerSpec(filters=("vipwire.*.node.>",), deliver="last_per_subject", heartbeat=0.2),
        recording(got),
    )
    await consumer.start()
    await rt.bus.publish(NodeGone(cluster="east", node="before"))
    await eventually(lambda: got == ["before"], what="'before' handled")
    first = consumer.name
    assert first is not None
    await rt.bus.js.delete_consumer(STREAM, first)
    await rt.bus.publish(NodeGone(cluster="east", node="after"))
    await eventually(lambda: "after" in got, what="'after' handled by the new consumer")
    assert got == ["before", "after"]
    assert consumer.name != first
    await eventually(lambda: rt.bus.consumer_problem() is None, what="delivering again")


async def test_a_new_only_consumer_lost_before_its_first_message_misses_nothing(
    make_runtime: RuntimeFactory,
) -> None:
    """deliver="new", deleted before anything came: re-created from where it started, so
    what was published meanwhile is handed over (a fresh "new" consumer would skip it)."""
    rt = await make_runtime("new-only")
    await rt.bus.publish(NodeGone(cluster="east", node="old"))
    got: list[str] = []
    consumer = rt.bus.consumer(
        ConsumerSpec(filters=("vipwire.*.node.>",), deliver="new", heartbeat=0.2),
        recording(got),
    )
    await consumer.start()
    first = consumer.name
    assert first is not None
    await rt.bus.js.delete_consumer(STREAM, first)
    await rt.bus.publish(NodeGone(cluster="east", node="meanwhile"))
    await eventually(lambda: consumer.name != first, what="the consumer created anew")
    await rt.bus.publish(NodeGone(cluster="east", node="later"))
    await eventually(lambda: "later" in got, what="'later' handled")
    assert got == ["meanwhile", "later"]
