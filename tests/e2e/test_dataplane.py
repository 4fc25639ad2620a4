"""L2 DSR with real packets: client → Linux appliance → node → pod, replies straight back.

One packet lab (network namespaces: a client, a ``linux`` appliance, three
nodes with standalone node agents, four pods) runs the whole pipeline for
the module: emulated Kubernetes API, real NATS, watcher, ipam, lbdriver,
node agents. Each test makes its own Service, so they share the lab without
sharing state. The lab runs in a thread with its own event loop; tests talk
to it through :meth:`Lab.call`.

Needs root, ``ip`` and ``nft``; skipped without them, except in CI as root,
where not being able to run is a failure.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from vipwire.lab import DsrLab, missing_requirements
from vipwire.lab.drain import NEW_CONNECTIONS, drain_report
from vipwire.lab.dsr import PLANTED_ADDRESS, PLANTED_TABLE
from vipwire.lab.topology import CLIENT_ADDRESS, SERVICE_PORT

T = TypeVar("T")

_PROBLEMS = missing_requirements()
_MUST_RUN = os.environ.get("CI") == "true" and os.geteuid() == 0

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        bool(_PROBLEMS) and not _MUST_RUN,
        reason=f"packet lab: {'; '.join(_PROBLEMS) or 'runnable'}",
    ),
]

NODE_1, NODE_2, NODE_3 = "east-node-1", "east-node-2", "east-node-3"


class Lab:
    """A running DsrLab in a background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="lab", daemon=True)
        self._thread.start()
        self.lab = DsrLab()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 45.0) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()  # do not leave it running into the next test or the teardown
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if _PROBLEMS:
        pytest.fail(f"the packet lab must run in CI as root: {'; '.join(_PROBLEMS)}")
    running = Lab()
    try:
        running.call(running.lab.start(), timeout=90)
        yield running
    finally:
        try:
            running.call(running.lab.stop(), timeout=60)
        finally:
            running.close()


def members(lab: Lab, vip: str) -> set[str]:
    servers = lab.call(lab.lab.appliance_servers())
    return {m.node for s in servers.values() if s.address == vip for m in s.members}


class TestTraffic:
    def test_requests_reach_several_pods_and_no_reply_crosses_the_appliance(self, lab: Lab) -> None:
        """200 requests to VIP:80 all succeed on >1 pod; the appliance forwarded the client's
        packets and saw none from the VIP, and the client got every reply from a node's MAC."""
        vip = lab.call(lab.lab.create_service("web", pods=["web-1", "web-2", "web-3"]))
        report = lab.call(lab.lab.measure(vip, requests=200))
        assert report["ok"] == report["requests"] == 200, report["errors"]
        assert len(report["pods_seen"]) > 1
        assert sum(report["served_by_pod"].values()) == 200
        # Every connection: at least SYN, ACK with the request, and the closing ACK/FIN.
        assert report["forwarded_packets"] >= 3 * 200
        assert report["replies_via_appliance"] == 0
        assert report["client_frames_from_appliance_mac"] == 0
        assert report["client_frames_direct_from_nodes"] >= 2 * 200
        assert members(lab, vip) == {NODE_1, NODE_2, NODE_3}

    def test_scaling_the_endpoints_moves_new_connections_to_the_new_set(self, lab: Lab) -> None:
        """After the EndpointSlice changes, new connections reach only the new pods."""
        vip = lab.call(lab.lab.create_service("scale", pods=["web-1", "web-2"]))
        before = lab.call(lab.lab.measure(vip, requests=40))
        assert before["ok"] == 40 and before["served_by_pod"]["web-1"] > 0
        lab.call(lab.lab.set_endpoints("scale", pods=["web-2", "web-3", "web-4"], vip=vip))
        after = lab.call(lab.lab.measure(vip, requests=60))
        assert after["ok"] == 60, after["errors"]
        assert after["served_by_pod"]["web-1"] == 0
        assert after["served_by_pod"]["web-3"] + after["served_by_pod"]["web-4"] > 0
        assert set(after["pods_seen"]) <= {"web-2", "web-3", "web-4"}


class TestLocalPolicy:
    def test_only_nodes_with_a_pod_are_members_and_pods_see_the_client(self, lab: Lab) -> None:
        """externalTrafficPolicy Local: the node without a pod is no member, and every pod
        sees the client's own address (no second hop, no masquerade)."""
        vip = lab.call(lab.lab.create_service("local", pods=["web-1", "web-2"], policy="Local"))
        assert members(lab, vip) == {NODE_1, NODE_2}
        report = lab.call(lab.lab.measure(vip, requests=60))
        assert report["ok"] == 60, report["errors"]
        assert report["client_seen_as"] == [CLIENT_ADDRESS]
        assert set(report["pods_seen"]) == {"web-1", "web-2"}
        assert report["replies_via_appliance"] == 0


