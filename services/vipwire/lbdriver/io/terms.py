"""A leader's term: what the replica holding the lease runs, and stops when it loses it.

Elected, it compares every Service's objects with the appliances (adopting what
is already right, as after a restart), writes what differs, then runs the
reconciles and the per-appliance maintenance until its term ends. Deposed, it
stops them; the fence (``io.fencing``) has already refused their writes.

A replica that stood by before this term rebuilt the same state from the
stream but wrote nothing; it reads the last reports again (what the last leader
said) and compares every Service, one cut short by an earlier step-down included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from vipwire.aio import cancel_and_wait
from vipwire.lbdriver.core.inventory import Inventory
from vipwire.lbdriver.io.adoption import StartUp, adopt
from vipwire.lbdriver.io.appliance_client import ApplianceClient
from vipwire.lbdriver.io.failover import Failover
from vipwire.lbdriver.io.last_reports import last_reports
from vipwire.lbdriver.io.maintenance import Maintenance
from vipwire.lbdriver.io.pacing import Pacer
from vipwire.lbdriver.io.reconciler import Reconciler
from vipwire.lbdriver.io.schedule import Schedule
from vipwire.lbdriver.settings import LbdriverSettings
from vipwire.runtime import Runtime

log = logging.getLogger("vipwire.lbdriver")


class Terms:
    """Begins a term when elected, ends it when deposed (the election's callbacks)."""

    def __init__(
        self,
        settings: LbdriverSettings,
        runtime: Runtime,
        *,
        inventory: Inventory,
        schedule: Schedule,
        start_up: StartUp,
        clients: Mapping[str, ApplianceClient],
        failover: Failover,
        reconciler: Reconciler,
        maintenance: Maintenance,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self._inventory = inventory
        self._schedule = schedule
        self._start_up = start_up
        self._clients = clients
        self._failover = failover
        self._reconciler = reconciler
        self._maintenance = maintenance
        self._tasks: list[asyncio.Task[None]] = []
        #: Terms begun since start.
        self.count = 0
        #: Monotonic times of the start and of the end of the replay (set by the service).
        self.started_at = time.monotonic()
        self.replayed_at = 0.0

    async def begin(self, reason: str) -> None:
        self._spawn(self._run(), "lbdriver-term")

    async def end(self, reason: str) -> None:
        await self.cancel()
        await self._reconciler.drain(0.0)

    async def cancel(self) -> None:
        """Stop the term's loops (reconciles in flight are the caller's to drain)."""
        await cancel_and_wait(self._tasks)
        self._tasks.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def _run(self) -> None:
        start_up, inventory, schedule = self._start_up, self._inventory, self._schedule
        began = time.monotonic()
        self.count += 1
        if self.count > 1 or began - self.replayed_at > self.settings.lease_ttl_s:
            # Stood by meanwhile: the stream's reports are the last leader's.
            reports = await last_reports(self.runtime.bus)
            pacer = Pacer()  # every Service, in slices: the lease renewal runs meanwhile
            for key, (stamp, _) in list(reports.items()):
                await pacer.turn()
                state = inventory.services.get(key)
                if state is not None:
                    state.published = stamp
            inventory.reports = reports
            start_up.begin_term()
            for key in list(inventory.services):
                await pacer.turn()
                schedule.mark_again(key, "takeover")
        await self._failover.choose_actives()
        start_up.waiting = {k for k in inventory.services if schedule.busy(k)}
        adopted = await adopt(
            start_up,
            inventory=inventory,
            schedule=schedule,
            clients=self._clients,
            failover=self._failover,
            metrics=self.runtime.metrics,
        )
        compared = time.monotonic()
        if not start_up.waiting:
            start_up.done.set()
        self._spawn(self._reconciler.run(), "lbdriver-flush")
        await start_up.done.wait()
        inventory.reports.clear()
        start_up.ready = True
        log.info(
            "lbdriver ready as leader in %.2fs (replay %.2fs, comparison %.2fs): %d services, "
            "%d of them already programmed and reported",
            time.monotonic() - (self.started_at if self.count == 1 else began),
            self.replayed_at - self.started_at,
            compared - began,
            len(inventory),
            adopted,
        )
        for name, client in self._clients.items():
            self._spawn(self._maintenance.maintain(client), f"lbdriver-maintain-{name}")
