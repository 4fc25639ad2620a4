"""The state of one bus connection: backoff between attempts, one log line per change.

nats-py reports a connection's life through callbacks (error, disconnected,
reconnected, closed) and, between reconnect attempts, asks a handler which
server to try next and how long to wait first. :class:`Link` answers those
callbacks: it waits exponentially longer, with jitter, up to a cap; it logs
when the state changes (unreachable, connected, lost, back, closed) and not
once per failed attempt; and it keeps the ``vipwire_bus_connected`` gauge.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import nats.errors
from nats.aio.client import Server

from vipwire.bus._urls import redacted, redacted_all
from vipwire.metrics import Gauge, Registry

log = logging.getLogger("vipwire.bus")

State = Literal["connecting", "connected", "reconnecting", "closed"]

# What a lost or refused connection raises; anything else is worth an ERROR line.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    nats.errors.UnexpectedEOF,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.errors.ConnectionClosedError,
)


def connected_gauge(metrics: Registry) -> Gauge:
    """``vipwire_bus_connected``: 1 while the NATS connection is up, else 0."""
    return metrics.gauge("bus_connected", "1 while the NATS connection is up, else 0")


class Backoff:
    """Exponential delays with jitter and a cap.

    The ``n``-th retry (from 0) waits ``d = min(cap, base * 2**n)`` drawn in
    ``[d/2, d]``: replicas that lost the same server do not return in step.
    """

    def __init__(
        self, base_s: float, cap_s: float, *, rand: Callable[[], float] = random.random
    ) -> None:
        self.base_s = max(base_s, 0.0)
        self.cap_s = max(cap_s, self.base_s)
        self._rand = rand

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap_s, self.base_s * (1 << min(attempt, 32)))
        return ceiling / 2 + self._rand() * ceiling / 2


class AttemptFailed(Exception):
    """Every server refused this first-connection attempt (raised from the error callback)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


