"""A continuous pull consumer: low latency, bounded concurrency, per-subject order.

nats-py's ``fetch`` waits out its whole timeout once a batch is partly filled,
which would add that timeout to every hop of a quiet pipeline. So we speak the
pull protocol ourselves, the way nats.go's ``Consume`` does: keep pull
requests open with credit, receive messages as they arrive on our own inbox,
and top the credit up as handlers finish.

Messages of one subject always go to the same lane and so are handled in
order; lanes run concurrently. Every message is a level-triggered snapshot,
so a message older than one already handled on its subject is stale: it is
acknowledged without being handled (this is what makes a redelivery after a
``Retry`` safe when a newer snapshot has overtaken it).

One module over 500 lines on purpose: one state machine (credit, open pull
requests, lanes, heartbeats, recovery) whose every method reads the same
state; split, the pull protocol's invariants would be read across files. What
recovery decides (where to resume, when a consumer is lost or stalled) and what
it reports live in ``_health``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Literal

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from vipwire.aio import cancel_and_wait
from vipwire.bus._declaring import waiting_out_elections
from vipwire.bus._errors import BusError
from vipwire.bus._health import ConsumerHealth, Progress, silent, stall_check_due, stalled
from vipwire.bus._reading import StoredMessage
from vipwire.bus._verdict import Done, Reject, Retry, Verdict
from vipwire.contracts import (
    STREAM,
    MalformedMessage,
    Message,
    Subject,
    SubjectError,
    SubjectMismatch,
    decode_parsed,
    parse_subject,
)
from vipwire.telemetry import TRACEPARENT, extract_context, parse_traceparent

if TYPE_CHECKING:
    from vipwire.bus._bus import Bus

log = logging.getLogger("vipwire.bus.consumer")

_DELIVER = {
    "all": DeliverPolicy.ALL,
    "new": DeliverPolicy.NEW,
    "last_per_subject": DeliverPolicy.LAST_PER_SUBJECT,
}


class ConsumerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What to consume and how."""

    #: Subject filters, e.g. ``vipwire.*.service.>``.
    filters: tuple[str, ...]
    #: Durable name (replicas sharing it split the work); None: ephemeral.
    durable: str | None = None
    #: Where a new consumer starts: ``last_per_subject`` rebuilds state.
    deliver: Literal["all", "new", "last_per_subject"] = "all"
    #: Lanes handling messages concurrently (one subject always in one lane).
    concurrency: int = 16
    #: Messages requested ahead of handling.
    batch: int = 256
    #: Seconds before an unacknowledged message is redelivered.
    ack_wait: float = 30.0
    #: Deliveries after which a message that keeps failing is terminated as poison.
    max_deliveries: int = 10
    #: Seconds an ephemeral consumer survives without us (after a crash).
    inactive_threshold: float = 60.0
    #: Seconds each pull request stays open.
    pull_expires: float = 30.0
    #: Seconds between server heartbeats on an idle pull request. Two and a half
    #: missed heartbeats mean the server holding our requests (the consumer's
    #: leader) is gone: the consumer is looked up, and resumed on a surviving one.
    heartbeat: float = 1.0
    #: Seconds without a delivery, while our requests are open, after which the
    #: server is asked whether it holds messages for us; if it does, the consumer
    #: is stalled: reported (``/readyz``) and created anew. 0: never asked.
    stall_after_s: float = 10.0
    #: Skip messages older than one already handled on the same subject.
    supersede: bool = True
    #: Seconds a subject's last handled sequence is kept after its last message (at
    #: most twice that), for ``supersede``: far longer than a redelivery takes to
    #: come back (``ack_wait``, ``Retry`` delays), without keeping every subject
    #: ever seen (every Service ever deleted, say).
    supersede_horizon: float = 600.0
    #: ``explicit``: every message is acknowledged after its handler, and a ``Retry``
    #: redelivers it; ``none``: nothing is acknowledged (one message less per delivery,
    #: for us and the server) and nothing is ever redelivered, so ``Retry`` and
    #: ``Reject`` only log. For ephemeral consumers whose handlers only record
    #: state and retry by themselves whatever they then fail to do; such a consumer
    #: is created anew after a reconnect (with ``last_per_subject``: a replay of
    #: the current state), as what was in flight may be lost.
    ack: Literal["explicit", "none"] = "explicit"
    #: Record a CONSUMER span per message, joining the publisher's trace. Off for
    #: observers that take no part in the change (the dashboard).
    traced: bool = True


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One message as a handler sees it."""

    subject: Subject
    message: Message
    seq: int
    num_delivered: int
    headers: Mapping[str, str]
    #: When the stream stored the message (Unix seconds; 0.0 where unknown).
    timestamp: float = 0.0

    @property
    def msg_id(self) -> str | None:
        return self.headers.get("Nats-Msg-Id")

    def span_context(self) -> SpanContext:
        """The publisher's span context (from ``traceparent``); invalid when there is none.

        For untraced consumers that start spans of their own for what they later
        do with the message (a coalesced apply linking every message it served).
        """
        return trace.get_current_span(_parent_context(self.headers)).get_span_context()

    def derive_id(self, output: str) -> str:
        """A ``Nats-Msg-Id`` for a message published because of this one.

        Named by cause (this subject and sequence) and by what is published,
        so a redelivery that publishes again is dropped as a duplicate, while a
        later input that leads to the same output is not mistaken for it.
        """
        return f"{self.subject.raw}#{self.seq}->{output}"


Handler = Callable[[Delivery], Awaitable[Verdict]]


class Unreadable(msgspec.Struct, frozen=True, kw_only=True):
    """A message on a known subject that does not decode (garbage, an unknown kind, a
    newer schema): what the subject says now is unknown, never "absent".

    The newest valid message before it stays in force: the consumer hands it to
    the handler (again, or for the first time when the unreadable one is the
    last of its subject at start-up) unless it was handled already.
    """

    subject: Subject
    #: Its stream sequence.
    seq: int
    reason: str
    #: The stream sequence of the newest valid message before it, which stays in
    #: force; 0: there is none (or it could not be read): nothing is known.
    in_force: int


OnUnreadable = Callable[[Unreadable], Awaitable[None]]


def _backoff(num_delivered: int) -> float:
    return float(min(0.1 * 2 ** (num_delivered - 1), 10.0))


class _LastSequences:
    """The last sequence handled per subject, forgotten ``horizon`` to twice ``horizon``
    seconds after the subject's last message: two generations, the older dropped
    whenever the newer is ``horizon`` old, so forgetting costs no scan."""

    __slots__ = ("_current", "_horizon", "_previous", "_turn_at")

    def __init__(self, horizon: float) -> None:
        self._horizon = horizon
        self._current: dict[str, int] = {}
        self._previous: dict[str, int] = {}
        self._turn_at = time.monotonic() + horizon

    def get(self, subject: str) -> int:
        """The last sequence handled on ``subject`` (0: none within the horizon)."""
        seq = self._current.get(subject)
        return self._previous.get(subject, 0) if seq is None else seq

    def note(self, subject: str, seq: int) -> None:
        now = time.monotonic()
        if now >= self._turn_at:
            self._previous, self._current = self._current, {}
            self._turn_at = now + self._horizon
        self._current[subject] = seq

    def __len__(self) -> int:
        return len(self._current.keys() | self._previous.keys())


#: Seconds between two log lines about refused messages on one subject.
_MISMATCH_LOG_EVERY_S = 60.0


class _RateLimitedLog:
    """Whether a line about a key is due: at most one per ``every`` seconds per key,
    with how many were held back since the last one. Keys quiet for longer are
    forgotten (the map stays as small as the set of subjects being refused)."""

    def __init__(self, every: float) -> None:
        self._every = every
        self._last: dict[str, tuple[float, int]] = {}

    def due(self, key: str, now: float) -> int | None:
        """None: hold this line back; else the number of lines held back before it."""
        last = self._last.get(key)
        if last is not None and now - last[0] < self._every:
            self._last[key] = (last[0], last[1] + 1)
            return None
        if len(self._last) > 1024:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self._every}
        self._last[key] = (now, 0)
        return 0 if last is None else last[1]


def _pending_of(msg: Msg) -> int | None:
    """The consumer's pending count the server put in a message's ack subject."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[8].isdigit():
        return int(tokens[8])
    return None


