"""Events about Services: recorded once, and counted in a series when they repeat."""

from __future__ import annotations

import logging

from vipwire.kube import MERGE_PATCH, KubeApiError, micro_time
from vipwire.telemetry import trace_id_of_current_span
from vipwire.watcher.core.events import (
    EventSpec,
    Regarding,
    event_name,
    event_namespace,
    event_object,
    event_subject,
    series_patch,
)
from vipwire.watcher.core.term_memory import EVENT_FAMILIES, TermMemory
from vipwire.watcher.core.translate import Obj, metadata, object_key, uid
from vipwire.watcher.io.kube_writes import KubeWrites

log = logging.getLogger("vipwire.watcher")


class EventRecorder:
    """Writes events.k8s.io/v1 Events as ``instance`` of the watcher."""

    def __init__(self, kube: KubeWrites, *, instance: str, conflict_retries: int) -> None:
        self._kube = kube
        self._instance = instance
        self._conflict_retries = conflict_retries

    async def emit(
        self,
        spec: EventSpec,
        service: Obj,
        cause: str,
        *,
        trace_id: str | None = None,
        replayed: bool = False,
        kind: Regarding = "Service",
    ) -> None:
        """Record an Event; a repeat of one already recorded counts in its series.

        Except a Normal Event called for by the replay of a new term: the replay
        cannot tell news from a repeat (what came before is not replayed), so one
        already recorded is taken as told. Otherwise every new term would count a
        confirmation the lbdriver repeated (after its restart, say) as one more
        occurrence: a write per Service for nothing new. (An Event that announces
        VIPs is named for them, so the one recorded is found though its note, a
        member count, changed since: see
        :func:`~vipwire.watcher.core.events.event_name`.)

        ``service`` may be the stand-in of a deleted Service
        (:func:`~vipwire.watcher.core.events.ref_object`).
        """
        events_api = self._kube.events
        meta = metadata(service)
        namespace = event_namespace(service, kind)
        name = event_name(str(meta.get("name")), uid(service), spec)
        now = micro_time()
        body = event_object(
            spec,
            service,
            name=name,
            event_time=now,
            instance=self._instance,
            cause=cause,
            trace_id=trace_id or trace_id_of_current_span(),
            kind=kind,
        )
        try:
            try:
                await self._kube.write("event", events_api.create_namespaced_event, namespace, body)
                return
            except KubeApiError as exc:
                if not exc.already_exists:
                    raise
            if replayed and spec.type == "Normal":
                return
            for _ in range(self._conflict_retries):
                existing = await self._kube.read(events_api.read_namespaced_event, name, namespace)
                patch = series_patch(existing, cause=cause, now=now)
                if patch is None:
                    return  # this very cause was counted already
                try:
                    await self._kube.write(
                        "event-series",
                        events_api.patch_namespaced_event,
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
            log.warning("cannot record %s Event for %s: %s", spec.reason, object_key(service), exc)

    async def emit_deferred(self, memory: TermMemory, key: str, service: Obj | None) -> None:
        """Emit the Events held back until the Service was known (to the last reference
        of a Service deleted meanwhile; dropped if neither, or for another Service of
        the same name)."""
        for family in EVENT_FAMILIES:
            deferred = memory.take_deferred(key, family)
            if deferred is None:
                continue
            about, _ = event_subject(service, deferred.uid, departed=memory.departed_ref(key))
            if about is None:
                continue
            await self.emit(
                deferred.spec,
                about,
                deferred.cause,
                trace_id=deferred.trace_id,
                replayed=deferred.replayed,
            )
