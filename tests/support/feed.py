"""Node agents over the node feed, beside the lbdriver's feed publisher (as leader)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from support.publishing import publish_until_accepted
from vipwire.contracts import (
    LbProgrammed,
    LbRemoved,
    Member,
    NodeApplied,
    PoolsServed,
    ServicePort,
    decode,
    node_subject,
)
from vipwire.lbdriver.io.feed import FeedPublisher
from vipwire.nodeagent import DryRunApplier, NodeagentService, NodeagentSettings
from vipwire.runtime import Runtime
from vipwire.testing import eventually

RuntimeFactory = Callable[[str], Awaitable[Runtime]]
CLUSTER = "east"
POOLS = ("10.0.0.0/8",)


def programmed(name: str, vip: str, cluster: str = CLUSTER) -> LbProgrammed:
    return LbProgrammed(
        cluster=cluster,
        namespace="default",
        name=name,
        uid=f"uid-{name}",
        appliance="sim-1",
        vips=(vip,),
        ports=(ServicePort(port=80, name="http"),),
        members=(Member(node="n1", address="198.51.100.1"),),
    )


def removed(name: str) -> LbRemoved:
    return LbRemoved(
        cluster=CLUSTER, namespace="default", name=name, uid=f"uid-{name}", appliance="sim-1"
    )


class Feed:
    """A feed publisher (the lbdriver's, as leader) and node agents over its feed."""

    def __init__(self, make_runtime: RuntimeFactory, *, table_interval_s: float = 0.0) -> None:
        self.make_runtime = make_runtime
        self.table_interval_s = table_interval_s
        #: The publisher's widest window (0: fixed at its 5 ms).
        self.window_max_ms = 0
        #: Whether the publisher holds the lease (a test may take it away and give it back).
        self.leading = True
        self.publisher: FeedPublisher | None = None
        self.agents: list[NodeagentService] = []
        self.rt: Runtime | None = None

    async def start(self) -> Runtime:
        self.rt = await self.make_runtime("test")
        # Retried: on a NATS cluster the stream may be electing its leader.
        await publish_until_accepted(
            self.rt.bus, PoolsServed(cluster=CLUSTER, ranges=POOLS), msg_id="pools"
        )
        self.publisher = FeedPublisher(
            await self.make_runtime("lbdriver"),
            window_ms=5,
            window_max_ms=self.window_max_ms,
            is_leader=lambda: self.leading,
            table_interval_s=self.table_interval_s,
        )
        await self.publisher.start()
        self.publisher.serve(CLUSTER)
        return self.rt

    async def fed(self) -> None:
        """Every lb message on the bus is in the published feed."""
        assert self.rt is not None and self.publisher is not None
        last = await self.rt.bus.last_message("vipwire.*.lb.>")
        await asyncio.wait_for(self.publisher.published(last.seq if last else 0), 10)

    async def agent(
        self, node: str, *, ready: bool = True, resync_interval_s: float = 0.0
    ) -> NodeagentService:
        settings = NodeagentSettings(
            cluster=CLUSTER,
            node=node,
            coalesce_ms=5,
            resync_interval_s=resync_interval_s,
            # Reports are the tests' fences: paced, but not 0.5 s apart (the default).
            report_interval_s=0.02,
            feed="table",
        )
        agent = NodeagentService(
            settings, await self.make_runtime(f"agent-{node}"), DryRunApplier()
        )
        self.agents.append(agent)
        await agent.start()
        if ready:
            await agent.wait_ready(10)
        return agent

    async def stop(self) -> None:
        for agent in reversed(self.agents):
            await agent.stop()
        if self.publisher is not None:
            await self.publisher.stop()


async def reported(rt: Runtime, node: str, vips: tuple[str, ...]) -> None:
    """Wait until the last NodeApplied of ``node`` carries exactly ``vips``."""

    async def check() -> bool:
        stored = await rt.bus.last_message(node_subject("applied", CLUSTER, node))
        if stored is None:
            return False
        message = decode(stored.subject, stored.data)
        return isinstance(message, NodeApplied) and message.vips == vips

    await eventually(check, timeout=20, what=f"{node} reports exactly {len(vips)} VIPs")
