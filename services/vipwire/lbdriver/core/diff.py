"""Desired against actual: the fewest appliance writes that make them equal.

Pure functions. Only objects whose name carries our prefix are ever touched;
an appliance is shared with other tenants and other tools.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from vipwire.lbdriver.core.virtual_servers import (
    CreateVirtualServer,
    DeleteVirtualServer,
    Operation,
    UpdateMembers,
    UpdateVirtualServer,
    VirtualServer,
)


class OperationConflict(ValueError):
    """An operation does not fit the state it is applied to (see :func:`apply_operations`)."""


def owns(name: str, owned_prefix: str) -> bool:
    """Whether an object name marks the object as ours."""
    return name.startswith(f"{owned_prefix}-")


def canonical(server: VirtualServer) -> VirtualServer:
    """The same virtual server with members and source ranges deduplicated and sorted
    (appliances list pools and address lists in their own order, which is no difference)."""
    members = tuple(sorted(set(server.members)))
    ranges = tuple(sorted(set(server.source_ranges)))
    # A member both enabled and draining is enabled (it came back).
    draining = tuple(sorted(set(server.draining) - set(members)))
    same = (members, ranges, draining)
    if same == (server.members, server.source_ranges, server.draining):
        return server
    return msgspec.structs.replace(server, members=members, source_ranges=ranges, draining=draining)


def diff(
    desired: Mapping[str, VirtualServer],
    actual: Mapping[str, VirtualServer],
    owned_prefix: str,
) -> list[Operation]:
    """Operations turning ``actual`` into ``desired`` for the objects we own.

    Order: deletes first (they free destinations another object may need),
    then updates, then creates; by name within each kind. A change of members
    alone is one ``update-members``; any other change is one ``update``.
    Raises ``ValueError`` if a desired name lacks the prefix (we could not
    recognise it as ours afterwards).
    """
    foreign = sorted(name for name in desired if not owns(name, owned_prefix))
    if foreign:
        raise ValueError(f"desired names without prefix {owned_prefix!r}: {foreign}")
    deletes: list[Operation] = [
        DeleteVirtualServer(name=name)
        for name in sorted(actual)
        if owns(name, owned_prefix) and name not in desired
    ]
    updates: list[Operation] = []
    creates: list[Operation] = []
    for name in sorted(desired):
        want = canonical(desired[name])
        have = actual.get(name)
        if have is None:
            creates.append(CreateVirtualServer(server=want))
            continue
        have = canonical(have)
        if have == want:
            continue
        if msgspec.structs.replace(have, members=want.members, draining=want.draining) == want:
            updates.append(UpdateMembers(name=name, members=want.members, draining=want.draining))
        else:
            updates.append(UpdateVirtualServer(server=want))
    return deletes + updates + creates


def apply_operations(
    state: Mapping[str, VirtualServer], ops: Iterable[Operation]
) -> dict[str, VirtualServer]:
    """The state after ``ops``, as an appliance would compute it (a new dict).

    Raises :class:`OperationConflict` for a create of an existing name or a
    write to a missing one.
    """
    result = dict(state)
    for op in ops:
        match op:
            case CreateVirtualServer(server=server):
                if server.name in result:
                    raise OperationConflict(f"virtual server {server.name!r} already exists")
                result[server.name] = canonical(server)
            case UpdateVirtualServer(server=server):
                if server.name not in result:
                    raise OperationConflict(f"virtual server {server.name!r} does not exist")
                result[server.name] = canonical(server)
            case UpdateMembers(name=name, members=members, draining=draining):
                current = result.get(name)
                if current is None:
                    raise OperationConflict(f"virtual server {name!r} does not exist")
                result[name] = canonical(
                    msgspec.structs.replace(current, members=members, draining=draining)
                )
            case DeleteVirtualServer(name=name):
                if result.pop(name, None) is None:
                    raise OperationConflict(f"virtual server {name!r} does not exist")
    return result
