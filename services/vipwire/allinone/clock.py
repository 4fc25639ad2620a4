"""When each Service first showed an ingress IP in its status: create → status times.

``vipwire up --smoke`` and the benchmarks report these. A cluster served by a
KubeEmulator is timed from the emulator's own watch stream; any other (a real
cluster under ``vipwire up``) by polling what the stack learnt from the bus.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from vipwire.aio import cancel_and_wait
from vipwire.contracts import ServiceRef
from vipwire.kubeemu import KubeEmulator

#: How often a cluster without an emulator is asked (seconds).
POLL_INTERVAL_S = 0.05


class StatusClock:
    """Created and converged times per Service: perf_counter, and wall clock at creation."""

    def __init__(
        self,
        emulators: Mapping[str, KubeEmulator],
        *,
        polled: Iterable[str] = (),
        has_status: Callable[[ServiceRef], bool] | None = None,
    ) -> None:
        """``polled``: clusters without an emulator, asked ``has_status`` for each created
        Service that has not converged yet."""
        self.emulators = dict(emulators)
        self.polled = tuple(polled)
        self._has_status = has_status
        self.created: dict[ServiceRef, tuple[float, float]] = {}  # (perf, wall)
        self.converged: dict[ServiceRef, float] = {}  # perf
        self._waiting: dict[ServiceRef, asyncio.Future[None]] = {}
        self._all: asyncio.Future[None] | None = None
        self._expected = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for cluster, emulator in self.emulators.items():
            # Opened here, not in the task: no change may slip in before the watch exists.
            session = emulator.watch("services", resource_version=emulator.resource_version)
            self._tasks.append(asyncio.create_task(self._watch(cluster, session)))
        if self.polled and self._has_status is not None:
            self._tasks.append(asyncio.create_task(self._poll(self._has_status)))
        await asyncio.sleep(0)

    async def _watch(self, cluster: str, session: Any) -> None:
        async with session as w:
            async for event in w:
                obj: dict[str, Any] = event["object"]
                status = obj.get("status") or {}
                if (status.get("loadBalancer") or {}).get("ingress"):
                    meta = obj.get("metadata", {})
                    self._converge(
                        ServiceRef(cluster, meta.get("namespace", ""), meta.get("name", ""))
                    )

    async def _poll(self, has_status: Callable[[ServiceRef], bool]) -> None:
        while True:
            for ref in [
                r for r in self.created if r.cluster in self.polled and r not in self.converged
            ]:
                if has_status(ref):
                    self._converge(ref)
            await asyncio.sleep(POLL_INTERVAL_S)

    def _converge(self, ref: ServiceRef) -> None:
        if ref in self.converged:
            return
        self.converged[ref] = time.perf_counter()
        waiter = self._waiting.pop(ref, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._all is not None and not self._all.done() and len(self.converged) >= self._expected:
            self._all.set_result(None)

    def mark_created(self, ref: ServiceRef) -> None:
        self.created[ref] = (time.perf_counter(), time.time())

    async def wait_for(self, ref: ServiceRef, timeout_s: float) -> None:
        """Until ``ref`` converged; TimeoutError after ``timeout_s`` seconds."""
        if ref in self.converged:
            return
        waiter = self._waiting.setdefault(ref, asyncio.get_running_loop().create_future())
        await asyncio.wait_for(asyncio.shield(waiter), timeout_s)

    async def wait_every(self, refs: Sequence[ServiceRef], timeout_s: float) -> bool:
        """Until each of ``refs`` converged; False after ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        try:
            for ref in refs:
                await self.wait_for(ref, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return False
        return True

    async def wait_all(self, count: int, timeout_s: float) -> bool:
        """Until ``count`` Services converged; False after ``timeout_s`` seconds."""
        self._expected = count
        if len(self.converged) >= count:
            return True
        self._all = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._all), timeout_s)
        except TimeoutError:
            return False
        return True

    def latency_s(self, ref: ServiceRef) -> float | None:
        if ref not in self.converged or ref not in self.created:
            return None
        return self.converged[ref] - self.created[ref][0]

    def latencies_ms(self) -> list[float]:
        """Create → status of every created Service that converged, in creation order."""
        return [s * 1000 for r in self.created if (s := self.latency_s(r)) is not None]

    def converged_wall(self, ref: ServiceRef) -> float | None:
        """Wall-clock time of convergence (created wall time + the perf interval)."""
        latency = self.latency_s(ref)
        return None if latency is None else self.created[ref][1] + latency

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
