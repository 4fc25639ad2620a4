"""Appliance profiles: how a Service's virtual servers behave, beyond where they send traffic.

Operators define profiles by name in the config file's top-level ``profiles``
section (one definition shared by ipam, which refuses unknown names, and the
lbdriver, which programs them); a pool names its default one and a Service may
pick another with the ``vipwire.io/profile`` annotation. A Service that names
none, in a pool that names none, gets :data:`BUILTIN_PROFILE`: exactly what
vipwire programmed before profiles existed.

Pure: plain settings data and the resolution of a name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Final, Literal

import msgspec

MonitorKind = Literal["http", "https", "tcp", "none"]
LbMethod = Literal["round-robin", "least-connections"]
#: What the appliance does with a connection for a virtual server none of whose
#: members is up: ``none`` (the appliance's own default: the connection gets no
#: answer and times out), ``reset`` (the client gets a TCP reset at once, so it
#: fails over fast) or ``drop`` (dropped silently, also for established ones).
AllDownAction = Literal["none", "reset", "drop"]

#: Profile names travel in annotations, VipAssigned and object names: DNS labels.
PROFILE_NAME: Final = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PATH: Final = re.compile(r"^/[!-~]*$")


class HealthMonitorSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The health check the appliance sends to each member node (never to the VIP).

    It probes kube-proxy's health port (or the Service's healthCheckNodePort under
    externalTrafficPolicy Local), not the Service port.
    """

    #: ``http`` (GET ``path``, healthy on 200), ``https`` (the same over TLS),
    #: ``tcp`` (healthy when the port accepts a connection) or ``none`` (no health
    #: check: a member is up as long as it is a member).
    kind: MonitorKind = "http"
    #: http, https: the path requested.
    path: str = "/healthz"
    #: Seconds between two probes of one member (1-180; A10 allows at most 180).
    interval_s: Annotated[int, msgspec.Meta(ge=1, le=180)] = 5
    #: Seconds without a successful probe after which a member is marked down; more
    #: than interval_s (BIG-IP refuses less).
    timeout_s: Annotated[int, msgspec.Meta(ge=1, le=900)] = 16

    def __post_init__(self) -> None:
        if not _PATH.match(self.path) or len(self.path) > 255:
            raise ValueError(
                f"monitor path {self.path!r} must start with '/' and hold no spaces "
                "(at most 255 characters)"
            )
        if self.timeout_s <= self.interval_s:
            raise ValueError(
                f"monitor timeout_s ({self.timeout_s}) must be more than interval_s "
                f"({self.interval_s}): a member would be marked down between two probes "
                "(F5 suggests 3 * interval_s + 1)"
            )


class ProfileSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One appliance profile: health monitor and virtual server options."""

    #: The health check of the members.
    monitor: HealthMonitorSettings = HealthMonitorSettings()
    #: Seconds a connection may stay idle before the appliance forgets it (1-604800);
    #: None: the appliance's default (F5 fastL4: 300, A10: 120).
    idle_timeout_s: Annotated[int, msgspec.Meta(ge=1, le=604800)] | None = None
    #: Concurrent connections one virtual server accepts (1-10000000); None: no limit.
    connection_limit: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] | None = None
    #: ``round-robin`` or ``least-connections`` (to the member with the fewest).
    lb_method: LbMethod = "round-robin"
    #: When every member is down: ``none`` (the appliance's default), ``reset`` or
    #: ``drop`` (see the README's profile table for each vendor).
    all_members_down: AllDownAction = "none"


#: What a Service gets when neither it nor its pool names a profile: the monitor
#: that was fixed in code before profiles existed (HTTP GET /healthz every 5 s,
#: down after 16 s), round-robin, the appliance's own defaults for the rest.
BUILTIN_PROFILE: Final = ProfileSettings()


class UnknownProfile(ValueError):
    """A profile name the configuration does not define."""


def resolve_profile(
    name: str | None, profiles: Mapping[str, ProfileSettings] | None
) -> ProfileSettings:
    """The profile a Service gets: ``name``'s, or the built-in one for None.

    ``profiles``: the configured ones; None when they do not matter to the
    caller (replay computing members only): every name is then the built-in.
    Raises :class:`UnknownProfile` naming the configured ones.
    """
    if name is None or profiles is None:
        return BUILTIN_PROFILE
    found = profiles.get(name)
    if found is None:
        listed = ", ".join(sorted(profiles)) or "none configured"
        raise UnknownProfile(
            f"profile {name!r} is not configured in this lbdriver's config file "
            f"(profiles: {listed}); ipam and the lbdriver must read the same profiles section"
        )
    return found
