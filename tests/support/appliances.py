"""What the vendor driver suites (F5, A10) share: objects to program and one pass.

Each suite keeps its own emulator and driver fixtures (vendor, password); the
virtual servers it programs and the read-diff-apply pass are the same.
"""

from __future__ import annotations

from typing import Protocol

from vipwire.contracts import Member
from vipwire.lbdriver import Monitor, Operation, VirtualServer, diff

CLUSTER = "prod"
PREFIX = "vipwire"


class Driver(Protocol):
    async def list_virtual_servers(self, partition: str) -> dict[str, VirtualServer]: ...

    async def apply(self, partition: str, ops: list[Operation]) -> None: ...


def server(
    port: int = 80,
    *,
    address: str = "192.0.2.10",
    protocol: str = "TCP",
    nodes: tuple[str, ...] = ("198.51.100.1", "198.51.100.2"),
    health: int = 10256,
    owner: str = "prod/shop/web",
) -> VirtualServer:
    """A virtual server of Service prod/shop/web, named as the lbdriver names it."""
    name = f"{PREFIX}-prod-shop-web-{address.replace(':', '_')}-{port}-{protocol.lower()}"
    return VirtualServer(
        name=name,
        owner=owner,
        address=address,
        port=port,
        protocol=protocol,  # type: ignore[arg-type]
        members=tuple(Member(node=f"node-{a}", address=a) for a in nodes),
        monitor=Monitor(port=health),
    )


def by_name(*servers: VirtualServer) -> dict[str, VirtualServer]:
    return {s.name: s for s in servers}


async def converge(driver: Driver, desired: dict[str, VirtualServer]) -> list[str]:
    """Read, diff, apply once; the kinds of operations written."""
    ops = diff(desired, await driver.list_virtual_servers(CLUSTER), PREFIX)
    await driver.apply(CLUSTER, ops)
    return [type(op).__name__ for op in ops]
