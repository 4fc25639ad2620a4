"""The ``lbdriver`` section of the config file."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0)]

#: Drivers this build knows; ``f5``, ``a10`` and ``linux`` join ``sim`` later.
DriverKind = Literal["sim"]

# Appliance names end up in metric labels, log lines and LbProgrammed; keep them plain.
_APPLIANCE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
# The prefix marks what we own on a shared appliance; it starts every object name.
_PREFIX = re.compile(r"^[a-z0-9]([a-z0-9_]{0,30}[a-z0-9])?$")


class ApplianceSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One load-balancer appliance (or HA pair presenting one management endpoint)."""

    #: Unique name; reported in LbProgrammed and used as a metrics label.
    name: str
    #: Which driver talks to it. Only ``sim`` (in-process model) so far.
    driver: DriverKind = "sim"
    #: Appliance group that pools point at (VipAssigned.appliance_group). Several
    #: appliances in one group are failover endpoints of one shared configuration:
    #: the first healthy one is written to.
    group: str = "default"
    #: Seconds one appliance API call may take before it counts as unavailable.
    request_timeout_s: Positive = 10.0
    #: Appliance API calls in flight at once (appliances throttle management APIs).
    max_concurrent_requests: Annotated[int, msgspec.Meta(ge=1)] = 8
    #: sim: milliseconds every API call takes.
    api_latency_ms: NonNegative = 0.0
    #: sim: probability (0..1) that an API call fails as unavailable (fault injection).
    fail_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    #: sim: seed of the fault-injection RNG (None: a random seed).
    seed: int | None = None

    def __post_init__(self) -> None:
        if not _APPLIANCE_NAME.match(self.name):
            raise ValueError(
                f"appliance name {self.name!r} must be 1-63 letters, digits, '.', '_' or '-'"
            )
        if not self.group:
            raise ValueError(f"appliance {self.name!r}: group must not be empty")


class LbdriverSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the lbdriver programs appliances. No default appliance: a config that
    forgets them must fail, not quietly program a simulator."""

    #: The appliances, at least one; order matters within a group (first healthy wins).
    appliances: tuple[ApplianceSettings, ...]
    #: Start of every object name we create; objects without it are never touched.
    prefix: str = "vipwire"
    #: Milliseconds a Service's reprogramming waits to absorb a burst of node and
    #: endpoint events into one appliance write (0: no wait).
    coalesce_window_ms: NonNegative = 5.0
    #: Messages handled concurrently per consumer (one subject is always sequential).
    concurrency: Annotated[int, msgspec.Meta(ge=1)] = 16
    #: Seconds before the first retry of a failed appliance write; doubles per attempt.
    retry_initial_s: Positive = 0.2
    #: Upper bound of the retry delay in seconds.
    retry_max_s: Positive = 10.0
    #: Seconds an appliance that was unreachable is passed over in favour of the next
    #: one of its group before it is tried again.
    unhealthy_cooldown_s: NonNegative = 10.0

    def __post_init__(self) -> None:
        if not self.appliances:
            raise ValueError("at least one appliance must be configured")
        names = [a.name for a in self.appliances]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"appliance names must be unique; repeated: {', '.join(duplicates)}")
        if not _PREFIX.match(self.prefix):
            raise ValueError(
                f"prefix {self.prefix!r} must be 1-32 lowercase letters, digits or '_' "
                "('-' separates name parts)"
            )
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s must not be below retry_initial_s")

    def appliance(self, name: str) -> ApplianceSettings:
        for appliance in self.appliances:
            if appliance.name == name:
                return appliance
        raise KeyError(name)

    def group(self, group: str) -> tuple[ApplianceSettings, ...]:
        """The appliances of one group, in configured (preference) order."""
        return tuple(a for a in self.appliances if a.group == group)
