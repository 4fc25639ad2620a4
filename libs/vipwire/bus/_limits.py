"""Bounded stores: the limits the stream and KV buckets are declared with, and what a
service knows of a store that refused to take more.

A publish (or KV write) refused for want of room is not the publisher's failure
alone: nothing else can be stored either, so every component says it is not ready,
with the reason, and ``vipwire_bus_store_full`` is 1 for an alert. A component that
publishes nothing meanwhile learns it too: every ``store_check_interval_s`` it reads
the stream's state, and a stream with less room than one message of the largest size
is full. The problem ends when the store's state shows room again (or, for the
server's store, which no stream's state tells, with the next write it takes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StreamConfig, StreamInfo

from vipwire.aio import cancel_and_wait
from vipwire.bus._errors import NATS_ERRORS, server_says
from vipwire.bus._settings import BusSettings
from vipwire.metrics import Counter, Gauge, Registry

log = logging.getLogger("vipwire.bus")

#: What a refused write was refused for, as the counter's ``reason`` label says it.
TOO_LARGE = "too_large"
STORE_FULL = "store_full"


#: The longest wait between two reads of a full store's state.
_FULL_CHECK_S = 5.0


def _limit(value: int) -> int:
    """A setting's limit as JetStream takes it (-1: none)."""
    return value if value > 0 else -1


def with_stream_limits(config: StreamConfig, settings: BusSettings) -> StreamConfig:
    """``config`` with the VIPWIRE stream's limits from ``settings``.

    DiscardNew: a full stream refuses what is new rather than dropping what is old,
    because the oldest message of a subject may be its last, the one in force.
    """
    return replace(
        config,
        max_bytes=_limit(settings.stream_max_bytes),
        max_msg_size=_limit(settings.stream_max_msg_size),
        max_msgs_per_subject=_limit(settings.stream_max_msgs_per_subject),
        max_age=settings.stream_max_age_s,
        discard=DiscardPolicy.NEW,
    )


def kept_bytes_limit(config: StreamConfig, info: StreamInfo) -> StreamConfig:
    """``config``, unless it would lower the byte limit of an existing stream below what
    the stream holds: JetStream would then drop its oldest messages to fit, some of them
    the last of their subjects. The limit in force stays, and the log says why."""
    wanted = config.max_bytes or -1
    held = info.state.bytes
    if wanted <= 0 or held <= wanted:
        return config
    kept = info.config.max_bytes or -1
    log.warning(
        "stream %s holds %d bytes, more than the %d bytes asked for: its byte limit stays "
        "%s (lowering it would drop its oldest messages, the last of some subjects). "
        "Raise the setting, or purge what is no longer needed, then restart",
        config.name,
        held,
        wanted,
        "unlimited" if kept <= 0 else f"{kept} bytes",
    )
    return replace(config, max_bytes=kept)


def differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    """Whether the limits of ``wanted`` differ from those in force."""
    fields = ("max_bytes", "max_msg_size", "max_msgs_per_subject", "max_age", "discard")
    return any(_norm(getattr(current, f)) != _norm(getattr(wanted, f)) for f in fields)


def _norm(value: object) -> object:
    if value is None:
        return -1
    if isinstance(value, float) and value == 0:
        return -1
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return -1
    return value


def has_room(info: StreamInfo) -> bool:
    """Whether a store's state leaves room for any message it accepts."""
    config, state = info.config, info.state
    margin = config.max_msg_size if config.max_msg_size and config.max_msg_size > 0 else 0
    if config.max_bytes and config.max_bytes > 0 and state.bytes + margin > config.max_bytes:
        return False
    return not (config.max_msgs and config.max_msgs > 0 and state.messages >= config.max_msgs)


