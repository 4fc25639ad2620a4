"""This replica's index of status VIPs: every Service snapshot on the stream, read in order.

The pure index is :class:`~vipwire.ipam.core.status_vips.StatusVips`; this shell
keeps it from an ephemeral consumer of every ``service`` subject (the newest
message of each at start, then every new one, one at a time and in stream
order) and remembers the highest stream sequence it has read.

Replicas share the durable consumer, so no replica sees every snapshot through
it; this consumer is each replica's own. A replica keeps one only when it started
on an empty store (no claim at all: a first start, or a lost store): with the
store intact, every address in a live Service's status is claimed already.
Before a Service gets new addresses, :meth:`StatusIndex.caught_up` waits until
the index has read the stream as far as that Service's own snapshot: every
snapshot published before it, with the addresses its status holds, is then
reserved (the order the snapshots are handled in, by this replica or another,
does not matter).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vipwire.bus import DONE, Bus, ConsumerSpec, Delivery, PullConsumer, Unreadable, Verdict
from vipwire.contracts import ServiceGone, ServiceSnapshot, family_filter
from vipwire.ipam.core.messages import in_force
from vipwire.ipam.core.status_vips import StatusVips

log = logging.getLogger("vipwire.ipam")


class StatusIndex:
    def __init__(self, bus: Bus, serves: Callable[[str], bool] = lambda _: True) -> None:
        self.vips = StatusVips()
        self._bus = bus
        #: Whether ipam serves a cluster (``ipam.clusters``): no other reserves anything.
        self._serves = serves
        self._seq = 0
        self._behind = False
        #: Stopped for good: nothing to reserve (see :meth:`retire_when_unused`).
        self.retired = False
        self._progress = asyncio.Event()
        self._consumer: PullConsumer | None = None

    @property
    def seq(self) -> int:
        """The highest stream sequence of a ``service`` message read so far."""
        return self._seq

    async def start(self) -> None:
        spec = ConsumerSpec(
            filters=(family_filter("service"),),
            deliver="last_per_subject",
            # One lane: in stream order, so that ``seq`` says everything before it is read.
            concurrency=1,
            batch=256,
            ack="none",
            supersede=False,
            traced=False,
        )
        self._consumer = self._bus.consumer(spec, self._on_delivery, on_unreadable=self._skip)
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def retire_when_unused(self, after_s: float) -> None:
        """After ``after_s``, stop for good if no Service showed VIPs in its status: the
        empty store was a first start, not a lost one, and nothing needs reserving."""
        await asyncio.sleep(after_s)
        if len(self.vips):
            log.info(
                "%d Services hold VIPs in their status on an empty store (a lost store): "
                "their addresses stay reserved for them until they hold them",
                len(self.vips),
            )
            return
        self.retired = True
        await self.stop()
        log.info("no Service holds VIPs in its status: a first start; status VIP index stopped")

    async def _on_delivery(self, d: Delivery) -> Verdict:
        message = in_force(d.message)
        if isinstance(message, ServiceSnapshot | ServiceGone) and self._serves(message.cluster):
            self.vips.see(message)
        self._advance(d.seq)
        return DONE

    async def _skip(self, bad: Unreadable) -> None:
        # Unreadable: the newest valid snapshot of its subject stays in force (the
        # consumer hands it over); the stream has been read this far all the same.
        self._advance(bad.seq)

    def _advance(self, seq: int) -> None:
        if seq > self._seq:
            self._seq = seq
            self._progress.set()
            self._progress = asyncio.Event()

    async def caught_up(self, seq: int, timeout_s: float) -> bool:
        """Wait until every ``service`` message up to ``seq`` is read (False: not
        within ``timeout_s``; logged once until the index reads that far again)."""
        if self.retired or self._seq >= seq:
            if self._behind:
                self._behind = False
                log.info("the status VIP index reads the stream again (seq %d)", self._seq)
            return True
        try:
            async with asyncio.timeout(timeout_s):
                while self._seq < seq:
                    await self._progress.wait()
        except TimeoutError:
            if not self._behind:
                self._behind = True
                log.warning(
                    "the status VIP index has read vipwire.*.service.> to seq %d, not to %d, "
                    "after %.1f s: new VIPs are chosen without waiting for it, so an address "
                    "in the status of a Service whose snapshot it has not read may be given "
                    "to another one (only matters after a lost store); check this ipam "
                    "replica's connection to NATS",
                    self._seq,
                    seq,
                    timeout_s,
                )
            return False
        return True
