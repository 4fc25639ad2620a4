"""The operators' dashboard: the whole fleet, live from the bus, read-only.

:mod:`vipwire.dashboard.core` is pure (the API's views, the fold that builds
the read model from bus messages, queries over it, the waterfall);
:mod:`vipwire.dashboard.io` holds the bus reader, the status poller and the
web app; :class:`DashboardService` only wires them.
"""

from vipwire.dashboard.core.fold import Event, ReadModel
from vipwire.dashboard.core.views import Query
from vipwire.dashboard.service import DashboardService
from vipwire.dashboard.settings import DashboardConfigError, DashboardSettings

__all__ = [
    "DashboardConfigError",
    "DashboardService",
    "DashboardSettings",
    "Event",
    "Query",
    "ReadModel",
]
