"""One appliance as the service uses it: guarded, bounded, timed, measured, traced, with a
cached view of each partition so that a Service's write needs no read first.

Every call passes, in order: the circuit breaker (fail fast while open), the
rate limit (token bucket), the concurrency bound, the timeout. So a failing
appliance costs nothing but its own Services' retries, and no other
appliance waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer

from vipwire.lbdriver.core.diff import OperationConflict
from vipwire.lbdriver.core.listing import Listing
from vipwire.lbdriver.core.resilience import Admission, BreakerState, CircuitBreaker, TokenBucket
from vipwire.lbdriver.core.virtual_servers import Operation, op_kind
from vipwire.lbdriver.io.drivers.base import (
    ApplianceDriver,
    ApplianceError,
    ApplianceRejected,
    ApplianceUnavailable,
)
from vipwire.lbdriver.io.fencing import CURRENT_FENCE, Fence, NotLeader
from vipwire.lbdriver.settings import ApplianceSettings
from vipwire.metrics import Registry

log = logging.getLogger("vipwire.lbdriver")

T = TypeVar("T")

_BREAKER_GAUGE = {"closed": 0.0, "half-open": 1.0, "open": 2.0}

#: Called as ``(appliance, before, after)`` when a breaker changes state.
BreakerListener = Callable[[str, BreakerState, BreakerState], None]


class CircuitOpen(ApplianceUnavailable):
    """Failed fast: the appliance's breaker is open, nothing was sent.

    ``last`` is the failure that opened it (or the last failed probe): that is
    what is reported, so a Service's status keeps the appliance's own reason.
    """

    def __init__(self, appliance: str, message: str, last: ApplianceError | None) -> None:
        super().__init__(appliance, message)
        self.last = last


class _Partition:
    """The last known state of one partition.

    ``epoch`` grows whenever the view is dropped; a listing or a write that
    saw another epoch when it started may have raced with a change, so its
    result is not trusted as the shared view.
    """

    def __init__(self) -> None:
        self.servers: Listing | None = None
        self.epoch = 0
        self.list_lock = asyncio.Lock()
        self.owned = 0  # our objects, as last seen (kept while the view is dropped)

    def view(self) -> Listing | None:
        # A call, not an attribute read: the view can change across an await.
        return self.servers


class ApplianceClient:
    def __init__(
        self,
        settings: ApplianceSettings,
        driver: ApplianceDriver,
        *,
        prefix: str,
        breaker: CircuitBreaker,
        metrics: Registry,
        tracer: Tracer,
        on_breaker: BreakerListener | None = None,
        fence: Fence | None = None,
    ) -> None:
        self.settings = settings
        #: Asked before every write (None: unfenced, a single replica without election).
        self.fence = fence
        self.name = settings.name
        self.driver = driver
        self.breaker = breaker
        self._prefix = prefix
        self._tracer = tracer
        self._on_breaker = on_breaker
        self._bucket = TokenBucket(settings.max_requests_per_s, settings.request_burst)
        self._partitions: dict[str, _Partition] = {}
        self._semaphore = asyncio.Semaphore(settings.max_concurrent_requests)
        #: The failure that last opened the breaker (or failed its probe).
        self.last_failure: ApplianceError | None = None
        #: For ``vipwire lb status``: wall-clock times, and the last error as reported.
        self.writes = 0
        #: Monotonic time of the last call the appliance answered.
        self.last_answer = time.monotonic()
        self.last_write_at: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._m_writes = metrics.counter(
            "lbdriver_appliance_writes_total", "Successful appliance write requests", ["appliance"]
        )
        self._m_ops = metrics.counter(
            "lbdriver_appliance_ops_total",
            "Virtual server operations applied, by kind",
            ["appliance", "kind"],
        )
        self._m_failures = metrics.counter(
            "lbdriver_appliance_failures_total",
            "Failed appliance requests, by call and reason",
            ["appliance", "call", "reason"],
        )
        self._m_fast = metrics.counter(
            "lbdriver_appliance_fast_failures_total",
            "Calls refused unsent because the appliance's circuit breaker was open",
            ["appliance"],
        )
        self._m_throttled = metrics.counter(
            "lbdriver_appliance_throttled_seconds_total",
            "Seconds calls waited for the appliance's rate limit",
            ["appliance"],
        )
        self._m_seconds = metrics.histogram(
            "lbdriver_appliance_request_seconds",
            "Appliance API call latency",
            ["appliance", "call"],
        )
        self._m_breaker = metrics.gauge(
            "lbdriver_appliance_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ["appliance"],
        )
        self._m_breaker.set(0.0, appliance=self.name)

    # --- health ------------------------------------------------------------------

    def state(self, now: float) -> BreakerState:
        return self.breaker.state(now)

    def usable(self, now: float) -> bool:
        """Worth writing to: closed, or open long enough to be probed."""
        return self.breaker.state(now) != "open"

    def note_error(self, message: str) -> None:
        """Remember an error reported about this appliance (for the status view)."""
        self.last_error = message
        self.last_error_at = time.time()

    # --- partitions --------------------------------------------------------------

    def invalidate(self, partition: str) -> None:
        part = self._partition(partition)
        part.servers = None
        part.epoch += 1

    def partitions(self) -> list[str]:
        """Partitions listed or written since start."""
        return sorted(self._partitions)

    def virtual_servers(self) -> int:
        """Our objects on the appliance, as last seen, over the partitions seen."""
        return sum(p.owned for p in self._partitions.values())

    async def actual(self, partition: str) -> Listing:
        """Every virtual server of the partition; listed once, then kept current."""
        part = self._partition(partition)
        if part.servers is not None:
            return part.servers
        async with part.list_lock:
            kept = part.view()  # listed by whoever held the lock before us
            if kept is not None:
                return kept
            epoch = part.epoch
            listed = await self._call(
                "list", partition, lambda: self.driver.list_virtual_servers(partition)
            )
            servers = Listing(listed, self._prefix)
            part.owned = servers.owned
            if part.epoch == epoch:
                part.servers = servers
            # Even if not kept, the listing is exact for the caller's own objects:
            # only the caller writes those, and it is waiting for this answer.
            return servers

    async def probe(self, partition: str) -> None:
        """One guarded listing whose result is not kept: is the appliance answering?"""
        await self._call("probe", partition, lambda: self.driver.list_virtual_servers(partition))

    async def refresh(self, partition: str) -> Listing:
        """List the partition anew (the cached view may hide out-of-band edits)."""
        self.invalidate(partition)
        return await self.actual(partition)

    async def apply(self, partition: str, ops: Sequence[Operation]) -> None:
        part = self._partition(partition)
        epoch = part.epoch
        if self.fence is not None:
            self.fence()  # NotLeader: nothing sent, nothing to forget
        token = CURRENT_FENCE.set(self.fence)
        try:
            await self._call("apply", partition, lambda: self.driver.apply(partition, ops))
        except BaseException:
            # A failed (or abandoned) request may have been applied in part.
            self.invalidate(partition)
            raise
        finally:
            CURRENT_FENCE.reset(token)
        self.writes += 1
        self.last_write_at = time.time()
        self._m_writes.inc(appliance=self.name)
        for op in ops:
            self._m_ops.inc(appliance=self.name, kind=op_kind(op))
        if part.servers is None or part.epoch != epoch:
            self.invalidate(partition)
            return
        try:
            part.servers = part.servers.after(ops)
        except OperationConflict:
            self.invalidate(partition)
            return
        part.owned = part.servers.owned

    async def close(self) -> None:
        await self.driver.close()

    def _partition(self, partition: str) -> _Partition:
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = _Partition()
        return part

    # --- one call ------------------------------------------------------------------

    async def _call(self, call: str, partition: str, request: Callable[[], Awaitable[T]]) -> T:
        now = time.monotonic()
        admission = self.breaker.admit(now)
        if admission is None:
            self._m_fast.inc(appliance=self.name)
            retry_at = self.breaker.retry_at or now
            raise CircuitOpen(
                self.name,
                f"{call} not sent: circuit open for another {max(0.0, retry_at - now):.1f}s",
                self.last_failure,
            )
        try:
            wait = self._bucket.reserve(now)
            if wait > 0:
                self._m_throttled.inc(wait, appliance=self.name)
                await asyncio.sleep(wait)
            result = await self._timed(call, partition, request)
        except NotLeader:
            # Refused by our own fence (the lease ran out): says nothing of the appliance.
            self.breaker.abandoned(admission)
            raise
        except ApplianceRejected:
            # The appliance answered; the request was wrong, not the appliance.
            self._settle(admission, None)
            raise
        except ApplianceError as exc:
            self._settle(admission, exc)
            raise
        except Exception as exc:
            # A driver bug or an answer it could not read: the appliance is not usable.
            self._settle(admission, ApplianceUnavailable(self.name, f"{call}: {exc!r}"))
            raise
        except BaseException:
            self.breaker.abandoned(admission)
            raise
        self._settle(admission, None)
        return result

    async def _timed(self, call: str, partition: str, request: Callable[[], Awaitable[T]]) -> T:
        s = self.settings
        # REST drivers bound each request by its class (settings.timeouts); the call's
        # bound only backstops them, and must leave room for a long commit or save.
        timeout = s.timeouts.call_s() if s.driver in ("f5", "a10") else s.request_timeout_s
        attributes = {"vipwire.appliance": self.name, "vipwire.partition": partition}
        async with self._semaphore:
            started = time.perf_counter()
            with self._tracer.start_as_current_span(
                f"appliance {call}", kind=SpanKind.CLIENT, attributes=attributes
            ) as span:
                try:
                    try:
                        async with asyncio.timeout(timeout):
                            return await request()
                    except TimeoutError as exc:
                        raise ApplianceUnavailable(
                            self.name, f"{call} took longer than {timeout:g}s"
                        ) from exc
                except ApplianceError as exc:
                    span.record_exception(exc)
                    span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
                    self._m_failures.inc(appliance=self.name, call=call, reason=exc.reason)
                    raise
                finally:
                    self._m_seconds.observe(
                        time.perf_counter() - started, appliance=self.name, call=call
                    )

    def _settle(self, admission: Admission, failure: ApplianceError | None) -> None:
        """Tell the breaker how the call went; announce when it opens or closes."""
        now = time.monotonic()
        before: BreakerState = "half-open" if admission is Admission.PROBE else "closed"
        if failure is None:
            self.last_answer = now
            if not self.breaker.succeeded(admission):
                return
            after: BreakerState = "closed"
            log.warning("appliance %s: circuit closed, the appliance answers again", self.name)
        else:
            if not self.breaker.failed(admission, now):
                return
            after = "open"
            self.last_failure = failure
            retry_at = self.breaker.retry_at or now
            log.warning(
                "appliance %s: circuit open for %.1fs after %s: %s",
                self.name,
                retry_at - now,
                "a failed probe" if before == "half-open" else "consecutive failures",
                failure,
            )
        self._m_breaker.set(_BREAKER_GAUGE[after], appliance=self.name)
        if self._on_breaker is not None:
            self._on_breaker(self.name, before, after)