class StoreHealth:
    """Which stores refused a write for want of room, whether the stream answers, and
    the metrics an alert reads."""

    def __init__(
        self,
        js: JetStreamContext,
        metrics: Registry,
        interval_s: float,
        connected: Callable[[], bool] = lambda: True,
    ) -> None:
        self._js = js
        self._interval_s = interval_s
        self._connected = connected
        #: Why the watched stream cannot be read, once that happened twice in a row.
        self._failing: str | None = None
        self._failures = 0
        #: Stream name -> (why, whether its own state can tell when room is back).
        self._problems: dict[str, tuple[str, bool]] = {}
        self._checker: asyncio.Task[None] | None = None
        self._watched: str | None = None
        self.rejected: Counter = metrics.counter(
            "bus_publish_rejected_total",
            "Writes the bus refused to store, by subject family (or KV bucket) and reason "
            "(too_large, store_full)",
            ["family", "reason"],
        )
        self._full: Gauge = metrics.gauge(
            "bus_store_full",
            "1 while a stream or KV bucket refuses writes for want of room, else 0",
        )
        self._full.set(0)
        self._used: Gauge = metrics.gauge(
            "bus_store_used_ratio",
            "Share of its byte limit a stream holds, as last read (0 without a limit): "
            "alert well before 1, which refuses every publish",
            ["stream"],
        )
        self._failing_gauge: Gauge = metrics.gauge(
            "bus_store_failing",
            "1 while the stream cannot be read although NATS is connected (lost, "
            "unavailable), else 0",
        )
        self._failing_gauge.set(0)

    def problem(self) -> str | None:
        """Why the bus cannot store what it is given (None: it can)."""
        said = [why for why, _ in self._problems.values()]
        if self._failing is not None:
            said.append(self._failing)
        return "; ".join(said) or None

    def watch(self, stream: str) -> None:
        """Read the state of ``stream`` every interval, as long as the bus lives."""
        self._watched = stream
        if self._checker is None or self._checker.done():
            self._checker = asyncio.create_task(self._check(), name=f"vipwire-store-{stream}")

    def refused(self, stream: str, why: str, *, own_limits: bool) -> None:
        """``stream`` refused a write for want of room. ``own_limits``: it was the
        stream's own limits (its state then tells when room is back), not the server's
        store."""
        if stream not in self._problems:
            log.error("%s; every component reports not ready until there is room", why)
        self._problems[stream] = (why, own_limits)
        self._full.set(1)

    def stored(self, stream: str) -> None:
        """``stream`` took a write. That ends a refusal by the server's store; a stream at
        its own byte limit still takes a message that replaces one of a subject at its
        per-subject limit, so there its state decides (no flapping readiness)."""
        problem = self._problems.get(stream)
        if problem is not None and not problem[1]:
            self._clear(stream, "it stores again")

    def _clear(self, stream: str, how: str) -> None:
        del self._problems[stream]
        log.warning("store %s has room again (%s)", stream, how)
        if not self._problems:
            self._full.set(0)

    async def _check(self) -> None:
        while True:
            # Sooner while full: readiness should come back soon after room does.
            await asyncio.sleep(
                min(self._interval_s, _FULL_CHECK_S) if self._problems else self._interval_s
            )
            streams = {self._watched} if self._watched else set()
            streams |= {s for s, (_, own) in self._problems.items() if own}
            # The server's store (not own limits): only a write it takes tells.
            for stream in sorted(streams):
                try:
                    info = await self._js.stream_info(stream)
                except NATS_ERRORS as exc:
                    log.debug("reading the state of %s: %r", stream, exc)
                    if stream == self._watched:
                        self._unreadable(stream, exc)
                    continue
                if stream == self._watched:
                    self._readable(stream)
                problem = self._problems.get(stream)
                limit = info.config.max_bytes or 0
                self._used.set(info.state.bytes / limit if limit > 0 else 0.0, stream=stream)
                if has_room(info):
                    if problem is not None and problem[1]:
                        self._clear(stream, f"it holds {info.state.bytes} bytes")
                elif problem is None:
                    self.refused(
                        stream,
                        f"stream {stream} is full: it holds {info.state.bytes} of its "
                        f"{info.config.max_bytes} bytes, less room than one message of the "
                        f"largest size; raise bus.stream_max_bytes (and the server's "
                        f"JetStream store) or find what filled it",
                        own_limits=True,
                    )

    def _unreadable(self, stream: str, exc: BaseException) -> None:
        """The watched stream did not answer: twice in a row while connected, it fails.
        (Disconnected, the runtime already says so; one timeout may be a hiccup.)"""
        if not self._connected():
            self._failures = 0
            return
        self._failures += 1
        if self._failures >= 2 and self._failing is None:
            self._failing = (
                f"stream {stream} cannot be read: {server_says(exc)}; nothing can be "
                f"published (is JetStream up, and does the stream exist?)"
            )
            log.error("%s; every component reports not ready until it answers", self._failing)
            self._failing_gauge.set(1)

    def _readable(self, stream: str) -> None:
        self._failures = 0
        if self._failing is not None:
            self._failing = None
            self._failing_gauge.set(0)
            log.warning("stream %s answers again", stream)

    async def close(self) -> None:
        if self._checker is not None:
            # Cancelled until it ends: a cancel that lands as stream_info's answer does
            # is swallowed by nats-py's wait_for on 3.11, and one plain await then waits
            # forever (a CI run hung here in a fixture's teardown).
            await cancel_and_wait([self._checker])
            self._checker = None
