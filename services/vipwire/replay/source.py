"""Where history comes from and goes to: a live NATS server, or a stopped stack's store.

A store is never opened in place: its ``VIPWIRE`` stream directory is copied
and an embedded nats-server serves the copy, so replay can never change (or
trip over the lock of) what the user pointed it at. Reading uses an ordered
push consumer (ephemeral, no acks, flow-controlled) filtered to the scope and
started at the range's first sequence or time; it stops at the stream's end.
An import is the only writer here, and it writes only into an empty stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Final, NamedTuple

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, PubAck, StorageType, StreamConfig

from vipwire.bus import BusError, BusSettings, connect_client, reader_name
from vipwire.contracts import STREAM
from vipwire.natsserver import NatsServer, NatsServerError
from vipwire.replay.record import RECORDED_SEQ, Record, import_headers, stored_record
from vipwire.replay.timeline import Bound

#: Seconds to wait for the next message of a range before giving up.
NEXT_TIMEOUT: Final = 10.0
#: JetStream refuses a shorter de-duplication window than this.
MIN_DUPLICATE_WINDOW: Final = 0.1
#: Publishes in flight during an import.
IMPORT_WINDOW: Final = 512


class ReplayError(Exception):
    """Replay cannot do what was asked (no server, no stream, a store that is not one)."""


class ReplayUnreachable(ReplayError):
    """The NATS server to read from could not be reached."""


class StreamState(NamedTuple):
    first_seq: int
    last_seq: int
    messages: int
    #: Filled by an import: sequence numbers and times are the recorded ones
    #: (headers), so ranges are applied by reading, not by the server.
    imported: bool


# --- opening ----------------------------------------------------------------------


def _account_dirs(base: Path) -> list[Path]:
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if (p / "streams").is_dir())


def find_stream_dir(store: Path) -> Path:
    """The ``VIPWIRE`` stream directory inside a store.

    Accepts a ``vipwire up --state-dir`` directory, a nats-server store
    directory (``-sd``) or the ``jetstream`` directory inside one.
    """
    for base in (store / "jetstream" / "jetstream", store / "jetstream", store):
        for account in _account_dirs(base):
            candidate = account / "streams" / STREAM
            if candidate.is_dir():
                return candidate
    raise ReplayError(
        f"no {STREAM} stream under {store} (expected a `vipwire up --state-dir` directory, "
        "a nats-server store directory, or the jetstream directory inside one)"
    )


def server_dir_for(store: Path) -> Path:
    """The nats-server store directory (``-sd``) that reading ``store`` will find again."""
    if (store / "jetstream" / "jetstream").is_dir():
        return store / "jetstream"
    if store.name == "jetstream" and _account_dirs(store):
        return store.parent
    return store


async def _connect(bus: BusSettings) -> NatsClient:
    try:
        return await connect_client(bus, name="vipwire-replay", timeout=3.0)
    except BusError as exc:
        raise ReplayUnreachable(str(exc)) from None


@contextlib.asynccontextmanager
async def _server(store_dir: Path) -> AsyncIterator[str]:
    server = NatsServer(store_dir)
    try:
        await server.start()
    except NatsServerError as exc:
        raise ReplayError(f"cannot open the store in {store_dir}: {exc}") from exc
    try:
        yield server.url
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def open_source(
    *, nats_url: str | None = None, bus: BusSettings | None = None, store: Path | None = None
) -> AsyncIterator[JetStreamContext]:
    """JetStream of a live server (``nats_url``, or ``bus``: servers, credentials, TLS),
    or of a copy of a store's stream (removed afterwards)."""
    if nats_url is not None:
        bus = BusSettings(servers=(nats_url,))
    if (bus is None) == (store is None):
        raise ValueError("give exactly one of nats_url, bus and store")
    if bus is not None:
        nc = await _connect(bus)
        try:
            yield nc.jetstream()
        finally:
            await nc.close()
        return
    assert store is not None
    stream_dir = find_stream_dir(store)
    with tempfile.TemporaryDirectory(prefix="vipwire-replay-") as tmp:
        account = stream_dir.parent.parent.name
        copy = Path(tmp) / "jetstream" / account / "streams" / STREAM
        try:
            await asyncio.to_thread(shutil.copytree, stream_dir, copy)
        except OSError as exc:
            raise ReplayError(f"cannot copy {stream_dir}: {exc}") from exc
        async with _server(Path(tmp)) as url:
            nc = await _connect(BusSettings(servers=(url,)))
            try:
                yield nc.jetstream()
            finally:
                await nc.close()


@contextlib.asynccontextmanager
async def open_target(
    *, nats_url: str | None = None, bus: BusSettings | None = None, store: Path | None = None
) -> AsyncIterator[JetStreamContext]:
    """JetStream to import into: a live server (``nats_url`` or ``bus``), or a store
    opened in place (created if new)."""
    if nats_url is not None:
        bus = BusSettings(servers=(nats_url,))
    if (bus is None) == (store is None):
        raise ValueError("give exactly one of nats_url, bus and store")
    if bus is not None:
        async with open_source(bus=bus) as js:
            yield js
        return
    assert store is not None
    server_dir = server_dir_for(store)
    try:
        server_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReplayError(f"cannot create {server_dir}: {exc}") from exc
    async with _server(server_dir) as url:
        nc = await _connect(BusSettings(servers=(url,)))
        try:
            yield nc.jetstream()
        finally:
            await nc.close()


# --- reading ----------------------------------------------------------------------


