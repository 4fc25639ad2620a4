"""The watcher's wiring: Kubernetes in, snapshots out; bus in, status and Events out.

Only the leader writes (one replica of several, elected on a Lease). Its
term runs three reflectors (Services, EndpointSlices, Nodes) that feed work
queues, whose workers turn the API's state into snapshots on the bus
(:mod:`.io.publishing`); and one consumer of the cluster's vip, lb (and, with
a status gate, applied) subjects that turns what ipam, lbdriver and the node
agents said into status writes, finalizer removal and Events
(:mod:`.io.bus_reader`, :mod:`.io.status_writes`, :mod:`.io.event_recorder`).
All decisions live in :mod:`.core`.

A term starts by replaying the last message of every subject of the cluster
(``deliver=last_per_subject``), our own snapshots included: that is how a new
leader (or a restarted one) knows what was published before, so it neither
republishes unchanged snapshots nor forgets a Service or Node that vanished
meanwhile, and what the rest of the system said. Our own families are read by
a consumer of their own, stopped once caught up: afterwards we know what we
publish as we publish it (:mod:`.core.term_memory`). Only then are the
reflectors started.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from kubernetes_asyncio.client import ApiClient

from vipwire.aio import cancel_and_wait
from vipwire.kube import (
    LeaderElector,
    instrument,
    new_api_client,
    request_histogram,
)
from vipwire.runtime import Runtime
from vipwire.watcher.io.bus_reader import BusReader, open_consumers
from vipwire.watcher.io.event_recorder import EventRecorder
from vipwire.watcher.io.kube_writes import KubeWrites, NotLeader, lease_namespace
from vipwire.watcher.io.publishing import Publisher, watch_cluster
from vipwire.watcher.io.status_writes import StatusWriter
from vipwire.watcher.io.term import Term, convergence_gauges
from vipwire.watcher.settings import WatcherSettings

log = logging.getLogger("vipwire.watcher")

ApiClientFactory = Callable[[], Awaitable[ApiClient]]


class _Consumer(Protocol):
    async def start(self) -> None: ...

    async def caught_up(self, timeout: float | None = None) -> None: ...

    async def stop(self) -> None: ...


class WatcherService:
    """One cluster's watcher. ``start()``, ``stop()``, ``readiness()`` as every service.

    The API client comes from ``settings.kubeconfig``/``settings.context`` (or
    the in-cluster service account) unless ``api_client_factory`` is given:
    an async callable returning a kubernetes_asyncio ``ApiClient``, which the
    watcher owns and closes on ``stop()``.
    """

    def __init__(
        self,
        settings: WatcherSettings,
        runtime: Runtime,
        api_client_factory: ApiClientFactory | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self._factory = api_client_factory or (
            lambda: new_api_client(settings.kubeconfig, settings.context)
        )
        self._cluster = settings.cluster
        self._instance = settings.instance or socket.gethostname()
        self._api: ApiClient | None = None
        self._elector: LeaderElector | None = None
        self._main: asyncio.Task[None] | None = None
        self._ending: asyncio.Future[None] | None = None
        self._started = False
        self._stopping = False
        self._reset()
        m = runtime.metrics
        self._m_restarts = m.counter(
            "watcher_watch_restarts_total",
            "Watches restarted, by resource and reason",
            ["resource", "reason"],
        )
        self._m_writes = m.counter(
            "watcher_api_writes_total",
            "Writes to the Kubernetes API, by kind and outcome",
            ["kind", "outcome"],
        )
        self._m_leader = m.gauge("watcher_leader", "1 while this replica is the leader")
        self._m_terms = m.counter("watcher_leader_terms_total", "Terms this replica led")
        self._m_requests = request_histogram(m)
        convergence_gauges(m, lambda: self._term.convergence if self.leading else None)

    def _reset(self) -> None:
        """Forget everything a term learnt: the next one rebuilds it from the bus."""
        self._consumer: _Consumer | None = None
        # Our own families, read at the start of a term (None once caught up).
        self._replay: _Consumer | None = None
        self._reader: BusReader | None = None
        self._term = Term(self.settings, self.runtime, self._check_leading)

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._api = await self._factory()
        instrument(self._api, self._m_requests)
        self._kube = KubeWrites(
            self._api,
            request_timeout_s=self.settings.request_timeout_s,
            check_leading=self._check_leading,
            writes=self._m_writes,
        )
        s = self.settings
        if s.leader_election:
            identity = f"{self._instance}_{uuid.uuid4().hex[:8]}"
            namespace = lease_namespace(s)
            self._elector = LeaderElector(
                self._api,
                name=s.lease,
                namespace=namespace,
                identity=identity,
                lease_duration_s=s.lease_duration_s,
                renew_deadline_s=s.renew_deadline_s,
                retry_period_s=s.retry_period_s,
                request_timeout=s.request_timeout_s,
                release_on_stop=s.lease_release_on_stop,
                on_change=self._on_leadership,
            )
            self._elector.start()
        self._started = True
        self._stopping = False
        self._main = asyncio.create_task(self._run(), name="watcher-main")

    def permission_problem(self) -> str | None:
        """A permission the API server refuses the watcher (a 403), in RBAC's terms, or
        None. Nothing is served while it lasts: ``vipwire up`` gives up on it."""
        elector = self._elector
        missing = elector.forbidden if elector is not None else None
        if missing is None and self._started:
            missing = self._kube.refusals.first()
        return f"forbidden: cannot {missing}" if missing is not None else None

    def _on_leadership(self, leading: bool) -> None:
        self._m_leader.set(1.0 if leading else 0.0)
        if leading:
            self._m_terms.inc()

    async def stop(self) -> None:
        # Stop renewing (which fences every write at once), let the term end, and only
        # then give the Lease up: a standby may start the moment it is free.
        self._stopping = True
        elector = self._elector
        if elector is not None:
            await elector.stop(release=False)
        main, self._main = self._main, None
        if main is not None:
            await cancel_and_wait([main])
        ending, self._ending = self._ending, None
        if ending is not None:
            await ending
        if elector is not None:
            await elector.stop(release=False)  # in case a failed term restarted it meanwhile
            if elector.release_on_stop:
                await elector.release()
        self._elector = None
        if self._api is not None:
            await self._api.close()
            self._api = None
        self._started = False

    async def _run(self) -> None:
        elector = self._elector
        delay = self.settings.backoff_initial_s
        while True:
            if elector is not None:
                await elector.wait_leading()
            try:
                await self._lead_term()
            except Exception:
                # A term that cannot run (the bus unreachable, say) must not leave a
                # leader that does nothing: give the Lease up, a healthier replica may
                # lead, and campaign again after a while.
                log.exception(
                    "cluster %s: the term failed; retrying in %.1fs", self._cluster, delay
                )
                if elector is not None:
                    await elector.stop(release=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.backoff_max_s)
                if elector is not None and not self._stopping:
                    elector.start()
                continue
            if elector is None:
                return
            delay = self.settings.backoff_initial_s

    async def _lead_term(self) -> None:
        """Lead until the Lease is lost (without election: until stopped)."""
        self._reset()
        term = self._term
        recorder = EventRecorder(
            self._kube, instance=self._instance, conflict_retries=self.settings.conflict_retries
        )
        writer = StatusWriter(term, self._kube, recorder)
        reader = self._reader = BusReader(term, writer, recorder)
        c = self._cluster
        consumer, replay = open_consumers(self.runtime.bus, reader, c)
        self._consumer, self._replay = consumer, replay
        tasks: list[asyncio.Task[None]] = []
        try:
            await replay.start()
            await consumer.start()
            log.info("cluster %s: leading; replaying the bus", c)
            try:
                async with asyncio.timeout(self.settings.catch_up_timeout_s):
                    await self._catch_up()
            except TimeoutError:
                log.warning(
                    "bus replay not finished after %.0fs; watching Kubernetes anyway",
                    self.settings.catch_up_timeout_s,
                )
                tasks.append(asyncio.create_task(self._catch_up(), name="watcher-catchup"))
            tasks += self._start_reflectors(writer, recorder)
            # Member nodes without the VIP are judged again when their grace ends.
            tasks.append(asyncio.create_task(writer.run_rechecks(), name="watcher-node-vips"))
            if self._elector is not None:
                await self._elector.wait_not_leading()
                log.warning("cluster %s: no longer the leader; standing by", c)
            else:
                await asyncio.Event().wait()
        finally:
            # Shielded: stop() cancels us, and the cleanup must run to its end anyway
            # (stop() waits for it before it gives the Lease up).
            self._ending = asyncio.ensure_future(self._end_term(tasks, consumer, reader))
            await asyncio.shield(self._ending)

    async def _catch_up(self) -> None:
        """Wait for both replays; then stop reading our own families.

        Until then (a replay that outlasts ``catch_up_timeout_s`` goes on while we
        publish) our own messages come back to us, and an end we publish is
        forgotten only once it has (see :meth:`TermMemory.forget_tombstone
        <vipwire.watcher.core.term_memory.TermMemory.forget_tombstone>`).
        """
        assert self._consumer is not None and self._replay is not None
        term = self._term
        await self._consumer.caught_up()
        await self._replay.caught_up()
        term.caught_up = True
        await self._replay.stop()  # what it still hands over is handled as before
        self._replay = None
        term.replaying = False

    async def _end_term(
        self, tasks: list[asyncio.Task[None]], consumer: _Consumer, reader: BusReader
    ) -> None:
        await cancel_and_wait(tasks)
        replay, self._replay = self._replay, None
        self._term.replaying = False
        if replay is not None:
            await replay.stop()
        await consumer.stop()
        self._consumer = None
        self._reader = None
        await reader.stop()

    def _start_reflectors(
        self, writer: StatusWriter, recorder: EventRecorder
    ) -> list[asyncio.Task[None]]:
        s, term, kube = self.settings, self._term, self._kube
        publisher = Publisher(
            term,
            writer,
            recorder,
            workers=s.workers,
            backoff_initial_s=s.backoff_initial_s,
            backoff_max_s=s.backoff_max_s,
            bus_backoff_max_s=s.bus_backoff_max_s,
            metrics=self.runtime.metrics,
        )
        term.queues = publisher.queues
        watch_cluster(term, kube, publisher, restarts=self._m_restarts)
        runs = [r.run() for r in term.reflectors] + [q.run() for q in publisher.queues]
        return [asyncio.create_task(coro, name="watcher-term") for coro in runs]

    def settled_through(self, resource_version: int) -> bool:
        """Every Kubernetes change up to ``resource_version`` handled: a fence for tests."""
        return self._term.settled_through(resource_version)

    def reports_handled(self) -> Mapping[str, int]:
        """By subject, the newest node agent's report this term finished with (they
        make no span): a fence for tests. Empty outside a term."""
        reader = self._reader
        return {} if reader is None else reader.reports_handled

    @property
    def leading(self) -> bool:
        """Whether this replica is the one that writes."""
        return self._started and (self._elector is None or self._elector.is_leader)

    def readiness(self) -> str | None:
        if not self._started:
            return "not started"
        forbidden = self.permission_problem()
        if forbidden is not None:
            return forbidden
        elector = self._elector
        if elector is not None and not elector.is_leader:
            # A standby is ready: ready to take over.
            return None if elector.attempted else "electing a leader"
        if self._consumer is None:
            return "starting a term"
        term = self._term
        if not term.caught_up:
            return "replaying the bus"
        reflectors = term.reflectors
        pending = [r.name for r in reflectors if not r.synced.is_set()]
        if not reflectors or pending:
            return f"listing {', '.join(pending) or 'Kubernetes'}"
        return None

    def _check_leading(self) -> None:
        if self._elector is not None and not self._elector.is_leader:
            raise NotLeader("not the leader")
