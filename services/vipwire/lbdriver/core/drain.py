"""Graceful drain: a member that leaves is disabled first, and removed later.

A member leaves a virtual server when its node is no longer eligible (NotReady,
excluded, cordoned with ``drain_on_cordon``) or, under externalTrafficPolicy
Local, holds no serving endpoint any more. Removing it from the pool in the
same write cuts its established connections. So it is first kept on the
appliance *disabled* (F5: member ``session: user-disabled``; A10: member
``member-state: disable``; the Linux forwarder: no new flows, conntrack'd
ones continue), and removed once it has drained for ``drain_timeout_s``. A
member whose node is gone (NodeGone: the machine is not coming back) is
removed at once: there is nothing left to drain.

Pure: the time is passed in (any monotonic clock), and so are the drain start
times kept from earlier reconciles. The answer says when to reconcile again
(controller-runtime's "requeue after"), which the shell schedules through the
coalescer, so a Service is still written at most once per window.

After a restart no start time is known: members found disabled on the
appliance start their timeout again (they drain a little longer, never less).
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import NamedTuple

import msgspec

from vipwire.contracts import Member
from vipwire.lbdriver.core.virtual_servers import VirtualServer

#: A drain start: (virtual server name, member) → when it was first disabled.
DrainKey = tuple[str, Member]


class DrainPlan(NamedTuple):
    """What to write, which drains go on, and when to look again."""

    #: The desired virtual servers with their ``draining`` members filled in.
    servers: dict[str, VirtualServer]
    #: Drain start times of the members still draining (keep for the next reconcile).
    since: dict[DrainKey, float]
    #: Seconds until the first drain ends (reconcile then); None: nothing is draining.
    requeue_after_s: float | None


def plan_drain(
    desired: Mapping[str, VirtualServer],
    actual: Mapping[str, VirtualServer],
    *,
    since: Mapping[DrainKey, float],
    now: float,
    timeout_s: float,
    present: Set[str],
) -> DrainPlan:
    """Fill in which leaving members drain, given what the appliance holds now.

    ``desired``: what the Service needs (only its enabled members count; any
    ``draining`` there is ignored); ``actual``: the Service's objects as listed;
    ``present``: the names of the cluster's nodes that still exist (a member
    of any other node is removed at once). A member leaves when ``actual``
    has it (enabled or draining) and ``desired`` does not enable it. With
    ``timeout_s`` 0 every leaving member is removed at once (no drain).
    """
    servers: dict[str, VirtualServer] = {}
    kept: dict[DrainKey, float] = {}
    requeue: float | None = None
    for name, want in desired.items():
        have = actual.get(name)
        enabled = set(want.members)
        draining: list[Member] = []
        if have is not None and timeout_s > 0:
            for member in sorted((set(have.members) | set(have.draining)) - enabled):
                if member.node not in present:
                    continue  # its node is gone: nothing left to drain
                started = since.get((name, member), now)
                remaining = started + timeout_s - now
                if remaining <= 0:
                    continue  # drained long enough: removed now
                draining.append(member)
                kept[(name, member)] = started
                requeue = remaining if requeue is None else min(requeue, remaining)
        members = tuple(sorted(enabled))
        if tuple(draining) != want.draining or members != want.members:
            servers[name] = msgspec.structs.replace(want, members=members, draining=tuple(draining))
        else:
            servers[name] = want
    return DrainPlan(servers=servers, since=kept, requeue_after_s=requeue)


def with_draining(
    desired: Mapping[str, VirtualServer], draining: Mapping[str, tuple[Member, ...]]
) -> dict[str, VirtualServer]:
    """``desired`` with the draining members the last reconcile wrote (so that a drift
    check or the start-up compares against what is really meant to be there)."""
    servers = dict(desired)
    for name, members in draining.items():
        want = servers.get(name)
        if want is None:
            continue
        left = tuple(m for m in members if m not in set(want.members))
        if left != want.draining:
            servers[name] = msgspec.structs.replace(want, draining=left)
    return servers


def draining_of(servers: Mapping[str, VirtualServer]) -> dict[str, tuple[Member, ...]]:
    """Per virtual server, its draining members (only those that have some)."""
    return {name: s.draining for name, s in servers.items() if s.draining}


def draining_members(servers: Mapping[str, VirtualServer]) -> tuple[Member, ...]:
    """Every (node, address) draining from any of these servers and serving none, sorted."""
    enabled = {m for s in servers.values() for m in s.members}
    return tuple(sorted({m for s in servers.values() for m in s.draining} - enabled))
