"""The operators' dashboard: the whole fleet, live from the bus, read-only.

:mod:`vipwire.dashboard.core` is pure (the API's views, the fold that builds
the read model from bus messages, queries over it, the waterfall);
:mod:`vipwire.dashboard.io` holds the bus reader, the status poller and the
web app; :class:`DashboardService` only wires them.

The pure core and the settings are imported at once; the adapters and the service
(the bus, the runtime) on first use of one of their names, so that an operator
command (``vipwire config check``) does not load them.
"""

from typing import TYPE_CHECKING

from vipwire.dashboard.core.fold import Event, ReadModel
from vipwire.dashboard.core.views import Query
from vipwire.dashboard.settings import DashboardConfigError, DashboardSettings

if TYPE_CHECKING:
    from vipwire.dashboard.service import DashboardService
else:
    #: Where each name imported on first use lives.
    _LAZY = {
        "DashboardService": "service",
    }

    def __getattr__(name: str) -> object:
        """Imports the module that defines ``name`` on its first use."""
        where = _LAZY.get(name)
        if where == "service":
            from vipwire.dashboard import service as module
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(module, name)
        globals()[name] = value
        return value


__all__ = [
    "DashboardConfigError",
    "DashboardService",
    "DashboardSettings",
    "Event",
    "Query",
    "ReadModel",
]
