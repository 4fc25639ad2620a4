"""Which appliance serves a Service: a pure choice over configuration and health."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from vipwire.lbdriver.settings import ApplianceSettings


def pick_appliance(
    group: Sequence[ApplianceSettings], unhealthy: Collection[str]
) -> ApplianceSettings | None:
    """The first appliance of the group not known to be unreachable.

    When all are unreachable the first is still chosen: failing on it (and
    retrying) is better than not trying at all. None only for an empty group.
    """
    for appliance in group:
        if appliance.name not in unhealthy:
            return appliance
    return group[0] if group else None
