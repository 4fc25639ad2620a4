"""One appliance per driver kind, behind one interface, for the driver conformance suite.

A backend makes driver instances for one appliance (a new instance is a restarted
lbdriver), and reaches around the driver the way an operator or the appliance
would: delete a virtual server out of band, rotate the password, be busy, expire
sessions. What a backend cannot do (the simulator has no password) it says, and
the suite skips with that reason.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from support.appliances import CLUSTER
from vipwire.applianceemu import A10Emulator, F5Emulator, Fault
from vipwire.lbdriver import ApplianceDriver, ApplianceSettings, SimAppliance, build_driver

KINDS = ("sim", "linux", "f5", "a10")
PASSWORD = "first-s3cret"
_labs = itertools.count()


@dataclass(slots=True)
class ExpireSessionsAt(Fault):
    """When the first matching request arrives, every session expires (the request
    then meets the appliance's own invalid-session answer). Never answers itself."""

    expire: Callable[[], None] = lambda: None

    def matches(self, request: web.Request) -> bool:
        if self.count > 0 and Fault.matches(self, request):
            self.count = 0
            self.expire()
        return False


class NotSupported(Exception):
    """This backend has no such thing (the reason is the message)."""


class Backend:
    kind: str = ""
    #: Member addresses that answer (the linux driver programs only those that do).
    nodes: tuple[str, ...] = ("198.51.100.1", "198.51.100.2", "198.51.100.3")
    vip: str = "192.0.2.10"

    def __init__(self) -> None:
        self._drivers: list[ApplianceDriver] = []

    def driver(self) -> ApplianceDriver:
        """A new driver instance for the appliance (a restarted lbdriver)."""
        d = self._make()
        self._drivers.append(d)
        return d

    def _make(self) -> ApplianceDriver:
        raise NotImplementedError

    async def tamper(self, name: str) -> None:
        """Delete virtual server ``name`` out of band, as an operator would."""
        raise NotImplementedError

    async def rotate_password(self, new: str) -> None:
        raise NotSupported(f"{self.kind}: no credentials")

    def busy(self) -> None:
        """The next management request is answered "busy"."""
        raise NotSupported(f"{self.kind}: no management API to be busy")

    def expire_mid_write(self) -> None:
        """The session is invalid from the next configuration write on."""
        raise NotSupported(f"{self.kind}: no sessions")

    def writes(self) -> int:
        """Configuration writes the appliance has answered (-1: not counted)."""
        return -1

    def injected_left(self) -> int:
        """Injected faults not yet answered (0: each was met)."""
        return 0

    async def close(self) -> None:
        for d in self._drivers:
            await d.close()


class SimBackend(Backend):
    kind = "sim"

    def __init__(self) -> None:
        super().__init__()
        self.sim = SimAppliance("sim-a")

    def _make(self) -> ApplianceDriver:
        return self.sim  # the simulator is the appliance: its state outlives a driver

    async def tamper(self, name: str) -> None:
        self.sim.remove(CLUSTER, name)

    def busy(self) -> None:
        self.sim.fail_next(1)

    def injected_left(self) -> int:
        return len(self.sim._fail_next)

    async def close(self) -> None:
        pass


class LinuxBackend(Backend):
    kind = "linux"
    vip = "198.51.100.10"

    def __init__(self, plan: Any) -> None:
        super().__init__()
        self.plan = plan
        self.nodes = tuple(n.address for n in plan.nodes)

    def _make(self) -> ApplianceDriver:
        from vipwire.lbdriver.io.drivers.linux import LinuxAppliance

        a = self.plan.appliance
        return LinuxAppliance("linux-1", interface=a.interface, netns=a.netns, resolve_timeout=0.5)

    async def tamper(self, name: str) -> None:
        from vipwire.lbdriver.io.drivers.linux_nft import table_name
        from vipwire.netns import run

        # The kernel is the linux driver's only store: dropping the table drops the server.
        await run(
            ["nft", "delete", "table", "netdev", table_name(CLUSTER)],
            netns=self.plan.appliance.netns,
        )


class _RestBackend(Backend):
    def __init__(self, emu: F5Emulator | A10Emulator, secret: Path) -> None:
        super().__init__()
        self.emu = emu
        self.secret = secret
        secret.write_text(PASSWORD + "\n")

    def _make(self) -> ApplianceDriver:
        return build_driver(
            ApplianceSettings(
                name=f"{self.kind}-1",
                driver=self.kind,  # type: ignore[arg-type]
                address=self.emu.url,
                username="vip",
                password_file=str(self.secret),
                verify_tls=False,
            )
        )

    async def rotate_password(self, new: str) -> None:
        # The Secret is updated and the appliance's password changed; old sessions die.
        self.emu.set_credentials("vip", new)
        self.secret.write_text(new + "\n")
        self._expire()

    def _expire(self) -> None:
        raise NotImplementedError

    def busy(self) -> None:
        self.emu.fail_next(503)

    def writes(self) -> int:
        return self.emu.writes

    def injected_left(self) -> int:
        return sum(1 for f in self.emu.faults if f.count > 0)

    def _expire_at(self, method: str, path_contains: str) -> None:
        self.emu.faults.append(ExpireSessionsAt(0, 1, method, path_contains, expire=self._expire))


class F5Backend(_RestBackend):
    kind = "f5"
    emu: F5Emulator

    async def tamper(self, name: str) -> None:
        self.emu.remove("virtual", CLUSTER, name)

    def _expire(self) -> None:
        self.emu.expire_tokens()

    def expire_mid_write(self) -> None:
        # The token dies between the transaction's commands and its commit.
        self._expire_at("PATCH", "/mgmt/tm/transaction/")


class A10Backend(_RestBackend):
    kind = "a10"
    emu: A10Emulator

    def __init__(self, emu: A10Emulator, secret: Path) -> None:
        super().__init__(emu, secret)
        # partition_mode existing: the operator made the partition, with its VLAN.
        emu.add_partition(CLUSTER, vlans=(100,))

    async def tamper(self, name: str) -> None:
        # One VIP is one virtual-server; its port named after ours is what we deleted.
        for vip, obj in self.emu.objects(CLUSTER, "virtual-server").items():
            ports = [p for p in obj.get("port-list", []) if p.get("name") != name]
            if len(ports) != len(obj.get("port-list", [])):
                self.emu.remove(CLUSTER, "virtual-server", vip)
                if ports:
                    self.emu.plant(CLUSTER, "virtual-server", {**obj, "port-list": ports})

    def _expire(self) -> None:
        self.emu.expire_sessions()

    def busy(self) -> None:
        # ACOS's "configuration manager busy" code (HTTP 400: only the code says busy).
        self.emu.busy_next()

    def injected_left(self) -> int:
        return super().injected_left() + len(self.emu._busy)

    def expire_mid_write(self) -> None:
        # The session is invalid when the virtual server is written, after the servers.
        self._expire_at("POST", "/slb/virtual-server")


@asynccontextmanager
async def backend(kind: str, tmp_path: Path) -> AsyncIterator[Backend]:
    """A fresh appliance of ``kind`` (linux: a lab namespace; needs root, ip and nft)."""
    b: Backend
    if kind == "sim":
        b = SimBackend()
        yield b
        return
    if kind == "linux":
        from vipwire.lab import plan_lab
        from vipwire.lab.netbuild import build, destroy

        plan = plan_lab(f"{os.getpid()}c{next(_labs)}", nodes=2, pods=1)
        await build(plan)
        b = LinuxBackend(plan)
        try:
            yield b
        finally:
            await b.close()
            await destroy(plan)
        return
    emu: F5Emulator | A10Emulator = (
        F5Emulator(username="vip", password=PASSWORD)
        if kind == "f5"
        else A10Emulator(username="vip", password=PASSWORD)
    )
    await emu.start()
    try:
        if isinstance(emu, F5Emulator):
            b = F5Backend(emu, tmp_path / "password")
        else:
            b = A10Backend(emu, tmp_path / "password")
        try:
            yield b
        finally:
            await b.close()
    finally:
        await emu.stop()