class TestLifecycle:
    def test_deleting_the_service_removes_it_everywhere_and_spares_the_planted(
        self, lab: Lab
    ) -> None:
        """Delete: VIP off every lo, its rules gone, the appliance stops forwarding; an address
        and a table the operator planted before the agents started are still there."""
        vip = lab.call(lab.lab.create_service("gone", pods=["web-1", "web-2", "web-3"]))
        assert lab.call(lab.lab.measure(vip, requests=5))["ok"] == 5
        lab.call(lab.lab.delete_service("gone", vip=vip))
        for node in (NODE_1, NODE_2, NODE_3):
            assert vip not in lab.call(lab.lab.node_vips(node))
            assert vip not in lab.call(lab.lab.node_steering(node))
            assert PLANTED_ADDRESS in lab.call(lab.lab.node_addresses(node))
            assert f"inet {PLANTED_TABLE}" in lab.call(lab.lab.node_tables(node))
        assert all(s.address != vip for s in lab.call(lab.lab.appliance_servers()).values())
        direct = lab.call(lab.lab.client_counters())["direct"]
        failed = lab.call(lab.lab.client.get(vip, SERVICE_PORT, timeout=0.5))
        assert not failed.ok
        assert lab.call(lab.lab.client_counters())["direct"] == direct

    def test_restarting_a_node_agent_rewrites_nothing(self, lab: Lab) -> None:
        """A restarted agent reads the node, finds it right, and changes nothing."""
        vip = lab.call(lab.lab.create_service("steady", pods=["web-1", "web-4"]))
        applier = lab.lab.applier(NODE_1)
        name = f"nodeagent:{lab.lab.plan.cluster}/{NODE_1}"
        handles = lab.call(lab.lab.nft_handles(NODE_1))
        addresses = lab.call(lab.lab.node_addresses(NODE_1))
        writes = applier.writes
        lab.call(lab.lab.stack.restart(name))
        lab.call(lab.lab.stack.wait_ready(15))
        assert applier.writes == writes
        assert lab.call(lab.lab.nft_handles(NODE_1)) == handles
        assert lab.call(lab.lab.node_addresses(NODE_1)) == addresses
        assert lab.call(lab.lab.measure(vip, requests=10))["ok"] == 10


class TestDrain:
    def test_a_long_lived_connection_survives_a_drain_while_new_ones_go_elsewhere(
        self, lab: Lab
    ) -> None:
        """Cordoning the node of an open connection drains it: the appliance's kernel lists
        it draining, the connection keeps answering from the same pod, and every new
        connection lands on the other node (the JSON of ``vipwire lab dsr``)."""
        report = lab.call(drain_report(lab.lab))
        assert report["drain_kept_connection"] is True, report
        assert report["drain_new_connections_elsewhere"] is True, report
        assert sum(report["drain_new_connections"].values()) == NEW_CONNECTIONS


class TestMoreThanHttp:
    def test_udp_is_carried_to_the_pods_and_answered(self, lab: Lab) -> None:
        """A Service with a TCP and a UDP port on 80: datagrams reach the pods through the
        appliance and the node's DNAT, and every one is answered."""
        vip = lab.call(
            lab.lab.create_service("dgram", pods=["web-1", "web-2"], protocols=("TCP", "UDP"))
        )
        assert lab.call(lab.lab.udp_ok(vip, requests=20))
        reply = lab.call(lab.lab.client.udp(vip, SERVICE_PORT))
        assert reply.ok and reply.pod in {"web-1", "web-2"}

    def test_sctp_is_carried_where_the_kernel_has_it(self, lab: Lab) -> None:
        """HTTP over SCTP to VIP:80/sctp succeeds; skipped, with the reason, on a kernel
        without SCTP."""
        if lab.lab.sctp_skip_reason is not None:
            pytest.skip(lab.lab.sctp_skip_reason)
        vip = lab.call(
            lab.lab.create_service("assoc", pods=["web-1", "web-2"], protocols=("TCP", "SCTP"))
        )
        assert lab.call(lab.lab.sctp_ok(vip, requests=10))

    def test_source_ranges_let_the_allowed_client_in_and_keep_the_other_out(self, lab: Lab) -> None:
        """loadBalancerSourceRanges [client/32]: the client's own address connects, its other
        address (outside the range) does not; an open Service answers both."""
        allowed = f"{CLIENT_ADDRESS}/32"
        vip = lab.call(
            lab.lab.create_service("guarded", pods=["web-1", "web-2"], source_ranges=[allowed])
        )
        denied_before = lab.call(lab.lab.appliance_counters())["denied-source"]
        assert lab.call(lab.lab.source_ranges_check(vip)) == {
            "allowed_ok": True,
            "denied_blocked": True,
        }
        # Dropped at the appliance (counted), and each node filters it too.
        assert lab.call(lab.lab.appliance_counters())["denied-source"] > denied_before
        for node in (NODE_1, NODE_2, NODE_3):
            chain = lab.call(lab.lab.node_source_filter(node))
            assert f"ip daddr {vip} tcp dport 80 ip saddr != " in chain
        open_vip = lab.call(lab.lab.create_service("unguarded", pods=["web-1", "web-2"]))
        assert lab.call(lab.lab.source_ranges_check(open_vip))["denied_blocked"] is False

    def test_client_ip_affinity_keeps_one_client_on_one_node(self, lab: Lab) -> None:
        """sessionAffinity ClientIP: every connection of the client lands on one node (and
        one pod); without affinity the same client is spread over several."""
        pods = ["web-1", "web-2", "web-3"]
        sticky = lab.call(lab.lab.create_service("sticky", pods=pods, affinity_timeout_s=600))
        assert lab.call(lab.lab.same_node_ratio(sticky, requests=30)) == 1.0
        spread = lab.call(lab.lab.create_service("spread", pods=pods))
        assert lab.call(lab.lab.same_node_ratio(spread, requests=30)) < 1.0
