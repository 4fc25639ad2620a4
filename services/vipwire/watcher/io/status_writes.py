"""Bus -> Kubernetes: a Service's status, condition and finalizer, as the bus says.

The decision is :func:`vipwire.watcher.core.writeback.decide`; this writes it,
guarded by the resourceVersion it was made on, and on a conflict reads the
Service again and decides anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from opentelemetry import trace

from vipwire.bus import BusError
from vipwire.contracts import LbProgrammed, StatusWritten
from vipwire.kube import MERGE_PATCH, KubeApiError, KubeError, micro_time
from vipwire.telemetry import trace_id_of_current_span
from vipwire.watcher.core.bus_view import BusView
from vipwire.watcher.core.events import refused_event
from vipwire.watcher.core.node_vips import (
    MissingVips,
    gain_needs_status,
    node_event,
    nodes_without,
)
from vipwire.watcher.core.translate import (
    Obj,
    being_deleted,
    ingress,
    metadata,
    object_key,
    resource_version,
    uid,
)
from vipwire.watcher.core.writeback import (
    Decision,
    decide,
    finalizer_patch,
    leftover_patch,
    trace_patch,
)
from vipwire.watcher.io.event_recorder import EventRecorder
from vipwire.watcher.io.kube_writes import KubeWrites, NotLeader, refused
from vipwire.watcher.io.term import Term

log = logging.getLogger("vipwire.watcher")

#: Seconds within which a Service is judged again once a node its NodesMissingVip
#: condition names holds the VIP again (every node found meanwhile in one judgement).
FOUND_COALESCE_S = 1.0


class StatusWriter:
    """Writes back to the Services of one term what the bus said about them."""

    def __init__(self, term: Term, kube: KubeWrites, recorder: EventRecorder) -> None:
        self._term = term
        self._kube = kube
        self._recorder = recorder
        self._retries = term.settings.conflict_retries
        # --- member nodes without the VIP (core.node_vips) ---
        self._missing = MissingVips(term.settings.node_vip_grace_s)
        #: Services to judge again when a node's grace period ends (monotonic time).
        self._rechecks: dict[str, float] = {}
        self._recheck = asyncio.Event()
        # --- programmed VIPs ipam did not assign (never written) ---
        self._m_unassigned = term.runtime.metrics.counter(
            "watcher_refused_vips_total",
            "Programmed VIPs not written to a Service's status: ipam did not assign them",
        )
        #: Per Service, the refused VIPs last told (told again only when they change).
        self._unassigned: dict[str, tuple[str, ...]] = {}
        #: Per Service, the trace of the last bus message that called for a write.
        self._traces: dict[str, trace.SpanContext] = {}

    def note_trace(self, key: str) -> None:
        """The bus message being handled (in its span) calls for writes to ``key``: they go
        in its trace even when the Service's own sync gets there first (outside any span),
        so that vipwire.io/last-trace-id names the trace of the change's Events."""
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            self._traces[key] = context

    def _in_trace(self, key: str) -> contextlib.AbstractContextManager[Any]:
        """Outside any span: the trace of the last bus message about ``key``."""
        if trace.get_current_span().get_span_context().is_valid:
            return contextlib.nullcontext()
        context = self._traces.get(key)
        if context is None:
            return contextlib.nullcontext()
        return trace.use_span(trace.NonRecordingSpan(context), end_on_exit=False)

    async def reconcile(self, key: str) -> None:
        """Write what the bus calls for to the Service ``key``, if it is known."""
        term = self._term
        async with term.locks.hold(key):
            service = term.service_store().get(key)
            if service is not None:
                await self.reconcile_locked(key, service)
            else:
                self._missing.forget(key)
                self._traces.pop(key, None)

    async def reconcile_locked(self, key: str, service: Obj) -> None:
        """Write what the decision asks for; on a stale resourceVersion decide again."""
        term = self._term
        meta = metadata(service)
        name, namespace, service_uid = (
            str(meta.get("name")),
            str(meta.get("namespace")),
            uid(service),
        )
        # Decoded once per try: with every node a member (DSR), a view holds two member
        # lists of the cluster's size, and decoding them was the watcher's largest cost
        # at 1,000 nodes.
        view = term.memory.view(key)
        missing = self._nodes_missing(key, service_uid, view)
        for attempt in range(self._retries):
            if attempt:
                view = term.memory.view(key)  # what came while the write was refused
            snapshot = term.snapshot(key, service)
            decision = decide(
                service,
                snapshot,
                view,
                applied=term.memory.applied,
                gate=term.settings.status_gate,
                now=micro_time(),
                problems=term.problems_note(key, service, snapshot),
                live_seq=term.memory.live_seq(key),
                too_large=term.too_large_note(key, service, snapshot),
                missing=missing,
                nodes_known=term.memory.gating,
            )
            self._note_unassigned(key, decision.unassigned)
            if decision.nothing:
                return
            try:
                with self._in_trace(key):
                    await self._apply(service, decision)
                    await self._tell_nodes(service, decision)
                return
            except KubeApiError as exc:
                if exc.not_found:
                    return
                if not exc.conflict:
                    if refused(exc):
                        await self._refused_write(service, exc)
                        return
                    raise
            fresh = await self._kube.read_service(name, namespace)
            if fresh is None or uid(fresh) != service_uid:
                return
            service = fresh
        raise KubeApiError(409, "Conflict", f"service {namespace}/{name}: kept conflicting")

    def _note_unassigned(self, key: str, vips: tuple[str, ...]) -> None:
        if self._unassigned.get(key, ()) == vips:
            return
        if not vips:
            del self._unassigned[key]
            return
        self._unassigned[key] = vips
        self._m_unassigned.inc(len(vips))
        log.warning(
            "not writing VIPs %s to the status of %s/%s: the lbdriver reported them "
            "programmed, but ipam did not assign them to this Service (check who "
            "publishes vipwire.%s.lb.*)",
            ", ".join(vips),
            self._term.cluster,
            key,
            self._term.cluster,
        )

    # --- member nodes without the VIP ---------------------------------------------------

    def _nodes_missing(self, key: str, service_uid: str, view: BusView) -> frozenset[str]:
        """The Service's member nodes reported without its VIP past their grace period;
        a node still within it has the Service judged again when it ends."""
        if self._missing.grace_s <= 0:
            return frozenset()
        memory = self._term.memory
        lb = view.lb
        if not isinstance(lb, LbProgrammed) or lb.uid != service_uid:
            self._missing.forget(key)
            return frozenset()
        verdict = self._missing.judge(key, nodes_without(lb, memory.applied), time.monotonic())
        if verdict.recheck_at is not None:
            self._rechecks[key] = verdict.recheck_at
            self._recheck.set()
        return verdict.overdue

    async def node_gained(self, key: str, node: str) -> None:
        """The member ``node`` of ``key`` now holds one of its VIPs (and lost none): the
        Service is judged again only when that can change its status (a node no longer
        overdue, a gate, a move), not once per member node in a burst."""
        term = self._term
        now = time.monotonic()
        changed, waiting = self._missing.found(key, node, now)
        if not waiting:
            self._rechecks.pop(key, None)  # nothing is left to wait out
        memory = term.memory
        if gain_needs_status(
            term.settings.status_gate, moving=key in memory.moving, nodes_known=memory.gating
        ):
            await self.reconcile(key)
        elif changed:
            # A node named in the condition holds the VIP again: judged within
            # FOUND_COALESCE_S, once for every node found meanwhile (the agents of a
            # burst late past their grace report one after another).
            at = now + FOUND_COALESCE_S
            if self._rechecks.get(key, at) >= at:
                self._rechecks[key] = at
                self._recheck.set()

    async def _tell_nodes(self, service: Obj, decision: Decision) -> None:
        """The Event of a condition turned to or from NodesMissingVip by this write."""
        spec = node_event(service, decision.status)
        if spec is None:
            return
        cause = f"nodes/{uid(service)}/{resource_version(service)}"
        try:
            await self._recorder.emit(spec, service, cause)
        except NotLeader:
            raise
        except Exception as exc:
            log.warning(
                "cannot record the %s Event of %s: %r", spec.reason, object_key(service), exc
            )

    async def run_rechecks(self) -> None:
        """For the whole term: judge a Service again when the grace period of one of its
        member nodes without the VIP ends."""
        while True:
            self._recheck.clear()
            now = time.monotonic()
            for key in [k for k, at in self._rechecks.items() if at <= now]:
                del self._rechecks[key]  # judging it may set the next one
                try:
                    await self.reconcile(key)
                except NotLeader:
                    return
                except Exception as exc:
                    log.warning("service %s: judging its nodes failed: %r; retrying", key, exc)
                    self._rechecks.setdefault(key, time.monotonic() + 1.0)
            due = min(self._rechecks.values(), default=None)
            timeout = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._recheck.wait()

    async def _apply(self, service: Obj, decision: Decision) -> None:
        meta = metadata(service)
        name, namespace = str(meta.get("name")), str(meta.get("namespace"))
        term = self._term
        tracer = term.runtime.tracer
        if decision.status is not None:
            with tracer.start_as_current_span(
                "status write", attributes=term.span_attributes(service)
            ):
                service = await self._kube.write(
                    "status",
                    self._kube.core.patch_namespaced_service_status,
                    name,
                    namespace,
                    decision.status,
                    _content_type=MERGE_PATCH,
                )
                trace_id = trace_id_of_current_span()
                if decision.ingress:
                    waited = term.convergence.written(object_key(service), time.monotonic())
                    if waited is not None:
                        term.convergence_seconds.observe(waited)
                if "loadBalancer" in decision.status["status"]:
                    # Only the VIPs are news on the bus; a condition alone is not.
                    await self._announce_status(service, trace_id)
                if trace_id and not decision.remove_finalizer:
                    service = await self._mark_trace(service, trace_id)
        if decision.remove_finalizer:
            with tracer.start_as_current_span(
                "finalizer remove", attributes=term.span_attributes(service)
            ):
                await self.write_finalizer(
                    service, present=False, trace_id=trace_id_of_current_span()
                )

    async def write_finalizer(
        self, service: Obj, *, present: bool, trace_id: str | None = None
    ) -> Obj | None:
        """Add (with our cluster annotation) or remove our finalizer; on a stale
        resourceVersion re-read and try again.

        Returns the Service as written, or None when it is gone (or, when
        adding, no longer ours).
        """
        meta = metadata(service)
        name, namespace, service_uid = (
            str(meta.get("name")),
            str(meta.get("namespace")),
            uid(service),
        )
        kind = "finalizer-add" if present else "finalizer-remove"
        for _ in range(self._retries):
            patch = finalizer_patch(
                service, present=present, cluster=self._term.cluster, trace_id=trace_id
            )
            if patch is None:
                return service
            try:
                return await self._kube.write(
                    kind,
                    self._kube.core.patch_namespaced_service,
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
            fresh = await self._kube.read_service(name, namespace)
            if fresh is None or uid(fresh) != service_uid:
                return None
            service = fresh
            if present and (not self._term.is_ours(service) or being_deleted(service)):
                return None
        raise KubeApiError(409, "Conflict", f"service {namespace}/{name}: kept conflicting")

    async def remove_leftovers(self, service: Obj) -> None:
        """Remove our condition from a Service no load balancer serves any more."""
        patch = leftover_patch(service, now=micro_time())
        if patch is None:
            return
        meta = metadata(service)
        try:
            await self._kube.write(
                "status",
                self._kube.core.patch_namespaced_service_status,
                str(meta.get("name")),
                str(meta.get("namespace")),
                patch,
                _content_type=MERGE_PATCH,
            )
        except KubeApiError as exc:
            if not exc.not_found:
                raise  # a conflict is retried with the object as it is then

    async def _mark_trace(self, service: Obj, trace_id: str) -> Obj:
        """Record the trace of what was just written (``kubectl describe`` shows it)."""
        patch = trace_patch(service, trace_id)
        if patch is None:
            return service
        meta = metadata(service)
        try:
            return await self._kube.write(
                "annotation",
                self._kube.core.patch_namespaced_service,
                str(meta.get("name")),
                str(meta.get("namespace")),
                patch,
                _content_type=MERGE_PATCH,
            )
        except KubeError as exc:
            # Informational: not worth redoing the status write that came before it.
            log.warning("could not record the trace of %s: %s", object_key(service), exc)
            return service

    async def _refused_write(self, service: Obj, exc: KubeApiError) -> None:
        """The API refused a write as invalid: say so on the Service, retrying cannot help."""
        key = object_key(service)
        log.error("service %s: the API refused our status write: %s", key, exc)
        cause = f"refused/{uid(service)}/{resource_version(service)}"
        await self._recorder.emit(refused_event(str(exc.message or exc)), service, cause)

    async def _announce_status(self, service: Obj, trace_id: str | None) -> None:
        """Tell the bus what status now says: the end of the change's trace."""
        term = self._term
        meta = metadata(service)
        written = StatusWritten(
            cluster=term.cluster,
            namespace=str(meta.get("namespace")),
            name=str(meta.get("name")),
            uid=uid(service),
            vips=tuple(str(i.get("ip")) for i in ingress(service) if isinstance(i, dict)),
            trace_id=trace_id,
        )
        msg_id = f"{term.cluster}/{written.uid}/{resource_version(service)}/status"
        try:
            await term.publish(written, msg_id)
        except BusError as exc:
            # Informational only (no service consumes it): not worth redoing the write.
            log.warning("could not announce the status of %s: %s", object_key(service), exc)
