"""One appliance as the service uses it: bounded, timed, measured, traced, with a
cached view of each partition so that a Service's write needs no read first."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer

from vipwire.lbdriver.diff import OperationConflict, apply_operations, canonical
from vipwire.lbdriver.drivers.base import ApplianceDriver, ApplianceError, ApplianceUnavailable
from vipwire.lbdriver.model import Operation, VirtualServer, op_kind
from vipwire.lbdriver.settings import ApplianceSettings
from vipwire.metrics import Registry

log = logging.getLogger("vipwire.lbdriver")

T = TypeVar("T")


class _Partition:
    """The last known state of one partition.

    ``epoch`` grows whenever the view is dropped; a listing or a write that
    saw another epoch when it started may have raced with a change, so its
    result is not trusted as the shared view.
    """

    def __init__(self) -> None:
        self.servers: dict[str, VirtualServer] | None = None
        self.epoch = 0
        self.list_lock = asyncio.Lock()

    def view(self) -> dict[str, VirtualServer] | None:
        # A call, not an attribute read: the view can change across an await.
        return self.servers


class ApplianceClient:
    def __init__(
        self,
        settings: ApplianceSettings,
        driver: ApplianceDriver,
        *,
        metrics: Registry,
        tracer: Tracer,
        unhealthy_cooldown_s: float,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.driver = driver
        self._tracer = tracer
        self._cooldown = unhealthy_cooldown_s
        self._partitions: dict[str, _Partition] = {}
        self._semaphore = asyncio.Semaphore(settings.max_concurrent_requests)
        self.unhealthy_until = 0.0
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
        self._m_seconds = metrics.histogram(
            "lbdriver_appliance_request_seconds",
            "Appliance API call latency",
            ["appliance", "call"],
        )

    def healthy(self, now: float) -> bool:
        return now >= self.unhealthy_until

    def invalidate(self, partition: str) -> None:
        part = self._partition(partition)
        part.servers = None
        part.epoch += 1

    async def actual(self, partition: str) -> dict[str, VirtualServer]:
        """Every virtual server of the partition; listed once, then kept current.

        The returned dict must not be modified.
        """
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
            servers = {name: canonical(server) for name, server in listed.items()}
            if part.epoch == epoch:
                part.servers = servers
            # Even if not kept, the listing is exact for the caller's own objects:
            # only the caller writes those, and it is waiting for this answer.
            return servers

    async def apply(self, partition: str, ops: Sequence[Operation]) -> None:
        part = self._partition(partition)
        epoch = part.epoch
        try:
            await self._call("apply", partition, lambda: self.driver.apply(partition, ops))
        except BaseException:
            # A failed (or abandoned) request may have been applied in part.
            self.invalidate(partition)
            raise
        self._m_writes.inc(appliance=self.name)
        for op in ops:
            self._m_ops.inc(appliance=self.name, kind=op_kind(op))
        if part.servers is None or part.epoch != epoch:
            self.invalidate(partition)
            return
        try:
            part.servers = apply_operations(part.servers, ops)
        except OperationConflict:
            self.invalidate(partition)

    async def close(self) -> None:
        await self.driver.close()

    def _partition(self, partition: str) -> _Partition:
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = _Partition()
        return part

    async def _call(self, call: str, partition: str, request: Callable[[], Awaitable[T]]) -> T:
        timeout = self.settings.request_timeout_s
        attributes = {"vipwire.appliance": self.name, "vipwire.partition": partition}
        async with self._semaphore:
            started = time.perf_counter()
            with self._tracer.start_as_current_span(
                f"appliance {call}", kind=SpanKind.CLIENT, attributes=attributes
            ) as span:
                try:
                    try:
                        async with asyncio.timeout(timeout):
                            result = await request()
                    except TimeoutError as exc:
                        raise ApplianceUnavailable(
                            self.name, f"{call} took longer than {timeout:g}s"
                        ) from exc
                except ApplianceError as exc:
                    span.record_exception(exc)
                    span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
                    self._m_failures.inc(appliance=self.name, call=call, reason=exc.reason)
                    if isinstance(exc, ApplianceUnavailable):
                        self.unhealthy_until = time.monotonic() + self._cooldown
                    raise
                finally:
                    self._m_seconds.observe(
                        time.perf_counter() - started, appliance=self.name, call=call
                    )
        self.unhealthy_until = 0.0
        return result
