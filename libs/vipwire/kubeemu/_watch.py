"""Watch streams: the store's changes fanned out to each open watch.

A watch is a queue fed synchronously by the store (so it misses nothing
between its snapshot and its first live change) and drained by one consumer:
the HTTP handler, or a test iterating in-process. Bookmarks and the watch
timeout are timers inside :meth:`WatchSession.next`, so a watch needs no task
of its own.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any, Final

from vipwire.kubeemu._errors import ApiError
from vipwire.kubeemu._resources import ResourceType
from vipwire.kubeemu._selectors import Filter
from vipwire.kubeemu._store import Change, Store, parse_resource_version
from vipwire.kubeemu._views import OTHER_VIEW

Obj = dict[str, Any]

INITIAL_EVENTS_END: Final = "k8s.io/initial-events-end"


class WatchBrokenError(ConnectionResetError):
    """The emulator cut this watch, as a network break would."""


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_CLOSE: Final = _Signal("CLOSE")
_BREAK: Final = _Signal("BREAK")


class WatchSession:
    """One open watch. ``next()`` gives the next event, ``None`` at the end of the stream.

    Iterating it in-process yields deep copies, so a test may modify what it gets.
    """

    def __init__(
        self,
        hub: WatchHub,
        resource: ResourceType,
        flt: Filter,
        initial: list[Obj],
        *,
        bookmark_interval: float | None,
        timeout: float | None,
    ) -> None:
        self.resource = resource
        self._hub = hub
        self._filter = flt
        self._queue: asyncio.Queue[Obj | _Signal] = asyncio.Queue()
        for event in initial:
            self._queue.put_nowait(event)
        loop = asyncio.get_running_loop()
        self._interval = bookmark_interval
        self._next_bookmark = loop.time() + bookmark_interval if bookmark_interval else None
        self._deadline = loop.time() + timeout if timeout is not None else None
        self._broken = False
        self._ended = False
        # The newest change queued for the consumer, and the newest it has sent on: what
        # a write that answers only after its watch events waits for (see WatchHub.sent).
        self._offered_rv = 0
        self._sent_rv = 0
        # Set by a transport that must be cut when the watch breaks (the HTTP handler).
        self.on_break: Callable[[], None] | None = None

    # --- fed by the hub --------------------------------------------------------

    def offer(self, change: Change) -> None:
        if self._ended:
            return
        event = change.for_filter(self._filter)
        if event is None:
            return
        if self._queue.qsize() >= self._hub.max_pending:
            # Like the API server with a watcher that cannot keep up: end the
            # stream; the client re-watches from the last resourceVersion it saw.
            self.end()
            return
        self._queue.put_nowait({"type": event[0], "object": event[1]})
        self._offered_rv = change.resource_version

    def sent(self, event: Obj) -> None:
        """The consumer has passed ``event`` on (written it to its connection)."""
        raw = str(event.get("object", {}).get("metadata", {}).get("resourceVersion") or "")
        rv = int(raw) if raw.isdigit() else 0
        if rv > self._sent_rv:
            self._sent_rv = rv
            self._hub.progressed()

    def owes(self, resource_version: int) -> bool:
        """Whether a change up to ``resource_version`` is queued here and not sent yet."""
        return not self._ended and self._sent_rv < min(resource_version, self._offered_rv)

    def end(self, *, broken: bool = False) -> None:
        """Stop the stream: gracefully after what is queued, or at once if ``broken``."""
        if broken and not self._broken:
            self._broken = True
            if self.on_break is not None:
                self.on_break()
        if not self._ended:
            self._ended = True
            self._hub.forget(self)
            self._queue.put_nowait(_BREAK if broken else _CLOSE)

    # --- drained by the consumer -----------------------------------------------

    async def next(self) -> Obj | None:
        loop = asyncio.get_running_loop()
        while True:
            if self._broken:
                raise WatchBrokenError("watch connection broken by the emulator")
            now = loop.time()
            if self._deadline is not None and now >= self._deadline:
                return None
            if (
                self._next_bookmark is not None
                and self._interval is not None
                and now >= self._next_bookmark
                and self._queue.empty()
            ):
                # The queue is empty, so this watcher has seen every change up
                # to the current resourceVersion that concerns it.
                self._next_bookmark = now + self._interval
                return self._hub.bookmark(self.resource)
            timers = [t for t in (self._deadline, self._next_bookmark) if t is not None]
            try:
                async with asyncio.timeout(min(timers) - now if timers else None):
                    item = await self._queue.get()
            except TimeoutError:
                continue
            if item is _BREAK:
                raise WatchBrokenError("watch connection broken by the emulator")
            if isinstance(item, _Signal):
                return None
            return item

    def close(self) -> None:
        """Release the session; the consumer calls this when it stops reading."""
        self._ended = True
        self._hub.forget(self)

    def __aiter__(self) -> WatchSession:
        return self

    async def __anext__(self) -> Obj:
        try:
            event = await self.next()
        except WatchBrokenError:
            self.close()
            raise
        if event is None:
            self.close()
            raise StopAsyncIteration
        self.sent(event)
        return copy.deepcopy(event)

    async def __aenter__(self) -> WatchSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class WatchHub:
    """Every open watch of one emulated cluster."""

    def __init__(self, store: Store, *, max_pending: int = 10_000) -> None:
        self.max_pending = max_pending
        self._store = store
        self._sessions: set[WatchSession] = set()
        self._progress: asyncio.Event | None = None
        self._unsubscribe = store.subscribe(self._dispatch)

    @property
    def open_count(self) -> int:
        return len(self._sessions)

    def open(
        self,
        resource: ResourceType,
        flt: Filter,
        *,
        resource_version: str | None = None,
        allow_bookmarks: bool = False,
        bookmark_interval: float = 60.0,
        send_initial_events: bool | None = None,
        timeout: float | None = None,
    ) -> WatchSession:
        """Open a watch; raises 410 Expired when ``resource_version`` is no longer retained.

        Without a resourceVersion (or with "0") the stream starts with a
        synthetic ADDED event per current object, as documented; with one, it
        replays every change after it.
        """
        rv = parse_resource_version(resource_version)
        if send_initial_events and not allow_bookmarks:
            raise ApiError(
                422, "Invalid", "sendInitialEvents: Forbidden: requires allowWatchBookmarks=true"
            )
        initial_state = send_initial_events if send_initial_events is not None else not rv
        events: list[Obj] = []
        other = OTHER_VIEW.get(resource)
        if initial_state:
            objects = self._store.list(resource, flt).items
            if other is not None:
                shown = (
                    other[1](o) for o in self._store.list(other[0], Filter(flt.namespace)).items
                )
                objects = objects + [o for o in shown if flt.matches(o)]
            events = [{"type": "ADDED", "object": obj} for obj in objects]
            if send_initial_events:
                end = self.bookmark(resource)
                end["object"]["metadata"]["annotations"] = {INITIAL_EVENTS_END: "true"}
                events.append(end)
        elif rv is not None:
            changes = self._store.changes_since(resource, rv)
            if other is not None:
                changes += [_shown(c, resource) for c in self._store.changes_since(other[0], rv)]
                changes.sort(key=lambda c: c.resource_version)
            for change in changes:
                event = change.for_filter(flt)
                if event is not None:
                    events.append({"type": event[0], "object": event[1]})
        session = WatchSession(
            self,
            resource,
            flt,
            events,
            bookmark_interval=bookmark_interval if allow_bookmarks else None,
            timeout=timeout,
        )
        self._sessions.add(session)
        return session

    def bookmark(self, resource: ResourceType) -> Obj:
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": resource.kind,
                "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": str(self._store.resource_version)},
            },
        }

    def forget(self, session: WatchSession) -> None:
        self._sessions.discard(session)
        self.progressed()

    def progressed(self) -> None:
        if self._progress is not None:
            self._progress.set()

    def owing(self, resource_version: int) -> bool:
        """Whether some open watch has changes up to ``resource_version`` still to send."""
        return any(s.owes(resource_version) for s in self._sessions)

    async def sent(self, resource_version: int, *, timeout: float) -> bool:
        """Wait until every open watch has sent its events up to ``resource_version``
        (False: some watch had not after ``timeout`` seconds, a consumer that stalls)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.owing(resource_version):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            progress = self._progress = self._progress or asyncio.Event()
            progress.clear()
            try:
                async with asyncio.timeout(remaining):
                    await progress.wait()
            except TimeoutError:
                return False
        return True

    def close_all(self) -> None:
        for session in list(self._sessions):
            session.end()

    def break_all(self) -> int:
        """Cut every open watch at once, mid-stream; returns how many."""
        sessions = list(self._sessions)
        for session in sessions:
            session.end(broken=True)
        return len(sessions)

    def _dispatch(self, change: Change) -> None:
        for session in list(self._sessions):
            if session.resource is change.resource:
                session.offer(change)
            elif (other := OTHER_VIEW.get(session.resource)) and other[0] is change.resource:
                session.offer(_shown(change, session.resource))

    def detach(self) -> None:
        self._unsubscribe()


def _shown(change: Change, view: ResourceType) -> Change:
    """A change of one Event group as the other group's watchers see it (see :mod:`._views`)."""
    convert = OTHER_VIEW[view][1]
    previous = convert(change.previous) if change.previous is not None else None
    return Change(change.type, change.resource_version, view, convert(change.object), previous)
