"""An in-process appliance: the state a real one would hold, with latency and faults.

For demos, benchmarks and tests. It behaves like a strict appliance: it
refuses a create of an existing name, a write to a missing one, and a second
object on a destination (address, port, protocol) already served.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Sequence

from vipwire.contracts import port_text
from vipwire.lbdriver.core.diff import OperationConflict, apply_operations
from vipwire.lbdriver.core.virtual_servers import Operation, VirtualServer, op_name
from vipwire.lbdriver.io.drivers.base import (
    ApplianceError,
    ApplianceRejected,
    ApplianceUnavailable,
    DestinationClash,
)


class SimAppliance:
    """An appliance model: partitions of virtual servers behind a faulty, slow API.

    Counters for tests: ``writes`` (operations applied), ``apply_calls``
    (successful apply requests) and ``list_calls``.
    """

    def __init__(
        self,
        name: str = "sim",
        *,
        api_latency_ms: float = 0.0,
        fail_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.name = name
        self.api_latency_ms = api_latency_ms
        self.fail_rate = fail_rate
        self._rng = random.Random(seed)
        self._partitions: dict[str, dict[str, VirtualServer]] = {}
        # Per partition, the names of the servers on each address: a write is checked
        # for destination clashes against its own addresses only, not the partition.
        self._by_address: dict[str, dict[str, set[str]]] = {}
        self._fail_next: list[type[ApplianceError]] = []
        self._down = False
        self.writes = 0
        self.apply_calls = 0
        self.list_calls = 0
        self.failures = 0

    # --- test controls -----------------------------------------------------------

    def fail_next(self, n: int = 1, error: type[ApplianceError] = ApplianceUnavailable) -> None:
        """Make the next ``n`` API calls fail with ``error``."""
        self._fail_next.extend([error] * n)

    def set_down(self, down: bool) -> None:
        """While down, every API call fails as unreachable."""
        self._down = down

    def virtual_servers(self, partition: str) -> dict[str, VirtualServer]:
        """A copy of one partition's state."""
        return dict(self._partitions.get(partition, {}))

    def state(self) -> dict[str, dict[str, VirtualServer]]:
        """A copy of every partition's state."""
        return {p: dict(servers) for p, servers in self._partitions.items()}

    def put(self, partition: str, server: VirtualServer) -> None:
        """Place an object directly, as another tool or an operator would (no API call)."""
        servers = self._partitions.setdefault(partition, {})
        self._index(partition, server.name, servers.get(server.name), server)
        servers[server.name] = server

    def remove(self, partition: str, name: str) -> None:
        """Delete an object directly, as another tool or an operator would."""
        self._index(partition, name, self._partitions.get(partition, {}).pop(name, None), None)

    # --- the driver interface ----------------------------------------------------

    async def list_virtual_servers(self, partition: str) -> dict[str, VirtualServer]:
        await self._call("list")
        self.list_calls += 1
        return self.virtual_servers(partition)

    async def apply(self, partition: str, ops: Sequence[Operation]) -> None:
        await self._call("apply")
        current = self._partitions.get(partition, {})
        try:
            after = apply_operations(current, ops)
        except OperationConflict as exc:
            self.failures += 1
            raise ApplianceRejected(self.name, f"partition {partition}: {exc}") from exc
        written = {op_name(op) for op in ops}
        problem = _access_problem(after, written)
        if problem is not None:
            self.failures += 1
            raise ApplianceRejected(self.name, f"partition {partition}: {problem}")
        clash = self._destination_clash(partition, current, after, written)
        if clash is not None:
            self.failures += 1
            raise clash.rejected(self.name, partition)
        # All or nothing, like a transaction: a refused batch changes nothing.
        self._partitions[partition] = after
        for name in written:
            self._index(partition, name, current.get(name), after.get(name))
        self.apply_calls += 1
        self.writes += len(ops)

    async def close(self) -> None:
        """Nothing to release; the state outlives the driver's users on purpose."""

    async def _call(self, what: str) -> None:
        if self.api_latency_ms > 0:
            await asyncio.sleep(self.api_latency_ms / 1000)
        if self._down:
            self.failures += 1
            raise ApplianceUnavailable(self.name, f"{what}: connection refused") from (
                ConnectionRefusedError(f"{self.name} is down")
            )
        if self._fail_next:
            error = self._fail_next.pop(0)
            self.failures += 1
            raise error(self.name, f"{what}: injected failure") from RuntimeError("fail_next")
        if self.fail_rate > 0 and self._rng.random() < self.fail_rate:
            self.failures += 1
            raise ApplianceUnavailable(self.name, f"{what}: injected timeout") from TimeoutError(
                "fail_rate"
            )

    def _index(
        self, partition: str, name: str, before: VirtualServer | None, after: VirtualServer | None
    ) -> None:
        index = self._by_address.setdefault(partition, {})
        if before is not None:
            names = index.get(before.address)
            if names is not None:
                names.discard(name)
                if not names:
                    del index[before.address]
        if after is not None:
            index.setdefault(after.address, set()).add(name)

    def _destination_clash(
        self,
        partition: str,
        before: dict[str, VirtualServer],
        after: dict[str, VirtualServer],
        written: set[str],
    ) -> DestinationClash | None:
        """A written server whose destination another server already serves."""
        # Only the written servers' destinations can clash anew, and only with servers
        # on the same addresses: the index names those (scanning the partition made
        # every write cost as much as the partition).
        index = self._by_address.get(partition, {})
        addresses = {after[n].address for n in written if n in after}
        candidates = {m for a in addresses for m in index.get(a, ())} | written
        by_destination: dict[tuple[str, int, str], list[str]] = {}
        for name in sorted(candidates):
            server = after.get(name)
            if server is not None and server.address in addresses:
                key = (server.address, server.port, server.protocol)
                by_destination.setdefault(key, []).append(name)
        for (address, port, protocol), names in sorted(by_destination.items()):
            if len(names) > 1 and written.intersection(names):
                return DestinationClash(
                    f"{address}:{port_text(port, protocol)}", tuple(sorted(names))
                )
        return None


def _access_problem(after: dict[str, VirtualServer], written: set[str]) -> str | None:
    """A written server whose source ranges or affinity an appliance would refuse."""
    for name in sorted(written & after.keys()):
        server = after[name]
        version = ipaddress.ip_address(server.address).version
        for text in server.source_ranges:
            try:
                network = ipaddress.ip_network(text)
            except ValueError:
                return f"{name}: source range {text!r} is not a CIDR"
            if network.version != version:
                return f"{name}: source range {text} is not of the VIP's family"
        if server.affinity_timeout_s is not None and server.affinity_timeout_s <= 0:
            return f"{name}: persistence timeout {server.affinity_timeout_s} is not positive"
    return None
