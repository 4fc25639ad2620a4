"""lbdriver: turns assigned VIPs into virtual servers on load-balancer appliances.

Pure core: :func:`desired_virtual_servers` (what a Service needs) and
:func:`diff` (the fewest writes to get there). Shell: :class:`LbdriverService`.
Drivers implement :class:`ApplianceDriver`; :class:`SimAppliance` is the
in-process one.
"""

from vipwire.lbdriver.desired import (
    KUBE_PROXY_HEALTH_PORT,
    InvalidAssignment,
    desired_virtual_servers,
    members_of,
    owner_of,
    virtual_server_name,
)
from vipwire.lbdriver.diff import OperationConflict, apply_operations, diff, owns
from vipwire.lbdriver.drivers import (
    ApplianceAuthError,
    ApplianceDriver,
    ApplianceError,
    ApplianceRejected,
    ApplianceUnavailable,
    SimAppliance,
    build_driver,
)
from vipwire.lbdriver.model import (
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
from vipwire.lbdriver.placement import pick_appliance
from vipwire.lbdriver.service import LbdriverService, ServiceKey
from vipwire.lbdriver.settings import ApplianceSettings, LbdriverSettings

__all__ = [
    "KUBE_PROXY_HEALTH_PORT",
    "ApplianceAuthError",
    "ApplianceDriver",
    "ApplianceError",
    "ApplianceRejected",
    "ApplianceSettings",
    "ApplianceUnavailable",
    "CreateVirtualServer",
    "DeleteVirtualServer",
    "InvalidAssignment",
    "LbdriverService",
    "LbdriverSettings",
    "Monitor",
    "Operation",
    "OperationConflict",
    "ServiceKey",
    "SimAppliance",
    "UpdateMembers",
    "UpdateVirtualServer",
    "VirtualServer",
    "apply_operations",
    "build_driver",
    "desired_virtual_servers",
    "diff",
    "members_of",
    "op_kind",
    "op_name",
    "owner_of",
    "owns",
    "pick_appliance",
    "virtual_server_name",
]
