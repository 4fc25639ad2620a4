"""Services waiting for an address: a queue, retried whenever a claim is freed.

A live Service that got no address (or whose change was refused) waits here
and is retried, from its newest snapshot on the stream, when an address is
released or a claim changes. At start (and after a reload) the queue is
rebuilt from the stream: the Services whose last ``vip`` message is a
VipFailed, so a restart does not strand them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
from opentelemetry.trace import Tracer

from vipwire.bus import BusError
from vipwire.contracts import (
    MalformedMessage,
    ServiceRef,
    ServiceSnapshot,
    VipFailed,
    decode,
    family_filter,
    parse_subject,
    service_subject,
)
from vipwire.ipam.core.allocator import Allocator
from vipwire.ipam.core.claims import Request, request_of
from vipwire.ipam.core.decide import would_succeed
from vipwire.ipam.io.bucket import StoreError
from vipwire.ipam.io.publishing import Newest, Publisher
from vipwire.telemetry import extract_context

log = logging.getLogger("vipwire.ipam")

#: Seconds the start-up scan for Services left waiting by a previous run may take.
RESUME_TIMEOUT: Final = 30.0


class Waiting(msgspec.Struct, frozen=True, kw_only=True):
    """A live Service that got no address (or whose change was refused); retried
    when a claim is released or changes."""

    subject: str
    request: Request
    message: str = ""


class WaitingQueue:
    """The waiting Services, oldest first, and the signal that something was freed."""

    def __init__(self) -> None:
        self.entries: dict[ServiceRef, Waiting] = {}
        self.freed = asyncio.Event()

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, ref: ServiceRef) -> Waiting | None:
        return self.entries.get(ref)

    def put(self, ref: ServiceRef, subject: str, request: Request, message: str) -> None:
        """Wait (again), at the back of the queue."""
        self.entries.pop(ref, None)
        self.entries[ref] = Waiting(subject=subject, request=request, message=message)

    def drop(self, ref: ServiceRef) -> None:
        self.entries.pop(ref, None)


#: Handles a waiting Service's newest snapshot (under its lock, quietly).
RetryOne = Callable[["ServiceRef", "Waiting", ServiceSnapshot, Newest], Awaitable[None]]


class WaitingRetrier:
    """Retries waiting Services when addresses are freed; finds them again at start."""

    def __init__(
        self,
        queue: WaitingQueue,
        publisher: Publisher,
        tracer: Tracer,
        allocator: Callable[[], Allocator],
        retry_one: RetryOne,
        *,
        retry_delay_s: float,
    ) -> None:
        self.queue = queue
        self.publisher = publisher
        self.tracer = tracer
        self._allocator = allocator
        self._retry_one = retry_one
        self.retry_delay_s = retry_delay_s

    async def run(self) -> None:
        """When an address is released, give it to Services that are waiting for one."""
        queue = self.queue
        while True:
            await queue.freed.wait()
            queue.freed.clear()
            trouble = False
            for ref, waiting in list(queue.entries.items()):
                if queue.get(ref) is not waiting:
                    continue
                if not would_succeed(waiting.request, self._allocator()):
                    continue
                try:
                    await self._retry(ref, waiting)
                except (StoreError, BusError) as exc:
                    log.warning("retrying the allocation of %s/%s/%s: %s", *ref, exc)
                    trouble = True
                except Exception:
                    log.exception("retrying the allocation of %s/%s/%s failed", *ref)
                    trouble = True
            if trouble:
                await asyncio.sleep(self.retry_delay_s)
                queue.freed.set()

    async def _retry(self, ref: ServiceRef, waiting: Waiting) -> None:
        """Allocate for a waiting Service, from its newest snapshot on the stream.

        The newest one, because the Service may have changed or gone since it
        started waiting; its trace continues the one that snapshot started.
        """
        last = await self.publisher.last(waiting.subject)
        message = last.message if last is not None else None
        if last is None or not isinstance(message, ServiceSnapshot) or message.deleting:
            self.queue.drop(ref)  # the consumer handles (or handled) that one
            return
        with self.tracer.start_as_current_span(
            "retry allocation", context=extract_context(last.headers)
        ):
            await self._retry_one(ref, waiting, message, last)

    async def resume(self) -> None:
        """Find the Services a previous run (or the pools before a reload) left without
        an address: their last ``vip`` message is a VipFailed. Without this, a restart
        (a rolling update) would strand them until their Service next changed."""
        try:
            failed = await self._last_failures()
        except BusError as exc:
            log.warning("could not look for Services waiting for an address: %s", exc)
            return
        for vip_subject, failure in failed.items():
            parsed = parse_subject(vip_subject)
            subject = service_subject("service", parsed.cluster, failure.namespace, failure.name)
            try:
                last = await self.publisher.last(subject)
            except BusError:
                continue
            message = last.message if last is not None else None
            if (
                isinstance(message, ServiceSnapshot)
                and not message.deleting
                and message.uid == failure.uid
            ):
                ref = ServiceRef(message.cluster, message.namespace, message.name)
                if ref not in self.queue.entries:
                    self.queue.entries[ref] = Waiting(
                        subject=subject, request=request_of(message), message=failure.message
                    )
        if self.queue.entries:
            log.info("%d Services are waiting for an address", len(self.queue.entries))

    async def _last_failures(self) -> dict[str, VipFailed]:
        """The ``vip`` subjects whose last message is a VipFailed (one pass, no acks)."""
        failed: dict[str, VipFailed] = {}
        stored = await self.publisher.bus.last_messages(
            family_filter("vip"), timeout_s=RESUME_TIMEOUT
        )
        for msg in stored:
            try:
                message = decode(msg.subject, msg.data)
            except MalformedMessage as exc:
                # Unreadable is "unknown", not "not waiting": the newest valid message
                # stays in force, or a waiting Service would be stranded until it changes.
                log.warning(
                    "the last message on %s (seq %d) is unreadable (%s); using the newest "
                    "valid one before it",
                    msg.subject,
                    msg.seq,
                    exc,
                )
                found = await self.publisher.bus.last_valid_message(msg.subject)
                if found is None:
                    continue
                message = found[1]
            if isinstance(message, VipFailed):
                failed[msg.subject] = message
        return failed