class Link:
    """One connection's state as its client's callbacks report it."""

    def __init__(
        self,
        name: str,
        servers: Sequence[str],
        metrics: Registry,
        backoff: Backoff,
        *,
        clock: Callable[[], float] = time.monotonic,
        explain: Callable[[BaseException], str | None] = lambda _: None,
    ) -> None:
        """``explain``: what a connection error means when it is no network trouble (a
        refused certificate), else None."""
        self.name = name
        self._explain = explain
        self._explained: str | None = None
        #: The servers, as they may be shown (passwords redacted).
        self.where = redacted_all(servers)
        self._servers = max(len(servers), 1)
        self.backoff = backoff
        self.state: State = "connecting"
        self.gauge = connected_gauge(metrics)
        self._denied = metrics.counter(
            "bus_permission_denied_total",
            "Publishes and subscriptions the NATS server refused this identity",
            ["operation"],
        )
        self.gauge.set(0)
        self._clock = clock
        self._since = clock()
        #: Failed attempts since the connection was last up.
        self.failures = 0
        self._attempt_errors = 0
        self._in_attempt = False
        self._last_error: BaseException | None = None
        self._closing = False
        self._url = ""
        #: Called (synchronously) once the connection is back after a loss.
        self.on_back: list[Callable[[], None]] = []

    # --- the first connection (our own retry loop drives it) -------------------------

    def attempt(self) -> None:
        """A first-connection attempt begins."""
        self._attempt_errors = 0
        self._in_attempt = True

    def attempt_failed(self, exc: BaseException) -> float:
        """The attempt failed: log if that is news, and say how long to wait."""
        self._in_attempt = False
        cause = exc.cause if isinstance(exc, AttemptFailed) else exc
        delay = self.backoff.delay(self.failures)
        self.failures += 1
        if self.failures == 1:
            log.warning(
                "cannot connect to NATS at %s (%s): %r; retrying with backoff (at most "
                "every %.1f s) until it answers, not ready meanwhile",
                self.where,
                self.name,
                cause,
                self.backoff.cap_s,
            )
        else:
            log.debug("still cannot connect to NATS at %s (%s): %r", self.where, self.name, cause)
        return delay

    def up(self, url: str) -> None:
        """The first connection is made."""
        self._in_attempt = False
        self._url = url = redacted(url)
        if self.failures:
            log.info(
                "NATS at %s answered (%s) after %d failed attempt(s) in %.1f s",
                url,
                self.name,
                self.failures,
                self._clock() - self._since,
            )
        else:
            log.info("connected to NATS at %s (%s)", url, self.name)
        self._set_connected()

    # --- nats-py callbacks -------------------------------------------------------------

    async def on_error(self, exc: Exception) -> None:
        if self.state == "connecting":
            self._last_error = exc
            self._attempt_errors += 1
            log.debug("NATS connection attempt failed (%s): %r", self.name, exc)
            if self._in_attempt and self._attempt_errors >= self._servers:
                # nats-py would retry on its own, forever and at a fixed pace: take the
                # attempt back so that our loop backs off and stays cancellable.
                raise AttemptFailed(exc)
            return
        if self.state in ("reconnecting", "closed") or isinstance(exc, _CONNECTION_ERRORS):
            self._last_error = exc
            problem = self._explain(exc) if self.state == "reconnecting" else None
            if problem is not None and problem != self._explained:
                # Waiting will not fix it (a certificate changed): say so once, loudly.
                self._explained = problem
                log.error(
                    "NATS connection (%s) cannot be re-established: %s; still retrying",
                    self.name,
                    problem,
                )
                return
            log.debug("NATS connection error (%s): %r", self.name, exc)
            return
        said = str(exc)
        if "permissions violation" in said.lower():
            operation = "subscribe" if "subscription" in said.lower() else "publish"
            self._denied.inc(operation=operation)
            log.error(
                "NATS refused %s: %s. This identity's permissions (vipwire nats config) do not "
                "allow it: a wrong bus.credentials file for this component, or a "
                "configuration generated before this component's needs changed",
                self.name,
                said.strip().strip("'\""),
            )
            return
        log.error("NATS error (%s): %r", self.name, exc)

    async def on_disconnect(self) -> None:
        if self._closing or self.state != "connected":
            return
        self.state = "reconnecting"
        self.gauge.set(0)
        self._since = self._clock()
        self.failures = 0
        cause = f" ({self._last_error!r})" if self._last_error is not None else ""
        log.warning(
            "NATS connection to %s lost (%s)%s; reconnecting with backoff (at most every "
            "%.1f s), not ready meanwhile",
            self._url or self.where,
            self.name,
            cause,
            self.backoff.cap_s,
        )

    async def on_reconnect(self, url: str = "") -> None:
        self._url = redacted(url) if url else self._url
        log.info(
            "NATS reconnected to %s (%s) after %.1f s and %d attempt(s)",
            self._url or self.where,
            self.name,
            self._clock() - self._since,
            self.failures,
        )
        self._set_connected()
        for hook in self.on_back:
            hook()

    async def on_closed(self) -> None:
        if self.state == "connecting":
            return  # a failed first attempt's client, discarded: the next one follows
        self.state = "closed"
        self.gauge.set(0)
        if not self._closing:
            log.error(
                "NATS connection (%s) closed for good: %r; restart the service",
                self.name,
                self._last_error,
            )

    def choose_server(
        self, servers: list[Server], _info: dict[str, Any]
    ) -> tuple[Server | None, float]:
        """The server to try next (the least tried of the pool) and the wait before it."""
        delay = self.backoff.delay(self.failures)
        self.failures += 1
        if not servers:
            return None, delay
        fewest = min(s.reconnects for s in servers)
        choice = random.choice([s for s in servers if s.reconnects == fewest])
        return choice, delay

    # --- our side ----------------------------------------------------------------------

    def closing(self) -> None:
        """We close the connection ourselves: no line about losing it."""
        self._closing = True
        self.gauge.set(0)

    def _set_connected(self) -> None:
        self._explained = None
        self.state = "connected"
        self.gauge.set(1)
        self.failures = 0
        self._last_error = None
