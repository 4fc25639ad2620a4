"""The one interface every appliance driver implements, and its one error family."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar, NamedTuple, Protocol

from vipwire.lbdriver.core.virtual_servers import Operation, VirtualServer


class ApplianceError(Exception):
    """An appliance call failed. ``reason`` is the CamelCase reason published in LbFailed."""

    reason: ClassVar[str] = "ApplianceError"

    def __init__(self, appliance: str, message: str) -> None:
        super().__init__(f"appliance {appliance}: {message}")
        self.appliance = appliance
        self.message = message


class ApplianceUnavailable(ApplianceError):
    """Unreachable, timed out or overloaded: worth retrying, maybe elsewhere."""

    reason = "ApplianceUnavailable"


class ApplianceRejected(ApplianceError):
    """The appliance refused the request (conflict, invalid object)."""

    reason = "ApplianceRejected"


class ApplianceAuthError(ApplianceError):
    """Credentials refused or lacking permission on the partition."""

    reason = "ApplianceAuthError"


log = logging.getLogger("vipwire.lbdriver")


class DestinationClash(NamedTuple):
    """Two virtual servers on one destination (address, port, protocol)."""

    #: ``192.0.2.1:80/TCP``.
    where: str
    #: The virtual servers serving it (their names carry their Services' names).
    names: tuple[str, ...]

    def __str__(self) -> str:
        return f"destination {self.where} is served by {', '.join(map(repr, self.names))}"

    def rejected(self, appliance: str, partition: str) -> ApplianceRejected:
        """The error to raise: it becomes the Service's Event, so it names no other
        virtual server (their names are other Services'); the log line does."""
        log.warning("%s: partition %s: %s", appliance, partition, self)
        return ApplianceRejected(
            appliance,
            f"partition {partition}: destination {self.where} is already served by another "
            "virtual server (named in the lbdriver log)",
        )


class ApplianceDriver(Protocol):
    """One appliance. A partition (one per cluster) scopes every call.

    Drivers return and accept virtual servers under the names we gave them and
    keep ``owner`` on the appliance (description or tag field). Every failure
    is an :class:`ApplianceError` raised ``from`` its cause. ``apply`` may have
    applied some operations when it fails; callers must re-read before retrying.
    """

    async def list_virtual_servers(self, partition: str) -> dict[str, VirtualServer]:
        """Every virtual server of the partition by name, ours and others'."""
        ...

    async def apply(self, partition: str, ops: Sequence[Operation]) -> None:
        """Perform the operations in order."""
        ...

    async def close(self) -> None:
        """Release connections; the driver is not used afterwards."""
        ...
