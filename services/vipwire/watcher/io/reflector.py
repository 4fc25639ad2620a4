"""List, then watch from the list's resourceVersion; list again whenever that is lost.

A reflector keeps the objects of one resource as the API server has them
(``store``) and tells its listener, synchronously, which keys changed; the
listener queues them for workers that read the store (:mod:`.work_queue`). It
never waits for the work itself, so a slow or failing write never holds up
the stream. After a (re)list the listener gets the whole set and queues
every key it holds or knows of: whatever changed or vanished while no watch
was open (a broken stream, a 410) is caught up on, deletions included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Generic, Protocol, TypeVar

from vipwire.kube import ApiCall, KubeApiError, KubeUnavailable, list_all, watch_events
from vipwire.metrics import Counter
from vipwire.watcher.core.translate import Obj, object_key, resource_version
from vipwire.watcher.io.kube_writes import Refusals
from vipwire.watcher.settings import WatcherSettings

log = logging.getLogger("vipwire.watcher")


#: What a reflector keeps of each object.
T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class Listener(Protocol[T_contra]):
    def listed(self, objects: Mapping[str, T_contra], rv: str) -> None:
        """Everything there is, after a list at resourceVersion ``rv``."""

    def changed(self, key: str, obj: T_contra | None, old: T_contra | None, rv: str) -> None:
        """``key`` changed at ``rv``: ``obj`` is its new state, None once deleted."""


class Reflector(Generic[T]):
    def __init__(
        self,
        name: str,
        call: ApiCall,
        listener: Listener[T],
        settings: WatcherSettings,
        *,
        keep: Callable[[Obj], T],
        restarts: Counter,
        list_kwargs: Mapping[str, Any] | None = None,
        store: Callable[[], MutableMapping[str, T]] = dict,
        refusals: Refusals | None = None,
    ) -> None:
        self.name = name
        self._new_store = store
        self.store: MutableMapping[str, T] = store()
        self.synced = asyncio.Event()
        self._call = call
        self._listener = listener
        self._settings = settings
        self._restarts = restarts
        self._kwargs = dict(list_kwargs or {})
        self._rv: str | None = None
        # What the store keeps of each object: what the watcher reads of it, no more.
        self._keep = keep
        self._refusals = refusals

    @property
    def resource_version(self) -> int:
        """The newest resourceVersion seen (listed, watched or bookmarked); 0 before a list."""
        return int(self._rv) if self._rv and self._rv.isdigit() else 0

    async def run(self) -> None:
        """Until cancelled: list, watch, and recover from whatever breaks."""
        s = self._settings
        delay = s.backoff_initial_s
        failures = 0
        last_list = 0.0
        while True:
            try:
                if self._rv is None:
                    await self._list()
                    last_list = time.monotonic()
                progressed = await self._watch(self._rv or "")
                if progressed:
                    failures, delay = 0, s.backoff_initial_s
                if s.resync_interval_s and time.monotonic() - last_list >= s.resync_interval_s:
                    self._restart("resync", relist=True)
                continue
            except KubeApiError as exc:
                if exc.gone:
                    # Our resourceVersion was compacted away: only a new list helps.
                    self._restart("gone", relist=True)
                    if failures == 0:
                        failures = 1
                        continue  # at once, the first time
                elif exc.forbidden and self._refusals is not None:
                    self._restart("forbidden", relist=False)
                    self._refusals.refused(self.name, exc, f"list and watch {self.name}")
                else:
                    self._restart("error", relist=False)
                    log.warning("%s: API error (%s); retrying in %.1fs", self.name, exc, delay)
            except KubeUnavailable as exc:
                self._restart("unavailable", relist=False)
                log.warning("%s: %s; retrying in %.1fs", self.name, exc, delay)
            failures += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, s.backoff_max_s)

    def _restart(self, reason: str, *, relist: bool) -> None:
        self._restarts.inc(resource=self.name, reason=reason)
        if relist:
            self._rv = None

    async def _list(self) -> None:
        s = self._settings
        items, rv = await list_all(
            self._call, timeout=s.request_timeout_s, page_size=s.list_page_size, **self._kwargs
        )
        keep, store = self._keep, self._new_store()
        for o in items:
            store[sys.intern(object_key(o))] = keep(o)
        self.store = store
        self._listener.listed(self.store, rv)
        self._rv = rv
        self.synced.set()
        if self._refusals is not None:
            self._refusals.allowed(self.name)
        log.debug("%s: listed %d at resourceVersion %s", self.name, len(items), rv)

    async def _watch(self, rv: str) -> bool:
        """One watch until the server ends it; True when anything arrived."""
        s = self._settings
        progressed = False
        events = watch_events(
            self._call,
            resource_version=rv,
            timeout_seconds=s.watch_timeout_s,
            connect_timeout=s.request_timeout_s,
            idle_timeout=s.idle_timeout_s,
            **self._kwargs,
        )
        async with contextlib.aclosing(events):
            async for event in events:
                obj = event["object"]
                kind = event.get("type")
                progressed = True
                event_rv = resource_version(obj)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    # Interned: every table of the watcher keyed by it shares one string.
                    key = sys.intern(object_key(obj))
                    kept = self._keep(obj)
                    old = self.store.get(key)
                    if kind == "DELETED":
                        self.store.pop(key, None)
                        self._listener.changed(key, None, kept if old is None else old, event_rv)
                    else:
                        self.store[key] = kept
                        self._listener.changed(key, kept, old, event_rv)
                # BOOKMARK (and anything newer we do not know) only moves us forward.
                self._rv = event_rv or self._rv
        return progressed
