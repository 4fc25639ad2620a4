"""Kubernetes -> bus: snapshots of Services, their endpoints and Nodes.

The reflectors tell which keys changed (:class:`ServiceListener` and its
siblings); the work queues hand each key to one worker at a time, which reads
the object's current state from the reflector's store and publishes a
snapshot when it says something new. A Service we take on gets our finalizer
first; one that is invalid gets a Warning Event instead of a snapshot.
Message ids name the object and its resourceVersion, so two replicas
publishing for the same change publish the same id.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from vipwire.bus import BusError, TooLarge
from vipwire.contracts import (
    NodeGone,
    NodeSnapshot,
    ServiceGone,
    ServiceRejected,
    ServiceSnapshot,
    encode,
    service_subject,
)
from vipwire.kube import KubeApiError
from vipwire.metrics import Counter
from vipwire.telemetry import trace_id_of_current_span
from vipwire.watcher.core.condition import INVALID, current_condition
from vipwire.watcher.core.events import (
    invalid_event,
    object_ref,
    too_large_event,
    too_large_note,
)
from vipwire.watcher.core.packed import PackedDict
from vipwire.watcher.core.term_memory import ServiceRecord, message_fingerprint
from vipwire.watcher.core.translate import (
    SERVICE_NAME_LABEL,
    Obj,
    SliceEndpoints,
    being_deleted,
    has_finalizer,
    marked_by,
    merge_endpoints,
    metadata,
    node_snapshot,
    resource_version,
    service_fingerprint,
    slice_endpoints,
    slim_node,
    slim_service,
    status_vips,
    uid,
)
from vipwire.watcher.core.validate import invalid_note
from vipwire.watcher.core.writeback import refused_for_good
from vipwire.watcher.io.event_recorder import EventRecorder
from vipwire.watcher.io.kube_writes import KubeWrites, NotLeader, refused
from vipwire.watcher.io.reflector import Reflector
from vipwire.watcher.io.status_writes import StatusWriter
from vipwire.watcher.io.term import Term
from vipwire.watcher.io.work_queue import Drop, WorkQueue

log = logging.getLogger("vipwire.watcher")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


class Publisher:
    """The workers of one term's three queues (Services, endpoints, Nodes)."""

    def __init__(
        self, term: Term, writer: StatusWriter, recorder: EventRecorder, **queue_args: Any
    ) -> None:
        self._term = term
        self._memory = term.memory
        self._cluster = term.cluster
        self._writer = writer
        self._recorder = recorder
        self.services = WorkQueue("services", self._sync_service, **queue_args)
        self.endpoints = WorkQueue("endpoints", self._sync_endpoints, **queue_args)
        self.nodes = WorkQueue("nodes", self._sync_node, **queue_args)

    @property
    def queues(self) -> tuple[WorkQueue, ...]:
        return (self.services, self.endpoints, self.nodes)

    # --- Services -> bus -------------------------------------------------------------

    def service_changed(self, key: str, obj: Obj | None, rv: str, old: Obj | None = None) -> None:
        ours = obj is not None and self._term.is_ours(obj)
        if obj is None or not ours or being_deleted(obj):
            self._term.convergence.forget(key)
        else:
            has_vip = bool(status_vips(obj))
            self._term.convergence.seen(key, ours=True, has_vip=has_vip, now=time.monotonic())
        known = key in self._memory.services
        if obj is None and old is not None and known:
            # Deleted: who it was stays known for the Event that tells its release, which
            # may be written after this (see TermMemory.depart).
            self._memory.depart(key, object_ref(old))
        if obj is not None and not (
            known or ours or marked_by(obj, self._cluster) or current_condition(obj) is not None
        ):
            return  # the common case: somebody else's Service
        if obj is None and not known:
            return
        self.services.add(key, rv)

    def services_listed(self, objects: Mapping[str, Obj], rv: str) -> None:
        memory = self._memory
        keys = set(objects) | set(memory.services)
        # Services whose status holds VIPs first: after a lost bus store, ipam reserves
        # those addresses for them as their snapshots arrive, before new Services ask.
        for key in sorted(keys, key=lambda k: (not status_vips(objects.get(k) or {}), k)):
            self.service_changed(key, objects.get(key), f"list-{rv}")
        for key in list(memory.views):
            memory.forget_service(key, absent=self._term.absent("service", key))

    async def _sync_service(self, key: str, trigger: str) -> None:
        try:
            async with self._term.locks.hold(key):
                await self._sync_service_locked(key)
        except NotLeader as exc:
            raise Drop() from exc
        except KubeApiError as exc:
            if not refused(exc):
                raise
            log.error("service %s: the API refused our write: %s", key, exc)
            raise Drop() from exc

    async def _sync_service_locked(self, key: str) -> None:
        term, memory = self._term, self._memory
        service = term.service_store().get(key)
        previous = memory.snapshot_of(key)
        await self._recorder.emit_deferred(memory, key, service)
        rejected = memory.services.get(key) if memory.rejected(key) else None
        if service is None:
            memory.invalid.pop(key, None)
            if previous is not None:
                await self._publish_gone(key, previous.uid)
            elif rejected is not None:
                # Never valid: its rejection is all there is on its subject; end it.
                await self._publish_gone(key, rejected.uid)
            return
        if previous is not None and previous.uid != uid(service):
            # Deleted and recreated under the same name while we were not looking.
            with term.root_span(term.span_attributes(service)):
                await self._publish_gone(key, previous.uid, new_trace=False)
            previous = None
        elif previous is None and rejected is not None and rejected.uid != uid(service):
            with term.root_span(term.span_attributes(service)):
                await self._publish_gone(key, rejected.uid, new_trace=False)
        snapshot = term.snapshot(key, service)
        if snapshot is None:
            await self._not_ours(key, service, previous)
            return
        if not snapshot.deleting:
            problems = term.problems(service)
            if problems:
                if memory.invalid.get(key) == (uid(service), problems):
                    await self._writer.reconcile_locked(key, service)  # told already
                    return
                # One trace for the change: its Event, its rejection on the bus, and the
                # status write (whose trace vipwire.io/last-trace-id names).
                with term.root_span(term.span_attributes(service)):
                    await self._report_invalid(key, service, problems)
                    await self._writer.reconcile_locked(key, service)
                return
            memory.invalid.pop(key, None)
        elif previous is None and not has_finalizer(service):
            return  # going away before we ever served it: nothing to clean up
        unchanged = memory.published_alike(key, snapshot)
        # A Service refused for good keeps no finalizer until it changes (writeback.decide
        # takes it off): marking it again for the same snapshot would undo that.
        needs_mark = (
            not snapshot.deleting
            and not marked_by(service, self._cluster)
            and not (
                unchanged
                and refused_for_good(service, snapshot.uid, memory.view(key), memory.live_seq(key))
            )
        )
        if not (unchanged and not needs_mark):
            with term.root_span(term.span_attributes(service)):
                if needs_mark:
                    # The change's trace goes on with the finalizer: the status write that
                    # ends the trace then finds it recorded and needs no write of its own.
                    fresh = await self._writer.write_finalizer(
                        service, present=True, trace_id=trace_id_of_current_span()
                    )
                    if fresh is None:
                        return
                    service = fresh
                    refreshed = term.snapshot(key, service)
                    if refreshed is None:
                        return
                    snapshot = refreshed
                if memory.refused_alike(key, snapshot):
                    pass  # refused as too large already: told, not retried until it changes
                elif not memory.published_alike(key, snapshot):
                    msg_id = f"{self._cluster}/{snapshot.uid}/{snapshot.resource_version}/service"
                    try:
                        seq = await term.publish(snapshot, msg_id)
                    except TooLarge as exc:
                        await self._report_too_large(key, service, snapshot, exc)
                    else:
                        memory.too_large.pop(key, None)
                        memory.remember_service(key, snapshot, seq)
                await self._publish_endpoints(key, f"service-{snapshot.resource_version}")
        await self._writer.reconcile_locked(key, service)

    async def _report_too_large(
        self, key: str, service: Obj, snapshot: ServiceSnapshot, exc: TooLarge
    ) -> None:
        """The bus will never take this snapshot: tell the user once, on the Service (a
        Warning Event, and the condition the status write that follows sets), and do not
        retry it until the Service changes. Other Services go on."""
        labels = snapshot.labels
        label_bytes = sum(len(k.encode()) + len(v.encode()) for k, v in labels.items())
        size = exc.size or len(encode(snapshot))
        note = too_large_note(size, exc.limit, len(labels), label_bytes)
        fingerprint = service_fingerprint(snapshot)
        self._memory.too_large[key] = (snapshot.uid, fingerprint, note)
        log.error("service %s: the bus refused its snapshot: %s (%s)", key, note, exc)
        cause = f"too-large/{snapshot.uid}/{fingerprint.hex()}"
        await self._recorder.emit(too_large_event(note), service, cause)

    async def _not_ours(self, key: str, service: Obj, previous: ServiceRecord | None) -> None:
        """A Service that is not (or no longer) ours: let go of whatever we left on it."""
        term = self._term
        term.memory.invalid.pop(key, None)
        if previous is None and term.memory.rejected(key):
            # Rejected, never valid, and now not ours at all: its subject ends.
            gone_uid = term.memory.services[key].uid
            with term.root_span(term.span_attributes(service)):
                await self._publish_gone(key, gone_uid, new_trace=False)
        if previous is not None:
            # It was ours and our finalizer is already off: it is gone for us.
            with term.root_span(term.span_attributes(service)):
                await self._publish_gone(key, previous.uid, new_trace=False)
        elif marked_by(service, self._cluster) and not term.is_ours(service):
            if not term.caught_up:
                raise RuntimeError("bus replay unfinished: cannot tell what was published")
            # Our finalizer went on but no snapshot was ever published (we stopped in
            # between) and then it changed away: nothing was allocated, let it go.
            with term.root_span(term.span_attributes(service)):
                fresh = await self._writer.write_finalizer(
                    service, present=False, trace_id=trace_id_of_current_span()
                )
            service = fresh or service
        await self._writer.remove_leftovers(service)

    async def _report_invalid(self, key: str, service: Obj, problems: tuple[str, ...]) -> None:
        """Tell the user, once per set of problems, what is wrong and how to fix it: a
        Warning Event on the Service, and a ServiceRejected on the bus (the dashboard,
        the live table of ``vipwire up`` and replay show it). Runs in the change's trace."""
        memory = self._memory
        service_uid = uid(service)
        served = memory.serves(key, service_uid)
        note = invalid_note(problems, served=served)
        generation = str(metadata(service).get("generation") or "")
        cause = f"invalid/{service_uid}/{generation}/{_digest(*problems)}"
        log.warning("service %s is invalid: %s", key, note)
        await self._recorder.emit(invalid_event(note), service, cause)
        await self._publish_rejected(key, service, note, served=served)
        memory.invalid[key] = (service_uid, problems)

    async def _publish_rejected(self, key: str, service: Obj, note: str, *, served: bool) -> None:
        """Say on the Service's subject that it is rejected as it is, with the snapshot
        still in force when it is served (ipam reads that, not an end: see
        :func:`vipwire.ipam.core.messages.in_force`)."""
        term = self._term
        service_uid = uid(service)
        namespace, name = key.split("/", 1)
        kept: ServiceSnapshot | None = None
        if served:
            subject = service_subject("service", self._cluster, namespace, name)
            last = await term.runtime.bus.last_valid_message(subject)
            said = last[1] if last is not None else None
            if isinstance(said, ServiceRejected):
                said = said.in_force
            if isinstance(said, ServiceSnapshot) and said.uid == service_uid:
                kept = said
            if kept is None:
                # Cannot tell what is in force: say nothing rather than hide the snapshot.
                log.warning("service %s: its snapshot in force was not found on the bus", key)
                return
        rejected = ServiceRejected(
            cluster=self._cluster,
            namespace=namespace,
            name=name,
            uid=service_uid,
            resource_version=resource_version(service),
            reason=INVALID,
            message=note,
            trace_id=trace_id_of_current_span(),
            in_force=kept,
        )
        msg_id = f"{self._cluster}/{service_uid}/{resource_version(service)}/service-rejected"
        try:
            seq = await term.publish(rejected, msg_id)
        except BusError as exc:
            raise RuntimeError(f"service {key}: cannot publish its rejection: {exc}") from exc
        self._memory.remember_service(key, rejected, seq)

    async def _publish_gone(self, key: str, service_uid: str, *, new_trace: bool = True) -> None:
        term = self._term
        namespace, name = key.split("/", 1)
        gone = ServiceGone(cluster=self._cluster, namespace=namespace, name=name, uid=service_uid)
        # A uid lives once: its end needs no resourceVersion to be told apart.
        msg_id = f"{self._cluster}/{service_uid}/service-gone"
        if new_trace:
            with term.root_span(term.ref_attributes(namespace, name)):
                seq = await term.publish(gone, msg_id)
        else:
            seq = await term.publish(gone, msg_id)
        self._memory.remember_service(key, gone, seq)
        term.ended_by_us("service", key, seq)

    # --- EndpointSlices -> bus -------------------------------------------------------

    async def _sync_endpoints(self, key: str, trigger: str) -> None:
        try:
            await self._publish_endpoints(key, trigger)
        except NotLeader as exc:
            raise Drop() from exc

    async def _publish_endpoints(self, key: str, trigger: str) -> None:
        term, memory = self._term, self._memory
        if memory.snapshot_of(key) is None:
            return
        namespace, name = key.split("/", 1)
        async with term.locks.hold(f"endpoints:{key}"):
            store = term.slices.store if term.slices is not None else {}
            slices = [store[k] for k in memory.slices_of(key) if k in store]
            snapshot = merge_endpoints(
                slices, cluster=self._cluster, namespace=namespace, name=name
            )
            fingerprint = message_fingerprint(snapshot)
            if memory.endpoints_unchanged(key, fingerprint):
                return
            msg_id = f"{self._cluster}/{namespace}/{name}/{trigger}/endpoints"
            try:
                seq = await term.publish(snapshot, msg_id)
            except TooLarge as exc:
                # Retrying cannot help; the next change of its endpoints tries again.
                log.error(
                    "service %s: the bus refused its endpoints (%d node(s)): %s",
                    key,
                    len(snapshot.nodes),
                    exc,
                )
                return
            memory.remember_endpoints(key, fingerprint, seq)

    def slices_listed(self, objects: Mapping[str, SliceEndpoints], rv: str) -> None:
        memory = self._memory
        for key in memory.reindex_slices(objects):
            if key in memory.services:
                self.endpoints.add(key, f"list-{rv}")

    def slice_changed(
        self, slice_key: str, obj: SliceEndpoints | None, old: SliceEndpoints | None, rv: str
    ) -> None:
        memory = self._memory
        for key in memory.index_slice(slice_key, obj, old):
            if key in memory.services:
                self.endpoints.add(key, rv)

    # --- Nodes -> bus ----------------------------------------------------------------

    async def _sync_node(self, name: str, trigger: str) -> None:
        try:
            await self._sync_node_inner(name, trigger)
        except NotLeader as exc:
            raise Drop() from exc

    async def _sync_node_inner(self, name: str, trigger: str) -> None:
        term, memory = self._term, self._memory
        node = term.node_store().get(name)
        previous = memory.nodes.get(name)
        if node is None:
            if previous is None or not isinstance(previous.message, NodeSnapshot):
                return
            gone = NodeGone(cluster=self._cluster, node=name)
            seq = await term.publish(gone, f"{self._cluster}/{name}/{trigger}/node-gone")
            memory.remember_node(name, gone, seq)
            term.ended_by_us("node", name, seq)
            memory.forget_applied(name)
            return
        snapshot = node_snapshot(node, cluster=self._cluster)
        if previous is not None and previous.message == snapshot:
            return
        seq = await term.publish(snapshot, f"{self._cluster}/{name}/{resource_version(node)}/node")
        memory.remember_node(name, snapshot, seq)

    def nodes_listed(self, objects: Mapping[str, Obj], rv: str) -> None:
        for name in set(objects) | set(self._memory.nodes):
            self.nodes.add(name, f"list-{rv}")


