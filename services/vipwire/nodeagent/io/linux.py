"""The real applier: VIPs on the loopback, ARP sysctls, and the agent's nftables table.

Ownership is marked on the node itself, so a restarted agent (or a second
one) knows what it may remove without any memory of its own: an address we
add carries the address protocol :data:`ADDRESS_PROTO` (Linux >= 5.18) or,
on older kernels, the IPv4 label ``<interface>:vw``; the nftables table is
ours by name. Anything else on the node is left alone.

Every command may run inside a named network namespace (``netns``), which is
how the packet lab turns namespaces into nodes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final, Literal

from vipwire.netns import CommandFailed, run
from vipwire.nodeagent.core.desired import DIGEST_PREFIX, Sysctl, arp_sysctls
from vipwire.nodeagent.core.plan import (
    Action,
    AddAddress,
    AppliedState,
    DeleteNftTable,
    InterfaceAddress,
    RemoveAddress,
    ReplaceNftTable,
    SetSysctl,
    describe,
)
from vipwire.nodeagent.io._rtnl import AddressSocket, KernelAddress, RtnlError
from vipwire.nodeagent.io.apply import ApplierUnavailable, ApplyError
from vipwire.nodeagent.settings import NodeagentSettings

log = logging.getLogger("vipwire.nodeagent.linux")

ADDRESS_PROTO: Final = 0x76
"""``IFA_PROTO`` of the addresses the agent adds (0-3 are the kernel's own)."""
LABEL_SUFFIX: Final = ":vw"
"""Marks our IPv4 addresses (as ``<interface>:vw``) where the kernel has no address protocol."""
_NO_TABLE: Final = "No such file or directory"

Marking = Literal["proto", "label"]


def kernel_marking(release: str | None = None) -> Marking:
    """How this kernel lets us mark addresses: ``proto`` from 5.18 on, else ``label``."""
    release = release if release is not None else os.uname().release
    try:
        major, minor = (int(part) for part in release.split("-")[0].split(".")[:2])
    except ValueError:
        return "label"
    return "proto" if (major, minor) >= (5, 18) else "label"


def sysctl_path(key: str) -> Path:
    """/proc/sys path of a key in ``sysctl`` notation (a ``/`` stands for a ``.``)."""
    return Path("/proc/sys", *(part.replace("/", ".") for part in key.split(".")))


class LinuxApplier:
    """Applies planned actions to this host (or to network namespace ``netns``)."""

    def __init__(
        self,
        *,
        interface: str = "lo",
        uplink: str | None = None,
        table: str = "vipwire",
        netns: str | None = None,
        marking: Marking | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.interface = interface
        self.table = table
        self.netns = netns
        self.marking: Marking = marking or kernel_marking()
        self.label = f"{interface}{LABEL_SUFFIX}"
        self._sysctl_keys = tuple(s.key for s in arp_sysctls(uplink))
        self._timeout = timeout
        #: Writes to the node so far (actions applied), for tests and benchmarks.
        self.writes = 0

    @classmethod
    def from_settings(cls, settings: NodeagentSettings) -> LinuxApplier:
        return cls(
            interface=settings.loopback_interface,
            uplink=settings.uplink_interface,
            table=settings.nft_table,
            netns=settings.netns,
        )

    @property
    def dry_run(self) -> bool:
        return False

    # --- reading ---------------------------------------------------------------------

    async def current(self) -> AppliedState:
        addresses = await self._addresses()
        sysctls = await self._sysctls()
        digest = await self.nft_digest()
        return AppliedState(
            addresses=tuple(
                InterfaceAddress(
                    interface=self.interface,
                    address=a.address,
                    prefix=a.prefix,
                    owned=self.owns(a),
                )
                for a in addresses
            ),
            sysctls=sysctls,
            nft_digest=digest,
        )

    def owns(self, address: KernelAddress) -> bool:
        """Whether the agent put this address there (either mark counts, whatever the kernel)."""
        return address.proto == ADDRESS_PROTO or address.label == self.label

    async def _addresses(self) -> list[KernelAddress]:
        def read() -> list[KernelAddress]:
            sock, index = AddressSocket.open(self.netns, self.interface)
            with sock:
                return sock.addresses(index)

        try:
            return await asyncio.to_thread(read)
        except OSError as exc:
            raise ApplyError(f"cannot list addresses of {self._where()}: {exc}") from exc

    async def _sysctls(self) -> tuple[Sysctl, ...]:
        """The current values of the keys we set; a key that does not exist is left out."""
        if self.netns is None:
            found: list[Sysctl] = []
            for key in self._sysctl_keys:
                try:
                    value = await asyncio.to_thread(sysctl_path(key).read_text)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise ApplyError(f"cannot read sysctl {key}: {exc}") from exc
                found.append(Sysctl(key=key, value=value.strip()))
            return tuple(found)
        # -e: a missing key (an uplink not there yet) is skipped, not fatal.
        argv = ["sysctl", "-e", *self._sysctl_keys]
        try:
            out = await run(argv, netns=self.netns, timeout=self._timeout)
        except CommandFailed as exc:
            raise ApplyError(f"cannot read sysctls: {exc}") from exc
        values = {}
        for line in out.splitlines():
            key, sep, value = line.partition(" = ")
            if sep:
                values[key.strip()] = value.strip()
        return tuple(Sysctl(key=k, value=values[k]) for k in self._sysctl_keys if k in values)

    async def nft_digest(self) -> str | None:
        """The digest our table carries; None: no table; "": a table without one.

        Only the prerouting chain is listed: the whole table of a busy node
        holds thousands of rules, and this runs on every reconcile.
        """
        argv = ["nft", "-j", "list", "chain", "inet", self.table, "prerouting"]
        try:
            out = await run(argv, netns=self.netns, timeout=self._timeout)
        except CommandFailed as exc:
            if exc.returncode is not None and _NO_TABLE in exc.stderr:
                return "" if await self._table_exists() else None
            raise ApplyError(f"cannot read nftables table inet {self.table}: {exc}") from exc
        try:
            items = json.loads(out)["nftables"]
        except (ValueError, KeyError, TypeError):
            return ""
        for item in items:
            rule = item.get("rule") if isinstance(item, dict) else None
            comment = rule.get("comment") if isinstance(rule, dict) else None
            if isinstance(comment, str) and comment.startswith(DIGEST_PREFIX):
                return comment[len(DIGEST_PREFIX) :]
        return ""

    async def _table_exists(self) -> bool:
        try:
            out = await run(["nft", "-j", "list", "tables", "inet"], netns=self.netns)
            items = json.loads(out)["nftables"]
        except (CommandFailed, ValueError, KeyError, TypeError) as exc:
            raise ApplyError(f"cannot list nftables tables: {exc}") from exc
        return any(
            isinstance(i, dict) and i.get("table", {}).get("name") == self.table for i in items
        )

    # --- writing ---------------------------------------------------------------------

    async def apply(self, actions: Sequence[Action]) -> None:
        for group in _groups(actions):
            first = group[0]
            match first:
                case SetSysctl():
                    await self._set_sysctls([a for a in group if isinstance(a, SetSysctl)])
                case ReplaceNftTable():
                    await self._nft(first, ["nft", "-f", "-"], stdin=first.script)
                case DeleteNftTable(table=table):
                    await self._nft(
                        first, ["nft", "delete", "table", "inet", table], missing_ok=True
                    )
                case AddAddress() | RemoveAddress():
                    await self._change_addresses(group)
            self.writes += len(group)

    async def _set_sysctls(self, actions: list[SetSysctl]) -> None:
        if self.netns is None:
            for action in actions:
                try:
                    await asyncio.to_thread(sysctl_path(action.key).write_text, action.value)
                except OSError as exc:
                    raise ApplyError(f"{describe(action)}: {exc}") from exc
            return
        argv = ["sysctl", "-q", "-w", *(f"{a.key}={a.value}" for a in actions)]
        try:
            await run(argv, netns=self.netns, timeout=self._timeout)
        except CommandFailed as exc:
            raise ApplyError(f"{describe(actions[0])}: {exc}") from exc

    async def _nft(
        self, action: Action, argv: list[str], *, stdin: str | None = None, missing_ok: bool = False
    ) -> None:
        try:
            await run(argv, netns=self.netns, stdin=stdin, timeout=self._timeout)
        except CommandFailed as exc:
            if missing_ok and exc.returncode is not None and _NO_TABLE in exc.stderr:
                return
            raise ApplyError(f"{describe(action)}: {exc}") from exc

    async def _change_addresses(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, AddAddress) and self.marking == "label" and ":" in action.address:
                raise ApplierUnavailable(
                    f"{describe(action)}: this kernel has no address protocol (Linux < 5.18), "
                    "so an IPv6 VIP could not be marked as ours"
                )

        def change() -> None:
            sock, index = AddressSocket.open(self.netns, self.interface)
            with sock:
                for action in actions:
                    try:
                        if isinstance(action, AddAddress):
                            if self.marking == "proto":
                                sock.add(index, action.address, action.prefix, proto=ADDRESS_PROTO)
                            else:
                                sock.add(index, action.address, action.prefix, label=self.label)
                        elif isinstance(action, RemoveAddress):
                            sock.delete(index, action.address, action.prefix)
                    except RtnlError as exc:
                        raise ApplyError(f"{describe(action)}: {exc}") from exc

        try:
            await asyncio.to_thread(change)
        except ApplyError:
            raise
        except OSError as exc:
            raise ApplyError(f"cannot change addresses of {self._where()}: {exc}") from exc

    def _where(self) -> str:
        where = self.interface
        return f"{where} in network namespace {self.netns}" if self.netns else where


def _groups(actions: Sequence[Action]) -> Iterator[list[Action]]:
    """Runs of actions one command (or one netlink socket) can carry, in order."""
    group: list[Action] = []
    for action in actions:
        if group and not _same_kind(group[0], action):
            yield group
            group = []
        group.append(action)
        if isinstance(action, (ReplaceNftTable, DeleteNftTable)):
            yield group
            group = []
    if group:
        yield group


def _same_kind(a: Action, b: Action) -> bool:
    addresses = (AddAddress, RemoveAddress)
    if isinstance(a, addresses) and isinstance(b, addresses):
        return True
    return type(a) is type(b)
