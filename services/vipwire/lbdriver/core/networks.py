"""Which node addresses may become members: ``lbdriver.node_networks`` (pure).

Members come only from the ``NodeSnapshot``s a cluster's watcher publishes on
that cluster's ``node`` subjects (the consumer refuses a payload naming another
cluster or node than its subject). When node networks are set, an address
outside them is refused: never a member. A snapshot left with no address at all
does not replace the node's last admitted one (a forged snapshot pointing a node
elsewhere takes nothing away); the node then stays as it was.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import NamedTuple

import msgspec

from vipwire.contracts import NodeSnapshot

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The key of ``node_networks`` (as a map) that holds every other cluster's networks.
ANY_CLUSTER = "*"


def networks_of(
    setting: tuple[str, ...] | Mapping[str, tuple[str, ...]], cluster: str
) -> tuple[Network, ...] | None:
    """The networks a cluster's node addresses must be in; None: not restricted.

    A list is every cluster's; a map names them per cluster, ``*`` for the others
    (a cluster it does not name, with no ``*``, is not restricted).
    """
    if isinstance(setting, Mapping):
        texts = setting.get(cluster, setting.get(ANY_CLUSTER))
        if texts is None:
            return None
    else:
        if not setting:
            return None
        texts = setting
    return tuple(ipaddress.ip_network(t, strict=False) for t in texts)


class Admitted(NamedTuple):
    """A node as it may be used, and the addresses refused from its snapshot."""

    #: The snapshot to use (addresses outside the networks removed); None: keep the
    #: one used before (every address was refused).
    node: NodeSnapshot | None
    refused: tuple[str, ...] = ()


def admit(node: NodeSnapshot, networks: tuple[Network, ...] | None) -> Admitted:
    """Drop the addresses outside ``networks`` (None: none are); see the module."""
    if networks is None:
        return Admitted(node)
    kept: list[str] = []
    refused: list[str] = []
    for raw in node.addresses:
        try:
            ip = ipaddress.ip_address(raw)
        except ValueError:
            kept.append(raw)  # not an address: never a member anyway (node_address)
            continue
        (kept if any(ip in n for n in networks) else refused).append(raw)
    if not refused:
        return Admitted(node)
    if not any(_is_address(a) for a in kept):
        return Admitted(None, tuple(refused))
    return Admitted(msgspec.structs.replace(node, addresses=tuple(kept)), tuple(refused))


def _is_address(raw: str) -> bool:
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        return False
    return True
