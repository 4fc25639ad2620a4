"""The operators' dashboard: the whole fleet, live from the bus, read-only.

:mod:`vipwire.dashboard.model` is the pure read model (bus messages in,
Services, timelines and waterfalls out); :class:`DashboardService` is the
shell that feeds it from NATS and serves it as a small web app.
"""

from vipwire.dashboard.model import Event, Query, ReadModel, trace_id_from
from vipwire.dashboard.service import DashboardService
from vipwire.dashboard.settings import DashboardConfigError, DashboardSettings

__all__ = [
    "DashboardConfigError",
    "DashboardService",
    "DashboardSettings",
    "Event",
    "Query",
    "ReadModel",
    "trace_id_from",
]
