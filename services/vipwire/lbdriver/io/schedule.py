"""Marking Services for a reconcile: the coalescing schedule on the clock, and why.

Handlers never wait for an appliance: they update what we know and mark the
affected Services here. The schedule (:class:`Coalescer`) says when each one
is reconciled, so a burst of endpoint or node events becomes one write per
Service per coalescing window, and one Service never waits for another.
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

from opentelemetry import context as otel_context
from opentelemetry.context import Context

from vipwire.bus import Delivery
from vipwire.contracts import ServiceRef, service_subject
from vipwire.lbdriver.core.coalesce import Coalescer
from vipwire.lbdriver.core.inventory import Inventory
from vipwire.lbdriver.settings import LbdriverSettings
from vipwire.metrics import Registry


class Cause(NamedTuple):
    """Why a Service is reconciled: the message it answers to and the trace to continue.

    Only what decisions and message ids need (not the delivery, whose headers
    and payload would outlive it).
    """

    #: Subject and stream sequence of the message it answers to.
    subject: str
    seq: int
    #: Its subject family (vip, node, endpoints).
    family: str
    #: The trace to join (that of the delivery's handler); None: start a new one.
    context: Context | None
    #: What happened: a subject family (vip, node, endpoints), drift, failover, recovery.
    trigger: str


def cause_of(d: Delivery, trigger: str) -> Cause:
    """The cause of reconciles asked for by a delivery, in its handler's trace."""
    return Cause(d.subject.raw, d.seq, d.subject.family, otel_context.get_current(), trigger)


class Schedule:
    """The Services waiting for a reconcile; ``wake`` is set whenever that changes."""

    def __init__(self, settings: LbdriverSettings, inventory: Inventory, metrics: Registry) -> None:
        self.coalescer: Coalescer[ServiceRef, Cause] = Coalescer(
            settings.coalesce_window_ms / 1000, quiet=settings.coalesce_quiet_ms / 1000
        )
        self.wake = asyncio.Event()
        self._inventory = inventory
        self._m_triggers = metrics.counter(
            "lbdriver_reconcile_triggers_total",
            "Events that asked for a Service reconcile, by trigger (coalesced into fewer)",
            ["trigger"],
        )

    def mark(
        self, key: ServiceRef, cause: Cause, *, force: bool = False, urgent: bool = False
    ) -> None:
        self.coalescer.mark(key, time.monotonic(), cause, force=force, urgent=urgent)
        self._m_triggers.inc(trigger=cause.trigger)
        self.wake.set()

    def mark_again(self, key: ServiceRef, trigger: str) -> None:
        """Reconcile a known Service soon for a reason of our own (a new trace), named
        after its assignment."""
        state = self._inventory.services.get(key)
        if state is not None:
            subject = service_subject("vip", *key)
            self.mark(key, Cause(subject, state.assigned_seq, "vip", None, trigger), urgent=True)

    def requeue(self, key: ServiceRef, delay: float, trigger: str) -> None:
        """Reconcile a known Service again in ``delay`` seconds (sooner if marked
        meanwhile, never sooner than its window allows): controller-runtime's
        "requeue after", as decided by the core (a drain that ends)."""
        state = self._inventory.services.get(key)
        if state is not None:
            subject = service_subject("vip", *key)
            cause = Cause(subject, state.assigned_seq, "vip", None, trigger)
            self.coalescer.requeue(key, time.monotonic(), delay, cause)
            self._m_triggers.inc(trigger=trigger)
            self.wake.set()

    def busy(self, key: ServiceRef) -> bool:
        """Pending or running."""
        return self.coalescer.busy(key)

    def running(self, key: ServiceRef) -> bool:
        return self.coalescer.running(key)

    def forget(self, key: ServiceRef) -> None:
        self.coalescer.forget(key)

    def pending_count(self) -> int:
        return self.coalescer.pending_count()
