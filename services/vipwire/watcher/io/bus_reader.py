"""Bus -> the term: what the watcher (or a predecessor) published, and what the rest said.

One consumer reads the cluster's ``vip`` and ``lb`` subjects (and, with a
status gate, ``applied``) for the whole term; another replays our own
families at its start. Every delivery lands in the term's memory; what ipam,
the lbdriver and the node agents said is then written back to the Service
(:mod:`.status_writes`) and, where it calls for one, told in an Event.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from vipwire.aio import cancel_and_wait
from vipwire.bus import (
    DONE,
    Bus,
    ConsumerGroup,
    ConsumerSpec,
    Delivery,
    Retry,
    Unreadable,
    Verdict,
)
from vipwire.contracts import (
    EndpointsSnapshot,
    LbFailed,
    LbMessage,
    LbProgrammed,
    LbRemoved,
    NodeApplied,
    NodeGone,
    NodeSnapshot,
    ServiceGone,
    ServiceRejected,
    ServiceSnapshot,
    VipAssigned,
    VipFailed,
    VipMessage,
    VipReleased,
    VipReleasing,
    family_filter,
)
from vipwire.telemetry import trace_id_of_current_span
from vipwire.watcher.core.events import (
    EventSpec,
    event_for,
    event_subject,
    released_ref,
    sharing_event,
    status_vip_event,
    unreadable_event,
)
from vipwire.watcher.core.term_memory import DeferredEvent, message_fingerprint
from vipwire.watcher.io.event_recorder import EventRecorder
from vipwire.watcher.io.kube_writes import NotLeader
from vipwire.watcher.io.status_writes import StatusWriter
from vipwire.watcher.io.term import Term

log = logging.getLogger("vipwire.watcher")

#: Events of bus messages older than this are not emitted when replayed: the API
#: server has expired the Events they made (default TTL one hour), and emitting
#: them again would present old news as new.
EVENT_HORIZON_S = 3600.0

#: How long an Event about a Node waits for the Nodes to be listed (a term's start).
NODE_LIST_WAIT_S = 60.0


class BusReader:
    """The handler of both consumers of a term."""

    def __init__(self, term: Term, writer: StatusWriter, recorder: EventRecorder) -> None:
        self._term = term
        self._writer = writer
        self._recorder = recorder
        # By subject: the Event of a message that cannot be read, until the valid one
        # before it (handed over next) tells which Service (uid) it is about.
        self._unreadable: dict[str, tuple[EventSpec, str]] = {}
        self._node_tasks: set[asyncio.Task[None]] = set()
        #: By subject, the newest node agent's report this term has finished with: the
        #: reports' consumer makes no span (see :func:`open_consumers`), so this is
        #: what says they were taken in.
        self.reports_handled: dict[str, int] = {}

    @property
    def gating(self) -> bool:
        """The node agents' reports are read too (a status gate, or node checks)."""
        return self._term.memory.gating

    async def stop(self) -> None:
        """The term is over: Events still waiting for the Nodes to be listed are dropped
        (the next term's replay meets the same messages)."""
        await cancel_and_wait(self._node_tasks)

    async def on_delivery(self, d: Delivery) -> Verdict:
        try:
            await self._handle(d)
        except NotLeader:
            # The term is ending; the next leader replays this subject.
            return Retry(delay=1.0, reason="not the leader")
        return DONE

    async def on_unreadable(self, u: Unreadable) -> None:
        """A message about a Service that cannot be read (logged and counted by the
        consumer): a Warning Event on the Service, where it is known."""
        subject = u.subject
        cause = f"{subject.raw}#{u.seq}"
        if subject.namespace is None or subject.name is None:
            await self._on_unreadable_node(u, cause)
            return
        spec = unreadable_event(subject.raw, u.seq, u.reason, in_force=u.in_force)
        service = self._term.service_store().get(sys.intern(subject.key))
        if service is None:
            if u.in_force:
                # Not listed yet (a term's replay): told once it is, for the Service the
                # message in force names.
                self._unreadable[subject.raw] = (spec, cause)
            return
        try:
            await self._recorder.emit(spec, service, cause)
        except NotLeader:
            pass  # the next leader's replay meets the same message
        except Exception as exc:
            log.warning("cannot record the Event for %s (seq %d): %r", subject.raw, u.seq, exc)

    async def _on_unreadable_node(self, u: Unreadable, cause: str) -> None:
        """About a node: the Warning Event goes on the Node, which every Service of the
        cluster depends on (``kubectl describe node`` shows it)."""
        nodes = self._term.nodes
        if nodes is None or not nodes.synced.is_set():
            # A term's replay comes before the Nodes are listed: tell it once they are,
            # without holding up the replay (the reflectors start after it).
            task = asyncio.create_task(self._tell_node_once_listed(u, cause))
            self._node_tasks.add(task)
            task.add_done_callback(self._node_tasks.discard)
            return
        await self._tell_node(u, cause)

    async def _tell_node_once_listed(self, u: Unreadable, cause: str) -> None:
        try:
            async with asyncio.timeout(NODE_LIST_WAIT_S):
                await self._term.reflectors_made.wait()
                nodes = self._term.nodes
                assert nodes is not None
                await nodes.synced.wait()
        except TimeoutError:
            return  # the term ended first; the next one meets the same message
        await self._tell_node(u, cause)

    async def _tell_node(self, u: Unreadable, cause: str) -> None:
        node = self._term.node_store().get(sys.intern(u.subject.key))
        if node is None:
            return  # not a Node of the cluster (any more): the log line and metric tell it
        spec = unreadable_event(u.subject.raw, u.seq, u.reason, in_force=u.in_force, kind="Node")
        try:
            await self._recorder.emit(spec, node, cause, kind="Node")
        except NotLeader:
            pass
        except Exception as exc:
            log.warning("cannot record the Event for %s (seq %d): %r", u.subject.raw, u.seq, exc)

    async def _handle(self, d: Delivery) -> None:
        term = self._term
        memory = term.memory
        message = d.message
        # Interned: the same string as the reflectors' keys, not one more per table.
        key = sys.intern(d.subject.key)
        match message:
            case ServiceSnapshot() | ServiceGone() | ServiceRejected():
                memory.own_message(
                    key,
                    message,
                    d.seq,
                    absent=term.absent("service", key),
                    caught_up=term.caught_up,
                )
            case EndpointsSnapshot():
                memory.remember_endpoints(key, message_fingerprint(message), d.seq)
            case NodeSnapshot() | NodeGone():
                memory.own_message(
                    key, message, d.seq, absent=term.absent("node", key), caught_up=term.caught_up
                )
            case NodeApplied():
                report = memory.observe_applied(message.node, message.vips, d.seq)
                for service_key in report.judge:
                    await self._writer.reconcile(service_key)
                for service_key in report.gained:
                    await self._writer.node_gained(service_key, message.node)
                subject = d.subject.raw
                self.reports_handled[subject] = max(self.reports_handled.get(subject, 0), d.seq)
            case (
                VipAssigned()
                | VipReleasing()
                | VipReleased()
                | VipFailed()
                | LbProgrammed()
                | LbFailed()
                | LbRemoved()
            ):
                if self._unreadable:
                    held = self._unreadable.pop(d.subject.raw, None)
                    if held is not None:
                        memory.defer(
                            key,
                            f"{d.subject.family}!",
                            DeferredEvent(
                                spec=held[0],
                                uid=message.uid,
                                cause=held[1],
                                trace_id=None,
                            ),
                        )
                observed = memory.observe(key, message, d.seq)
                if not observed.fresh:
                    return  # a redelivery overtaken by a newer message on its subject
                self._writer.note_trace(key)
                await self._writer.reconcile(key)
                fresh = not d.timestamp or time.time() - d.timestamp < EVENT_HORIZON_S
                called = (
                    (d.subject.family, event_for(message, before=observed.before)),
                    (f"{d.subject.family}~", status_vip_event(message, before=observed.before)),
                    (f"{d.subject.family}^", sharing_event(message, before=observed.before)),
                )
                for family, spec in called:
                    if spec is not None and fresh:
                        await self._emit(d, key, message, spec, family)
                memory.forget_service(key, absent=term.absent("service", key))

    async def _emit(
        self,
        d: Delivery,
        key: str,
        message: VipMessage | LbMessage,
        spec: EventSpec,
        family: str,
    ) -> None:
        """Write the Event ``message`` calls for (or hold it back under ``family``)."""
        term = self._term
        memory = term.memory
        cause = f"{d.subject.raw}#{d.seq}"
        service = term.service_store().get(key)
        # A replay cannot tell news from a repeat (what came before is not
        # replayed): see EventRecorder.emit.
        replayed = not term.caught_up
        # The Service may be gone already: a release lets the API server
        # delete it, and the DELETED event may come before the reply.
        about, later = event_subject(
            service,
            message.uid,
            departed=memory.departed_ref(key),
            gone=released_ref(message, live=not replayed),
        )
        if about is not None:
            await self._recorder.emit(spec, about, cause, replayed=replayed)
            if service is None:
                memory.forget_departed(key, message.uid)
        elif later:
            # Replayed before the Services are listed, or ahead of the watch
            # event that brings the Service: emitted when it is handled.
            memory.defer(
                key,
                family,
                DeferredEvent(
                    spec=spec,
                    uid=message.uid,
                    cause=cause,
                    trace_id=trace_id_of_current_span(),
                    replayed=replayed,
                ),
            )


