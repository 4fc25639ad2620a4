"""A Linux host as an L2 DSR appliance: nftables forwards VIP:port frames to member nodes.

The shell around :mod:`linux_nft`: it reads the partition's table back from
the kernel, applies the operations to what it read (as an appliance would),
resolves the members' MAC addresses in the neighbour table (asking the
kernel to probe any it does not know yet) and replaces the table in one
atomic ``nft -f`` transaction, carrying the counters over. Nothing is kept
in memory between calls: a restarted driver sees exactly what the kernel has.

A member whose MAC cannot be resolved is left out of the data path (and out
of the listing, so the lbdriver's next diff retries it) rather than failing
the whole Service: one dead node must not take a VIP down.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Final

import msgspec

from vipwire.lbdriver.core.diff import OperationConflict, apply_operations
from vipwire.lbdriver.core.virtual_servers import Operation, VirtualServer
from vipwire.lbdriver.io.drivers.base import ApplianceRejected, ApplianceUnavailable
from vipwire.lbdriver.io.drivers.linux_nft import (
    FROM_VIP,
    Counter,
    Listing,
    destination_clash,
    object_name,
    parse_listing,
    render_partition,
    table_name,
)
from vipwire.lbdriver.settings import ApplianceSettings
from vipwire.netns import CommandFailed, run

log = logging.getLogger("vipwire.lbdriver.linux")

_NO_TABLE: Final = "No such file or directory"
#: Neighbour states whose link-layer address can be used (STALE and PROBE are
#: still the last known address; the kernel re-confirms it on its own).
_USABLE: Final = frozenset({"REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"})


class LinuxAppliance:
    """One Linux host (or network namespace) forwarding VIP traffic in L2 DSR mode."""

    def __init__(
        self,
        name: str,
        *,
        interface: str,
        netns: str | None = None,
        resolve_timeout: float = 1.0,
        command_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.interface = interface
        self.netns = netns
        self._resolve_timeout = resolve_timeout
        self._timeout = command_timeout
        # Each apply is read-modify-write of the whole table: one at a time per partition.
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_settings(cls, settings: ApplianceSettings) -> LinuxAppliance:
        if settings.interface is None:
            raise ValueError(f"appliance {settings.name!r}: driver linux needs an interface")
        return cls(
            settings.name,
            interface=settings.interface,
            netns=settings.netns,
            command_timeout=settings.request_timeout_s,
        )

    # --- the driver interface ------------------------------------------------------

    async def list_virtual_servers(self, partition: str) -> dict[str, VirtualServer]:
        listing = await self.read(partition)
        return dict(listing.servers)

    async def apply(self, partition: str, ops: Sequence[Operation]) -> None:
        if not ops:
            return
        table = self._table(partition)
        async with self._locks.setdefault(partition, asyncio.Lock()):
            listing = await self.read(partition)
            try:
                after = apply_operations(listing.servers, ops)
            except OperationConflict as exc:
                raise ApplianceRejected(self.name, f"partition {partition}: {exc}") from exc
            clash = destination_clash(after)
            if clash is not None:
                raise clash.rejected(self.name, partition)
            if not after:
                await self._nft(["delete", "table", "netdev", table], missing_ok=True)
                return
            macs = await self._resolve(
                m.address for s in after.values() for m in (*s.members, *s.draining)
            )
            programmed = {
                name: _reachable(server, macs, self.name) for name, server in after.items()
            }
            try:
                script = render_partition(
                    table=table,
                    device=self.interface,
                    mac=await self._own_mac(),
                    servers=programmed,
                    macs=macs,
                    counters=listing.counters,
                    flows=listing.flows,
                )
            except ValueError as exc:
                raise ApplianceRejected(self.name, f"partition {partition}: {exc}") from exc
            await self._nft(["-f", "-"], stdin=script, rejected=True)

    async def close(self) -> None:
        """Nothing to release: every call is its own command."""

    # --- reading ---------------------------------------------------------------------

    async def read(self, partition: str) -> Listing:
        """The partition's table as the kernel has it (empty when there is none)."""
        table = self._table(partition)
        try:
            out = await run(
                ["nft", "-j", "list", "table", "netdev", table],
                netns=self.netns,
                timeout=self._timeout,
            )
        except CommandFailed as exc:
            if exc.returncode is not None and _NO_TABLE in exc.stderr:
                return Listing(servers={}, counters={})
            raise ApplianceUnavailable(self.name, f"cannot list table {table}: {exc}") from exc
        try:
            listing = parse_listing(json.loads(out), table)
        except ValueError as exc:
            raise ApplianceRejected(
                self.name, f"table {table} holds no readable vipwire state: {exc}"
            ) from exc
        if listing.damaged:
            log.warning(
                "appliance %s: data path of %s does not match its record; it will be rewritten",
                self.name,
                ", ".join(listing.damaged),
            )
        return listing

    async def counters(self, partition: str) -> dict[str, int]:
        """Packets counted: per virtual server name, and ``from-vip`` (should stay 0)."""
        listing = await self.read(partition)
        packets = {FROM_VIP: listing.counters.get(FROM_VIP, _ZERO).packets}
        for name in listing.servers:
            packets[name] = listing.counters.get(object_name(name), _ZERO).packets
        return packets

    async def _own_mac(self) -> str:
        out = await self._ip(["-j", "link", "show", "dev", self.interface])
        try:
            mac = str(json.loads(out)[0]["address"]).lower()
        except (ValueError, LookupError, TypeError) as exc:
            raise ApplianceUnavailable(
                self.name, f"no MAC address on {self.interface}: {out!r}"
            ) from exc
        return mac

    async def _neighbours(self) -> dict[str, str]:
        out = await self._ip(["-j", "neigh", "show", "dev", self.interface])
        found: dict[str, str] = {}
        for entry in json.loads(out or "[]"):
            states = set(entry.get("state") or ())
            if "lladdr" in entry and states & _USABLE:
                found[ipaddress.ip_address(entry["dst"]).compressed] = str(entry["lladdr"]).lower()
        return found

    async def _resolve(self, addresses: Iterable[str]) -> dict[str, str]:
        """MACs of these addresses on our interface; those that stay unknown are left out."""
        wanted = {ipaddress.ip_address(a).compressed for a in addresses}
        known = await self._neighbours()
        missing = wanted - set(known)
        if not missing:
            return known
        for address in sorted(missing):
            # "use" makes the kernel solicit the address now, as if a packet waited for it.
            await self._ip(["neigh", "replace", address, "dev", self.interface, "use"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._resolve_timeout
        while missing and loop.time() < deadline:
            await asyncio.sleep(0.02)
            known = await self._neighbours()
            missing = wanted - set(known)
        return known

    # --- commands ----------------------------------------------------------------

    def _table(self, partition: str) -> str:
        try:
            return table_name(partition)
        except ValueError as exc:
            raise ApplianceRejected(self.name, str(exc)) from exc

    async def _ip(self, args: list[str]) -> str:
        argv = ["ip", *(("-n", self.netns) if self.netns else ()), *args]
        try:
            return await run(argv, timeout=self._timeout)
        except CommandFailed as exc:
            raise ApplianceUnavailable(self.name, str(exc)) from exc

    async def _nft(
        self,
        args: list[str],
        *,
        stdin: str | None = None,
        missing_ok: bool = False,
        rejected: bool = False,
    ) -> None:
        try:
            await run(["nft", *args], netns=self.netns, stdin=stdin, timeout=self._timeout)
        except CommandFailed as exc:
            if missing_ok and exc.returncode is not None and _NO_TABLE in exc.stderr:
                return
            if rejected and exc.returncode is not None:
                raise ApplianceRejected(self.name, str(exc)) from exc
            raise ApplianceUnavailable(self.name, str(exc)) from exc


_ZERO: Final = Counter()


def _reachable(server: VirtualServer, macs: dict[str, str], appliance: str) -> VirtualServer:
    """The server as it can be programmed: only members whose MAC is known."""
    draining = tuple(
        m for m in server.draining if ipaddress.ip_address(m.address).compressed in macs
    )
    if draining != server.draining:
        server = msgspec.structs.replace(server, draining=draining)  # gone: nothing to drain
    kept = tuple(m for m in server.members if ipaddress.ip_address(m.address).compressed in macs)
    if len(kept) != len(server.members):
        lost = sorted(m.address for m in server.members if m not in kept)
        log.warning(
            "appliance %s: %s: members %s do not answer ARP/ND; left out until they do",
            appliance,
            server.name,
            ", ".join(lost),
        )
        return msgspec.structs.replace(server, members=kept)
    return server
