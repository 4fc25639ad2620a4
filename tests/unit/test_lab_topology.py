"""The packet lab's plan (pure): addresses, names, commands, stale sweeping, the report."""

from __future__ import annotations

import ipaddress

import pytest

from vipwire.allinone.stack import node_address
from vipwire.cli.lab import dsr_passed
from vipwire.lab.topology import (
    HOST_NET,
    POD_NET,
    VIP_NET,
    VIP_RANGE,
    build_commands,
    plan_lab,
    stale_namespaces,
    teardown_commands,
)
from vipwire.lab.traffic import Reply, parse_reply, summarize


class TestPlan:
    def test_addresses_are_documentation_ranges_and_unique(self) -> None:
        """Hosts in 192.0.2.0/24, pods in 203.0.113.0/24, VIPs from 198.51.100.0/24."""
        plan = plan_lab("42", nodes=3, pods=4)
        hosts = [ipaddress.ip_address(h.address) for h in plan.hosts]
        pods = [ipaddress.ip_address(p.address) for p in plan.pods]
        assert all(a in HOST_NET for a in hosts) and all(a in POD_NET for a in pods)
        assert len(set(hosts + pods)) == len(hosts) + len(pods)
        first, last = (ipaddress.ip_address(a) for a in VIP_RANGE.split("-"))
        assert first in VIP_NET and last in VIP_NET

    def test_nodes_match_the_stack_and_pods_spread_round_robin(self) -> None:
        """Node names and addresses are the all-in-one stack's; pods go round-robin."""
        plan = plan_lab("42", nodes=3, pods=4)
        assert [(n.name, n.address) for n in plan.nodes] == [
            (f"east-node-{i + 1}", node_address(0, i, 3)) for i in range(3)
        ]
        assert [(p.name, p.node) for p in plan.pods] == [
            ("web-1", "east-node-1"),
            ("web-2", "east-node-2"),
            ("web-3", "east-node-3"),
            ("web-4", "east-node-1"),
        ]

    def test_every_namespace_carries_the_run_prefix(self) -> None:
        """All namespaces start with vwlab-<tag>-, so a later run can find them."""
        plan = plan_lab("4242")
        assert all(ns.startswith("vwlab-4242-") for ns in plan.namespaces)
        assert len(set(plan.namespaces)) == len(plan.namespaces)

    def test_interface_names_fit_the_kernel_limit(self) -> None:
        """Even the largest lab names no interface longer than 15 characters."""
        plan = plan_lab("1", nodes=50, pods=200)
        names = [h.port for h in plan.hosts] + [p.host_interface for p in plan.pods]
        assert max(len(n) for n in names) <= 15

    def test_a_tag_must_be_alphanumeric(self) -> None:
        """A tag with a dash would make stale namespaces unrecognisable."""
        with pytest.raises(ValueError):
            plan_lab("a-b")


class TestCommands:
    def test_nothing_is_created_in_the_callers_namespace(self) -> None:
        """Every ip command names a lab namespace (-n, netns add/exec): the host is untouched."""
        plan = plan_lab("7")
        lab = set(plan.namespaces)
        for argv in build_commands(plan):
            assert argv[0] == "ip"
            if argv[1] == "-n":
                assert argv[2] in lab
            else:
                assert argv[1] == "netns" and argv[2] in ("add", "exec") and argv[3] in lab

    def test_the_client_reaches_vips_via_the_appliance_and_nodes_route_all_pods(self) -> None:
        """Client: VIP range via the appliance; each node: every pod (own on a veth, others
        via their node); nodes forward, the appliance does not."""
        plan = plan_lab("7")
        cmds = build_commands(plan)
        assert (
            "ip", "-n", plan.client.netns, "route", "add", str(VIP_NET), "via",
            plan.appliance.address,
        ) in cmds  # fmt: skip
        for node in plan.nodes:
            for pod in plan.pods:
                via = (
                    ("dev", pod.host_interface)
                    if pod.node == node.name
                    else ("via", plan.node(pod.node).address)
                )
                assert ("ip", "-n", node.netns, "route", "add", f"{pod.address}/32", *via) in cmds
            assert any(c[3] == node.netns and "net.ipv4.ip_forward=1" in c for c in cmds)
        assert any(c[3] == plan.appliance.netns and "net.ipv4.ip_forward=0" in c for c in cmds)

    def test_teardown_deletes_each_namespace(self) -> None:
        """Deleting the namespaces is the whole teardown (their links go with them)."""
        plan = plan_lab("7")
        assert teardown_commands(plan.namespaces) == [
            ("ip", "netns", "delete", ns) for ns in plan.namespaces
        ]

    def test_stale_namespaces_are_those_of_dead_runs_only(self) -> None:
        """Only vwlab-<pid>[…]-… of a pid that is gone; live runs and others stay."""
        existing = ["vwlab-10-seg", "vwlab-10t2-node", "vwlab-11-seg", "other", "vwlab-x-seg"]
        assert stale_namespaces(existing, alive=lambda pid: pid == 11) == [
            "vwlab-10-seg",
            "vwlab-10t2-node",
        ]


