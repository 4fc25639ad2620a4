"""The lbdriver under test: instances on a shared appliance, and what they report.

One harness for the service, reconciler and driver suites: a publisher runtime,
an observer of ``vipwire.*.lb.>`` (a log, and a queue for ``expect``), and
lbdriver instances started with the suite's own default settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from nats.aio.msg import Msg
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vipwire.contracts import LbFailed, LbMessage, LbProgrammed, LbRemoved, Message, decode
from vipwire.lbdriver import LbdriverService, LbdriverSettings, SimAppliance, VirtualServer
from vipwire.runtime import Runtime
from vipwire.testing import eventually

RuntimeFactory = Callable[[str], Awaitable[Runtime]]
L = TypeVar("L", LbProgrammed, LbFailed, LbRemoved)
CLUSTER = "prod"
TIMEOUT_S = 5.0


class LbHarness:
    """A publisher, an observer of ``vipwire.*.lb.>``, and lbdriver instances on one sim.

    ``defaults``: the LbdriverSettings fields every ``start`` uses unless overridden.
    """

    def __init__(
        self,
        make_runtime: RuntimeFactory,
        publisher: Runtime,
        *,
        defaults: Mapping[str, Any],
        sim: SimAppliance | None = None,
        spans: InMemorySpanExporter | None = None,
    ) -> None:
        self.make_runtime = make_runtime
        self.publisher = publisher
        self.sim = sim if sim is not None else SimAppliance("sim-a")
        self.defaults = dict(defaults)
        self.spans = spans  # for fences (support.fences) that read consumer spans
        self.seen: asyncio.Queue[LbMessage] = asyncio.Queue()
        self.log: list[LbMessage] = []
        self.services: list[LbdriverService] = []
        self._count = 0

    async def observe(self) -> None:
        async def on_msg(msg: Msg) -> None:
            message = decode(msg.subject, msg.data)
            assert isinstance(message, LbProgrammed | LbFailed | LbRemoved)
            self.seen.put_nowait(message)
            self.log.append(message)

        self.sub = await self.publisher.bus.nc.subscribe("vipwire.*.lb.>", cb=on_msg)
        await self.publisher.bus.fence()

    async def close(self) -> None:
        """Stop every lbdriver still running, then the observer."""
        for service in list(self.services):
            await self.stop(service)
        await self.sub.unsubscribe()

    async def start(
        self, drivers: Mapping[str, Any] | None = None, **overrides: Any
    ) -> LbdriverService:
        """A new lbdriver; the sim serves appliance ``sim-a`` when that one is configured."""
        self._count += 1
        options = {**self.defaults, **overrides}
        profiles = options.pop("profiles", None)  # the config file's top-level section
        runtime = await self.make_runtime(f"lbdriver-{self._count}")
        given = {self.sim.name: self.sim, **(drivers or {})}
        configured = {a.name for a in options["appliances"]}
        service = LbdriverService(
            LbdriverSettings(**options),
            runtime,
            {k: v for k, v in given.items() if k in configured},
            profiles=profiles,
        )
        await service.start()
        self.services.append(service)
        # Leader or standby (the election's first decision): what it does next is decided.
        await eventually(
            lambda: service.elected_or_standing_by, TIMEOUT_S, what="the lbdriver's election"
        )
        return service

    async def stop(self, service: LbdriverService) -> None:
        await service.stop()
        self.services.remove(service)

    async def publish(self, *messages: Message) -> None:
        for message in messages:
            await self.publisher.bus.publish(message)

    async def expect(
        self, kind: type[L], name: str = "web", where: Callable[[L], bool] = lambda _: True
    ) -> L:
        """The next message of ``kind`` about Service ``name`` that satisfies ``where``."""

        async def wait() -> L:
            while True:
                message = await self.seen.get()
                if isinstance(message, kind) and message.name == name and where(message):
                    return message

        return await asyncio.wait_for(wait(), TIMEOUT_S)

    def reports(self, kind: type[L], name: str | None = None) -> list[L]:
        """Every message of ``kind`` seen so far (about Service ``name``, if given)."""
        return [m for m in self.log if isinstance(m, kind) and name in (None, m.name)]

    async def programmed(self, *names: str, timeout: float = TIMEOUT_S) -> None:
        """Wait for an LbProgrammed about each of ``names``."""
        await eventually(
            lambda: {m.name for m in self.reports(LbProgrammed)} >= set(names),
            timeout,
            what=f"LbProgrammed for {sorted(names)}",
        )

    def servers(self, partition: str = CLUSTER) -> dict[str, VirtualServer]:
        return self.sim.virtual_servers(partition)
