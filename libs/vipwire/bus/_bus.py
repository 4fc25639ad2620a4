"""The :class:`Bus` every service holds, and :func:`connect`, which makes one.

One module over 500 lines on purpose: :class:`Bus` is the one surface services
see, so its methods stay together; each delegates what it can to a module of
its own (reading, requests, KV, consumers, limits, declarations, sweeping).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer

from vipwire.bus._consumer import ConsumerSpec, Handler, OnUnreadable, PullConsumer
from vipwire.bus._declaring import NotDeclaredYet, waiting_out_elections
from vipwire.bus._errors import (
    NATS_ERRORS,
    BusError,
    NotFound,
    StoreFull,
    TooLarge,
    WrongLastSequence,
    is_wrong_last_sequence,
    server_says,
    too_large_or_full,
    translate,
)
from vipwire.bus._group import ConsumerGroup
from vipwire.bus._history import purge_ended
from vipwire.bus._identity import caller_token
from vipwire.bus._kv import KvBucket
from vipwire.bus._limits import (
    STORE_FULL,
    TOO_LARGE,
    StoreHealth,
    differs,
    kept_bytes_limit,
    with_stream_limits,
)
from vipwire.bus._link import AttemptFailed, Backoff, Link
from vipwire.bus._login import credentials_options
from vipwire.bus._reading import StoredMessage, last_message, last_messages, newest_before
from vipwire.bus._requests import Responder, Serving, fence, request, serve
from vipwire.bus._settings import BusSettings
from vipwire.bus._tls import (
    TlsError,
    certificate_problem,
    server_verifies_clients,
    spoke_tls,
    tls_options,
)
from vipwire.bus._urls import redacted, redacted_all, scrubbed
from vipwire.contracts import (
    ROOT,
    STREAM,
    MalformedMessage,
    Message,
    decode,
    encode,
    family_of,
    subject_for,
)
from vipwire.metrics import Registry
from vipwire.natsauth import may_declare_stream
from vipwire.telemetry import inject_context

log = logging.getLogger("vipwire.bus")


def message_attributes(message: Message) -> dict[str, str]:
    """Span attributes naming what a message is about."""
    attrs: dict[str, str] = {"vipwire.cluster": message.cluster}
    namespace = getattr(message, "namespace", None)
    if namespace is not None:
        attrs["k8s.namespace.name"] = namespace
        attrs["k8s.service.name"] = getattr(message, "name", "")
    node = getattr(message, "node", None)
    if node is not None:
        attrs["k8s.node.name"] = node
    vips = getattr(message, "vips", None)
    if vips:
        attrs["vipwire.vip"] = ",".join(vips)
    appliance = getattr(message, "appliance", None)
    if appliance:
        attrs["vipwire.appliance"] = appliance
    return attrs


class Listening:
    """A core NATS subscription (see :meth:`Bus.listen`)."""

    def __init__(self, sub: Subscription) -> None:
        self._sub = sub

    async def stop(self) -> None:
        with contextlib.suppress(*NATS_ERRORS):
            await self._sub.unsubscribe()


class Bus:
    """One service's connection to NATS JetStream."""

    def __init__(
        self,
        nc: NatsClient,
        settings: BusSettings,
        *,
        tracer: Tracer,
        metrics: Registry,
        link: Link | None = None,
    ) -> None:
        self.nc = nc
        #: The connection's state (None: a client made elsewhere, as some tests do).
        self.link = link
        #: Tries of a declaration while JetStream answers like an election (None:
        #: until it works or the caller is cancelled; command-line tools bound it).
        self.declare_attempts: int | None = None
        self.settings = settings
        #: The identity this connection logs in as (our credentials file names it);
        #: None: no credentials, or a file that names none (a NATS .creds file).
        self.identity: str | None = None
        self._caller: str | None = None
        self.js: JetStreamContext = nc.jetstream(timeout=settings.request_timeout_s)
        self.tracer = tracer
        self.metrics = metrics
        self._published = metrics.counter(
            "bus_published_total", "Messages published, by subject family", ["family"]
        )
        self._consumers: list[PullConsumer] = []
        #: Stores that refused writes for want of room (see :meth:`store_problem`).
        self.stores = StoreHealth(
            self.js,
            metrics,
            settings.store_check_interval_s,
            connected=lambda: self.nc.is_connected,
        )
        if link is not None:
            link.on_back.append(self._resume_consumers)

    def _resume_consumers(self) -> None:
        for consumer in self._consumers:
            consumer.on_reconnect()

    # --- declarations ------------------------------------------------------------

    def store_problem(self) -> str | None:
        """Why nothing can be stored now (a stream or KV bucket refused a write for want
        of room, and has not shown room since); None: the stores take writes."""
        return self.stores.problem()

    async def ensure_stream(self) -> None:
        """Declare the VIPWIRE stream, or bring an existing one to our settings (its
        limits too: a stream declared by an older version gets them); waits out a
        stream leader election (see :mod:`vipwire.bus._declaring`)."""
        await waiting_out_elections(
            f"declaring stream {STREAM}",
            self._ensure_stream,
            self.declare_backoff(),
            attempts=self.declare_attempts,
        )

    def declare_backoff(self) -> Backoff:
        """How declarations (and consumer creation) space their retries while
        JetStream answers like an election."""
        if self.link is not None:
            return self.link.backoff
        return Backoff(self.settings.reconnect_wait_s, self.settings.reconnect_max_wait_s)

    async def _ensure_stream(self) -> None:
        storage = StorageType.FILE if self.settings.storage == "file" else StorageType.MEMORY
        config = StreamConfig(
            name=STREAM,
            subjects=["vipwire.>"],
            max_age=self.settings.stream_max_age_s,
            duplicate_window=self.settings.duplicate_window_s,
            storage=storage,
            num_replicas=self.settings.replicas,
        )
        config = with_stream_limits(config, self.settings)
        self.stores.watch(STREAM)
        if not may_declare_stream(self.identity):
            await self._stream_exists(config)
            return
        try:
            info = await self.js.stream_info(STREAM)
        except nats.js.errors.NotFoundError:
            try:
                await self.js.add_stream(config)
                return
            except nats.js.errors.APIError as exc:
                # Another service declared it between our look and our add.
                if exc.err_code != 10058:  # stream name already in use
                    raise BusError(f"cannot create stream {STREAM}: {_declare_hint(exc)}") from exc
            info = await self.js.stream_info(STREAM)
        config = kept_bytes_limit(config, info)
        try:
            await self.js.update_stream(config)
        except nats.js.errors.Error as exc:
            raise BusError(
                f"stream {STREAM} exists with settings we cannot apply: {_declare_hint(exc)}"
            ) from exc

    async def _stream_exists(self, config: StreamConfig) -> None:
        """Only look (an identity that may not create or update the stream: the server
        would refuse, and a refused request costs a timeout): it must exist; a config
        differing from ours is logged, left to ipam to bring to its settings."""
        try:
            info = await self.js.stream_info(STREAM)
        except nats.js.errors.NotFoundError as exc:
            raise NotDeclaredYet(
                f"stream {STREAM} does not exist yet and identity {self.identity} may not "
                f"create it: ipam does (is ipam running on this bus?)"
            ) from exc
        if differs(info.config, kept_bytes_limit(config, info)):
            log.info(
                "stream %s exists with settings other than this component's bus settings; "
                "left as it is (ipam, its steward, declares them)",
                STREAM,
            )

    async def kv(self, bucket: str, *, history: int = 1, direct: bool = False) -> KvBucket:
        """A KV bucket, created on first use with the bus's storage and replicas (waits
        out a bucket leader election, like :meth:`ensure_stream`). ``direct``: readers
        may read a key by its subject (:meth:`direct_last`), which permissions can
        restrict key by key."""
        found = await waiting_out_elections(
            f"opening KV bucket {bucket}",
            lambda: self._key_value(bucket, history, direct),
            self.declare_backoff(),
            attempts=self.declare_attempts,
        )
        return KvBucket(found, self.js, bucket, stores=self.stores)

    async def _key_value(self, bucket: str, history: int, direct: bool = False) -> KeyValue:
        try:
            try:
                found = await self.js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                pass
            else:
                await self._bucket_limits(bucket, direct)
                return found
            storage = StorageType.FILE if self.settings.storage == "file" else StorageType.MEMORY
            try:
                return await self.js.create_key_value(
                    KeyValueConfig(
                        bucket=bucket,
                        history=history,
                        storage=storage,
                        replicas=self.settings.replicas,
                        max_bytes=self.settings.kv_max_bytes or None,
                        max_value_size=self.settings.kv_max_value_size or None,
                        direct=direct or None,
                    )
                )
            except nats.js.errors.BadRequestError:
                # Created concurrently by a replica: use theirs.
                return await self.js.key_value(bucket)
        except NATS_ERRORS as exc:
            if too_large_or_full(exc) is not None:
                raise BusError(f"cannot create KV bucket {bucket}: {_declare_hint(exc)}") from exc
            raise translate(exc, f"opening KV bucket {bucket}") from exc

    async def _bucket_limits(self, bucket: str, direct: bool = False) -> None:
        """Give an existing bucket (declared by an older version) our KV limits."""
        stream = f"KV_{bucket}"
        try:
            info = await self.js.stream_info(stream)
            wanted = dataclasses.replace(
                info.config,
                max_bytes=self.settings.kv_max_bytes or -1,
                max_msg_size=self.settings.kv_max_value_size or -1,
            )
            if direct:
                wanted = dataclasses.replace(wanted, allow_direct=True)
            wanted = kept_bytes_limit(wanted, info)
            if differs(info.config, wanted):
                await self.js.update_stream(wanted)
        except NATS_ERRORS as exc:
            raise BusError(
                f"KV bucket {bucket} exists with limits we cannot apply: {_declare_hint(exc)}"
            ) from exc

    # --- reading -------------------------------------------------------------------

    async def last_message(self, subject: str) -> StoredMessage | None:
        """The last message on ``subject`` in the VIPWIRE stream; None: none there."""
        return await last_message(self.js, STREAM, subject)

    async def direct_last(self, stream: str, subject: str) -> StoredMessage | None:
        """The last message on ``subject`` of ``stream`` (one allowing direct reads), read
        on ``$JS.API.DIRECT.GET.<stream>.<subject>`` (so permissions can name the
        subject); None: none there."""
        try:
            raw = await self.js.get_last_msg(stream, subject, direct=True)
        except NATS_ERRORS as exc:
            error = translate(exc, f"reading the last message on {subject} of {stream}")
            if isinstance(error, NotFound):
                return None
            raise error from exc
        if raw.headers and raw.headers.get("Nats-Status") == "404":
            return None
        return StoredMessage(
            subject=raw.subject or subject,
            seq=int(raw.seq or 0),
            data=raw.data or b"",
            headers=dict(raw.headers or {}),
        )

    async def broadcast(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        """A core NATS publish (no stream stores it): for live feeds whose state is
        kept elsewhere."""
        try:
            await self.nc.publish(subject, data, headers=dict(headers) if headers else None)
        except NATS_ERRORS as exc:
            raise BusError(f"publish to {subject} failed: {exc!r}") from exc

    async def listen(
        self, subject: str, handler: Callable[[str, bytes, Mapping[str, str]], Awaitable[None]]
    ) -> Listening:
        """A core NATS subscription handing each message's subject, payload and headers
        to ``handler``, one at a time, in order (no consumer on the server)."""

        async def on_message(msg: Msg) -> None:
            await handler(msg.subject, msg.data, msg.headers or {})

        try:
            sub = await self.nc.subscribe(subject, cb=on_message, pending_msgs_limit=65536)
        except NATS_ERRORS as exc:
            raise translate(exc, f"subscribing to {subject}") from exc
        return Listening(sub)

    async def last_valid_message(
        self, subject: str, *, before_seq: int | None = None, max_reads: int = 256
    ) -> tuple[StoredMessage, Message] | None:
        """The newest message on ``subject`` that decodes (stored before ``before_seq``
        if given), with what it says; None: there is none (or none within ``max_reads``
        reads of the stream).

        What stays in force when the last message of a subject cannot be read.
        """
        decoded: dict[int, Message] = {}

        def readable(msg: StoredMessage) -> bool:
            try:
                decoded[msg.seq] = decode(msg.subject, msg.data)
            except MalformedMessage:
                return False
            return True

        if before_seq is None:
            last = await self.last_message(subject)
            if last is None:
                return None
            if readable(last):
                return last, decoded[last.seq]
            before_seq = last.seq
        found = await newest_before(
            self.js, STREAM, subject, before_seq, readable, max_reads=max_reads
        )
        return None if found is None else (found, decoded[found.seq])

    async def purge_ended(self, *, max_age_s: float) -> list[str]:
        """Purge the subjects of Services and Nodes that ended over ``max_age_s`` ago
        and whose end every durable consumer has acknowledged; returns them.

        The stream has no age limit (it would drop live state); this is its
        bound on what deleted objects leave behind.
        """
        try:
            return await purge_ended(self.js, STREAM, f"{ROOT}.>", max_age_s)
        except NATS_ERRORS as exc:
            raise translate(exc, "purging ended subjects") from exc

    async def last_messages(self, subjects: str, *, timeout_s: float = 30.0) -> list[StoredMessage]:
        """The last message of every subject matching ``subjects``, in stream order."""
        return await last_messages(self.js, STREAM, subjects, timeout_s=timeout_s)

    @property
    def server_version(self) -> tuple[int, int, int]:
        """The version of the server this connection is on now."""
        version = self.nc.connected_server_version
        return (version.major, version.minor, version.patch)

    # --- requests ------------------------------------------------------------------

    @property
    def caller(self) -> str:
        """This connection's caller token for control requests: the identity it logged
        in as (its credentials file names it), ``anonymous`` without one."""
        if self.identity is not None:
            return self.identity
        if self._caller is None:
            self._caller = caller_token(self.settings.credentials)
        return self._caller

    async def request(self, subject: str, data: bytes, *, timeout_s: float) -> bytes:
        """A core NATS request; :class:`NoResponders` if nobody answers the subject."""
        return await request(self.nc, subject, data, timeout_s=timeout_s)

    async def serve(
        self, subject: str, responder: Responder, *, queue: str | None = None
    ) -> Serving:
        """Answer requests on ``subject``; ``queue``: one replica of the group answers each."""
        return await serve(self.nc, subject, responder, queue=queue)

    async def fence(self) -> None:
        """Return once the server has everything this connection sent (see :func:`fence`)."""
        try:
            await fence(self.nc)
        except NATS_ERRORS as exc:
            raise translate(exc, "flushing the connection") from exc

    # --- publishing --------------------------------------------------------------

    async def publish(
        self,
        message: Message,
        *,
        msg_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        expected_last_subject_seq: int | None = None,
        expected_last_subject: str | None = None,
    ) -> int:
        """Publish a contract message; returns its stream sequence.

        ``expected_last_subject_seq``: publish only if the last message on
        ``expected_last_subject`` (default: the subject published to) has that
        sequence, else :class:`WrongLastSequence`, atomically on the server
        (another subject than the one published to needs nats-server 2.11+).

        ``msg_id`` should name the cause (source, object, version) so that a
        retry of the same step is dropped by JetStream's de-duplication; a
        random one is used where no cause can be named.
        """
        subject = subject_for(message)
        family = family_of(message)
        msg_id = msg_id or uuid.uuid4().hex
        attributes = {
            "messaging.system": "nats",
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": subject,
            "messaging.destination.template": f"vipwire.{{cluster}}.{family}.>",
            "messaging.message.id": msg_id,
            **message_attributes(message),
        }
        with self.tracer.start_as_current_span(
            f"publish {family}", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            all_headers = {"Nats-Msg-Id": msg_id, **(headers or {})}
            if expected_last_subject_seq is not None:
                all_headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last_subject_seq)
                if expected_last_subject is not None:
                    all_headers["Nats-Expected-Last-Subject-Sequence-Subject"] = (
                        expected_last_subject
                    )
            inject_context(all_headers)
            data = encode(message)
            try:
                ack = await self.js.publish(subject, data, headers=all_headers)
            except NATS_ERRORS as exc:
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
                if is_wrong_last_sequence(exc):
                    raise WrongLastSequence(
                        f"publish to {subject}: a newer message exists"
                    ) from exc
                refused = self._refused(exc, subject, family, len(data))
                if refused is not None:
                    raise refused from exc
                raise BusError(f"publish to {subject} failed: {exc!r}") from exc
            span.set_attribute("messaging.nats.stream.sequence", ack.seq)
        self._published.inc(family=family)
        self.stores.stored(STREAM)
        return ack.seq

    def _refused(
        self, exc: BaseException, subject: str, family: str, size: int
    ) -> TooLarge | StoreFull | None:
        """The bus error for a publish JetStream refused to store (counted), if it was
        refused for its size or for want of room."""
        reason = too_large_or_full(exc)
        if reason is None:
            return None
        self.stores.rejected.inc(family=family, reason=reason)
        if reason == TOO_LARGE:
            limit = self._size_limit(exc)
            return TooLarge(
                f"publish to {subject}: the message is {size} bytes, over the limit of "
                f"{limit} bytes ({server_says(exc)})",
                size=size,
                limit=limit,
            )
        assert reason == STORE_FULL
        own_limits = getattr(exc, "err_code", None) == 10077  # the stream's own limits
        where = (
            f"stream {STREAM} is full"
            if own_limits
            else f"the JetStream store of the server holding stream {STREAM} is full"
        )
        self.stores.refused(
            STREAM,
            f"{where}: publish to {subject} refused ({server_says(exc)}); raise "
            f"bus.stream_max_bytes (and the server's JetStream store) or find what filled it",
            own_limits=own_limits,
        )
        return StoreFull(f"publish to {subject}: {where} ({server_says(exc)})")

    def _size_limit(self, exc: BaseException) -> int:
        if isinstance(exc, nats.errors.MaxPayloadError):
            return int(self.nc.max_payload)
        return self.settings.stream_max_msg_size

    # --- consuming ---------------------------------------------------------------

    def consumer(
        self, spec: ConsumerSpec, handler: Handler, *, on_unreadable: OnUnreadable | None = None
    ) -> PullConsumer:
        """A consumer of ``spec`` handing messages to ``handler``.

        ``on_unreadable`` hears of every message that does not decode (its
        subject's state is unknown until a valid one arrives; the newest valid
        one before it is handed to ``handler`` and stays in force).
        """
        if len(spec.filters) != 1:
            raise ValueError(
                f"a consumer has exactly one filter, not {spec.filters!r}: the server checks "
                f"it against the identity's permissions; use Bus.consumer_group for several"
            )
        consumer = PullConsumer(self, spec, handler, on_unreadable)
        self._consumers.append(consumer)
        return consumer

    async def forget_durable(self, name: str) -> bool:
        """Delete the durable consumer ``name`` if the stream has it (one a former
        version used); returns whether there was one. A durable nobody reads any more
        would hold back the purge of ended subjects (see :meth:`purge_ended`)."""
        try:
            await self.js.delete_consumer(STREAM, name)
        except nats.js.errors.NotFoundError:
            return False
        except NATS_ERRORS as exc:
            raise translate(exc, f"deleting the durable consumer {name}") from exc
        log.info("deleted the durable consumer %s of a former version", name)
        return True

    def consumer_group(
        self,
        spec: ConsumerSpec,
        handler: Handler,
        *,
        on_unreadable: OnUnreadable | None = None,
        untraced: Collection[str] = (),
    ) -> ConsumerGroup:
        """One consumer per filter of ``spec`` (see :mod:`vipwire.bus._group`): the server
        checks a consumer's filter against the identity's permissions only when it has
        one. A durable ``spec`` gives ``<durable>-<family>`` names; the filters in
        ``untraced`` get consumers that make no span per delivery."""
        return ConsumerGroup(self, spec, handler, on_unreadable, untraced=untraced)

    @property
    def consumers(self) -> tuple[PullConsumer, ...]:
        """Every consumer made on this bus and not closed."""
        return tuple(self._consumers)

    def consumer_problem(self) -> str | None:
        """Which consumer gets no messages now and why (lost, stalled); None: all get them.

        ``/readyz`` reports it: a service whose consumer is lost is not doing its work.
        """
        problems = [p for c in self._consumers if (p := c.problem) is not None]
        return "; ".join(problems) if problems else None

    async def close(self) -> None:
        """Stop consumers (finishing in-flight messages), then drain the connection."""
        if self.link is not None:
            self.link.closing()
        await asyncio.gather(*(c.stop() for c in self._consumers), return_exceptions=True)
        self._consumers.clear()
        await self.stores.close()
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("drain of the NATS connection did not finish: %r", exc)
                await self.nc.close()


async def connect(
    settings: BusSettings,
    *,
    name: str,
    tracer: Tracer,
    metrics: Registry,
    attempts: int | None = None,
) -> Bus:
    """Connect to NATS, retrying until it answers (``attempts`` bounds that, for CLIs).

    Attempts back off exponentially with jitter up to ``reconnect_max_wait_s``
    and log once when NATS is unreachable, not once per attempt. The wait is
    cancellable at any moment (a SIGTERM while connecting stops the service).
    Once connected, the client reconnects forever, with the same backoff: a NATS
    restart must never take a service down with it.

    TLS (``bus.tls``) that cannot work is not retried: an unreadable file, or a
    certificate the server or we refuse, raises :class:`TlsError` at once, naming the
    file and the setting to check.
    """
    login = credentials_options(settings.credentials)
    tls = tls_options(settings.tls)
    backoff = Backoff(settings.reconnect_wait_s, settings.reconnect_max_wait_s)
    link = Link(
        name,
        settings.servers,
        metrics,
        backoff,
        explain=lambda exc: certificate_problem(exc, settings.tls),
    )
    tried = 0
    hinted = False
    while True:
        tried += 1
        nc = NatsClient()

        async def on_reconnect(nc: NatsClient = nc) -> None:
            if settings.tls.enabled() and not spoke_tls(nc):
                log.error(
                    "NATS at %s did not offer TLS after a reconnect although bus.tls is set: "
                    "closing the connection rather than talking in clear; restart the "
                    "service once every server has its tls {} block",
                    _url(nc),
                )
                await nc.close()
                return
            await link.on_reconnect(_url(nc))

        link.attempt()
        try:
            await nc.connect(
                servers=list(settings.servers),
                name=name,
                # nats-py annotates these two as int; it takes (and means) float seconds.
                connect_timeout=settings.connect_timeout_s,  # type: ignore[arg-type]
                reconnect_time_wait=settings.reconnect_wait_s,  # type: ignore[arg-type]
                max_reconnect_attempts=-1,
                # nats-py annotates it int; it sleeps that many (float) seconds.
                ping_interval=settings.ping_interval_s,  # type: ignore[arg-type]
                max_outstanding_pings=2,
                allow_reconnect=True,
                reconnect_to_server_handler=link.choose_server,
                error_cb=link.on_error,
                disconnected_cb=link.on_disconnect,
                reconnected_cb=on_reconnect,
                closed_cb=link.on_closed,
                **login.options,
                **tls,
            )
            break
        except (AttemptFailed, TimeoutError, nats.errors.Error, OSError) as exc:
            await _discard(nc)
            cause = exc.cause if isinstance(exc, AttemptFailed) else exc
            problem = certificate_problem(
                cause, settings.tls, server_verifies=server_verifies_clients(nc)
            )
            if problem is not None:
                raise TlsError(
                    f"cannot connect to NATS at {redacted_all(settings.servers)}: {problem}"
                ) from exc
            if not hinted and "authorization violation" in str(cause).lower():
                hinted = True
                log.error(
                    "NATS refused the login of %s (authorization violation): %s; give it the "
                    "credentials `vipwire nats config` wrote for its identity (bus.credentials) "
                    "and make sure the server runs with that configuration (re-run the "
                    "generator, then nats-server --signal reload)",
                    name,
                    f"credentials {settings.credentials}"
                    if settings.credentials
                    else "no bus.credentials set, and the server requires a login",
                )
            if attempts is not None and tried >= attempts:
                said = scrubbed(repr(cause), settings.servers)
                raise BusError(
                    f"cannot reach NATS at {redacted_all(settings.servers)} after {tried} "
                    f"attempts: {said}. Is nats-server running and the URL right?"
                ) from exc
            await asyncio.sleep(link.attempt_failed(exc))
        except BaseException:
            # Cancelled (a signal while connecting): leave nothing running behind.
            await _discard(nc)
            raise
    if settings.tls.enabled() and not spoke_tls(nc):
        # nats-py goes on in clear with a server that does not ask for TLS: refuse, or a
        # server (or whatever answers in its place) could skip the certificate check.
        await _discard(nc)
        raise TlsError(
            f"NATS at {_url(nc) or redacted_all(settings.servers)} did not offer TLS although "
            f"bus.tls is set: not talking in clear. Give that server its tls {{}} block, or "
            f"check what answers on that address"
        )
    link.up(_url(nc))
    bus = Bus(nc, settings, tracer=tracer, metrics=metrics, link=link)
    bus.declare_attempts = attempts
    bus.identity = login.identity
    return bus


def _declare_hint(exc: BaseException) -> str:
    """What the server said about a declaration, with what to do when it lacks room."""
    said = server_says(exc)
    if too_large_or_full(exc) == STORE_FULL:
        return (
            f"{said}: the server's JetStream store cannot reserve bus.stream_max_bytes "
            f"plus bus.kv_max_bytes per bucket; lower them or raise the server's "
            f"max_file_store (max_memory_store for storage: memory)"
        )
    return said


def _url(nc: NatsClient) -> str:
    """The server the client is connected to, as it may be shown (no password)."""
    url = nc.connected_url
    return redacted(f"{url.scheme}://{url.netloc}") if url is not None else ""


#: Seconds a client whose first connection failed may take to close.
_DISCARD_TIMEOUT_S = 0.5


async def _discard(nc: NatsClient) -> None:
    """Close a client whose first connection failed or was cancelled. Bounded: after a
    failed TLS handshake, asyncio's SSL transport never reports itself closed, and
    nats-py's close waits for that."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), _DISCARD_TIMEOUT_S)
