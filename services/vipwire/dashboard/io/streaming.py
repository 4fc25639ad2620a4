"""Live updates: bus changes fanned out to every open Server-Sent Events stream.

Changes are coalesced and flushed a few times a second, one event per kind,
so a burst on the bus costs each browser a handful of events, not one per message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from vipwire.contracts import ServiceRef
from vipwire.dashboard.core import queries
from vipwire.dashboard.core.fold import Change, ReadModel

# More changed Services than this in one flush: clients refetch instead of patching.
_PATCH_LIMIT: Final = 200
_FLUSH_S: Final = 0.25
_CLIENT_QUEUE: Final = 64


class Hub:
    """Fans bus changes out to every open event stream, coalesced into a few events a second."""

    def __init__(self, model: ReadModel) -> None:
        self._model = model
        self._clients: set[asyncio.Queue[bytes | None]] = set()
        self._added: set[str] = set()
        self._changed: set[str] = set()
        self._removed: set[str] = set()
        self._clusters = False
        self._control = False
        self._closed = False

    @property
    def clients(self) -> int:
        return len(self._clients)

    def mark(self, changes: Iterable[Change]) -> None:
        for change in changes:
            if change.kind == "added":
                self._added.add(change.key)
                self._removed.discard(change.key)
            elif change.kind == "changed":
                self._changed.add(change.key)
            elif change.kind == "removed":
                self._removed.add(change.key)
                self._added.discard(change.key)
                self._changed.discard(change.key)
            else:
                self._clusters = True

    def mark_control(self) -> None:
        self._control = True

    def subscribe(self) -> asyncio.Queue[bytes | None]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_CLIENT_QUEUE)
        if self._closed:
            queue.put_nowait(None)
        self._clients.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._clients.discard(queue)

    def flush(self) -> None:
        """Send what changed since the last flush, as one event per kind."""
        if not self._clients:
            self._clear()
            return
        events: list[bytes] = []
        if self._added or self._changed or self._removed:
            keys = (self._added | self._changed) - self._removed
            if len(keys) + len(self._removed) > _PATCH_LIMIT:
                payload: dict[str, Any] = {"reload": True, "count": len(keys) + len(self._removed)}
            else:
                rows = []
                for key in sorted(keys):
                    # Keys of Changes are ServiceRef texts, made by the fold.
                    row = queries.row(self._model, ServiceRef.parse(key))
                    if row is not None:
                        rows.append(row)
                payload = {
                    "added": sorted(self._added),
                    "removed": sorted(self._removed),
                    "rows": rows,
                }
            events.append(sse("services", payload))
        if self._clusters:
            events.append(sse("clusters", {}))
        if self._control:
            events.append(sse("control", {}))
        self._clear()
        if events:
            self._send(b"".join(events))

    def _clear(self) -> None:
        self._added.clear()
        self._changed.clear()
        self._removed.clear()
        self._clusters = self._control = False

    def _send(self, data: bytes) -> None:
        for queue in self._clients:
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:
                # A slow reader: drop what it has not read and tell it to refetch.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(sse("services", {"reload": True, "count": -1}))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_S)
            self.flush()

    def close(self) -> None:
        self._closed = True
        for queue in self._clients:
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)


def sse(event: str, payload: Any) -> bytes:
    """One Server-Sent Event: its name and a JSON payload."""
    return b"event: " + event.encode() + b"\ndata: " + msgspec.json.encode(payload) + b"\n\n"
