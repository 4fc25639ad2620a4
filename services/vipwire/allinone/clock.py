"""When each Service first showed an ingress IP in its status: create → status times.

``vipwire up --smoke`` and the benchmarks report these. Both kinds of cluster are
timed the same way, to the Service object in the API server: a cluster served by a
KubeEmulator from the emulator's own watch stream, any other (a real cluster under
``vipwire up --kubeconfig``) from a list and watch of its Services over the API, so
the figures of the two modes compare.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes_asyncio.client import CoreV1Api

from vipwire.aio import cancel_and_wait
from vipwire.contracts import ServiceRef
from vipwire.kube import KubeError, list_all, watch_events
from vipwire.kubeemu import KubeEmulator

log = logging.getLogger("vipwire.up")

#: How long a watch of a real cluster's Services lasts before it is renewed (seconds).
WATCH_TIMEOUT_S = 300
#: The pause before listing again after a real cluster's watch failed (seconds).
RETRY_S = 1.0


class StatusClock:
    """Created and converged times per Service: perf_counter, and wall clock at creation."""

    def __init__(
        self,
        emulators: Mapping[str, KubeEmulator],
        *,
        watched: Mapping[str, Any] | None = None,
    ) -> None:
        """``watched``: clusters without an emulator, by name, each with the
        ``kubernetes_asyncio`` ApiClient its Services are listed and watched with."""
        self.emulators = dict(emulators)
        self.watched = dict(watched or {})
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
        listed: list[asyncio.Event] = []
        for cluster, api in self.watched.items():
            listed.append(asyncio.Event())
            self._tasks.append(asyncio.create_task(self._watch_api(cluster, api, listed[-1])))
        # Each real cluster's first list, so that a Service created from now on is seen
        # by its watch (a cluster that does not answer is still retried meanwhile).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10.0):
                for event in listed:
                    await event.wait()
        await asyncio.sleep(0)

    async def _watch(self, cluster: str, session: Any) -> None:
        async with session as w:
            async for event in w:
                self._observe(cluster, event["object"])

    def _observe(self, cluster: str, obj: dict[str, Any]) -> None:
        status = obj.get("status") or {}
        if (status.get("loadBalancer") or {}).get("ingress"):
            meta = obj.get("metadata", {})
            self._converge(ServiceRef(cluster, meta.get("namespace", ""), meta.get("name", "")))

    async def _watch_api(self, cluster: str, api: Any, listed: asyncio.Event) -> None:
        """List and watch a real cluster's Services, over and over: the time a Service is
        seen with an ingress IP is the time its status is on the object."""
        core = CoreV1Api(api)
        call = core.list_service_for_all_namespaces
        while True:
            try:
                items, rv = await list_all(call, timeout=10.0)
                for obj in items:
                    self._observe(cluster, obj)
                listed.set()
                while True:
                    events = watch_events(
                        call, resource_version=rv, timeout_seconds=WATCH_TIMEOUT_S
                    )
                    async with contextlib.aclosing(events) as stream:
                        async for event in stream:
                            obj = event.get("object") or {}
                            rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                            if event.get("type") in ("ADDED", "MODIFIED"):
                                self._observe(cluster, obj)
            except KubeError as exc:
                # (410 Gone included: the list starts over from the current state.)
                log.warning("timing Services of %s: %s; listing them again", cluster, exc)
                await asyncio.sleep(RETRY_S)

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
