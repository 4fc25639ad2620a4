"""Which appliance of each group is written to, at start-up and when one fails.

The choice itself is :func:`~vipwire.lbdriver.core.placement.choose_active`;
this module feeds it the appliances' health and, at start-up, what each one
holds, and moves a group's Services when its active appliance changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from vipwire.lbdriver.core.drift import held_by
from vipwire.lbdriver.core.inventory import Inventory
from vipwire.lbdriver.core.placement import choose_active
from vipwire.lbdriver.io.appliance_client import ApplianceClient
from vipwire.lbdriver.io.drivers import ApplianceError
from vipwire.lbdriver.io.schedule import Schedule
from vipwire.lbdriver.settings import LbdriverSettings
from vipwire.metrics import Registry

log = logging.getLogger("vipwire.lbdriver")


class Failover:
    """The active appliance of every group."""

    def __init__(
        self,
        settings: LbdriverSettings,
        clients: Mapping[str, ApplianceClient],
        inventory: Inventory,
        schedule: Schedule,
        metrics: Registry,
    ) -> None:
        self.settings = settings
        self._clients = clients
        self._inventory = inventory
        self._schedule = schedule
        self._active: dict[str, str] = {}  # appliance group -> the appliance written to
        self._m_failovers = metrics.counter(
            "lbdriver_failovers_total",
            "Changes of an appliance group's active appliance",
            ["group"],
        )

    def active(self, group: str) -> str | None:
        """The appliance the group writes to now (None: not chosen yet)."""
        return self._active.get(group)

    async def choose_actives(self) -> None:
        """Per group, the appliance to write to: where our objects already are.

        A restart after a failover must not move every Service back (that is
        a write per Service and a flap); so each appliance of a group with a
        choice is listed, and the one holding most of the group's objects wins.
        """
        now = time.monotonic()
        for group in sorted({a.group for a in self.settings.appliances}):
            names = [a.name for a in self.settings.group(group)]
            if len(names) == 1:
                self._active[group] = names[0]
                continue
            owners = self._inventory.owners_in_group(group)
            counts = await asyncio.gather(*(self._holdings(n, owners) for n in names))
            held = {n: c for n, c in zip(names, counts, strict=True) if c is not None}
            usable = set(held) or {n for n in names if self._clients[n].usable(now)}
            chosen = choose_active(names, None, usable, held)
            if chosen is not None:
                self._active[group] = chosen
                log.info("appliance group %s: writing to %s (holdings %s)", group, chosen, held)

    async def _holdings(self, appliance: str, owners: set[str]) -> int | None:
        client = self._clients[appliance]
        count = 0
        try:
            for partition in sorted(self._inventory.partitions()):
                count += held_by(await client.actual(partition), owners, self.settings.prefix)
        except ApplianceError as exc:
            log.warning("appliance %s cannot be listed at start-up: %s", appliance, exc)
            return None
        except Exception:
            log.exception("listing appliance %s at start-up failed", appliance)
            return None
        return count

    def target(self, group: str) -> str | None:
        """The group's active appliance; fails over (and moves its Services) when needed."""
        names = [a.name for a in self.settings.group(group)]
        now = time.monotonic()
        usable = {n for n in names if self._clients[n].usable(now)}
        current = self._active.get(group)
        chosen = choose_active(names, current, usable)
        if chosen is not None and chosen != current:
            self._active[group] = chosen
            if current is not None:
                log.warning(
                    "appliance group %s: %s is failing, moving its Services to %s",
                    group,
                    current,
                    chosen,
                )
                self._m_failovers.inc(group=group)
                for key, _ in self._inventory.in_group(group):
                    self._schedule.mark_again(key, "failover")
        return chosen

    def recovered(self, group: str) -> None:
        """An appliance of the group answers again: its failing Services stop waiting
        out their backoff."""
        for key, state in self._inventory.in_group(group):
            if state.healthy is False:
                self._schedule.mark_again(key, "recovery")
