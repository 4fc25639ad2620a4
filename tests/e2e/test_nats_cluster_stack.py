"""The all-in-one stack on a 3-server JetStream cluster (``vipwire up --nats-cluster 3``)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vipwire.allinone import Stack, StackSettings
from vipwire.contracts import STREAM, family_filter
from vipwire.natsserver import NatsCluster
from vipwire.testing import eventually

log = logging.getLogger("test.nats_cluster_stack")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    settings = StackSettings(
        clusters=1, nodes=2, nats_servers=3, state_dir=str(tmp_path), dashboard_port=None
    )
    async with Stack(settings) as s:
        await s.wait_ready()
        yield s


async def test_a_service_created_after_a_nats_server_dies_gets_its_vip_and_its_virtual_server(
    stack: Stack,
) -> None:
    """R3 stream and KV on three servers; kill the server that hosts the lbdriver's consumer:
    a Service created right after gets its VIP in status and on the appliance, and every
    component is ready again."""
    nats = stack.nats
    assert isinstance(nats, NatsCluster)
    lbdriver = stack.components["lbdriver"].runtime
    assert lbdriver is not None
    assert (await lbdriver.bus.js.stream_info(STREAM)).config.num_replicas == 3
    await stack.create_service("east", "before")
    await eventually(lambda: stack.ingress_ips("east", "before"), what="east/before has a VIP")

    (vip_consumer,) = (
        c for c in lbdriver.bus.consumers if c.spec.filters == (family_filter("vip"),)
    )
    assert vip_consumer.name is not None
    info = await lbdriver.bus.js.consumer_info(STREAM, vip_consumer.name)
    assert info.cluster is not None and info.cluster.leader
    nats.kill(nats.index_of(info.cluster.leader))
    created = time.monotonic()
    await stack.create_service("east", "after")

    def programmed() -> bool:
        vips = stack.ingress_ips("east", "after")
        servers = stack.appliance.virtual_servers("east").values()
        return bool(vips) and any(vs.address == vips[0] for vs in servers)

    # Before: about 2 minutes, until the killed server came back.
    await eventually(programmed, timeout=20, what="east/after has a VIP, programmed")
    log.warning("east/after programmed %.1fs after the kill", time.monotonic() - created)
    await eventually(lambda: not stack.readiness(), timeout=20, what="every component ready")
