"""The watcher's shell: Kubernetes in, snapshots out; bus in, status and Events out.

Only the leader writes (one replica of several, elected on a Lease). Its
term runs three reflectors (Services, EndpointSlices, Nodes) that feed work
queues, whose workers turn the API's state into snapshots on the bus; and
one consumer of the cluster's vip, lb (and, with a status gate, applied)
subjects that turns what ipam, lbdriver and the node agents said into status
writes, finalizer removal and Events. All decisions live in :mod:`translate`,
:mod:`validate` and :mod:`status`.

A term starts by replaying the last message of every subject of the cluster
(``deliver=last_per_subject``), our own snapshots included: that is how a new
leader (or a restarted one) knows what was published before, so it neither
republishes unchanged snapshots nor forgets a Service or Node that vanished
meanwhile, and what the rest of the system said. Our own families are read by
a consumer of their own, stopped once caught up: afterwards we know what we
publish as we publish it. Only then are the reflectors started. Message ids
name the object and its resourceVersion, so two replicas publishing for the
same change publish the same id.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Generic, Protocol, TypeVar

import msgspec
from kubernetes_asyncio.client import ApiClient, CoreV1Api, DiscoveryV1Api, EventsV1Api
from opentelemetry.context import Context

from vipwire.aio import cancel_and_wait
from vipwire.bus import DONE, BusError, ConsumerSpec, Delivery, Retry, Verdict
from vipwire.contracts import (
    EndpointsSnapshot,
    LbFailed,
    LbMessage,
    LbProgrammed,
    LbRemoved,
    Message,
    NodeApplied,
    NodeGone,
    NodeSnapshot,
    ServiceGone,
    ServiceSnapshot,
    StatusWritten,
    VipAssigned,
    VipFailed,
    VipMessage,
    VipReleased,
    VipReleasing,
    family_filter,
)
from vipwire.kube import (
    MERGE_PATCH,
    KubeApiError,
    KubeError,
    LeaderElector,
    in_cluster_namespace,
    micro_time,
    new_api_client,
    request_json,
)
from vipwire.runtime import Runtime
from vipwire.telemetry import trace_id_of_current_span
from vipwire.watcher import status as st
from vipwire.watcher import translate as tr
from vipwire.watcher._packed import PackedDict
from vipwire.watcher._queue import Drop, KeyedLocks, WorkQueue
from vipwire.watcher._reflector import Reflector
from vipwire.watcher.settings import WatcherSettings
from vipwire.watcher.translate import Obj
from vipwire.watcher.validate import invalid_note, service_problems

log = logging.getLogger("vipwire.watcher")

ApiClientFactory = Callable[[], Awaitable[ApiClient]]

M = TypeVar("M", bound=Message)

#: Events of bus messages older than this are not emitted when replayed: the API
#: server has expired the Events they made (default TTL one hour), and emitting
#: them again would present old news as new.
_EVENT_HORIZON = 3600.0


class NotLeader(Exception):
    """This replica does not hold the Lease (any more): it must not write."""


class _Published(msgspec.Struct, Generic[M], kw_only=True):
    """The last message on one of our Node subjects."""

    message: M
    seq: int


class _ServiceRecord(msgspec.Struct, kw_only=True, gc=False):
    """What we keep of the last message on a Service's subject (one per Service, so
    not the snapshot itself): whose Service it was, and enough to tell whether a
    new snapshot says anything new."""

    seq: int
    uid: str
    #: :func:`~vipwire.watcher.translate.service_fingerprint` of a ServiceSnapshot;
    #: None: the subject ended with a ServiceGone.
    fingerprint: bytes | None
    deleting: bool = False
    #: Sequence of the last snapshot that was not ``deleting``.
    live_seq: int = 0

    @property
    def live(self) -> bool:
        """A snapshot of a Service we serve (not ending, not gone)."""
        return self.fingerprint is not None and not self.deleting


class _DeferredEvent(msgspec.Struct, kw_only=True):
    """An Event called for by a message that arrived before its Service was known."""

    spec: st.EventSpec
    uid: str
    cause: str
    trace_id: str | None
    #: Called for by the replay at the start of a term (not a live message).
    replayed: bool = False


class _Consumer(Protocol):
    async def start(self) -> None: ...

    async def caught_up(self, timeout: float | None = None) -> None: ...

    async def stop(self) -> None: ...


def _refused(exc: KubeApiError) -> bool:
    """The server judged the request itself wrong: sending it again cannot succeed."""
    return exc.status in (400, 422)


def _fingerprint(message: Message) -> bytes:
    """16 bytes that tell two messages apart (their encoding is canonical)."""
    return hashlib.blake2b(msgspec.json.encode(message), digest_size=16).digest()


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


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

    def _reset(self) -> None:
        """Forget everything a term learnt: the next one rebuilds it from the bus."""
        self._consumer: _Consumer | None = None
        # Our own families, read at the start of a term (None once caught up).
        self._replay: _Consumer | None = None
        self._caught_up = False
        self._reflectors: list[Reflector[Any]] = []
        # What we (or a predecessor) last published, per subject key.
        self._services: dict[str, _ServiceRecord] = {}
        # Of endpoints only equality is asked: (sequence, fingerprint) instead of the snapshot.
        self._endpoints: dict[str, tuple[int, bytes]] = {}
        self._nodes: dict[str, _Published[NodeSnapshot | NodeGone]] = {}
        # What the rest of the system said.
        self._views: PackedDict[st.BusView] = PackedDict(st.BusView)
        self._applied: dict[str, frozenset[str]] = {}
        self._applied_seq: dict[str, int] = {}
        # With a status gate: the member nodes of each Service's LbProgrammed, so that a
        # node's report finds the Services it may open without decoding every view.
        self._gated: dict[str, frozenset[str]] = {}
        self._locks = KeyedLocks()
        # Service -> its EndpointSlices (a tuple: nearly always one).
        self._slice_index: dict[str, tuple[str, ...]] = {}
        # Services found invalid: key -> (uid, problems) last reported.
        self._invalid: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._deferred: dict[str, _DeferredEvent] = {}
        # (table, key) -> sequence of the end message after which an entry was dropped.
        self._ended: dict[tuple[int, str], int] = {}

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._api = await self._factory()
        self._core = CoreV1Api(self._api)
        self._discovery = DiscoveryV1Api(self._api)
        self._events_api = EventsV1Api(self._api)
        s = self.settings
        if s.leader_election:
            identity = f"{self._instance}_{uuid.uuid4().hex[:8]}"
            self._elector = LeaderElector(
                self._api,
                name=s.lease,
                namespace=s.lease_namespace or in_cluster_namespace(),
                identity=identity,
                lease_duration_s=s.lease_duration_s,
                renew_deadline_s=s.renew_deadline_s,
                retry_period_s=s.retry_period_s,
                request_timeout=s.request_timeout,
                release_on_stop=s.lease_release_on_stop,
                on_change=self._on_leadership,
            )
            self._elector.start()
        self._started = True
        self._stopping = False
        self._main = asyncio.create_task(self._run(), name="watcher-main")

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
        delay = self.settings.backoff_initial
        while True:
            if elector is not None:
                await elector.wait_leading()
            try:
                await self._term()
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
                delay = min(delay * 2, self.settings.backoff_max)
                if elector is not None and not self._stopping:
                    elector.start()
                continue
            if elector is None:
                return
            delay = self.settings.backoff_initial

    async def _term(self) -> None:
        """Lead until the Lease is lost (without election: until stopped)."""
        self._reset()
        c = self._cluster
        # What the rest of the system says, for the whole term.
        theirs: tuple[str, ...] = (family_filter("vip", c), family_filter("lb", c))
        if self.settings.status_gate != "none":
            # Only a gate reads what the node agents applied: without one, their reports
            # (one per node and change, each listing every VIP of the node) are not worth
            # a delivery.
            theirs += (family_filter("applied", c),)
        # What we (or a predecessor) published: read to start from, then no more. Our
        # own messages coming back would be half of every Service's deliveries.
        ours = (
            family_filter("service", c),
            family_filter("endpoints", c),
            family_filter("node", c),
        )
        # Every table below keeps the sequence of what it holds and ignores anything
        # older: the bus need not keep a sequence per subject as well.
        bus = self.runtime.bus
        consumer = bus.consumer(
            ConsumerSpec(filters=theirs, deliver="last_per_subject", supersede=False),
            self._on_delivery,
        )
        replay = bus.consumer(
            ConsumerSpec(filters=ours, deliver="last_per_subject", supersede=False, traced=False),
            self._on_delivery,
        )
        self._consumer, self._replay = consumer, replay
        tasks: list[asyncio.Task[None]] = []
        try:
            await replay.start()
            await consumer.start()
            log.info("cluster %s: leading; replaying the bus", c)
            try:
                async with asyncio.timeout(self.settings.catch_up_timeout):
                    await self._catch_up()
            except TimeoutError:
                log.warning(
                    "bus replay not finished after %.0fs; watching Kubernetes anyway",
                    self.settings.catch_up_timeout,
                )
                tasks.append(asyncio.create_task(self._catch_up(), name="watcher-catchup"))
            tasks += self._start_reflectors()
            if self._elector is not None:
                await self._elector.wait_not_leading()
                log.warning("cluster %s: no longer the leader; standing by", c)
            else:
                await asyncio.Event().wait()
        finally:
            # Shielded: stop() cancels us, and the cleanup must run to its end anyway
            # (stop() waits for it before it gives the Lease up).
            self._ending = asyncio.ensure_future(self._end_term(tasks, consumer))
            await asyncio.shield(self._ending)

    async def _catch_up(self) -> None:
        """Wait for both replays; then stop reading our own families.

        Until then (a replay that outlasts ``catch_up_timeout`` goes on while we
        publish) our own messages come back to us, and an end we publish is
        forgotten only once it has (see :meth:`_forget_tombstone`).
        """
        assert self._consumer is not None and self._replay is not None
        await self._consumer.caught_up()
        await self._replay.caught_up()
        self._caught_up = True
        await self._replay.stop()  # what it still hands over is handled as before
        self._replay = None

    async def _end_term(self, tasks: list[asyncio.Task[None]], consumer: _Consumer) -> None:
        await cancel_and_wait(tasks)
        replay, self._replay = self._replay, None
        if replay is not None:
            await replay.stop()
        await consumer.stop()
        self._consumer = None

    def _start_reflectors(self) -> list[asyncio.Task[None]]:
        s = self.settings
        queue_args: dict[str, Any] = {
            "workers": s.workers,
            "backoff_initial": s.backoff_initial,
            "backoff_max": s.backoff_max,
            "metrics": self.runtime.metrics,
        }
        self._svc_queue = WorkQueue("services", self._sync_service, **queue_args)
        self._eps_queue = WorkQueue("endpoints", self._sync_endpoints, **queue_args)
        self._node_queue = WorkQueue("nodes", self._sync_node, **queue_args)
        self._svc_reflector = Reflector(
            "services",
            self._core.list_service_for_all_namespaces,
            _ServiceListener(self),
            s,
            restarts=self._m_restarts,
            keep=tr.slim_service,
            store=lambda: PackedDict[Obj](Obj),
        )
        self._slice_reflector = Reflector(
            "endpointslices",
            self._discovery.list_endpoint_slice_for_all_namespaces,
            _SliceListener(self),
            s,
            restarts=self._m_restarts,
            list_kwargs={"label_selector": tr.SERVICE_NAME_LABEL},
            keep=tr.slice_endpoints,
            store=lambda: PackedDict[tr.SliceEndpoints](tr.SliceEndpoints),
        )
        self._node_reflector = Reflector(
            "nodes",
            self._core.list_node,
            _NodeListener(self),
            s,
            restarts=self._m_restarts,
            keep=tr.slim_node,
            store=lambda: PackedDict[Obj](Obj),
        )
        self._reflectors = [self._svc_reflector, self._slice_reflector, self._node_reflector]
        runs: list[Coroutine[Any, Any, None]] = [r.run() for r in self._reflectors]
        runs += [q.run() for q in (self._svc_queue, self._eps_queue, self._node_queue)]
        return [asyncio.create_task(coro, name="watcher-term") for coro in runs]

    def settled_through(self, resource_version: int) -> bool:
        """Whether every Kubernetes change up to ``resource_version`` has been handled.

        A fence for tests that assert something did not happen: each reflector has
        seen that version (a bookmark brings it to a watch with no change of its own)
        and no work queue holds a key or a retry.
        """
        if not self._reflectors:
            return False
        queues = (self._svc_queue, self._eps_queue, self._node_queue)
        return all(r.resource_version >= resource_version for r in self._reflectors) and all(
            q.idle for q in queues
        )

    @property
    def leading(self) -> bool:
        """Whether this replica is the one that writes."""
        return self._started and (self._elector is None or self._elector.is_leader)

    def readiness(self) -> str | None:
        if not self._started:
            return "not started"
        elector = self._elector
        if elector is not None and not elector.is_leader:
            # A standby is ready: ready to take over.
            return None if elector.attempted else "electing a leader"
        if self._consumer is None:
            return "starting a term"
        if not self._caught_up:
            return "replaying the bus"
        pending = [r.name for r in self._reflectors if not r.synced.is_set()]
        if not self._reflectors or pending:
            return f"listing {', '.join(pending) or 'Kubernetes'}"
        return None

    # --- shared helpers --------------------------------------------------------------

    def _check_leading(self) -> None:
        if self._elector is not None and not self._elector.is_leader:
            raise NotLeader("not the leader")

    def _newer(
        self, table: Mapping[str, _ServiceRecord | _Published[Any]], key: str, seq: int
    ) -> bool:
        """Whether a message at ``seq`` on one of our subjects is newer than what we know
        (and its subject did not end after it, see :meth:`_forget_tombstone`)."""
        ended = self._ended.pop((id(table), key), None)
        if ended is not None and seq <= ended:
            return False
        current = table.get(key)
        return current is None or seq > current.seq

    def _remember_node(self, key: str, message: NodeSnapshot | NodeGone, seq: int) -> None:
        if self._newer(self._nodes, key, seq):
            self._nodes[key] = _Published(message=message, seq=seq)

    def _remember_service(self, key: str, message: ServiceSnapshot | ServiceGone, seq: int) -> None:
        if not self._newer(self._services, key, seq):
            return
        current = self._services.get(key)
        live_seq = current.live_seq if current is not None else 0
        if isinstance(message, ServiceGone):
            record = _ServiceRecord(seq=seq, uid=message.uid, fingerprint=None, live_seq=live_seq)
        else:
            record = _ServiceRecord(
                seq=seq,
                uid=message.uid,
                fingerprint=tr.service_fingerprint(message),
                deleting=message.deleting,
                live_seq=live_seq if message.deleting else seq,
            )
        self._services[key] = record

    async def _publish(self, message: Message, msg_id: str) -> int:
        self._check_leading()
        return await self.runtime.bus.publish(message, msg_id=msg_id)

    async def _write(self, kind: str, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One write to the API, fenced on leadership and counted."""
        self._check_leading()
        try:
            result = await request_json(
                call, *args, timeout=self.settings.request_timeout, **kwargs
            )
        except KubeApiError as exc:
            outcome = "conflict" if exc.conflict else "error"
            self._m_writes.inc(kind=kind, outcome=outcome)
            raise
        self._m_writes.inc(kind=kind, outcome="ok")
        return result

    async def _read_service(self, name: str, namespace: str) -> Obj | None:
        try:
            return await request_json(
                self._core.read_namespaced_service,
                name,
                namespace,
                timeout=self.settings.request_timeout,
            )
        except KubeApiError as exc:
            if exc.not_found:
                return None
            raise

    def _serves(self, key: str, service_uid: str) -> bool:
        """Whether the last snapshot we published of ``key`` is live, of ``service_uid``."""
        record = self._services.get(key)
        return record is not None and record.live and record.uid == service_uid

    def _snapshot_of(self, key: str) -> _ServiceRecord | None:
        """What we know of the last ServiceSnapshot of ``key`` (None: gone or never)."""
        record = self._services.get(key)
        return record if record is not None and record.fingerprint is not None else None

    def _was_ours(self, key: str, obj: Obj) -> bool:
        record = self._snapshot_of(key)
        return record is not None and record.uid == tr.uid(obj)

    def _snapshot(self, key: str, service: Obj) -> ServiceSnapshot | None:
        return tr.service_snapshot(
            service,
            cluster=self._cluster,
            load_balancer_class=self.settings.load_balancer_class,
            was_ours=self._was_ours(key, service),
            classless=self.settings.serve_classless,
        )

    def _is_ours(self, service: Obj) -> bool:
        return tr.is_ours(
            service, self.settings.load_balancer_class, classless=self.settings.serve_classless
        )

    def _problems(self, service: Obj) -> tuple[str, ...]:
        return service_problems(service, protocols=self.settings.protocols)

    def _problems_note(
        self, key: str, service: Obj, snapshot: ServiceSnapshot | None
    ) -> str | None:
        if snapshot is None or snapshot.deleting:
            return None
        problems = self._problems(service)
        if not problems:
            return None
        return invalid_note(problems, served=self._serves(key, tr.uid(service)))

    def _span_attributes(self, service: Obj) -> dict[str, str]:
        meta = tr.metadata(service)
        return {
            "vipwire.cluster": self._cluster,
            "k8s.namespace.name": str(meta.get("namespace") or ""),
            "k8s.service.name": str(meta.get("name") or ""),
        }

    def _root_span(self, service: Obj) -> Any:
        """A new trace: a change of a Service starts one."""
        return self.runtime.tracer.start_as_current_span(
            "reconcile service", context=Context(), attributes=self._span_attributes(service)
        )

    # --- Services -> bus -------------------------------------------------------------

    def _service_changed(self, key: str, obj: Obj | None, rv: str) -> None:
        if obj is not None and not (
            key in self._services
            or self._is_ours(obj)
            or tr.marked_by(obj, self._cluster)
            or st.current_condition(obj) is not None
        ):
            return  # the common case: somebody else's Service
        if obj is None and key not in self._services:
            return
        self._svc_queue.add(key, rv)

    def _services_listed(self, objects: Mapping[str, Obj], rv: str) -> None:
        for key in set(objects) | set(self._services):
            self._service_changed(key, objects.get(key), f"list-{rv}")
        for key in list(self._views):
            self._maybe_forget(key)

    async def _sync_service(self, key: str, trigger: str) -> None:
        try:
            async with self._locks.hold(key):
                await self._sync_service_locked(key)
        except NotLeader as exc:
            raise Drop() from exc
        except KubeApiError as exc:
            if not _refused(exc):
                raise
            log.error("service %s: the API refused our write: %s", key, exc)
            raise Drop() from exc

    async def _sync_service_locked(self, key: str) -> None:
        service = self._svc_reflector.store.get(key)
        previous = self._snapshot_of(key)
        await self._emit_deferred(key, service)
        if service is None:
            self._invalid.pop(key, None)
            if previous is not None:
                await self._publish_gone(key, previous.uid)
            return
        if previous is not None and previous.uid != tr.uid(service):
            # Deleted and recreated under the same name while we were not looking.
            with self._root_span(service):
                await self._publish_gone(key, previous.uid, new_trace=False)
            previous = None
        snapshot = self._snapshot(key, service)
        if snapshot is None:
            await self._not_ours(key, service, previous)
            return
        if not snapshot.deleting:
            problems = self._problems(service)
            if problems:
                await self._report_invalid(key, service, problems)
                await self._reconcile_locked(key, service)
                return
            self._invalid.pop(key, None)
        elif previous is None and not tr.has_finalizer(service):
            return  # going away before we ever served it: nothing to clean up
        needs_mark = not snapshot.deleting and not tr.marked_by(service, self._cluster)
        unchanged = self._published_alike(key, snapshot)
        if not (unchanged and not needs_mark):
            with self._root_span(service):
                if needs_mark:
                    # The change's trace goes on with the finalizer: the status write that
                    # ends the trace then finds it recorded and needs no write of its own.
                    fresh = await self._write_finalizer(
                        service, present=True, trace_id=trace_id_of_current_span()
                    )
                    if fresh is None:
                        return
                    service = fresh
                    refreshed = self._snapshot(key, service)
                    if refreshed is None:
                        return
                    snapshot = refreshed
                if not self._published_alike(key, snapshot):
                    msg_id = f"{self._cluster}/{snapshot.uid}/{snapshot.resource_version}/service"
                    seq = await self._publish(snapshot, msg_id)
                    self._remember_service(key, snapshot, seq)
                await self._publish_endpoints(key, f"service-{snapshot.resource_version}")
        await self._reconcile_locked(key, service)

    def _published_alike(self, key: str, snapshot: ServiceSnapshot) -> bool:
        """Whether the last snapshot of ``key`` said what ``snapshot`` says."""
        record = self._snapshot_of(key)
        return record is not None and record.fingerprint == tr.service_fingerprint(snapshot)

    async def _not_ours(self, key: str, service: Obj, previous: _ServiceRecord | None) -> None:
        """A Service that is not (or no longer) ours: let go of whatever we left on it."""
        self._invalid.pop(key, None)
        if previous is not None:
            # It was ours and our finalizer is already off: it is gone for us.
            with self._root_span(service):
                await self._publish_gone(key, previous.uid, new_trace=False)
        elif tr.marked_by(service, self._cluster) and not self._is_ours(service):
            if not self._caught_up:
                raise RuntimeError("bus replay unfinished: cannot tell what was published")
            # Our finalizer went on but no snapshot was ever published (we stopped in
            # between) and then it changed away: nothing was allocated, let it go.
            with self._root_span(service):
                fresh = await self._write_finalizer(
                    service, present=False, trace_id=trace_id_of_current_span()
                )
            service = fresh or service
        patch = st.leftover_patch(service, now=micro_time())
        if patch is not None:
            meta = tr.metadata(service)
            try:
                await self._write(
                    "status",
                    self._core.patch_namespaced_service_status,
                    str(meta.get("name")),
                    str(meta.get("namespace")),
                    patch,
                    _content_type=MERGE_PATCH,
                )
            except KubeApiError as exc:
                if not exc.not_found:
                    raise  # a conflict is retried with the object as it is then

    async def _report_invalid(self, key: str, service: Obj, problems: tuple[str, ...]) -> None:
        """Tell the user, once per set of problems, what is wrong and how to fix it."""
        service_uid = tr.uid(service)
        if self._invalid.get(key) == (service_uid, problems):
            return
        note = invalid_note(problems, served=self._serves(key, service_uid))
        generation = str(tr.metadata(service).get("generation") or "")
        cause = f"invalid/{service_uid}/{generation}/{_digest(*problems)}"
        with self._root_span(service):
            log.warning("service %s is invalid: %s", key, note)
            await self._emit(st.invalid_event(note), service, cause)
        self._invalid[key] = (service_uid, problems)

    async def _publish_gone(self, key: str, uid: str, *, new_trace: bool = True) -> None:
        namespace, name = key.split("/", 1)
        gone = ServiceGone(cluster=self._cluster, namespace=namespace, name=name, uid=uid)
        # A uid lives once: its end needs no resourceVersion to be told apart.
        msg_id = f"{self._cluster}/{uid}/service-gone"
        if new_trace:
            attributes = {
                "vipwire.cluster": self._cluster,
                "k8s.namespace.name": namespace,
                "k8s.service.name": name,
            }
            with self.runtime.tracer.start_as_current_span(
                "reconcile service", context=Context(), attributes=attributes
            ):
                seq = await self._publish(gone, msg_id)
        else:
            seq = await self._publish(gone, msg_id)
        self._remember_service(key, gone, seq)
        self._ended_by_us(self._services, key, seq)

    async def _write_finalizer(
        self, service: Obj, *, present: bool, trace_id: str | None = None
    ) -> Obj | None:
        """Add (with our cluster annotation) or remove our finalizer; on a stale
        resourceVersion re-read and try again.

        Returns the Service as written, or None when it is gone (or, when
        adding, no longer ours).
        """
        meta = tr.metadata(service)
        name, namespace, uid = str(meta.get("name")), str(meta.get("namespace")), tr.uid(service)
        kind = "finalizer-add" if present else "finalizer-remove"
        for _ in range(self.settings.conflict_retries):
            patch = st.finalizer_patch(
                service, present=present, cluster=self._cluster, trace_id=trace_id
            )
            if patch is None:
                return service
            try:
                return await self._write(
                    kind,
                    self._core.patch_namespaced_service,
                    name,
                    namespace,
                    patch,
                    _content_type=MERGE_PATCH,
                )
            except KubeApiError as exc:
                if exc.not_found:
                    return None
                if not exc.conflict:
                    raise
            fresh = await self._read_service(name, namespace)
            if fresh is None or tr.uid(fresh) != uid:
                return None
            service = fresh
            if present and (not self._is_ours(service) or tr.being_deleted(service)):
                return None
        raise KubeApiError(409, "Conflict", f"service {namespace}/{name}: kept conflicting")

    # --- bus -> Services ---------------------------------------------------------------

    async def _reconcile(self, key: str) -> None:
        async with self._locks.hold(key):
            service = self._svc_reflector_store().get(key)
            if service is not None:
                await self._reconcile_locked(key, service)

    def _svc_reflector_store(self) -> Mapping[str, Obj]:
        return self._svc_reflector.store if self._reflectors else {}

    async def _reconcile_locked(self, key: str, service: Obj) -> None:
        """Write what the decision asks for; on a stale resourceVersion decide again."""
        meta = tr.metadata(service)
        name, namespace, service_uid = (
            str(meta.get("name")),
            str(meta.get("namespace")),
            tr.uid(service),
        )
        for _ in range(self.settings.conflict_retries):
            snapshot = self._snapshot(key, service)
            published = self._services.get(key)
            decision = st.decide(
                service,
                snapshot,
                self._views.get(key, st.BusView()),
                applied=self._applied,
                gate=self.settings.status_gate,
                now=micro_time(),
                problems=self._problems_note(key, service, snapshot),
                live_seq=published.live_seq if published is not None else 0,
            )
            if decision.nothing:
                return
            try:
                await self._apply(service, decision)
                return
            except KubeApiError as exc:
                if exc.not_found:
                    return
                if not exc.conflict:
                    if _refused(exc):
                        await self._refused_write(service, exc)
                        return
                    raise
            fresh = await self._read_service(name, namespace)
            if fresh is None or tr.uid(fresh) != service_uid:
                return
            service = fresh
        raise KubeApiError(409, "Conflict", f"service {namespace}/{name}: kept conflicting")

    async def _apply(self, service: Obj, decision: st.Decision) -> None:
        meta = tr.metadata(service)
        name, namespace = str(meta.get("name")), str(meta.get("namespace"))
        tracer = self.runtime.tracer
        if decision.status is not None:
            with tracer.start_as_current_span(
                "status write", attributes=self._span_attributes(service)
            ):
                service = await self._write(
                    "status",
                    self._core.patch_namespaced_service_status,
                    name,
                    namespace,
                    decision.status,
                    _content_type=MERGE_PATCH,
                )
                trace_id = trace_id_of_current_span()
                if "loadBalancer" in decision.status["status"]:
                    # Only the VIPs are news on the bus; a condition alone is not.
                    await self._announce_status(service, trace_id)
                if trace_id and not decision.remove_finalizer:
                    service = await self._mark_trace(service, trace_id)
        if decision.remove_finalizer:
            with tracer.start_as_current_span(
                "finalizer remove", attributes=self._span_attributes(service)
            ):
                await self._write_finalizer(
                    service, present=False, trace_id=trace_id_of_current_span()
                )

    async def _mark_trace(self, service: Obj, trace_id: str) -> Obj:
        """Record the trace of what was just written (``kubectl describe`` shows it)."""
        patch = st.trace_patch(service, trace_id)
        if patch is None:
            return service
        meta = tr.metadata(service)
        try:
            return await self._write(
                "annotation",
                self._core.patch_namespaced_service,
                str(meta.get("name")),
                str(meta.get("namespace")),
                patch,
                _content_type=MERGE_PATCH,
            )
        except KubeError as exc:
            # Informational: not worth redoing the status write that came before it.
            log.warning("could not record the trace of %s: %s", tr.object_key(service), exc)
            return service

    async def _refused_write(self, service: Obj, exc: KubeApiError) -> None:
        """The API refused a write as invalid: say so on the Service, retrying cannot help."""
        key = tr.object_key(service)
        log.error("service %s: the API refused our status write: %s", key, exc)
        spec = st.EventSpec(
            type="Warning",
            reason="StatusWriteRefused",
            action="WriteStatus",
            note=f"the API server refused the status vipwire wrote: {exc.message or exc}",
        )
        cause = f"refused/{tr.uid(service)}/{tr.resource_version(service)}"
        await self._emit(spec, service, cause)

    async def _announce_status(self, service: Obj, trace_id: str | None) -> None:
        """Tell the bus what status now says: the end of the change's trace."""
        meta = tr.metadata(service)
        written = StatusWritten(
            cluster=self._cluster,
            namespace=str(meta.get("namespace")),
            name=str(meta.get("name")),
            uid=tr.uid(service),
            vips=tuple(str(i.get("ip")) for i in tr.ingress(service) if isinstance(i, dict)),
            trace_id=trace_id,
        )
        msg_id = f"{self._cluster}/{written.uid}/{tr.resource_version(service)}/status"
        try:
            await self._publish(written, msg_id)
        except BusError as exc:
            # Informational only (no service consumes it): not worth redoing the write.
            log.warning("could not announce the status of %s: %s", tr.object_key(service), exc)

    async def _emit(
        self,
        spec: st.EventSpec,
        service: Obj,
        cause: str,
        *,
        trace_id: str | None = None,
        replayed: bool = False,
    ) -> None:
        """Record an Event; a repeat of one already recorded counts in its series.

        Except a Normal Event called for by the replay of a new term: the replay
        cannot tell news from a repeat (what came before is not replayed), so one
        already recorded is taken as told. Otherwise every new term would count a
        confirmation the lbdriver repeated (after its restart, say) as one more
        occurrence: a write per Service for nothing new.
        """
        meta = tr.metadata(service)
        namespace = str(meta.get("namespace"))
        name = st.event_name(str(meta.get("name")), tr.uid(service), spec)
        now = micro_time()
        body = st.event_object(
            spec,
            service,
            name=name,
            event_time=now,
            instance=self._instance,
            cause=cause,
            trace_id=trace_id or trace_id_of_current_span(),
        )
        try:
            try:
                await self._write(
                    "event", self._events_api.create_namespaced_event, namespace, body
                )
                return
            except KubeApiError as exc:
                if not exc.already_exists:
                    raise
            if replayed and spec.type == "Normal":
                return
            for _ in range(self.settings.conflict_retries):
                existing = await request_json(
                    self._events_api.read_namespaced_event,
                    name,
                    namespace,
                    timeout=self.settings.request_timeout,
                )
                patch = st.series_patch(existing, cause=cause, now=now)
                if patch is None:
                    return  # this very cause was counted already
                try:
                    await self._write(
                        "event-series",
                        self._events_api.patch_namespaced_event,
                        name,
                        namespace,
                        patch,
                        _content_type=MERGE_PATCH,
                    )
                    return
                except KubeApiError as exc:
                    if not exc.conflict:
                        raise
        except KubeApiError as exc:
            if exc.transient:
                raise  # Events are best effort, but a server hiccup deserves a retry
            log.warning(
                "cannot record %s Event for %s: %s", spec.reason, tr.object_key(service), exc
            )

    async def _on_delivery(self, d: Delivery) -> Verdict:
        try:
            await self._handle(d)
        except NotLeader:
            # The term is ending; the next leader replays this subject.
            return Retry(delay=1.0, reason="not the leader")
        return DONE

    async def _handle(self, d: Delivery) -> None:
        message = d.message
        # Interned: the same string as the reflectors' keys, not one more per table.
        key = sys.intern(d.subject.key)
        match message:
            case ServiceSnapshot() | ServiceGone():
                recorded = self._recorded(self._services, key, d.seq)
                self._remember_service(key, message, d.seq)
                if isinstance(message, ServiceGone):
                    self._forget_tombstone(self._services, key, d.seq, recorded=recorded)
                    self._maybe_forget(key)
            case EndpointsSnapshot():
                self._remember_endpoints(key, _fingerprint(message), d.seq)
            case NodeSnapshot() | NodeGone():
                recorded = self._recorded(self._nodes, key, d.seq)
                self._remember_node(key, message, d.seq)
                if isinstance(message, NodeGone):
                    self._forget_tombstone(self._nodes, key, d.seq, recorded=recorded)
            case NodeApplied():
                if self.settings.status_gate == "none":
                    return
                if d.seq < self._applied_seq.get(message.node, 0):
                    return  # a redelivery overtaken by a newer report
                self._applied_seq[message.node] = d.seq
                # Interned: every node reports the same VIPs, held once instead of per node.
                self._applied[message.node] = frozenset(map(sys.intern, message.vips))
                for service_key, nodes in list(self._gated.items()):
                    if message.node in nodes:
                        await self._reconcile(service_key)
            case (
                VipAssigned()
                | VipReleasing()
                | VipReleased()
                | VipFailed()
                | LbProgrammed()
                | LbFailed()
                | LbRemoved()
            ):
                old = self._views.get(key, st.BusView())
                if st.superseded(old, message, d.seq):
                    return  # a redelivery overtaken by a newer message on its subject
                prior = st.before(old, message, d.seq)
                view = st.observe(old, self._compact(message), d.seq)
                if view is not old:
                    self._views[key] = view
                    if self.settings.status_gate != "none":
                        lb = view.lb
                        members = lb.members if isinstance(lb, LbProgrammed) else ()
                        self._gated[key] = frozenset(m.node for m in members)
                await self._reconcile(key)
                spec = st.event_for(message, before=prior)
                fresh = not d.timestamp or time.time() - d.timestamp < _EVENT_HORIZON
                if spec is not None and fresh:
                    cause = f"{d.subject.raw}#{d.seq}"
                    service = self._svc_reflector_store().get(key)
                    # A replay cannot tell news from a repeat (what came before is not
                    # replayed): see _emit_deferred.
                    replayed = not self._caught_up
                    if service is None:
                        # Replayed before the Services are listed, or ahead of the watch
                        # event that brings the Service: emitted when it is handled.
                        self._deferred[f"{key}|{d.subject.family}"] = _DeferredEvent(
                            spec=spec,
                            uid=message.uid,
                            cause=cause,
                            trace_id=trace_id_of_current_span(),
                            replayed=replayed,
                        )
                    elif tr.uid(service) == message.uid:
                        await self._emit(spec, service, cause, replayed=replayed)
                self._maybe_forget(key)

    def _compact(self, message: VipMessage | LbMessage) -> VipMessage | LbMessage:
        """The message as kept in a view: without what no decision reads of it.

        Ports are for Events, which are made of the message as delivered; members
        (an LbProgrammed of a 50-node cluster lists 50) only a status gate reads.
        """
        if isinstance(message, VipAssigned):
            return msgspec.structs.replace(message, ports=())
        if isinstance(message, LbProgrammed):
            gated = self.settings.status_gate != "none"
            return msgspec.structs.replace(
                message, ports=(), members=message.members if gated else ()
            )
        return message

    @staticmethod
    def _recorded(
        table: Mapping[str, _ServiceRecord | _Published[Any]], key: str, seq: int
    ) -> bool:
        current = table.get(key)
        return current is not None and current.seq >= seq

    def _forget_tombstone(
        self,
        table: dict[str, _ServiceRecord] | dict[str, _Published[Any]],
        key: str,
        seq: int,
        *,
        recorded: bool,
    ) -> None:
        """Drop an object's entry once its end came back to us and nothing newer is known:
        every older message of its subject has been delivered by then."""
        current = table.get(key)
        reflector = self._svc_reflector if table is self._services else self._node_reflector
        if (
            current is not None
            and current.seq <= seq
            and self._reflectors
            and reflector.synced.is_set()
            and key not in reflector.store
        ):
            if self._caught_up and not recorded:
                # Our own publish has not recorded it yet (the message came back before
                # the publish was acknowledged): that must not bring the entry back.
                self._ended[(id(table), key)] = seq
            del table[key]
            if table is self._services:
                self._endpoints.pop(key, None)
            else:
                self._applied.pop(key, None)
                self._applied_seq.pop(key, None)

    def _ended_by_us(
        self, table: dict[str, _ServiceRecord] | dict[str, _Published[Any]], key: str, seq: int
    ) -> None:
        """An end we published is final at once when our own messages no longer come
        back to us (nothing older of its subject can come to bring the entry back)."""
        if self._replay is not None or not self._caught_up:
            return  # it comes back: forgotten then, see _handle
        self._forget_tombstone(table, key, seq, recorded=True)
        if table is self._services:
            self._maybe_forget(key)

    def _maybe_forget(self, key: str) -> None:
        """Drop what we keep about a Service that no longer exists anywhere."""
        if not self._reflectors or not self._svc_reflector.synced.is_set():
            return
        if key in self._svc_reflector.store:
            return
        if self._snapshot_of(key) is not None:
            return
        self._views.pop(key, None)
        self._gated.pop(key, None)
        self._invalid.pop(key, None)
        for family in ("vip", "lb"):
            self._deferred.pop(f"{key}|{family}", None)

    async def _emit_deferred(self, key: str, service: Obj | None) -> None:
        """Emit the Events held back until the Service was known (dropped if it is not)."""
        for family in ("vip", "lb"):
            deferred = self._deferred.pop(f"{key}|{family}", None)
            if deferred is None or service is None or tr.uid(service) != deferred.uid:
                continue
            await self._emit(
                deferred.spec,
                service,
                deferred.cause,
                trace_id=deferred.trace_id,
                replayed=deferred.replayed,
            )

    # --- EndpointSlices -> bus -------------------------------------------------------

    async def _sync_endpoints(self, key: str, trigger: str) -> None:
        try:
            await self._publish_endpoints(key, trigger)
        except NotLeader as exc:
            raise Drop() from exc

    async def _publish_endpoints(self, key: str, trigger: str) -> None:
        if self._snapshot_of(key) is None:
            return
        namespace, name = key.split("/", 1)
        async with self._locks.hold(f"endpoints:{key}"):
            store = self._slice_reflector.store
            slices = [store[k] for k in sorted(self._slice_index.get(key, ())) if k in store]
            snapshot = tr.merge_endpoints(
                slices, cluster=self._cluster, namespace=namespace, name=name
            )
            previous = self._endpoints.get(key)
            fingerprint = _fingerprint(snapshot)
            if previous is not None and previous[1] == fingerprint:
                return
            msg_id = f"{self._cluster}/{namespace}/{name}/{trigger}/endpoints"
            seq = await self._publish(snapshot, msg_id)
            self._remember_endpoints(key, fingerprint, seq)

    def _remember_endpoints(self, key: str, fingerprint: bytes, seq: int) -> None:
        """Record an endpoints message unless we know a newer one."""
        current = self._endpoints.get(key)
        if current is None or seq > current[0]:
            self._endpoints[key] = (seq, fingerprint)

    def _index_slice(
        self, slice_key: str, obj: tr.SliceEndpoints | None, old: tr.SliceEndpoints | None
    ) -> set[str]:
        """Keep the Service -> slices index; returns the Services affected."""
        affected: set[str] = set()
        for source, adding in ((old, False), (obj, True)):
            if source is None:
                continue
            service_key = source.service
            if service_key is None:
                continue
            affected.add(service_key)
            members = self._slice_index.get(service_key, ())
            if adding and slice_key not in members:
                self._slice_index[service_key] = (*members, slice_key)
            elif not adding and slice_key in members:
                rest = tuple(k for k in members if k != slice_key)
                if rest:
                    self._slice_index[service_key] = rest
                else:
                    del self._slice_index[service_key]
        return affected

    def _slices_listed(self, objects: Mapping[str, tr.SliceEndpoints], rv: str) -> None:
        self._slice_index.clear()
        for slice_key, obj in objects.items():
            self._index_slice(slice_key, obj, None)
        for key in set(self._slice_index) | set(self._endpoints):
            if key in self._services:
                self._eps_queue.add(key, f"list-{rv}")

    def _slice_changed(
        self,
        slice_key: str,
        obj: tr.SliceEndpoints | None,
        old: tr.SliceEndpoints | None,
        rv: str,
    ) -> None:
        for key in self._index_slice(slice_key, obj, old):
            if key in self._services:
                self._eps_queue.add(key, rv)

    # --- Nodes -> bus ----------------------------------------------------------------

    async def _sync_node(self, name: str, trigger: str) -> None:
        try:
            await self._sync_node_inner(name, trigger)
        except NotLeader as exc:
            raise Drop() from exc

    async def _sync_node_inner(self, name: str, trigger: str) -> None:
        node = self._node_reflector.store.get(name)
        previous = self._nodes.get(name)
        if node is None:
            if previous is None or not isinstance(previous.message, NodeSnapshot):
                return
            gone = NodeGone(cluster=self._cluster, node=name)
            seq = await self._publish(gone, f"{self._cluster}/{name}/{trigger}/node-gone")
            self._remember_node(name, gone, seq)
            self._ended_by_us(self._nodes, name, seq)
            self._applied.pop(name, None)
            self._applied_seq.pop(name, None)
            return
        snapshot = tr.node_snapshot(node, cluster=self._cluster)
        if previous is not None and previous.message == snapshot:
            return
        seq = await self._publish(
            snapshot, f"{self._cluster}/{name}/{tr.resource_version(node)}/node"
        )
        self._remember_node(name, snapshot, seq)

    def _nodes_listed(self, objects: Mapping[str, Obj], rv: str) -> None:
        for name in set(objects) | set(self._nodes):
            self._node_queue.add(name, f"list-{rv}")


class _ServiceListener:
    def __init__(self, watcher: WatcherService) -> None:
        self._w = watcher

    def listed(self, objects: Mapping[str, Obj], rv: str) -> None:
        self._w._services_listed(objects, rv)

    def changed(self, key: str, obj: Obj | None, old: Obj | None, rv: str) -> None:
        self._w._service_changed(key, obj, rv)


class _SliceListener:
    def __init__(self, watcher: WatcherService) -> None:
        self._w = watcher

    def listed(self, objects: Mapping[str, tr.SliceEndpoints], rv: str) -> None:
        self._w._slices_listed(objects, rv)

    def changed(
        self,
        key: str,
        obj: tr.SliceEndpoints | None,
        old: tr.SliceEndpoints | None,
        rv: str,
    ) -> None:
        self._w._slice_changed(key, obj, old, rv)


class _NodeListener:
    def __init__(self, watcher: WatcherService) -> None:
        self._w = watcher

    def listed(self, objects: Mapping[str, Obj], rv: str) -> None:
        self._w._nodes_listed(objects, rv)

    def changed(self, key: str, obj: Obj | None, old: Obj | None, rv: str) -> None:
        self._w._node_queue.add(key, rv)
