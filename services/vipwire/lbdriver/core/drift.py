"""What a fresh listing of a partition says needs undoing: a pure function.

A drift pass lists a partition and compares it with what the Services placed
on that appliance should have there. Two kinds of findings:

- **repairs**: a settled Service (its last reconcile succeeded and nothing is
  pending) whose objects differ from what we wrote: someone edited or
  deleted them out of band. The shell reconciles those Services again.
- **orphans**: objects that carry our prefix but belong to no Service placed
  on this appliance (released while we were away, or left behind by a
  failover). They are deleted. Objects without our prefix are never
  considered, whoever's they are.

A pass runs every ``verify_interval_s``: it is the verification that a
Service's last report (programmed) is still true. A repair is told before it is
written (reason ``ApplianceDrift``, :func:`drift_found`), so that the status
stops claiming what is not there, and told again if it fails
(:func:`drift_unrepaired`); the report of the repair clears it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Final, NamedTuple

from vipwire.contracts import APPLIANCE_DRIFT
from vipwire.lbdriver.core.diff import diff, owns
from vipwire.lbdriver.core.listing import Listing
from vipwire.lbdriver.core.outcomes import Explanation
from vipwire.lbdriver.core.virtual_servers import (
    CreateVirtualServer,
    DeleteVirtualServer,
    Operation,
    UpdateMembers,
    UpdateVirtualServer,
    VirtualServer,
)


class Drift(NamedTuple):
    #: Per owner tag, the operations that would restore what we wrote.
    repairs: dict[str, list[Operation]]
    #: Deletions of our objects that no Service here accounts for.
    orphans: list[Operation]


def owned_scope(
    actual: Mapping[str, VirtualServer], owner: str, desired: Mapping[str, VirtualServer]
) -> dict[str, VirtualServer]:
    """The part of a partition one Service's diff may touch.

    Its own objects by owner tag, plus any object under a name it wants: ipam
    says the VIP is this Service's now, so a leftover of another owner under
    that name is taken over rather than clashed with. A :class:`Listing` answers
    from its owner index; any other mapping is scanned.
    """
    if isinstance(actual, Listing):
        scope = dict(actual.of(owner))
        for name in desired:
            server = actual.get(name)
            if server is not None:
                scope[name] = server
        return scope
    return {n: s for n, s in actual.items() if s.owner == owner or n in desired}


def find_drift(
    actual: Mapping[str, VirtualServer],
    settled: Mapping[str, Mapping[str, VirtualServer]],
    placed: Collection[str],
    prefix: str,
) -> Drift:
    """Repairs and orphans of one partition.

    ``settled``: desired objects by owner tag, for the Services whose last
    write here succeeded and is still current. ``placed``: the owner tags of
    every Service placed on this appliance in this partition (settled or
    not): the objects of one that is being reconciled are its own business,
    not orphans.
    """
    repairs: dict[str, list[Operation]] = {}
    claimed: set[str] = set()
    for owner in sorted(settled):
        desired = settled[owner]
        claimed.update(desired)
        ops = diff(desired, owned_scope(actual, owner, desired), prefix)
        if ops:
            repairs[owner] = ops
    orphans: list[Operation] = [
        DeleteVirtualServer(name=name)
        for name, server in sorted(actual.items())
        if owns(name, prefix) and server.owner not in placed and name not in claimed
    ]
    return Drift(repairs=repairs, orphans=orphans)


def held_by(actual: Mapping[str, VirtualServer], owners: Collection[str], prefix: str) -> int:
    """How many of our objects in a partition belong to these owners."""
    if isinstance(actual, Listing):
        return sum(1 for o in owners for name in actual.of(o) if owns(name, prefix))
    return sum(1 for n, s in actual.items() if owns(n, prefix) and s.owner in owners)


#: Objects named in a drift report; the rest are counted.
_NAMED: Final = 3


def describe_drift(ops: Sequence[Operation]) -> str:
    """What a verification found wrong with one Service's objects, for its status:
    the repairs it needs, told as what the appliance holds instead."""
    told: list[str] = []
    for op in ops[:_NAMED]:
        match op:
            case CreateVirtualServer(server=server):
                told.append(f"virtual server {server.name} is missing")
            case UpdateMembers(name=name):
                told.append(f"virtual server {name} has other members")
            case UpdateVirtualServer(server=server):
                told.append(f"virtual server {server.name} was changed")
            case DeleteVirtualServer(name=name):
                told.append(f"virtual server {name} should not be there")
    more = f" (and {len(ops) - _NAMED} more)" if len(ops) > _NAMED else ""
    return (
        f"{'; '.join(told)}{more}: the appliance no longer holds what was reported "
        "programmed (changed behind vipwire's back)"
    )


def drift_found(drift: str) -> Explanation:
    """The report of a Service whose objects a verification found changed, published
    before they are written again: its status no longer claims what is not there."""
    return Explanation(APPLIANCE_DRIFT, f"{drift}; re-programming it")


def drift_unrepaired(drift: str, why: Explanation) -> Explanation:
    """The report of a drift the lbdriver could not repair: the drift, then why."""
    return Explanation(
        APPLIANCE_DRIFT, f"{drift}; re-programming failed ({why.reason}: {why.message})"
    )
