"""The watcher: one cluster's Services, EndpointSlices and Nodes onto the bus, status back.

Decisions are pure (:mod:`vipwire.watcher.core`), the adapters to Kubernetes
and the bus live in :mod:`vipwire.watcher.io`, and :class:`WatcherService`
wires them: it lists, watches, publishes and writes.

The pure core and the settings are imported at once; the adapters and the service
(the bus, the runtime) on first use of one of their names, so that an operator
command (``vipwire config check``) does not load them.
"""

from typing import TYPE_CHECKING

from vipwire.watcher.settings import WatcherSettings

if TYPE_CHECKING:
    from vipwire.watcher.service import ApiClientFactory, WatcherService
else:
    #: Where each name imported on first use lives.
    _LAZY = {
        "ApiClientFactory": "service",
        "WatcherService": "service",
    }

    def __getattr__(name: str) -> object:
        """Imports the module that defines ``name`` on its first use."""
        where = _LAZY.get(name)
        if where == "service":
            from vipwire.watcher import service as module
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(module, name)
        globals()[name] = value
        return value


__all__ = ["ApiClientFactory", "WatcherService", "WatcherSettings"]
