"""The watcher: one cluster's Services, EndpointSlices and Nodes onto the bus, status back.

Decisions are pure (:mod:`vipwire.watcher.translate`, :mod:`vipwire.watcher.status`);
:class:`WatcherService` is the shell that lists, watches, publishes and writes.
"""

from vipwire.watcher.service import ApiClientFactory, WatcherService
from vipwire.watcher.settings import WatcherSettings

__all__ = ["ApiClientFactory", "WatcherService", "WatcherSettings"]
