"""What the parts of one term share: its memory, its locks, its reflectors, its fences.

A term is one stretch of leadership (see :mod:`vipwire.watcher.service`). It
starts empty, fills its :class:`~vipwire.watcher.core.term_memory.TermMemory`
from the replay of the bus, and only then lists and watches Kubernetes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry.context import Context

from vipwire.contracts import Message, ServiceSnapshot
from vipwire.runtime import Registry, Runtime
from vipwire.watcher.core.convergence import Convergence
from vipwire.watcher.core.term_memory import Family, TermMemory
from vipwire.watcher.core.translate import (
    Obj,
    SliceEndpoints,
    is_ours,
    metadata,
    service_snapshot,
    uid,
)
from vipwire.watcher.core.validate import invalid_note, service_problems
from vipwire.watcher.io.reflector import Reflector
from vipwire.watcher.io.work_queue import KeyedLocks, WorkQueue
from vipwire.watcher.settings import WatcherSettings

#: Create -> status: well under a second when all is well; minutes when something is stuck.
CONVERGENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Term:
    """One term's state and the helpers every part of it reads through."""

    def __init__(
        self, settings: WatcherSettings, runtime: Runtime, check_leading: Callable[[], None]
    ) -> None:
        self.settings = settings
        self.cluster = settings.cluster
        self.runtime = runtime
        self.check_leading = check_leading
        # The node agents' reports (and every member) are read for a status gate, and to
        # tell member nodes that do not hold the VIP (core.node_vips).
        self.memory = TermMemory(
            gating=settings.status_gate != "none" or settings.node_vip_grace_s > 0
        )
        self.locks = KeyedLocks()
        #: Our Services waiting for a VIP in status, and since when.
        self.convergence = Convergence()
        self.convergence_seconds = runtime.metrics.histogram(
            "watcher_convergence_seconds",
            "Seconds from a Service of ours seen without a VIP (created, or its status lost) "
            "to the status write that gives it one",
            buckets=CONVERGENCE_BUCKETS,
        )
        #: Both replays that start the term are over.
        self.caught_up = False
        #: The replay of our own families still reads (our messages still come back).
        self.replaying = True
        self.services: Reflector[Obj] | None = None
        self.slices: Reflector[SliceEndpoints] | None = None
        self.nodes: Reflector[Obj] | None = None
        #: The reflectors exist (they are made once the replay is over).
        self.reflectors_made = asyncio.Event()
        #: The work queues the reflectors feed (set when they start).
        self.queues: tuple[WorkQueue, ...] = ()

    # --- the reflectors ---------------------------------------------------------------

    @property
    def reflectors(self) -> list[Reflector[Any]]:
        """The reflectors, once started (empty until the replay is over)."""
        found = (self.services, self.slices, self.nodes)
        return [r for r in found if r is not None]

    def settled_through(self, resource_version: int) -> bool:
        """Whether every Kubernetes change up to ``resource_version`` has been handled.

        A fence for tests that assert something did not happen: each reflector has
        seen that version (a bookmark brings it to a watch with no change of its own)
        and no work queue holds a key or a retry.
        """
        reflectors = self.reflectors
        return (
            bool(reflectors)
            and all(r.resource_version >= resource_version for r in reflectors)
            and all(q.idle for q in self.queues)
        )

    def service_store(self) -> Mapping[str, Obj]:
        """The Services as the API has them (empty before they are watched)."""
        return self.services.store if self.services is not None else {}

    def node_store(self) -> Mapping[str, Obj]:
        return self.nodes.store if self.nodes is not None else {}

    def absent(self, family: Family, key: str) -> bool:
        """Whether the object is listed as gone from the cluster (False before a list)."""
        reflector = self.services if family == "service" else self.nodes
        return reflector is not None and reflector.synced.is_set() and key not in reflector.store

    # --- our own messages -------------------------------------------------------------

    async def publish(self, message: Message, msg_id: str) -> int:
        """Publish one of our snapshots (only the leader does)."""
        self.check_leading()
        return await self.runtime.bus.publish(message, msg_id=msg_id)

    def ended_by_us(self, family: Family, key: str, seq: int) -> None:
        """An end we published is final at once when our own messages no longer come
        back to us (nothing older of its subject can come to bring the entry back)."""
        if self.replaying or not self.caught_up:
            return  # it comes back: forgotten then, see BusReader
        absent = self.absent(family, key)
        memory = self.memory
        memory.forget_tombstone(family, key, seq, recorded=True, absent=absent, caught_up=True)
        if family == "service":
            memory.forget_service(key, absent=absent)

    # --- a Service, judged with the settings ------------------------------------------

    def snapshot(self, key: str, service: Obj) -> ServiceSnapshot | None:
        s = self.settings
        return service_snapshot(
            service,
            cluster=self.cluster,
            load_balancer_class=s.load_balancer_class,
            was_ours=self.memory.was_ours(key, uid(service)),
            classless=s.serve_classless,
        )

    def is_ours(self, service: Obj) -> bool:
        s = self.settings
        return is_ours(service, s.load_balancer_class, classless=s.serve_classless)

    def problems(self, service: Obj) -> tuple[str, ...]:
        return service_problems(service, protocols=self.settings.protocols)

    def problems_note(self, key: str, service: Obj, snapshot: ServiceSnapshot | None) -> str | None:
        if snapshot is None or snapshot.deleting:
            return None
        problems = self.problems(service)
        if not problems:
            return None
        return invalid_note(problems, served=self.memory.serves(key, uid(service)))

    def too_large_note(
        self, key: str, service: Obj, snapshot: ServiceSnapshot | None
    ) -> str | None:
        """Why the bus refused this Service's snapshot as too large (None: it did not)."""
        refused = self.memory.too_large.get(key)
        if snapshot is None or snapshot.deleting or refused is None:
            return None
        return refused[2] if refused[0] == uid(service) else None

    # --- tracing ----------------------------------------------------------------------

    def span_attributes(self, service: Obj) -> dict[str, str]:
        meta = metadata(service)
        return self.ref_attributes(str(meta.get("namespace") or ""), str(meta.get("name") or ""))

    def ref_attributes(self, namespace: str, name: str) -> dict[str, str]:
        return {
            "vipwire.cluster": self.cluster,
            "k8s.namespace.name": namespace,
            "k8s.service.name": name,
        }

    def root_span(self, attributes: dict[str, str]) -> AbstractContextManager[Any]:
        """A new trace: a change of a Service starts one."""
        return self.runtime.tracer.start_as_current_span(
            "reconcile service", context=Context(), attributes=attributes
        )


def convergence_gauges(metrics: Registry, current: Callable[[], Convergence | None]) -> None:
    """How many of our Services wait for a VIP, and the longest wait, read at each scrape
    from ``current()`` (None on a standby: it waits for nothing)."""
    waiting = metrics.gauge(
        "watcher_unconverged_services",
        "Services of ours without a VIP in status yet (the leader's count; 0 on a standby)",
    )
    oldest = metrics.gauge(
        "watcher_oldest_unconverged_seconds",
        "Seconds the longest-waiting Service of ours has been without a VIP in status "
        "(0: none waits; the leader's view)",
    )

    def collect() -> None:
        convergence = current()
        waiting.set(float(convergence.waiting) if convergence is not None else 0.0)
        oldest.set(convergence.oldest_s(time.monotonic()) if convergence is not None else 0.0)

    metrics.on_collect(collect)