def watch_cluster(term: Term, kube: KubeWrites, publisher: Publisher, *, restarts: Counter) -> None:
    """Give the term its reflectors (Services, EndpointSlices, Nodes), feeding ``publisher``.

    What each keeps of an object is what the watcher reads of it, encoded.
    """
    settings = term.settings
    term.services = Reflector(
        "services",
        kube.core.list_service_for_all_namespaces,
        ServiceListener(publisher),
        settings,
        restarts=restarts,
        refusals=kube.refusals,
        keep=slim_service,
        store=lambda: PackedDict[Obj](Obj),
    )
    term.slices = Reflector(
        "endpointslices",
        kube.discovery.list_endpoint_slice_for_all_namespaces,
        SliceListener(publisher),
        settings,
        restarts=restarts,
        refusals=kube.refusals,
        list_kwargs={"label_selector": SERVICE_NAME_LABEL},
        keep=slice_endpoints,
        store=lambda: PackedDict[SliceEndpoints](SliceEndpoints),
    )
    term.nodes = Reflector(
        "nodes",
        kube.core.list_node,
        NodeListener(publisher),
        settings,
        restarts=restarts,
        refusals=kube.refusals,
        keep=slim_node,
        store=lambda: PackedDict[Obj](Obj),
    )
    term.reflectors_made.set()


class ServiceListener:
    def __init__(self, publisher: Publisher) -> None:
        self._p = publisher

    def listed(self, objects: Mapping[str, Obj], rv: str) -> None:
        self._p.services_listed(objects, rv)

    def changed(self, key: str, obj: Obj | None, old: Obj | None, rv: str) -> None:
        self._p.service_changed(key, obj, rv, old)


class SliceListener:
    def __init__(self, publisher: Publisher) -> None:
        self._p = publisher

    def listed(self, objects: Mapping[str, SliceEndpoints], rv: str) -> None:
        self._p.slices_listed(objects, rv)

    def changed(
        self, key: str, obj: SliceEndpoints | None, old: SliceEndpoints | None, rv: str
    ) -> None:
        self._p.slice_changed(key, obj, old, rv)


class NodeListener:
    def __init__(self, publisher: Publisher) -> None:
        self._p = publisher

    def listed(self, objects: Mapping[str, Obj], rv: str) -> None:
        self._p.nodes_listed(objects, rv)

    def changed(self, key: str, obj: Obj | None, old: Obj | None, rv: str) -> None:
        self._p.nodes.add(key, rv)
