"""lbdriver: turns assigned VIPs into virtual servers on load-balancer appliances.

Pure core (``core/``): :func:`desired_virtual_servers` (what a Service needs),
:func:`diff` (the fewest writes to get there), :func:`find_drift` (what a
fresh listing says needs undoing), :class:`Coalescer` (when each Service is
written), :class:`CircuitBreaker`, :class:`TokenBucket` and
:func:`backoff_delay` (how a fragile appliance is treated),
:func:`choose_active` (which appliance of a group is written to), what it
knows of its clusters (``core.inventory``) and what it reports
(``core.outcomes``). Adapters (``io/``): the appliance drivers, which
implement :class:`ApplianceDriver` (:class:`SimAppliance` is the in-process
one), and the loops that reconcile, maintain and fail over. Shell:
:class:`LbdriverService`, which also answers status requests on
:data:`vipwire.contracts.LBDRIVER_STATUS`.

The pure core and the settings are imported at once; the adapters and the service
(the bus, the runtime) on first use of one of their names, so that an operator
command (``vipwire config check``) does not load them.
"""

from typing import TYPE_CHECKING

from vipwire.lbdriver.core.coalesce import Coalescer, Flush
from vipwire.lbdriver.core.desired import (
    KUBE_PROXY_HEALTH_PORT,
    InvalidAssignment,
    desired_virtual_servers,
    members_of,
    owner_of,
    virtual_server_name,
)
from vipwire.lbdriver.core.diff import OperationConflict, apply_operations, diff, owns
from vipwire.lbdriver.core.drift import Drift, find_drift, owned_scope
from vipwire.lbdriver.core.placement import choose_active, pick_appliance
from vipwire.lbdriver.core.resilience import (
    Admission,
    BreakerState,
    CircuitBreaker,
    TokenBucket,
    backoff_delay,
)
from vipwire.lbdriver.core.virtual_servers import (
    CreateVirtualServer,
    DeleteVirtualServer,
    Monitor,
    Operation,
    UpdateMembers,
    UpdateVirtualServer,
    VirtualServer,
    op_kind,
    op_name,
)
from vipwire.lbdriver.settings import ApplianceSettings, ApplianceTimeouts, LbdriverSettings

if TYPE_CHECKING:
    from vipwire.lbdriver.io.drivers import (
        ApplianceAuthError,
        ApplianceDriver,
        ApplianceError,
        ApplianceRejected,
        ApplianceUnavailable,
        SimAppliance,
        build_driver,
    )
    from vipwire.lbdriver.service import LbdriverService
else:
    #: Where each name imported on first use lives.
    _LAZY = {
        "ApplianceAuthError": "io.drivers",
        "ApplianceDriver": "io.drivers",
        "ApplianceError": "io.drivers",
        "ApplianceRejected": "io.drivers",
        "ApplianceUnavailable": "io.drivers",
        "SimAppliance": "io.drivers",
        "build_driver": "io.drivers",
        "LbdriverService": "service",
    }

    def __getattr__(name: str) -> object:
        """Imports the module that defines ``name`` on its first use."""
        where = _LAZY.get(name)
        if where == "io.drivers":
            from vipwire.lbdriver.io import drivers as module
        elif where == "service":
            from vipwire.lbdriver import service as module
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(module, name)
        globals()[name] = value
        return value


__all__ = [
    "KUBE_PROXY_HEALTH_PORT",
    "Admission",
    "ApplianceAuthError",
    "ApplianceDriver",
    "ApplianceError",
    "ApplianceRejected",
    "ApplianceSettings",
    "ApplianceTimeouts",
    "ApplianceUnavailable",
    "BreakerState",
    "CircuitBreaker",
    "Coalescer",
    "CreateVirtualServer",
    "DeleteVirtualServer",
    "Drift",
    "Flush",
    "InvalidAssignment",
    "LbdriverService",
    "LbdriverSettings",
    "Monitor",
    "Operation",
    "OperationConflict",
    "SimAppliance",
    "TokenBucket",
    "UpdateMembers",
    "UpdateVirtualServer",
    "VirtualServer",
    "apply_operations",
    "backoff_delay",
    "build_driver",
    "choose_active",
    "desired_virtual_servers",
    "diff",
    "find_drift",
    "members_of",
    "op_kind",
    "op_name",
    "owned_scope",
    "owner_of",
    "owns",
    "pick_appliance",
    "virtual_server_name",
]
