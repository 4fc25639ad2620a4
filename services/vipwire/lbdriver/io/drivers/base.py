"""The one interface every appliance driver implements, and its one error family."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol

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