def open_consumers(
    bus: Bus, reader: BusReader, cluster: str
) -> tuple[ConsumerGroup, ConsumerGroup]:
    """A term's two consumers, not started: theirs (for the whole term) and the replay
    of ours (to start from)."""
    # What the rest of the system says, for the whole term.
    theirs: tuple[str, ...] = (family_filter("vip", cluster), family_filter("lb", cluster))
    if reader.gating:
        # What the node agents applied is read for a status gate and to tell member nodes
        # without the VIP (node_vip_grace_s); with neither, their reports (one per node
        # and change, each listing every VIP of the node) are not worth a delivery.
        theirs += (family_filter("applied", cluster),)
    # What we (or a predecessor) published: read to start from, then no more. Our
    # own messages coming back would be half of every Service's deliveries.
    ours = (
        family_filter("service", cluster),
        family_filter("endpoints", cluster),
        family_filter("node", cluster),
    )
    # Every table of the term memory keeps the sequence of what it holds and ignores
    # anything older: the bus need not keep a sequence per subject as well.
    # One consumer per family: the server checks a consumer's filter against the
    # watcher's permissions (its own cluster only) when it has one.
    # No span per node agent's report: at 1,000 nodes they are most of the deliveries
    # (a tenth of the watcher's CPU went to their spans), and a report is about a node,
    # not a step of any one Service's trace. A status write the report calls for is
    # then made in the Service's own trace (that of the last message about it).
    consumer = bus.consumer_group(
        ConsumerSpec(filters=theirs, deliver="last_per_subject", supersede=False),
        reader.on_delivery,
        on_unreadable=reader.on_unreadable,
        untraced=(family_filter("applied", cluster),),
    )
    replay = bus.consumer_group(
        ConsumerSpec(filters=ours, deliver="last_per_subject", supersede=False, traced=False),
        reader.on_delivery,
        on_unreadable=reader.on_unreadable,
    )
    return consumer, replay
