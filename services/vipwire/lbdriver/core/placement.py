"""Which appliance serves a Service: a pure choice over configuration and health."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

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


def choose_active(
    group: Sequence[str],
    current: str | None,
    usable: Collection[str],
    held: Mapping[str, int] | None = None,
) -> str | None:
    """The appliance of a group that is written to (the active of an active/standby pair).

    Sticky: the current active stays while it is usable, even when one
    preferred in configuration order is usable again, so a recovered
    appliance does not pull every Service back (no flapping). Otherwise the
    usable appliance holding most of our objects (``held``, known at start-up,
    so a restart after a failover stays where the objects are), else the first
    usable in order. With none usable, the current one (or the first) is kept:
    failing there and retrying beats not trying. None only for an empty group.
    """
    if not group:
        return None
    if current in group and current in usable:
        return current
    candidates = [name for name in group if name in usable]
    if not candidates:
        return current if current in group else group[0]
    if held:
        # max() keeps the first of equals: configuration order breaks ties.
        return max(candidates, key=lambda name: held.get(name, 0))
    return candidates[0]
