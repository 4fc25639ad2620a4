"""The ``linux`` appliance driver against real kernels: the lab's namespaces, no pipeline.

Needs root, ``ip`` and ``nft``; skipped without them, except in CI as root.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import AsyncIterator

import msgspec
import pytest

from vipwire.contracts import Member
from vipwire.lab import LabPlan, missing_requirements, plan_lab
from vipwire.lab.netbuild import build, destroy
from vipwire.lbdriver import (
    ApplianceRejected,
    CreateVirtualServer,
    DeleteVirtualServer,
    Monitor,
    UpdateMembers,
    VirtualServer,
)
from vipwire.lbdriver.io.drivers.linux import LinuxAppliance
from vipwire.netns import run

_PROBLEMS = missing_requirements()
_MUST_RUN = os.environ.get("CI") == "true" and os.geteuid() == 0

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        bool(_PROBLEMS) and not _MUST_RUN, reason="; ".join(_PROBLEMS) or "runnable"
    ),
]

PARTITION = "east"
_count = itertools.count()


@pytest.fixture
async def plan() -> AsyncIterator[LabPlan]:
    """The lab's segment with an appliance and two nodes (no services running)."""
    lab = plan_lab(f"{os.getpid()}d{next(_count)}", nodes=2, pods=1)
    await build(lab)
    try:
        yield lab
    finally:
        await destroy(lab)


def driver(plan: LabPlan) -> LinuxAppliance:
    a = plan.appliance
    return LinuxAppliance("linux-1", interface=a.interface, netns=a.netns, resolve_timeout=0.5)


def vs(
    plan: LabPlan, *nodes: int, name: str = "vipwire-east-default-web-198.51.100.10-80-tcp"
) -> VirtualServer:
    return VirtualServer(
        name=name,
        owner="east/default/web",
        address="198.51.100.10",
        port=80,
        protocol="TCP",
        members=tuple(
            Member(node=plan.nodes[i].name, address=plan.nodes[i].address) for i in nodes
        ),
        monitor=Monitor(port=10256),
    )


async def tables(plan: LabPlan) -> set[str]:
    out = await run(["nft", "-j", "list", "tables"], netns=plan.appliance.netns)
    return {i["table"]["name"] for i in json.loads(out)["nftables"] if "table" in i}


class TestDriver:
    async def test_a_virtual_server_round_trips_through_the_kernel(self, plan: LabPlan) -> None:
        """What was applied lists back exactly (owner, members, monitor), also for a new
        driver instance: the kernel is the only store."""
        server = vs(plan, 0, 1)
        await driver(plan).apply(PARTITION, [CreateVirtualServer(server=server)])
        assert await driver(plan).list_virtual_servers(PARTITION) == {server.name: server}
        rule = await run(
            ["nft", "list", "table", "netdev", "vipwire-east"], netns=plan.appliance.netns
        )
        for node in plan.nodes:
            assert node.mac in rule  # members resolved to their MACs via ARP

    async def test_members_change_and_the_last_delete_removes_the_table(
        self, plan: LabPlan
    ) -> None:
        """UpdateMembers rewrites the pool; deleting the last server drops the table, and a
        table that is not ours stays."""
        await run(
            ["nft", "-f", "-"],
            netns=plan.appliance.netns,
            stdin="table netdev operator {\n\tchain keep {\n\t}\n}\n",
        )
        d = driver(plan)
        server = vs(plan, 0, 1)
        await d.apply(PARTITION, [CreateVirtualServer(server=server)])
        one = vs(plan, 1).members
        await d.apply(PARTITION, [UpdateMembers(name=server.name, members=one)])
        assert (await d.list_virtual_servers(PARTITION))[server.name].members == one
        await d.apply(PARTITION, [DeleteVirtualServer(name=server.name)])
        assert await d.list_virtual_servers(PARTITION) == {}
        assert await tables(plan) == {"operator"}

    async def test_a_conflicting_write_is_rejected_and_changes_nothing(self, plan: LabPlan) -> None:
        """Creating an existing name, or a second server on one destination, is refused."""
        d = driver(plan)
        server = vs(plan, 0)
        await d.apply(PARTITION, [CreateVirtualServer(server=server)])
        with pytest.raises(ApplianceRejected):
            await d.apply(PARTITION, [CreateVirtualServer(server=server)])
        twin = vs(plan, 1, name="vipwire-east-default-twin-198.51.100.10-80-tcp")
        with pytest.raises(ApplianceRejected, match="destination"):
            await d.apply(PARTITION, [CreateVirtualServer(server=twin)])
        assert await d.list_virtual_servers(PARTITION) == {server.name: server}

    async def test_a_member_that_does_not_answer_is_left_out(self, plan: LabPlan) -> None:
        """An address nobody answers ARP for is not programmed, and not listed, so the
        lbdriver's next diff tries it again."""
        server = vs(plan, 0)
        ghost = Member(node="ghost", address="192.0.2.77")
        with_ghost = msgspec.structs.replace(server, members=(*server.members, ghost))
        d = driver(plan)
        await d.apply(PARTITION, [CreateVirtualServer(server=with_ghost)])
        listed = await d.list_virtual_servers(PARTITION)
        assert listed[server.name].members == server.members