class TestReport:
    def test_summary_counts_pods_clients_and_latency(self) -> None:
        """ok, pods_seen, the addresses pods saw and the median come from the replies."""
        replies = [
            Reply(ok=True, ms=1.0, pod="web-1", seen_as="192.0.2.100"),
            Reply(ok=True, ms=3.0, pod="web-2", seen_as="192.0.2.1"),
            Reply(ok=True, ms=2.0, pod="web-1", seen_as="192.0.2.100"),
            Reply(ok=False, ms=2000.0, error="TimeoutError: "),
        ]
        summary = summarize(replies)
        assert (summary["requests"], summary["ok"]) == (4, 3)
        assert summary["pods_seen"] == {"web-1": 2, "web-2": 1}
        assert summary["client_seen_as"] == ["192.0.2.1", "192.0.2.100"]
        assert summary["ms_p50"] == 2.0
        assert summary["errors"] == {"TimeoutError: ": 1}

    def test_a_reply_is_ok_only_with_status_200_and_a_pod_name(self) -> None:
        """Anything but a 200 with the pod's JSON body is a failed request."""
        good = parse_reply(b'HTTP/1.0 200 OK\r\n\r\n{"pod": "web-1", "client": "192.0.2.100"}', 1.0)
        assert (good.ok, good.pod, good.seen_as) == (True, "web-1", "192.0.2.100")
        assert not parse_reply(b"HTTP/1.0 503 Busy\r\n\r\n", 1.0).ok
        assert not parse_reply(b"HTTP/1.0 200 OK\r\n\r\nnot json", 1.0).ok
        assert not parse_reply(b"", 1.0).ok

    def test_the_lab_passes_only_through_dsr(self) -> None:
        """The CLI's verdict: all requests ok, >1 pod, nothing back via the appliance."""
        report = {
            "requests": 10,
            "ok": 10,
            "pods_seen": {"web-1": 5, "web-2": 5},
            "replies_via_appliance": 0,
            "client_frames_from_appliance_mac": 0,
            "forwarded_packets": 50,
            "udp_ok": True,
            "sctp_ok": None,
            "sctp_skip_reason": "this kernel has no SCTP",
            "source_ranges": {"allowed_ok": True, "denied_blocked": True},
            "affinity_same_node_ratio": 1.0,
        }
        assert dsr_passed(report)
        assert not dsr_passed({**report, "replies_via_appliance": 1})
        assert not dsr_passed({**report, "pods_seen": {"web-1": 10}})
        assert not dsr_passed({**report, "ok": 9})

    def test_the_lab_passes_only_with_udp_sctp_ranges_and_affinity_right(self) -> None:
        """UDP unanswered, SCTP failed (not skipped), a denied client let in, or one client
        spread over nodes: the lab fails."""
        report = {
            "requests": 10,
            "ok": 10,
            "pods_seen": {"web-1": 5, "web-2": 5},
            "replies_via_appliance": 0,
            "client_frames_from_appliance_mac": 0,
            "forwarded_packets": 50,
            "udp_ok": True,
            "sctp_ok": True,
            "source_ranges": {"allowed_ok": True, "denied_blocked": True},
            "affinity_same_node_ratio": 1.0,
        }
        assert dsr_passed(report)
        assert not dsr_passed({**report, "udp_ok": False})
        assert not dsr_passed({**report, "sctp_ok": False})
        assert not dsr_passed(
            {**report, "source_ranges": {"allowed_ok": True, "denied_blocked": False}}
        )
        assert not dsr_passed({**report, "affinity_same_node_ratio": 0.5})
