"""Polling ipam's and the lbdriver's status endpoints for pools and appliance health.

A service that does not answer is shown as unknown, with the reason, never
as an error of the dashboard.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from vipwire.bus import Bus, BusError, NoResponders
from vipwire.contracts import IPAM_STATUS, LBDRIVER_STATUS, ControlVerb
from vipwire.dashboard.core.control_answers import parse_ipam, parse_lbdriver
from vipwire.dashboard.core.views import ControlStatus

T = TypeVar("T")


class ControlPoller:
    """Asks both services every ``interval_s``; :attr:`status` holds the last answers."""

    def __init__(
        self,
        bus: Bus,
        *,
        interval_s: float,
        timeout_s: float,
        on_change: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bus = bus
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._on_change = on_change
        self._clock = clock
        self.status = ControlStatus()

    async def run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self._interval_s)

    async def poll(self) -> None:
        """Ask ipam and the lbdriver for their status once."""
        (pools, ipam_error), (appliances, lb_error) = await asyncio.gather(
            self._ask(IPAM_STATUS, parse_ipam),
            self._ask(LBDRIVER_STATUS, parse_lbdriver),
        )
        before = self.status
        self.status = ControlStatus(
            pools=pools,
            appliances=appliances,
            ipam_error=ipam_error,
            lbdriver_error=lb_error,
            polled_at=self._clock(),
        )
        if (before.pools, before.appliances, before.ipam_error, before.lbdriver_error) != (
            pools,
            appliances,
            ipam_error,
            lb_error,
        ):
            self._on_change()

    async def _ask(
        self, verb: ControlVerb, parse: Callable[[bytes], T]
    ) -> tuple[T | None, str | None]:
        """``verb`` asked as the dashboard's own identity (its credentials' name)."""
        service = verb.service
        subject = verb.subject(self._bus.caller)
        try:
            reply = await self._bus.request(subject, b"", timeout_s=self._timeout_s)
        except NoResponders:
            return None, f"{service} does not answer on {subject} (no responders)"
        except BusError as exc:
            if isinstance(exc.__cause__, TimeoutError):
                return None, f"{service} did not answer within {self._timeout_s:g}s"
            return None, f"asking {service} failed: {exc.__cause__ or exc!r}"
        try:
            return parse(reply), None
        except ValueError as exc:
            return None, str(exc)
