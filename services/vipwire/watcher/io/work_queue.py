"""A work queue of keys, as Kubernetes controllers use: level-triggered, deduplicated, retried.

Watch events only say *which* object to look at; the worker reads the
object's current state from the reflector's store. So a key queued five
times before a worker gets to it is handled once, with the newest state; a
key is never handled by two workers at once (a change that arrives while it
is handled queues it again, for after); and a key whose handling fails is
retried on its own, with exponential backoff, while every other key goes on
(to a shorter bound when the bus refused it: see ``bus_backoff_max_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from vipwire.bus import passes
from vipwire.metrics import Counter, Registry

log = logging.getLogger("vipwire.watcher")

#: ``handler(key, trigger)``: ``trigger`` names the newest change that queued the key.
Handler = Callable[[str, str], Awaitable[None]]


class Drop(Exception):
    """Raised by a handler to give a key up without a retry (it logged why)."""


class WorkQueue:
    def __init__(
        self,
        name: str,
        handler: Handler,
        *,
        workers: int,
        backoff_initial_s: float,
        backoff_max_s: float,
        bus_backoff_max_s: float,
        metrics: Registry,
    ) -> None:
        self.name = name
        self._handler = handler
        self._workers = workers
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._bus_backoff_max_s = bus_backoff_max_s
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._triggers: dict[str, str] = {}  # queued or to be re-queued, with its newest trigger
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._m_retries: Counter = metrics.counter(
            "watcher_queue_retries_total", "Keys handled again after a failure, by queue", ["queue"]
        )
        self._m_depth = metrics.gauge("watcher_queue_depth", "Keys waiting, by queue", ["queue"])

    def add(self, key: str, trigger: str) -> None:
        """Queue ``key`` (again); the newest trigger wins."""
        self._triggers[key] = trigger
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()  # a new change is worth handling now, not after the backoff
        if key in self._active or key in self._queued:
            return
        self._queued.add(key)
        self._idle.clear()
        self._ready.put_nowait(key)
        self._m_depth.set(len(self._queued), queue=self.name)

    @property
    def idle(self) -> bool:
        return self._idle.is_set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def run(self) -> None:
        """Run the workers until cancelled."""
        try:
            async with asyncio.TaskGroup() as group:
                for i in range(self._workers):
                    group.create_task(self._work(), name=f"watcher-{self.name}-{i}")
        finally:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()

    async def _work(self) -> None:
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                # A handler swallowed our cancellation (nats-py's wait_for does on 3.11
                # when it races a completion): honour it, or stop() would wait forever.
                raise asyncio.CancelledError
            key = await self._ready.get()
            self._queued.discard(key)
            self._m_depth.set(len(self._queued), queue=self.name)
            trigger = self._triggers.pop(key, "")
            self._active.add(key)
            try:
                await self._handler(key, trigger)
            except Drop:
                self._failures.pop(key, None)
            except Exception as exc:
                self._retry_later(key, trigger, exc)
            else:
                self._failures.pop(key, None)
            finally:
                self._active.discard(key)
            if key in self._triggers and key not in self._timers:
                # Changed while we handled it: once more, with the newest state.
                pending = self._triggers.pop(key)
                self.add(key, pending)
            if not self._queued and not self._active and not self._timers:
                self._idle.set()

    def _retry_later(self, key: str, trigger: str, exc: Exception) -> None:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        # The bus is back within an election's few seconds; an API server may be down
        # for minutes. Doubling to the long bound would keep a Service waiting up to
        # twice the bus's outage.
        longest = self._backoff_max_s
        if passes(exc):
            longest = min(longest, self._bus_backoff_max_s)
        # The exponent capped: 2 ** 1100 does not fit a float, and an outage of the bus
        # gets there in about half an hour of 2 s retries.
        delay = min(self._backoff_initial_s * 2 ** min(failures - 1, 30), longest)
        # Every failure in a row of a key is told at first, then ever more rarely (the
        # 1st, 2nd, 4th, 8th...): in a long outage thousands of Services retry every
        # 2 s, and a line for each would bury everything else.
        level = logging.WARNING if failures & (failures - 1) == 0 else logging.DEBUG
        log.log(
            level, "%s %s: %s; again in %.2fs (failure %d in a row)", self.name, key, exc,
            delay, failures,
        )  # fmt: skip
        self._m_retries.inc(queue=self.name)
        newest = self._triggers.pop(key, trigger)

        def again() -> None:
            self._timers.pop(key, None)
            self.add(key, newest)

        self._timers[key] = asyncio.get_running_loop().call_later(delay, again)


class KeyedLocks:
    """One lock per key, forgotten as soon as nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