def _ack_fields(msg: Msg) -> tuple[int, int, float]:
    """(stream sequence, deliveries, stored at in Unix seconds) from the ack subject.

    nats-py's ``msg.metadata`` builds dataclasses and a datetime for every
    message; this reads the three numbers we use straight from the common
    (v1) layout ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>``
    and leaves any other layout to nats-py.
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[1] == "ACK" and tokens[0] == "$JS":
        try:
            return int(tokens[5]), int(tokens[4]), int(tokens[7]) / 1e9
        except ValueError:
            pass
    meta = msg.metadata
    return meta.sequence.stream, meta.num_delivered, meta.timestamp.timestamp()


def _parent_context(headers: Mapping[str, str]) -> otel_context.Context:
    """The trace context a message carries (W3C ``traceparent``).

    The common case, a ``traceparent`` without ``tracestate``, is read here
    directly (the SDK's propagator runs a regular expression per message);
    anything else goes to the propagator.
    """
    raw = headers.get(TRACEPARENT)
    if raw is None:
        return otel_context.Context()
    parent = parse_traceparent(raw)
    if parent is None or "tracestate" in headers:
        return extract_context(headers)
    span_context = SpanContext(
        int(parent.trace_id, 16),
        int(parent.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(parent.flags),
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context), otel_context.Context())


def _process_attributes(
    parsed: Subject, headers: Mapping[str, str], *, seq: int, delivered: int, label: str
) -> dict[str, str | int]:
    """The CONSUMER span's attributes (built only for traced consumers)."""
    return {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": parsed.raw,
        "messaging.destination.template": f"vipwire.{{cluster}}.{parsed.family}.>",
        "messaging.consumer.group.name": label,
        "messaging.message.id": headers.get("Nats-Msg-Id", ""),
        "messaging.nats.stream.sequence": seq,
        "messaging.nats.delivered": delivered,
        "vipwire.cluster": parsed.cluster,
    }


class PullConsumer:
    """Runs one consumer until stopped. Create it with :meth:`Bus.consumer`."""

    #: Seconds a stop waits for the messages already sent to us to arrive.
    _STOP_DRAIN_S = 5.0
    #: A stop leaves once no message came for this long (or its requests are used up)...
    _STOP_QUIET_S = 0.1
    #: ...and at the latest after this long, however busy the stream.
    _STOP_SETTLE_S = 2.0

    def __init__(
        self,
        bus: Bus,
        spec: ConsumerSpec,
        handler: Handler,
        on_unreadable: OnUnreadable | None = None,
    ) -> None:
        self._bus = bus
        self.spec = spec
        self._handler = handler
        self._on_unreadable = on_unreadable
        #: Subjects whose newest message could not be read (subject: its sequence),
        #: until a valid newer one is handled: their state is unknown, not absent.
        self.unreadable: dict[str, int] = {}
        self._lanes: list[asyncio.Queue[Msg | None]] = [
            asyncio.Queue() for _ in range(max(1, spec.concurrency))
        ]
        self._last_seq = _LastSequences(spec.supersede_horizon)
        # Without acks nothing is redelivered, and a consumer created anew replays each
        # subject's last message: nothing older than what was handled can come, so the
        # map (a string and a number per subject ever seen) would be kept for nothing.
        self._supersede = spec.supersede and not (
            spec.ack == "none" and spec.deliver == "last_per_subject"
        )
        self._outstanding = 0  # requested from the server, not yet received
        self._inflight = 0  # received, not yet acknowledged
        self._wake = asyncio.Event()
        self._last_heard = time.monotonic()
        # The server's state of our consumer cannot be trusted (a reconnect lost what
        # was in flight without acks; the consumer was deleted): create it anew.
        self._recreate = False
        self._stopping = False
        self._stopped: asyncio.Future[None] | None = None
        self._name: str | None = None
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._caught_up = asyncio.Event()
        self._pending_at_start: int | None = None
        self._handled = 0
        label = spec.durable or ",".join(spec.filters)
        m = bus.metrics
        # Where a re-created consumer resumes; its state (lost, stalled) and metrics.
        self._progress = Progress(shared=spec.durable is not None)
        self.health = ConsumerHealth(label, m)
        self._last_delivery = time.monotonic()
        self._last_check = time.monotonic()
        self._delivered_since_check = False
        self._suspect = False  # told the consumer's server is gone (503): look now
        self._last_look = 0.0
        self._m_handled = m.counter(
            "bus_handled_total",
            "Messages handled, by consumer and verdict",
            ["consumer", "verdict"],
        )
        self._m_poison = m.counter(
            "bus_poison_total",
            "Messages terminated because they can never be handled",
            ["consumer", "subject_family"],
        )
        self._m_unreadable = m.counter(
            "bus_unreadable_total",
            "Messages on a known subject that do not decode (the subject's state is unknown)",
            ["family"],
        )
        self._m_rejected = m.counter(
            "bus_rejected_total",
            "Messages refused before any handler (reason subject-mismatch: the payload "
            "names another cluster, namespace, name or node than its subject)",
            ["family", "reason"],
        )
        self._mismatch_logged = _RateLimitedLog(_MISMATCH_LOG_EVERY_S)
        self._m_latency = m.histogram(
            "bus_handle_seconds", "Time a handler took per message", ["consumer"]
        )
        self._label = label

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Create (or bind) the consumer and start receiving; waits out a JetStream
        election like the stream's declaration (see :mod:`vipwire.bus._declaring`)."""
        # One name for every try: a create whose answer was lost may still have
        # happened, and asking again under the same name binds to it instead of
        # leaving a second consumer holding messages for nobody.
        name = self.spec.durable or self._ephemeral_name()
        await waiting_out_elections(
            f"creating consumer {self._label}",
            lambda: self._create(name=name),
            self._bus.declare_backoff(),
            attempts=self._bus.declare_attempts,
        )
        await self._new_inbox()
        for i, lane in enumerate(self._lanes):
            self._tasks.append(asyncio.create_task(self._run_lane(lane), name=f"lane-{i}"))
        self._tasks.append(asyncio.create_task(self._run_credit(), name="credit"))

    async def caught_up(self, timeout: float | None = None) -> None:
        """Wait until every message that existed when we started has been handled.

        Services that rebuild state from the stream wait for this before they
        call themselves ready.
        """
        await asyncio.wait_for(self._caught_up.wait(), timeout)

    async def stop(self) -> None:
        """Stop pulling, finish what was received, then stop the lanes.

        Every call waits for the one stop, and cancelling a caller does not cut
        it short: a stop cancelled halfway would leave lanes running that a
        second call could no longer reach.
        """
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopped)

    async def _stop(self) -> None:
        self._stopping = True
        self._wake.set()  # the credit loop asks for nothing more
        await self._let_deliveries_end()
        if self._sub is not None:
            # Drain, not unsubscribe: what the server sent before it saw us leave
            # (in flight, or queued in the client) would otherwise be dropped
            # unacknowledged and wait out ack_wait before anyone else gets it.
            try:
                await asyncio.wait_for(self._sub.drain(), self._STOP_DRAIN_S)  # type: ignore[no-untyped-call]
            except (TimeoutError, nats.errors.Error):
                with contextlib.suppress(nats.errors.Error):
                    await self._sub.unsubscribe()
        for lane in self._lanes:
            lane.put_nowait(None)
        self._wake.set()
        if self._tasks:  # none when start() failed
            _, pending = await asyncio.wait(self._tasks, timeout=10.0)
            await cancel_and_wait(pending)
        self._tasks.clear()
        if self.spec.durable is None and self._name is not None:
            # An ephemeral consumer would otherwise linger on the server until
            # its inactivity threshold, still holding messages for nobody.
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError):
                await self._bus.js.delete_consumer(STREAM, self._name)

    async def _let_deliveries_end(self) -> None:
        """Before leaving, let the server finish what it is sending us.

        nats-server checks our inbox's interest when it picks a pull request and
        routes the message later, from the stream's send queue: messages picked
        before our unsubscribe and routed after it go nowhere, yet count as
        delivered, so they wait out ack_wait (30 s) before another instance gets
        them. While messages are still arriving and requests are open, we keep
        receiving (and handling) until the requests are used up or the flow pauses.
        """
        if self.spec.durable is None or self.spec.ack != "explicit":
            # Nobody else gets what such a consumer lost: an ephemeral one is deleted
            # next, and without acks nothing is delivered again anyway.
            return
        deadline = time.monotonic() + self._STOP_SETTLE_S
        while self._outstanding > 0:
            now = time.monotonic()
            quiet_for = now - self._last_delivery
            if quiet_for >= self._STOP_QUIET_S or now >= deadline:
                return
            await asyncio.sleep(min(self._STOP_QUIET_S - quiet_for, deadline - now))

    @property
    def name(self) -> str | None:
        """The consumer's name on the server now (None before start; an ephemeral
        consumer gets a new one each time it is created anew)."""
        return self._name

    @property
    def label(self) -> str:
        """How logs and metrics name it: the durable name, else its filters."""
        return self._label

    @property
    def problem(self) -> str | None:
        """Why this consumer gets no messages now (lost, stalled); None: it does."""
        return None if self._stopping else self.health.problem

    def on_reconnect(self) -> None:
        # Pull requests die with the old connection; ask anew.
        self._outstanding = 0
        if self.spec.durable is None:
            # What the server sent while we were gone counts as delivered: without acks
            # it never comes back, with acks only after ack_wait. Start a fresh consumer
            # from the first sequence not finished here instead (no gap, no replay).
            self._recreate = True
        self._wake.set()

    async def _new_inbox(self) -> None:
        """Receive on a fresh inbox: what a replaced consumer still sends goes nowhere."""
        old = self._sub
        inbox = self._bus.nc.new_inbox()
        self._sub = await self._bus.nc.subscribe(inbox, cb=self._on_msg)
        self._inbox = inbox
        if old is not None:
            with contextlib.suppress(nats.errors.Error):
                await old.unsubscribe()

    async def _create(
        self, *, resume: bool = False, timeout: float | None = None, name: str | None = None
    ) -> None:
        """Create (or bind) the consumer; ``resume``: from the first sequence not finished;
        ``name``: the ephemeral consumer's (None: a new one)."""
        spec = self.spec
        acked = spec.ack == "explicit"
        start_seq = self._progress.resume_seq if resume else 0
        if len(spec.filters) != 1:
            raise ValueError(
                f"a consumer has exactly one filter, not {spec.filters!r}: the server checks "
                f"it against the identity's permissions (Bus.consumer_group makes one per filter)"
            )
        config = ConsumerConfig(
            # Named, with its one filter: nats-py then asks on
            # $JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>, where the server checks
            # the filter against what this identity may read.
            name=spec.durable or name or self._ephemeral_name(),
            durable_name=spec.durable,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_seq else _DELIVER[spec.deliver],
            opt_start_seq=start_seq or None,
            ack_policy=AckPolicy.EXPLICIT if acked else AckPolicy.NONE,
            ack_wait=spec.ack_wait if acked else None,
            filter_subject=spec.filters[0],
            max_ack_pending=max(spec.batch * 4, 1024) if acked else None,
            inactive_threshold=None if spec.durable else spec.inactive_threshold,
        )
        try:
            info = await self._bus.js.add_consumer(STREAM, config, timeout=timeout)
        except nats.js.errors.APIError as exc:
            # "deliver policy can not be updated": it exists with another start, as a
            # replica re-created it (after the server lost it) from where that replica
            # had got to. Shared, so bind to it as it is.
            if spec.durable is None or exc.err_code != 10012:
                raise
            info = await self._bus.js.consumer_info(STREAM, spec.durable, timeout=timeout)
        floor = info.ack_floor if spec.durable is not None else info.delivered
        if floor is not None and floor.stream_seq:
            self._progress.start_after(int(floor.stream_seq))
        if info.name != self._name and not self._caught_up.is_set():
            self._handled = 0
        self._name = info.name
        pending = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        self._pending_at_start = pending
        if pending == 0:
            self._caught_up.set()

    def _ephemeral_name(self) -> str:
        """A new name for an ephemeral consumer: the identity's, and a random part."""
        who = self._bus.identity or "vipwire"
        return f"{who}-{uuid.uuid4().hex[:16]}"

    def _from_current(self, msg: Msg) -> bool:
        """Whether the current consumer delivered this (not one it replaced)."""
        tokens = (msg.reply or "").split(".")
        # $JS.ACK.<stream>.<consumer>.… or $JS.ACK.<domain>.<hash>.<stream>.<consumer>.…
        if len(tokens) == 9:
            return tokens[3] == self._name
        if len(tokens) >= 12:
            return tokens[5] == self._name
        return True

    # --- receiving ---------------------------------------------------------------

    async def _run_credit(self) -> None:
        """Keep enough pull requests open; notice a lost or stalled consumer."""
        spec = self.spec
        while not self._stopping:
            free = spec.batch - self._outstanding - self._inflight
            if free >= max(1, spec.batch // 2) or (self._outstanding == 0 and free > 0):
                await self._request(free)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                # Twice per heartbeat: a silence is noticed within half a heartbeat.
                await asyncio.wait_for(self._wake.wait(), spec.heartbeat / 2)
            if self._halting():
                break
            try:
                await self._check()
            except Exception:
                # The loop that keeps the consumer fed must outlive any surprise.
                log.exception("consumer %s: health check failed; trying again", self._label)

    def _halting(self) -> bool:
        # A method, not the attribute: a stop may begin while we await.
        return self._stopping

    @property
    def _probe_timeout(self) -> float:
        # Short: a consumer whose server is gone never answers, and a healthy one
        # answers in milliseconds; a slow answer costs at most a needless re-creation.
        return max(1.0, self.spec.heartbeat)

    async def _check(self) -> None:
        """One look at the consumer's health, when something calls for it."""
        spec, now = self.spec, time.monotonic()
        if self._recreate:
            await self._recreate_now("the consumer must be created anew", resume=True)
        elif self._suspect or silent(
            now=now,
            last_heard=self._last_heard,
            outstanding=self._outstanding,
            heartbeat_s=spec.heartbeat,
        ):
            if now - self._last_look < spec.heartbeat:
                return  # at most one look per heartbeat, however often it is called for
            why = (
                "nobody serves its pull requests"
                if self._suspect
                else f"no heartbeat for {now - self._last_heard:.1f}s"
            )
            await self._look(why)
        elif stall_check_due(
            now=now,
            last_delivery=self._last_delivery,
            last_check=self._last_check,
            outstanding=self._outstanding,
            stall_after_s=spec.stall_after_s,
        ):
            await self._stall_check()

    async def _look(self, why: str) -> None:
        """Our requests went unanswered: ask the cluster about the consumer.

        Silence has four causes: the server lost our requests (it restarted, our
        connection was replaced), the consumer moved to a new leader (a durable
        one, its old server gone), the consumer is gone (deleted, expired, or an
        ephemeral one on a server that died), or we were too busy to hear it. A
        consumer the cluster still serves is only asked again (re-creating an
        ephemeral one that still exists would start a second one); one it does
        not serve is created anew, from the first sequence not finished here.
        """
        self._suspect = False
        self._last_heard = self._last_look = time.monotonic()
        self._outstanding = 0  # the loop asks again
        try:
            info = await self._info()
        except nats.js.errors.NotFoundError:
            self.health.change("lost", f"{why}; the server no longer knows it")
            await self._recreate_now(why, resume=True)
            return
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            self.health.change("lost", f"{why}; its server does not answer ({exc!r})")
            if self.spec.durable is None:
                # An ephemeral consumer lives on one server: unanswered, it is gone with it.
                await self._recreate_now(why, resume=True)
            return
        self.health.pending(int(info.num_pending or 0))

    async def _stall_check(self) -> None:
        """Nothing arrived for a while: does the server hold messages it does not hand us?"""
        self._last_check = time.monotonic()
        delivered, self._delivered_since_check = self._delivered_since_check, False
        try:
            info = await self._info()
        except nats.js.errors.NotFoundError:
            self.health.change("lost", "the server no longer knows it")
            await self._recreate_now("the server no longer knows it", resume=True)
            return
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error):
            return  # unanswered: the heartbeats tell whether its server is gone
        pending = int(info.num_pending or 0)
        self.health.pending(pending)
        if not stalled(
            num_pending=pending, delivered_since_check=delivered or self._delivered_since_check
        ):
            if self.health.state == "stalled" and pending == 0:
                self.health.change("connected", "nothing pending any more")
            return
        idle = time.monotonic() - self._last_delivery
        held = f"the stream holds {pending} message(s) for it and none came for {idle:.0f}s"
        if info.paused:
            # Someone paused it on purpose: reported, never undone behind their back.
            until = info.config.pause_until
            self.health.change("stalled", f"{held}: paused on the server until {until}")
        elif self.spec.durable is None:
            self.health.change("stalled", held)
            await self._recreate_now("stalled", resume=True)
        else:
            # Shared with other replicas, so never replaced: its leader is asked to step
            # down, and the new one (with the replicated state) delivers.
            self.health.change("stalled", f"{held}; asking its leader to step down")
            subject = f"$JS.API.CONSUMER.LEADER.STEPDOWN.{STREAM}.{self._name}"
            with contextlib.suppress(TimeoutError, nats.errors.Error):
                await self._bus.nc.request(subject, b"", timeout=self._probe_timeout)
            self._outstanding = 0  # the old leader's requests die with its leadership

    async def _info(self) -> ConsumerInfo:
        assert self._name is not None
        info: ConsumerInfo = await self._bus.js.consumer_info(
            STREAM, self._name, timeout=self._probe_timeout
        )
        return info

    async def _recreate_now(self, why: str, *, resume: bool) -> None:
        """Create the consumer anew (``resume``: from the first sequence not finished here).

        A durable consumer is re-created under its name only when the server lost
        it (another replica may share it); an ephemeral one is replaced by a new
        one, wherever the cluster places it.
        """
        self._recreate = False
        self._outstanding = 0
        self._last_heard = self._last_check = time.monotonic()
        old = self._name
        start = self._progress.resume_seq if resume else 0
        try:
            await self._create(resume=resume, timeout=self._probe_timeout)
            await self._new_inbox()
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            if self.health.state == "connected":
                self.health.change("lost", f"{why}; cannot re-create it ({exc!r})")
            log.debug("consumer %s: cannot re-create it yet (%r); will retry", self._label, exc)
            self._recreate = True
            return
        log.info(
            "consumer %s: created anew as %s%s (%s)",
            self._label,
            self._name,
            f" from stream seq {start}" if start else "",
            why,
        )
        if old is not None and old != self._name and self.health.state != "lost":
            # Its server answers: leave nothing there holding messages for nobody.
            with contextlib.suppress(TimeoutError, nats.errors.Error, nats.js.errors.Error):
                await self._bus.js.delete_consumer(STREAM, old)

    async def _request(self, count: int) -> None:
        spec = self.spec
        body = {
            "batch": count,
            "expires": int(spec.pull_expires * 1e9),
            "idle_heartbeat": int(spec.heartbeat * 1e9),
        }
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{self._name}"
        try:
            await self._bus.nc.publish(subject, json.dumps(body).encode(), reply=self._inbox)
        except nats.errors.Error as exc:
            log.debug("pull request failed (%r); will retry", exc)
            return
        self._outstanding += count

    async def _on_msg(self, msg: Msg) -> None:
        self._last_heard = now = time.monotonic()
        status = (msg.headers or {}).get("Status")
        if status is not None and not msg.reply:
            self._on_status(status, msg)
            return
        seq = _ack_fields(msg)[0]
        self._progress.received(seq)
        self._last_delivery = now
        self._delivered_since_check = True
        pending = _pending_of(msg)
        if pending is not None:
            self.health.pending(pending)
        if self.health.state != "connected":
            self.health.change("connected", f"delivered stream seq {seq}")
        self._outstanding = max(0, self._outstanding - 1)
        self._inflight += 1
        lane = zlib.crc32(msg.subject.encode()) % len(self._lanes)
        self._lanes[lane].put_nowait(msg)

    def _on_status(self, status: str, msg: Msg) -> None:
        headers = msg.headers or {}
        if status == "100":  # idle heartbeat (or flow control)
            if self.health.state == "lost" and not self._recreate:
                self.health.change("connected", "its server answers again")
            return
        if status == "503":
            # No responders: nobody serves our pull requests (the consumer's server is gone).
            self._outstanding = 0
            self._suspect = True
            self._wake.set()
            return
        if status in ("404", "408", "409"):
            # The request ended; what it did not deliver is no longer owed.
            unfilled = headers.get("Nats-Pending-Messages")
            if unfilled is not None:
                self._outstanding = max(0, self._outstanding - int(unfilled))
            else:
                self._outstanding = 0
            description = headers.get("Description", "")
            if status == "409" and "Deleted" in description:
                log.warning("consumer %s was deleted on the server; re-creating", self._label)
                self._recreate = True
            self._wake.set()

    # --- handling ----------------------------------------------------------------

    async def _run_lane(self, lane: asyncio.Queue[Msg | None]) -> None:
        while True:
            msg = await lane.get()
            if msg is None:
                return
            try:
                await self._handle(msg)
            except Exception:
                log.exception("consumer %s: unexpected failure on %s", self._label, msg.subject)
            finally:
                self._inflight -= 1
                # Until caught up, count only what the current consumer delivered (a
                # re-created one starts its count again).
                if self._caught_up.is_set() or self._from_current(msg):
                    self._handled += 1
                if self._pending_at_start is not None and self._handled >= self._pending_at_start:
                    self._caught_up.set()
                self._wake.set()

    async def _handle(self, msg: Msg) -> None:
        seq, num_delivered, stored_at = _ack_fields(msg)
        subject = msg.subject
        if self._progress.done(seq):
            # Finished here already; a copy from the consumer's new incarnation or
            # leader (whose ack was lost with the old one): acknowledged, not handled.
            await self._settle(msg, Done(), subject, seq, duplicate=True)
            return
        if self._supersede and seq < self._last_seq.get(subject):
            await self._settle(msg, Done(), subject, seq)
            return
        try:
            parsed = parse_subject(subject)
            message = decode_parsed(parsed, msg.data)
        except SubjectError as exc:
            await self._poison(msg, subject, seq, str(exc))
            return
        except SubjectMismatch as exc:
            await self._mismatched(msg, parsed, seq, num_delivered, exc)
            return
        except MalformedMessage as exc:
            await self._unreadable_message(msg, parsed, seq, num_delivered, exc.reason)
            return
        if self._supersede:
            self._last_seq.note(subject, seq)
        if self.unreadable and self.unreadable.get(subject, seq) < seq:
            del self.unreadable[subject]
            log.info("consumer %s: %s is readable again (seq %d)", self._label, subject, seq)
        delivery = Delivery(
            subject=parsed,
            message=message,
            seq=seq,
            num_delivered=num_delivered,
            headers=dict(msg.headers or {}),
            timestamp=stored_at,
        )
        verdict = await self._invoke(delivery)
        if isinstance(verdict, Retry) and num_delivered >= self.spec.max_deliveries:
            await self._poison(
                msg,
                subject,
                seq,
                f"still failing after {num_delivered} deliveries: {verdict.reason}",
            )
            return
        await self._settle(msg, verdict, subject, seq)

    async def _invoke(self, delivery: Delivery) -> Verdict:
        """Run the handler on one delivery (in its CONSUMER span, where traced)."""
        parsed, headers, seq = delivery.subject, delivery.headers, delivery.seq
        subject, num_delivered = parsed.raw, delivery.num_delivered
        started = time.perf_counter()
        # An observer (the dashboard) must not add a span to every change's trace.
        span_cm = (
            self._bus.tracer.start_as_current_span(
                f"process {parsed.family}",
                context=_parent_context(headers),
                kind=SpanKind.CONSUMER,
                attributes=_process_attributes(
                    parsed, headers, seq=seq, delivered=num_delivered, label=self._label
                ),
            )
            if self.spec.traced
            else contextlib.nullcontext(trace.INVALID_SPAN)
        )
        with span_cm as span:
            try:
                verdict: Verdict = await self._handler(delivery)
            except Exception as exc:
                log.exception(
                    "consumer %s: handler failed on %s (seq %d, delivery %d)",
                    self._label,
                    subject,
                    seq,
                    num_delivered,
                )
                span.record_exception(exc)
                span.set_status(trace.Status(trace.StatusCode.ERROR, repr(exc)))
                verdict = Retry(delay=_backoff(num_delivered), reason=repr(exc))
            span.set_attribute("vipwire.verdict", type(verdict).__name__.lower())
        self._m_latency.observe(time.perf_counter() - started, consumer=self._label)
        return verdict

    async def _unreadable_message(
        self, msg: Msg, parsed: Subject, seq: int, num_delivered: int, reason: str
    ) -> None:
        """A message that does not decode: its subject's state is unknown, never absent.

        Reported (log with subject and sequence, ``bus_unreadable_total``, the
        ``on_unreadable`` callback), and the newest valid message before it stays
        in force: handed to the handler unless it was already handled here.
        """
        subject = parsed.raw
        self._m_unreadable.inc(family=parsed.family)
        if self.unreadable.get(subject, 0) < seq:
            self.unreadable[subject] = seq
        previous: tuple[StoredMessage, Message] | None = None
        handled_before = self._last_seq.get(subject) if self._supersede else 0
        failure: str | None = None
        if not handled_before:
            try:
                previous = await self._bus.last_valid_message(subject, before_seq=seq)
            except BusError as exc:
                failure = str(exc)
        in_force = handled_before or (previous[0].seq if previous is not None else 0)
        if in_force:
            kept = f"its last valid message (seq {in_force}) stays in force"
        elif failure is not None:
            kept = f"its last valid message could not be read ({failure}); its state is unknown"
        else:
            kept = "no valid message precedes it: its state is unknown"
        log.error(
            "consumer %s: unreadable (poison) message on %s (stream seq %d): %s; %s",
            self._label,
            subject,
            seq,
            reason,
            kept,
        )
        self._m_poison.inc(consumer=self._label, subject_family=parsed.family)
        if self._on_unreadable is not None:
            try:
                await self._on_unreadable(
                    Unreadable(subject=parsed, seq=seq, reason=reason, in_force=in_force)
                )
            except Exception:
                log.exception("consumer %s: on_unreadable failed for %s", self._label, subject)
        verdict: Verdict = Reject(reason=reason)
        if previous is not None:
            verdict = await self._hand_over(parsed, previous, num_delivered) or verdict
        elif failure is not None:
            verdict = Retry(delay=_backoff(num_delivered), reason=failure)
        if isinstance(verdict, Retry) and num_delivered < self.spec.max_deliveries:
            # Asked again later: the message in force is looked up and handled anew.
            await self._settle(msg, verdict, subject, seq)
            return
        await self._settle(msg, Reject(reason=reason), subject, seq, counted=True)

    async def _hand_over(
        self, parsed: Subject, previous: tuple[StoredMessage, Message], num_delivered: int
    ) -> Retry | None:
        """Hand the handler the subject's message in force instead of one it cannot take
        (unreadable, or disagreeing with its subject); a Retry if the handler asks again."""
        stored, message = previous
        replayed = await self._invoke(
            Delivery(
                subject=parsed,
                message=message,
                seq=stored.seq,
                num_delivered=num_delivered,
                headers=stored.headers,
                timestamp=stored.time_ns / 1e9,
            )
        )
        if isinstance(replayed, Retry):
            return replayed
        if self._supersede:
            self._last_seq.note(parsed.raw, stored.seq)
        return None

    async def _mismatched(
        self, msg: Msg, parsed: Subject, seq: int, num_delivered: int, exc: SubjectMismatch
    ) -> None:
        """A payload that disagrees with its subject: refused before any handler.

        Never handled, never the subject's state: that stays its last message that
        agrees (already handled here, or, while replaying, looked up and handed over
        now, as for an unreadable one, so that a consumer starting on the forged
        message still learns the real state). Counted per family; logged at most once a minute per
        subject (a forger repeating itself fills no disk).
        """
        subject = parsed.raw
        self._m_rejected.inc(family=parsed.family, reason="subject-mismatch")
        repeats = self._mismatch_logged.due(subject, time.monotonic())
        if repeats is not None:
            log.warning(
                "consumer %s: refused %s (stream seq %d): %s; not handled, the subject's "
                "last agreeing message stays in force%s (a publisher with rights on this "
                "subject sent it: check which identity)",
                self._label,
                subject,
                seq,
                "; ".join(exc.disagreements),
                f" ({repeats} more refused since the last line)" if repeats else "",
            )
        verdict: Verdict = Reject(reason=exc.reason)
        # Live, every message before it was delivered here already: only a replay (a
        # forged message last on its subject) needs the one in force looked up. A
        # flood of forgeries then costs no stream reads.
        handled_here = self._supersede and self._last_seq.get(subject)
        if not (handled_here or self._caught_up.is_set()):
            try:
                previous = await self._bus.last_valid_message(subject, before_seq=seq)
            except BusError as err:
                previous = None
                verdict = Retry(delay=_backoff(num_delivered), reason=str(err))
            if previous is not None:
                verdict = await self._hand_over(parsed, previous, num_delivered) or verdict
        if isinstance(verdict, Retry) and num_delivered < self.spec.max_deliveries:
            await self._settle(msg, verdict, subject, seq)
            return
        await self._settle(msg, Reject(reason=exc.reason), subject, seq, counted=True)

    async def _poison(self, msg: Msg, subject: str, seq: int, reason: str) -> None:
        family = subject.split(".")[2] if subject.count(".") >= 2 else "?"
        log.error(
            "consumer %s: terminating poison message on %s (stream seq %d): %s",
            self._label,
            subject,
            seq,
            reason,
        )
        self._m_poison.inc(consumer=self._label, subject_family=family)
        await self._settle(msg, Reject(reason=reason), subject, seq, counted=True)

    async def _settle(
        self,
        msg: Msg,
        verdict: Verdict,
        subject: str,
        seq: int,
        *,
        counted: bool = False,
        duplicate: bool = False,
    ) -> None:
        """The one place a verdict becomes an acknowledgement."""
        if isinstance(verdict, Retry) and self.spec.ack == "explicit":
            self._progress.retrying(seq)
        else:
            self._progress.finished(seq)
            self.health.progressed()
        if duplicate:
            with contextlib.suppress(nats.errors.Error):
                if self.spec.ack == "explicit":
                    await msg.ack()
            self._m_handled.inc(consumer=self._label, verdict="duplicate")
            return
        if self.spec.ack == "none":
            if not isinstance(verdict, Done) and not counted:
                log.warning(
                    "consumer %s: %s on %s (seq %d) ignored: it acknowledges nothing",
                    self._label,
                    type(verdict).__name__,
                    subject,
                    seq,
                )
            self._m_handled.inc(consumer=self._label, verdict=type(verdict).__name__.lower())
            return
        try:
            match verdict:
                case Done():
                    await msg.ack()
                case Retry(delay=delay, reason=reason):
                    log.info("retrying %s (seq %d) in %.2fs: %s", subject, seq, delay, reason)
                    await msg.nak(delay=delay)
                case Reject(reason=reason):
                    if not counted:
                        log.warning("rejected %s (seq %d): %s", subject, seq, reason)
                    await msg.term()
        except nats.errors.Error as exc:
            # The server will redeliver after ack_wait; handlers are idempotent.
            log.warning("could not settle %s (seq %d): %r", subject, seq, exc)
        self._m_handled.inc(consumer=self._label, verdict=type(verdict).__name__.lower())
