"""The Linux applier against a real kernel: a throwaway network namespace as the node.

Needs root, ``ip`` and ``nft``; skipped without them, except in CI as root.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator

import pytest

from vipwire.contracts import (
    Endpoint,
    EndpointPort,
    EndpointsSnapshot,
    LbProgrammed,
    NodeEndpoints,
    ServicePort,
)
from vipwire.netns import CommandFailed, run
from vipwire.nodeagent import (
    ApplierUnavailable,
    ApplyError,
    DeleteNftTable,
    LinuxApplier,
    NodeState,
    SetSysctl,
    desired_state,
    plan,
)

_MISSING = [t for t in ("ip", "nft", "sysctl") if shutil.which(t) is None]
_CAN_RUN = os.geteuid() == 0 and not _MISSING
_MUST_RUN = os.environ.get("CI") == "true" and os.geteuid() == 0

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not _CAN_RUN and not _MUST_RUN, reason="needs root and ip, nft, sysctl on PATH"
    ),
]

NODE = "node-a"
PLANTED = "203.0.113.250"
_count = itertools.count()


@pytest.fixture
async def netns() -> AsyncIterator[str]:
    """A fresh namespace with lo up, an uplink ``eth0``, and an operator's address and table."""
    name = f"vwlab-{os.getpid()}t{next(_count)}-node"
    await run(["ip", "netns", "add", name])
    try:
        await run(["ip", "-n", name, "link", "set", "lo", "up"])
        await run(["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "p"])
        await run(["ip", "-n", name, "addr", "add", f"{PLANTED}/32", "dev", "lo"])
        await run(
            ["nft", "-f", "-"], netns=name, stdin="table inet operator {\n\tchain keep {\n\t}\n}\n"
        )
        yield name
    finally:
        await run(["ip", "netns", "delete", name])


def standalone(*vips: str, pods: tuple[str, ...] = ("203.0.113.11",)) -> NodeState:
    lb = LbProgrammed(
        cluster="east",
        namespace="default",
        name="web",
        uid="u",
        appliance="linux-1",
        vips=vips,
        ports=(ServicePort(port=80, name="http"),),
        members=(),
    )
    eps = EndpointsSnapshot(
        cluster="east",
        namespace="default",
        name="web",
        nodes=(
            NodeEndpoints(
                node=NODE,
                endpoints=tuple(
                    Endpoint(addresses=(p,), ports=(EndpointPort(port=8080, name="http"),))
                    for p in pods
                ),
            ),
        ),
    )
    programmed = {"default/web": lb} if vips else {}
    return desired_state(
        programmed, {"default/web": eps}, node=NODE, mode="standalone", uplink="eth0"
    )


async def tables(netns: str) -> set[str]:
    out = await run(["nft", "-j", "list", "tables"], netns=netns)
    return {i["table"]["name"] for i in json.loads(out)["nftables"] if "table" in i}


async def sysctl(netns: str, key: str) -> str:
    return (await run(["sysctl", "-n", key], netns=netns)).strip()


class TestApply:
    async def test_vips_sysctls_and_table_are_applied_once(self, netns: str) -> None:
        """From empty: VIPs on lo (v4 and v6), ARP sysctls on all and the uplink, the table;
        then the node reads back as desired and nothing more is planned."""
        applier = LinuxApplier(uplink="eth0", netns=netns)
        desired = standalone("198.51.100.10", "2001:db8::10")
        await applier.apply(plan(await applier.current(), desired))
        current = await applier.current()
        owned = {(a.address, a.prefix) for a in current.addresses if a.owned}
        assert owned == {("198.51.100.10", 32), ("2001:db8::10", 128)}
        assert desired.nft is not None and current.nft_digest == desired.nft.digest
        assert plan(current, desired) == ()
        for scope in ("all", "eth0"):
            assert await sysctl(netns, f"net.ipv4.conf.{scope}.arp_ignore") == "1"
            assert await sysctl(netns, f"net.ipv4.conf.{scope}.arp_announce") == "2"
        assert {"vipwire", "operator"} <= await tables(netns)

    async def test_only_what_it_owns_is_removed(self, netns: str) -> None:
        """Withdrawing every VIP leaves the planted address and table alone."""
        applier = LinuxApplier(uplink="eth0", netns=netns)
        await applier.apply(plan(await applier.current(), standalone("198.51.100.10")))
        await applier.apply(plan(await applier.current(), standalone()))
        current = await applier.current()
        assert not [a for a in current.addresses if a.owned]
        assert PLANTED in {a.address for a in current.addresses}
        assert "operator" in await tables(netns)

    async def test_a_new_applier_knows_its_addresses_from_the_kernel(self, netns: str) -> None:
        """Ownership lives on the node: a fresh applier (restarted agent) plans nothing."""
        desired = standalone("198.51.100.10")
        first = LinuxApplier(uplink="eth0", netns=netns)
        await first.apply(plan(await first.current(), desired))
        second = LinuxApplier(uplink="eth0", netns=netns)
        assert plan(await second.current(), desired) == ()
        assert second.writes == 0

    async def test_kube_proxy_mode_keeps_addresses_and_drops_the_table(self, netns: str) -> None:
        """Switching to kube-proxy mode deletes our table (twice is fine), keeps the VIPs."""
        applier = LinuxApplier(uplink="eth0", netns=netns)
        await applier.apply(plan(await applier.current(), standalone("198.51.100.10")))
        lb = LbProgrammed(
            cluster="east",
            namespace="default",
            name="web",
            uid="u",
            appliance="linux-1",
            vips=("198.51.100.10",),
            ports=(ServicePort(port=80),),
            members=(),
        )
        kube_proxy = desired_state({"default/web": lb}, {}, node=NODE, mode="kube-proxy")
        actions = plan(await applier.current(), kube_proxy)
        assert actions == (DeleteNftTable(table="vipwire"),)
        await applier.apply(actions)
        await applier.apply(actions)
        assert await tables(netns) == {"operator"}
        assert (await applier.current()).nft_digest is None
        assert "198.51.100.10" in {a.address for a in (await applier.current()).addresses}


class TestMarks:
    async def test_label_fallback_marks_ipv4_and_refuses_ipv6(self, netns: str) -> None:
        """Without address protocols: IPv4 gets the lo:vw label (still ours to any applier);
        an IPv6 VIP cannot be marked and is refused rather than leaked."""
        old_kernel = LinuxApplier(netns=netns, marking="label")
        await old_kernel.apply(plan(await old_kernel.current(), standalone("198.51.100.10")))
        out = await run(["ip", "-n", netns, "-j", "addr", "show", "dev", "lo"])
        labels = {
            i["local"]: i.get("label") for i in json.loads(out)[0]["addr_info"] if "local" in i
        }
        assert labels["198.51.100.10"] == "lo:vw"
        now = await LinuxApplier(netns=netns).current()
        assert {a.address for a in now.addresses if a.owned} == {"198.51.100.10"}
        with pytest.raises(ApplierUnavailable, match="IPv6"):
            await old_kernel.apply(plan(await old_kernel.current(), standalone("2001:db8::10")))


class TestErrors:
    async def test_a_failed_command_is_an_apply_error_with_its_output(self, netns: str) -> None:
        """A sysctl that cannot be written raises ApplyError naming the command and stderr,
        with the command's failure as the cause."""
        applier = LinuxApplier(netns=netns)
        with pytest.raises(ApplyError) as caught:
            await applier.apply([SetSysctl(key="net.ipv4.conf.nosuch0.arp_ignore", value="1")])
        assert "sysctl" in str(caught.value) and "nosuch0" in str(caught.value)
        assert isinstance(caught.value.__cause__, CommandFailed)

    async def test_a_missing_namespace_is_an_apply_error(self) -> None:
        """Reading a node that is not there fails as ApplyError, not as a crash."""
        applier = LinuxApplier(netns=f"vwlab-{os.getpid()}t-absent")
        with pytest.raises(ApplyError):
            await applier.current()
