"""Per appliance, after the start-up: drift passes and health probes.

A drift pass lists a partition anew and compares it with what the Services
placed there should have (:func:`~vipwire.lbdriver.core.drift.find_drift`):
Services whose objects were changed out of band are reconciled again, objects
of ours that no Service accounts for are removed. A probe is one guarded
listing, so that a dead active appliance is noticed while nothing is written,
and an open circuit breaker is tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from vipwire.contracts import ServiceRef
from vipwire.lbdriver.core.desired import owner_of
from vipwire.lbdriver.core.drift import describe_drift, find_drift
from vipwire.lbdriver.core.inventory import Inventory
from vipwire.lbdriver.core.virtual_servers import VirtualServer
from vipwire.lbdriver.io.adoption import CHUNK
from vipwire.lbdriver.io.appliance_client import ApplianceClient, CircuitOpen
from vipwire.lbdriver.io.drivers import ApplianceError
from vipwire.lbdriver.io.failover import Failover
from vipwire.lbdriver.io.fencing import NotLeader
from vipwire.lbdriver.io.schedule import Schedule
from vipwire.lbdriver.settings import LbdriverSettings
from vipwire.metrics import Registry

log = logging.getLogger("vipwire.lbdriver")


class Maintenance:
    """The maintenance loops of every appliance."""

    def __init__(
        self,
        settings: LbdriverSettings,
        *,
        clients: Mapping[str, ApplianceClient],
        inventory: Inventory,
        schedule: Schedule,
        failover: Failover,
        metrics: Registry,
    ) -> None:
        self.settings = settings
        self._clients = clients
        self._inventory = inventory
        self._schedule = schedule
        self._failover = failover
        self._sweep = {name: asyncio.Event() for name in clients}
        #: Objects repaired or removed by drift passes since start.
        self.drift_repairs = 0
        self._m_drift = metrics.counter(
            "lbdriver_drift_repairs_total",
            "Objects found changed out of band (repair) or left over (orphan) and fixed",
            ["appliance", "kind"],
        )
        metrics.gauge(
            "lbdriver_drifted_services",
            "Services whose objects a verification found changed and that are not yet "
            "written again (reported ApplianceDrift); stuck above 0: the appliance refuses",
            fn=lambda: float(sum(1 for s in inventory.services.values() if s.drift is not None)),
        )

    def request_pass(self, appliance: str) -> None:
        """Ask for a drift pass of ``appliance`` soon."""
        self._sweep[appliance].set()

    async def maintain(self, client: ApplianceClient) -> None:
        """Per appliance: drift passes every ``verify_interval_s`` (the first at once: the
        start-up sweep) and when asked; a pass whenever an open breaker allows a probe;
        and a health probe when the appliance has not answered for ``health_interval_s``
        (every second while its calls fail), so a dead active is noticed while idle."""
        requested = self._sweep[client.name]
        interval = self.settings.verify_interval_s
        health = self.settings.health_interval_s
        next_pass = time.monotonic()
        probed: float | None = None
        last_probe = time.monotonic()
        while True:
            retry_at = client.breaker.retry_at
            due = next_pass
            if retry_at is not None and retry_at != probed:
                due = min(due, retry_at)
            next_probe = math.inf
            if health > 0 and retry_at is None:
                every = 1.0 if client.breaker.failures else health
                next_probe = max(client.last_answer, last_probe) + min(every, health)
            timeout = min(due, next_probe) - time.monotonic()
            if retry_at is not None:
                timeout = min(timeout, 1.0)  # another caller's probe may reopen it meanwhile
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if math.isinf(timeout) else max(0.0, timeout)):
                    await requested.wait()
            now = time.monotonic()
            retry_at = client.breaker.retry_at
            may_probe = retry_at is not None and retry_at != probed and now >= retry_at
            if requested.is_set() or now >= due or may_probe:
                requested.clear()
                if may_probe:
                    probed = retry_at
                await self._guarded(client, self._drift_pass(client))
                next_pass = time.monotonic() + interval if interval > 0 else math.inf
            elif now >= next_probe:
                last_probe = now
                partitions = sorted(self._inventory.partitions() | set(client.partitions()))
                if partitions:
                    await self._guarded(client, client.probe(partitions[0]))

    async def _guarded(self, client: ApplianceClient, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except (CircuitOpen, NotLeader):
            pass  # fails fast (breaker), or no longer ours to write (lease)
        except ApplianceError as exc:
            client.note_error(f"{exc.reason}: {exc}")
            log.info("maintenance of %s failed: %s", client.name, exc)
        except Exception:
            log.exception("maintenance of %s failed", client.name)

    async def _drift_pass(self, client: ApplianceClient) -> None:
        group = client.settings.group
        active = self._failover.target(group) == client.name
        partitions = sorted(self._inventory.partitions() | set(client.partitions()))
        if not active and not self.settings.release_standby:
            # A standby sharing the active's configuration is never written; it is
            # only probed, so that its health is known when it is needed.
            if partitions and client.state(time.monotonic()) != "closed":
                await client.refresh(partitions[0])
            return
        for partition in partitions:
            await self._drift_partition(client, partition, active)

    def _is_active(self, appliance: str, group: str) -> bool:
        return self._failover.active(group) == appliance

    def _staying(self, appliance: str, group: str, partition: str) -> set[str]:
        active = self._is_active(appliance, group)
        return self._inventory.staying(appliance, group, partition, active=active)

    async def _drift_partition(self, client: ApplianceClient, partition: str, active: bool) -> None:
        name, group = client.name, client.settings.group
        inventory = self._inventory
        placed_here = (
            inventory.in_partition(partition, group) if self._is_active(name, group) else []
        )
        before = {
            k: inventory.services[k].generation
            for k in placed_here
            if inventory.settled(k, name) and not self._schedule.busy(k)
        }
        actual = await client.refresh(partition)
        if self._is_active(name, group) != active:
            return  # failed over while we listed: the next pass sees the new roles
        # Every Service with objects in this listing is known now (objects are
        # written only for known Services): none of theirs is an orphan.
        staying = self._staying(name, group, partition)
        # A settled Service whose objects are exactly those it last wrote (same digest)
        # has no drift; only the others are computed and diffed. The comparisons are
        # made a chunk at a time, so a large partition does not hold up the rest.
        settled: dict[str, dict[str, VirtualServer]] = {}
        keys: dict[str, ServiceRef] = {}
        for i, (key, generation) in enumerate(before.items()):
            if i and i % CHUNK == 0:
                await asyncio.sleep(0)
                if self._is_active(name, group) != active:
                    return
            if self._schedule.busy(key):
                continue  # changed while we listed: its own reconcile is the authority
            desired = inventory.drift_candidate(key, generation, name, group, actual)
            if desired is not None:
                owner = owner_of(*key)
                settled[owner] = desired
                keys[owner] = key
        # Services placed here since the listing keep what they may have adopted.
        placed = staying | self._staying(name, group, partition)
        found = find_drift(actual, settled, placed, self.settings.prefix)
        for owner, ops in found.repairs.items():
            log.warning(
                "drift on %s/%s: %d object(s) of %s were changed out of band; repairing",
                name,
                partition,
                len(ops),
                owner,
            )
            self._count_drift(name, "repair", len(ops))
            state = inventory.services.get(keys[owner])
            if state is not None:
                # The reconcile tells it before it writes (ApplianceDrift), and again
                # if the repair fails: the status no longer claims what is not there.
                state.drift = describe_drift(ops)
            self._schedule.mark_again(keys[owner], "drift")
        if found.orphans:
            log.warning(
                "%s/%s: removing %d object(s) of ours that no Service accounts for",
                name,
                partition,
                len(found.orphans),
            )
            await client.apply(partition, found.orphans)
            self._count_drift(name, "orphan", len(found.orphans))

    def _count_drift(self, appliance: str, kind: str, count: int) -> None:
        self._m_drift.inc(count, appliance=appliance, kind=kind)
        self.drift_repairs += count
