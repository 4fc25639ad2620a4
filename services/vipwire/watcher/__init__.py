"""The watcher: one cluster's Services, EndpointSlices and Nodes onto the bus, status back.

Decisions are pure (:mod:`vipwire.watcher.core`), the adapters to Kubernetes
and the bus live in :mod:`vipwire.watcher.io`, and :class:`WatcherService`
wires them: it lists, watches, publishes and writes.
"""

from vipwire.watcher.service import ApiClientFactory, WatcherService
from vipwire.watcher.settings import WatcherSettings

__all__ = ["ApiClientFactory", "WatcherService", "WatcherSettings"]
