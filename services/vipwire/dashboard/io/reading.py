"""Reading the bus: the last message of every subject the dashboard shows, then live.

An ephemeral consumer (the dashboard never publishes and keeps no durable
state) over the Service, VIP, appliance, node-apply, status and node families.
On start it delivers the last message per subject, which rebuilds the model;
each delivery becomes an :class:`~vipwire.dashboard.core.fold.Event` handed
to the service.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Final

from vipwire.bus import DONE, Bus, ConsumerSpec, Delivery, PullConsumer, Verdict
from vipwire.contracts import ROOT
from vipwire.dashboard.core.fold import Event
from vipwire.telemetry import parse_traceparent

FAMILIES: Final = ("service", "vip", "lb", "applied", "status", "node")


def trace_id_from(headers: Mapping[str, str]) -> str | None:
    """The trace id of a W3C ``traceparent`` header, or None."""
    parent = parse_traceparent(headers.get("traceparent"))
    return None if parent is None else parent.trace_id


class BusReader:
    """Feeds every message of the dashboard's families to ``on_event``, in stream order."""

    def __init__(
        self,
        bus: Bus,
        on_event: Callable[[Event], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bus = bus
        self._on_event = on_event
        self._clock = clock
        self._consumer: PullConsumer | None = None

    async def start(self) -> None:
        spec = ConsumerSpec(
            # One filter (a consumer's filter is checked by the server against the
            # dashboard's permissions only when it has one); other families are skipped.
            filters=(f"{ROOT}.>",),
            deliver="last_per_subject",
            # One lane: the model then sees messages in stream order across subjects.
            concurrency=1,
            batch=512,
            max_deliveries=3,
            traced=False,
        )
        self._consumer = self._bus.consumer(spec, self._on_delivery)
        await self._consumer.start()

    async def caught_up(self) -> None:
        """Returns once the last message per subject present at start has been read."""
        assert self._consumer is not None, "start() first"
        await self._consumer.caught_up()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _on_delivery(self, d: Delivery) -> Verdict:
        if d.subject.family not in FAMILIES:
            return DONE
        self._on_event(
            Event(
                message=d.message,
                time=d.timestamp or self._clock(),
                seq=d.seq,
                trace_id=trace_id_from(d.headers),
            )
        )
        return DONE
