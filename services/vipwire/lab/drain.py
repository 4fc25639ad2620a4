"""Graceful drain in the packet lab: a long-lived connection survives a member drain.

A Service (externalTrafficPolicy Local, so a reply names the node that took the
connection) over one pod on each of two nodes, whose pods answer every line of
a connection with their name, for as long as the client keeps it open. The
client opens one connection and asks once: the answer names the node the
appliance chose. That node is then cordoned (the lbdriver's ``drain_on_cordon``):
the appliance disables it (no new connections; established ones continue) for
``drain_timeout_s`` before removing it. The lab waits until the appliance's
kernel lists it draining, asks again on the same connection (it must answer,
from the same pod), and opens new connections (each must land elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from typing import TYPE_CHECKING, Any, Final

from vipwire.aio import cancel_and_wait
from vipwire.allinone.stack import LB_CLASS
from vipwire.lab.netbuild import LabError
from vipwire.lab.topology import SERVICE_PORT, Pod, endpoint_slice
from vipwire.netns import call_in_netns

if TYPE_CHECKING:
    from vipwire.lab.dsr import DsrLab

#: The pods' port for the drain's long-lived connections (HTTP keeps its own).
ECHO_PORT: Final = 9090
SERVICE: Final = "drain"
#: New connections opened while the node drains.
NEW_CONNECTIONS: Final = 12


class EchoServer:
    """A pod answering each line of a connection with its name, until the client leaves."""

    def __init__(self, pod: Pod) -> None:
        self.pod = pod
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        pod = self.pod

        def listen() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((pod.address, ECHO_PORT))
            sock.listen(64)
            sock.setblocking(False)
            return sock

        sock = call_in_netns(pod.netns, listen)
        self._server = await asyncio.start_server(self._serve, sock=sock)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        await cancel_and_wait(list(self._handlers))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            while await reader.readline():
                writer.write(f"{self.pod.name}\n".encode())
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if task is not None:
                self._handlers.discard(task)


class Connection:
    """One TCP connection from the client namespace, asked as often as wanted."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    async def open(cls, netns: str, address: str, port: int, timeout: float = 2.0) -> Connection:
        loop = asyncio.get_running_loop()
        sock = call_in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (address, port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def ask(self, timeout: float = 2.0) -> str | None:
        """The pod that answers on this connection; None if it no longer does."""
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(b"who\n")
                await self._writer.drain()
                line = await self._reader.readline()
        except (OSError, TimeoutError):
            return None
        return line.decode().strip() or None

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def _ask_once(netns: str, vip: str) -> str | None:
    try:
        conn = await Connection.open(netns, vip, SERVICE_PORT)
    except (OSError, TimeoutError):
        return None
    try:
        return await conn.ask()
    finally:
        await conn.close()


def _service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": LB_CLASS,
            "selector": {"app": name},
            "externalTrafficPolicy": "Local",
            "ports": [
                {"name": "echo", "port": SERVICE_PORT, "targetPort": "echo", "protocol": "TCP"}
            ],
        },
    }


def _slice(name: str, pods: list[Pod]) -> dict[str, Any]:
    return endpoint_slice(name, pods, [{"name": "echo", "port": ECHO_PORT, "protocol": "TCP"}])


async def drain_report(lab: DsrLab, *, timeout: float = 20.0) -> dict[str, Any]:
    """Run the drain scenario on a running lab; what ``vipwire lab dsr`` reports of it:
    ``drain_kept_connection`` (the established connection answered, from the same pod,
    while its node drained) and ``drain_new_connections`` (pod → new connections opened
    meanwhile; none may reach the draining node)."""
    plan = lab.plan
    pods = [plan.pods_on(node.name)[0] for node in plan.nodes[:2] if plan.pods_on(node.name)]
    if len(pods) < 2:
        raise LabError("the drain needs pods on two nodes")
    servers = [EchoServer(pod) for pod in pods]
    emulator = lab.stack.emulators[plan.cluster]
    conn: Connection | None = None
    cordoned: str | None = None
    vip: str | None = None
    try:
        for server in servers:
            await server.start()
        await emulator.create(_service(SERVICE))
        await emulator.create(_slice(SERVICE, pods))
        vip = await lab._until(
            lambda: next(iter(lab.stack.ingress_ips(plan.cluster, SERVICE)), None),
            timeout,
            f"Service {SERVICE} got no VIP in status",
        )
        await lab.wait_dataplane(vip, pods=[p.name for p in pods], policy="Local", timeout=timeout)
        conn = await Connection.open(plan.client.netns, vip, SERVICE_PORT)
        first = await conn.ask()
        if first is None:
            raise LabError(f"no answer on a new connection to {vip}")
        cordoned = plan.pod(first).node
        await emulator.patch("nodes", None, cordoned, {"spec": {"unschedulable": True}})

        async def draining() -> bool:
            servers_now = (await lab.appliance_servers()).values()
            return any(
                s.address == vip and cordoned in {m.node for m in s.draining} for s in servers_now
            )

        await lab._until_async(
            draining, timeout, f"the appliance never drained {cordoned} from {vip}"
        )
        again = await conn.ask()
        answers = [await _ask_once(plan.client.netns, vip) for _ in range(NEW_CONNECTIONS)]
        landed = Counter(a or "no answer" for a in answers)
        on_drained = sum(
            n for pod, n in landed.items() if pod in {p.name for p in plan.pods_on(cordoned)}
        )
        return {
            "drain_kept_connection": again == first,
            "drain_node": cordoned,
            "drain_new_connections": dict(sorted(landed.items())),
            "drain_new_connections_elsewhere": on_drained == 0 and "no answer" not in landed,
        }
    finally:
        if conn is not None:
            await conn.close()
        if cordoned is not None:
            await emulator.patch("nodes", None, cordoned, {"spec": {"unschedulable": None}})
        if vip is not None:
            await lab.delete_service(SERVICE, vip=vip, timeout=timeout)
        for server in servers:
            await server.stop()
