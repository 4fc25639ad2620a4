"""What the lbdriver says about its appliances when asked (``vipwire lb status``).

Served by request/reply on core NATS, on a subject outside the ``VIPWIRE``
stream (which captures ``vipwire.>``): the answer is a moment's view, not
history, and must never be replayed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import msgspec

from vipwire.bus import Bus, Serving
from vipwire.contracts import LBDRIVER_STATUS, ApplianceStatus, LbdriverStatus
from vipwire.lbdriver.core.inventory import Inventory
from vipwire.lbdriver.io.appliance_client import ApplianceClient
from vipwire.lbdriver.io.failover import Failover
from vipwire.lbdriver.settings import LbdriverSettings


def redact_address(address: str | None) -> str | None:
    """A management address fit to show: any ``user:password@`` part removed."""
    if address is None or "@" not in address:
        return address
    scheme, sep, rest = address.rpartition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[1]}"


def appliance_statuses(
    settings: LbdriverSettings,
    clients: Mapping[str, ApplianceClient],
    inventory: Inventory,
    failover: Failover,
) -> tuple[ApplianceStatus, ...]:
    """Every configured appliance: health, objects, last write, last error."""
    now = time.monotonic()
    services = inventory.placed_counts()
    appliances = []
    for a in settings.appliances:
        client = clients[a.name]
        retry_at = client.breaker.retry_at
        appliances.append(
            ApplianceStatus(
                name=a.name,
                driver=a.driver,
                group=a.group,
                address=redact_address(a.address),
                active=failover.active(a.group) == a.name,
                health=client.state(now),
                failures=client.breaker.failures,
                retry_in_s=None if retry_at is None else max(0.0, retry_at - now),
                virtual_servers=client.virtual_servers(),
                services=services[a.name],
                writes=client.writes,
                last_write_at=client.last_write_at,
                last_error=client.last_error,
                last_error_at=client.last_error_at,
            )
        )
    return tuple(appliances)


class StatusServer:
    """Answers status requests with what ``status`` returns at that moment."""

    def __init__(self, bus: Bus, status: Callable[[], LbdriverStatus]) -> None:
        self._bus = bus
        self._status = status
        self._serving: Serving | None = None

    async def start(self) -> None:
        self._serving = await self._bus.serve(LBDRIVER_STATUS.pattern, self._answer)

    async def stop(self) -> None:
        if self._serving is not None:
            await self._serving.stop()
            self._serving = None

    async def _answer(self, request: bytes, subject: str) -> bytes:
        return msgspec.json.encode(self._status())
