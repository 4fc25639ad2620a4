"""A Service the appliance accepts in part: which ports it refused, and what it holds.

An appliance refuses a batch as a whole (F5 transactions, the sim), so one
refused virtual server (a port another object already serves, a protocol the
appliance will not take) would keep every port of the Service off the
appliance. After such a refusal the shell writes one virtual server at a time
(:func:`by_server`); the ports refused again are reported per port
(``LbProgrammed.port_errors``, ``status.loadBalancer.ingress[].ports[].error``)
while the others are served. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vipwire.contracts import PortError
from vipwire.lbdriver.core.virtual_servers import Operation, VirtualServer, op_name


def by_server(ops: Sequence[Operation]) -> list[list[Operation]]:
    """The operations grouped per virtual server, in their order (deletes first, as
    :func:`~vipwire.lbdriver.core.diff.diff` puts them). One group: nothing to split."""
    groups: dict[str, list[Operation]] = {}
    for op in ops:
        groups.setdefault(op_name(op), []).append(op)
    return list(groups.values())


def held(
    desired: Mapping[str, VirtualServer],
    actual: Mapping[str, VirtualServer],
    refused: Mapping[str, str],
) -> dict[str, VirtualServer]:
    """What the appliance holds of the Service after the per-server writes: what was
    desired, except the refused servers, which are as they were (or absent)."""
    out: dict[str, VirtualServer] = {}
    for name, server in desired.items():
        if name not in refused:
            out[name] = server
        elif name in actual:
            out[name] = actual[name]
    return out


def port_errors(
    desired: Mapping[str, VirtualServer], refused: Mapping[str, str], *, reason: str
) -> tuple[PortError, ...]:
    """One PortError per refused virtual server (VIP, port, protocol), sorted."""
    errors = [
        PortError(
            vip=desired[name].address,
            port=desired[name].port,
            protocol=desired[name].protocol,
            reason=reason,
            error=text,
        )
        for name, text in refused.items()
        if name in desired
    ]
    return tuple(sorted(errors, key=lambda e: (e.vip, e.port, e.protocol)))
