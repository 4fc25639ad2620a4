"""Source ranges and ClientIP affinity: the watcher's reading and the lbdriver's desired state."""

from __future__ import annotations

from typing import Any

import msgspec

from vipwire.contracts import NodeSnapshot, ServicePort, ServiceSnapshot, VipAssigned
from vipwire.lbdriver import desired_virtual_servers
from vipwire.lbdriver.core.desired import NO_SOURCE, family_ranges
from vipwire.lbdriver.core.diff import diff
from vipwire.lbdriver.core.virtual_servers import UpdateVirtualServer
from vipwire.watcher.core.translate import (
    SOURCE_RANGES_ANNOTATION,
    affinity_timeout_s,
    service_snapshot,
    source_ranges,
)
from vipwire.watcher.core.validate import service_problems

CLASS = "vipwire.io/dsr"


def service(
    spec: dict[str, Any] | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "u-1",
            "annotations": annotations or {},
        },
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": CLASS,
            "ports": [{"port": 80, "protocol": "TCP"}],
            **(spec or {}),
        },
    }


def test_spec_ranges_are_normalised_deduplicated_and_ordered() -> None:
    """Host bits are cleared, duplicates go, IPv4 comes first, then by address and prefix."""
    svc = service(
        {
            "loadBalancerSourceRanges": [
                " 2001:db8::1/64",
                "10.1.2.3/8",
                "10.0.0.0/8",
                "192.0.2.0/24",
            ]
        }
    )
    assert source_ranges(svc) == ("10.0.0.0/8", "192.0.2.0/24", "2001:db8::/64")


def test_spec_wins_over_the_annotation_which_is_read_when_spec_is_empty() -> None:
    """As Kubernetes documents: spec.loadBalancerSourceRanges first, else the beta annotation."""
    both = service(
        {"loadBalancerSourceRanges": ["192.0.2.0/24"]},
        {SOURCE_RANGES_ANNOTATION: "198.51.100.0/24"},
    )
    assert source_ranges(both) == ("192.0.2.0/24",)
    only = service({}, {SOURCE_RANGES_ANNOTATION: "198.51.100.0/24, 203.0.113.7/32 ,"})
    assert source_ranges(only) == ("198.51.100.0/24", "203.0.113.7/32")
    assert source_ranges(service()) == ()


def test_an_invalid_range_is_a_problem_naming_it_and_its_field() -> None:
    """A range that is not address/prefix makes the Service invalid; the note names it."""
    bad = service({"loadBalancerSourceRanges": ["192.0.2.0/24", "10.0.0.300/8", "10.0.0.1"]})
    problems = service_problems(bad, protocols=("TCP", "UDP"))
    assert len(problems) == 1
    assert "spec.loadBalancerSourceRanges" in problems[0]
    assert '"10.0.0.300/8"' in problems[0] and '"10.0.0.1"' in problems[0]
    annotated = service({}, {SOURCE_RANGES_ANNOTATION: "nope"})
    assert SOURCE_RANGES_ANNOTATION in service_problems(annotated, protocols=("TCP",))[0]
    assert (
        service_problems(
            service({"loadBalancerSourceRanges": ["192.0.2.0/24"]}), protocols=("TCP",)
        )
        == ()
    )


def test_client_ip_affinity_defaults_to_kubernetes_timeout() -> None:
    """ClientIP without a timeout sticks for 10800 s; None affinity without ClientIP."""
    assert affinity_timeout_s(service({"sessionAffinity": "ClientIP"})) == 10800
    config = {"clientIP": {"timeoutSeconds": 60}}
    assert (
        affinity_timeout_s(
            service({"sessionAffinity": "ClientIP", "sessionAffinityConfig": config})
        )
        == 60
    )
    assert (
        affinity_timeout_s(service({"sessionAffinity": "None", "sessionAffinityConfig": config}))
        is None
    )
    wrong = {"clientIP": {"timeoutSeconds": 0}}
    problems = service_problems(
        service({"sessionAffinity": "ClientIP", "sessionAffinityConfig": wrong}), protocols=("TCP",)
    )
    assert "timeoutSeconds" in problems[0]


def test_the_snapshot_carries_ranges_and_affinity_and_old_messages_decode() -> None:
    """The published snapshot holds both; a snapshot without them decodes to open, no affinity."""
    svc = service({"loadBalancerSourceRanges": ["192.0.2.0/24"], "sessionAffinity": "ClientIP"})
    snap = service_snapshot(svc, cluster="c", load_balancer_class=CLASS)
    assert snap is not None
    assert snap.source_ranges == ("192.0.2.0/24",) and snap.affinity_timeout_s == 10800
    old = msgspec.json.encode(
        {
            "kind": "service",
            "cluster": "c",
            "namespace": "n",
            "name": "x",
            "uid": "u",
            "resource_version": "1",
        }
    )
    decoded = msgspec.json.decode(old, type=ServiceSnapshot)
    assert decoded.source_ranges == () and decoded.affinity_timeout_s is None


def assigned(ranges: tuple[str, ...], affinity: int | None = None) -> VipAssigned:
    return VipAssigned(
        cluster="c",
        namespace="shop",
        name="web",
        uid="u-1",
        vips=("192.0.2.10", "2001:db8::10"),
        pool="default",
        appliance_group="default",
        ports=(ServicePort(port=80),),
        source_ranges=ranges,
        affinity_timeout_s=affinity,
    )


NODES = {"n1": NodeSnapshot(cluster="c", node="n1", addresses=("198.51.100.1", "2001:db8::1"))}


def test_each_vip_gets_the_ranges_of_its_family_and_a_family_left_out_is_closed() -> None:
    """An IPv4-only restriction closes the IPv6 VIP (fail closed) rather than opening it."""
    assert family_ranges((), 4) == ()
    assert family_ranges(("192.0.2.0/24",), 6) == (NO_SOURCE[6],)
    servers = desired_virtual_servers(assigned(("192.0.2.0/24",), 300), NODES, None, prefix="vw")
    by_address = {s.address: s for s in servers.values()}
    assert by_address["192.0.2.10"].source_ranges == ("192.0.2.0/24",)
    assert by_address["2001:db8::10"].source_ranges == ("::/128",)
    assert {s.affinity_timeout_s for s in servers.values()} == {300}


def test_a_change_of_ranges_or_affinity_is_one_update_per_virtual_server() -> None:
    """Ranges and affinity ride on the virtual server: a change of either is one write of it."""
    before = desired_virtual_servers(assigned(("192.0.2.0/24",)), NODES, None, prefix="vw")
    after = desired_virtual_servers(
        assigned(("192.0.2.0/24", "203.0.113.0/24"), 60), NODES, None, prefix="vw"
    )
    ops = diff(after, before, "vw")
    assert len(ops) == 2 and all(isinstance(op, UpdateVirtualServer) for op in ops)
    assert diff(after, after, "vw") == []
