"""The start-up: what is already done after a restart is taken as done.

Nothing is written until the replay is complete: only then is it known which
Services exist, which appliance of each group already holds their objects,
and so what is an orphan. Then every Service whose objects are already on its
appliance exactly as needed, and whose report the stream already holds, is
adopted; only the others are reconciled (and reported).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Final

from vipwire.contracts import ServiceRef
from vipwire.lbdriver.core.inventory import Inventory
from vipwire.lbdriver.io.appliance_client import ApplianceClient
from vipwire.lbdriver.io.drivers import ApplianceError
from vipwire.lbdriver.io.failover import Failover
from vipwire.lbdriver.io.pacing import Pacer
from vipwire.lbdriver.io.schedule import Schedule
from vipwire.metrics import Registry

#: Services a drift pass handles before letting others run.
CHUNK: Final = 256


class StartUp:
    """Where the start-up stands, for readiness and for the reports it makes."""

    def __init__(self) -> None:
        #: The VIP assignments are replayed.
        self.replayed = False
        #: Every Service has been compared (adopted) or reconciled once.
        self.ready = False
        #: Services to reconcile before the start-up is over.
        self.waiting: set[ServiceRef] = set()
        self.done = asyncio.Event()

    def begin_term(self) -> None:
        """Elected again after standing by: the comparison and first reconciles are redone."""
        self.ready = False
        self.waiting = set()
        self.done = asyncio.Event()

    def finished(self, key: ServiceRef) -> None:
        """A Service's first reconcile ended (or it is gone)."""
        if self.waiting:
            self.waiting.discard(key)
            if not self.waiting:
                self.done.set()

    def readiness(self) -> str | None:
        """Why the lbdriver is not ready yet (None: it is)."""
        if self.ready:
            return None
        if not self.replayed:
            return "replaying VIP assignments"
        return f"reconciling {len(self.waiting)} service(s) after start"


async def adopt(
    start_up: StartUp,
    *,
    inventory: Inventory,
    schedule: Schedule,
    clients: Mapping[str, ApplianceClient],
    failover: Failover,
    metrics: Registry,
) -> int:
    """After the replay: take as done the Services whose objects are already on their
    appliance exactly as needed and whose report the stream already holds, published
    after their assignment. Only the others are reconciled (and reported).

    One listing per partition (kept by the appliance client) and a comparison per
    Service, instead of a reconcile each (task, span, diff, publish). Returns how
    many were adopted.
    """
    adopted = 0
    pacer = Pacer()
    for key in sorted(start_up.waiting):
        await pacer.turn()  # the lease renewal and handlers of live events run meanwhile
        state = inventory.services.get(key)
        if state is None or schedule.running(key):
            continue
        if not inventory.answered(key, state):
            continue  # not answered yet: reconcile it
        assignment = state.assignment
        target = failover.target(assignment.appliance_group)
        if target is None:
            continue
        try:
            actual = await clients[target].actual(key.cluster)
        except ApplianceError:
            continue  # its reconcile reports it
        # From here on nothing waits: what is compared is what holds now.
        desired = inventory.adoptable(key, state, assignment, target, actual)
        if desired is None:
            continue
        # Nothing to write and nothing to say: exactly what its reconcile would find.
        schedule.forget(key)
        inventory.note_written(key, target, desired)
        start_up.waiting.discard(key)
        adopted += 1
    reconciles = metrics.counter(
        "lbdriver_reconciles_total",
        "Service reconciles, by result (written, unchanged, failed)",
        ["result"],
    )
    reconciles.inc(adopted, result="unchanged")
    return adopted