async def stream_state(js: JetStreamContext) -> StreamState | None:
    """The stream's extent, or None when there is no ``VIPWIRE`` stream."""
    try:
        info = await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        return None
    except (TimeoutError, nats.errors.Error) as exc:
        raise ReplayError(f"cannot look at stream {STREAM}: {exc!r}") from exc
    state = info.state
    imported = False
    if state.messages:
        try:
            first = await js.get_msg(STREAM, seq=state.first_seq)
            imported = RECORDED_SEQ in (first.headers or {})
        except (TimeoutError, nats.errors.Error):
            imported = False
    return StreamState(state.first_seq, state.last_seq, state.messages, imported)


def _stream_time_ns(reply: str) -> int:
    # The ack subject carries the stored time in nanoseconds; the client's
    # parsed metadata keeps only microseconds.
    tokens = reply.split(".")
    return int(tokens[7] if len(tokens) == 9 else tokens[9])


async def read_records(
    js: JetStreamContext,
    state: StreamState,
    *,
    subject_filter: str,
    since: Bound | None = None,
    until: Bound | None = None,
    progress: Callable[[int], None] | None = None,
) -> AsyncIterator[Record]:
    """The stream's messages on ``subject_filter`` within the bounds, in stream order."""
    if not state.messages:
        return
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    if since is not None and not state.imported:
        if since.seq is not None:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=since.seq
            )
        elif since.time_ns is not None:
            start = datetime.datetime.fromtimestamp(since.time_ns / 1e9, datetime.UTC)
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start
            )
    # Named on a connection with an identity: the server checks its filter then.
    config.name = reader_name(js)
    try:
        sub = await js.subscribe(
            subject_filter, stream=STREAM, ordered_consumer=True, config=config
        )
    except (TimeoutError, nats.errors.Error) as exc:
        raise ReplayError(f"cannot read stream {STREAM}: {exc!r}") from exc
    try:
        info = await sub.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered is not None else 0
        if not int(info.num_pending or 0) + int(delivered or 0):
            return
        while True:
            try:
                msg = await sub.next_msg(timeout=NEXT_TIMEOUT)
            except TimeoutError as exc:
                raise ReplayError(
                    f"stream {STREAM} stopped delivering (no message for {NEXT_TIMEOUT:g}s)"
                ) from exc
            meta = msg.metadata
            record = stored_record(
                seq=meta.sequence.stream,
                time_ns=_stream_time_ns(msg.reply),
                subject=msg.subject,
                headers=msg.headers,
                data=msg.data,
            )
            if progress is not None:
                progress(meta.sequence.stream)
            if until is not None and until.after(record.seq, record.time_ns):
                return
            if since is None or not since.before(record.seq, record.time_ns):
                yield record
            if meta.num_pending == 0:
                return
    finally:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await sub.unsubscribe()


# --- importing ----------------------------------------------------------------------


async def import_records(js: JetStreamContext, records: Iterable[Record]) -> int:
    """Publish records, in order, into an empty ``VIPWIRE`` stream; returns how many.

    Subject, headers (``Nats-Msg-Id`` included) and payload are kept byte for
    byte; the recorded sequence and time ride along as headers. A stream we
    create gets the shortest de-duplication window JetStream allows while we
    write (a history may legitimately repeat a message id far apart in time),
    then the bus's usual one.
    """
    state = await stream_state(js)
    if state is not None and state.messages:
        raise ReplayError(
            f"stream {STREAM} already holds {state.messages} messages: import needs an empty one"
        )
    settings = BusSettings()
    window = MIN_DUPLICATE_WINDOW
    created = state is None
    try:
        if created:
            await js.add_stream(_stream_config(settings, duplicate_window=window))
        else:
            window = (await js.stream_info(STREAM)).config.duplicate_window or window
    except (TimeoutError, nats.errors.Error) as exc:
        raise ReplayError(f"cannot prepare stream {STREAM}: {exc!r}") from exc
    pending: list[tuple[Record, asyncio.Future[PubAck]]] = []
    last_sent: dict[str, float] = {}
    count = 0

    async def drain() -> None:
        acks = await asyncio.gather(*(f for _, f in pending))
        for (record, _), ack in zip(pending, acks, strict=True):
            if ack.duplicate:
                raise ReplayError(
                    f"seq {record.seq} ({record.subject}) was dropped as a duplicate of an "
                    f"earlier Nats-Msg-Id {record.msg_id!r}"
                )
        pending.clear()

    try:
        for record in records:
            msg_id = record.msg_id
            if msg_id is not None and msg_id in last_sent:
                # The same id again: JetStream would drop it within its window.
                await drain()
                wait = window + 0.01 - (time.monotonic() - last_sent[msg_id])
                if wait > 0:
                    if wait > 5.0:
                        raise ReplayError(
                            f"seq {record.seq} repeats Nats-Msg-Id {msg_id!r} and stream {STREAM} "
                            f"de-duplicates over {window:g}s: import into an empty store instead"
                        )
                    await asyncio.sleep(wait)
            future = await js.publish_async(
                record.subject, record.data, headers=import_headers(record)
            )
            if msg_id is not None:
                last_sent[msg_id] = time.monotonic()
            pending.append((record, future))
            count += 1
            if len(pending) >= IMPORT_WINDOW:
                await drain()
        await drain()
        if created:
            await js.update_stream(_stream_config(settings, settings.duplicate_window_s))
    except (TimeoutError, nats.errors.Error) as exc:
        raise ReplayError(f"import into stream {STREAM} failed: {exc!r}") from exc
    return count


def _stream_config(settings: BusSettings, duplicate_window: float) -> StreamConfig:
    # As the bus declares it (vipwire.bus.Bus.ensure_stream), so a stack
    # started on the store later takes it as its own.
    return StreamConfig(
        name=STREAM,
        subjects=["vipwire.>"],
        max_age=settings.stream_max_age_s,
        duplicate_window=duplicate_window,
        storage=StorageType.FILE,
        num_replicas=1,
    )
