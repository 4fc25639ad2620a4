"""Status that shows partial failure (watcher core): NoMembers per VIP family (a dual-stack
Service whose IPv6 virtual server has no member while IPv4 has some), and ports the
appliance refused in ``status.loadBalancer.ingress[].ports[].error``."""

from __future__ import annotations

from typing import Any

from vipwire.contracts import LbProgrammed, Member, PortError, ServicePort, VipAssigned
from vipwire.watcher.core.bus_view import BusView
from vipwire.watcher.core.condition import families_without_members, readiness
from vipwire.watcher.core.events import event_for
from vipwire.watcher.core.translate import FINALIZER, service_snapshot
from vipwire.watcher.core.writeback import decide, ingress_for

SVC = {"cluster": "east", "namespace": "shop", "name": "web", "uid": "u-1"}
V4 = Member(node="n1", address="192.0.2.11")
V6 = Member(node="n1", address="2001:db8::11")


def dual(*members: Member) -> LbProgrammed:
    return LbProgrammed(
        **SVC,
        appliance="bigip-a",
        vips=("198.51.100.7", "2001:db8:1::7"),
        ports=(ServicePort(port=80),),
        members=members,
    )


def test_an_ipv6_vip_without_ipv6_members_is_no_members() -> None:
    """IPv4 members only: condition False NoMembers naming the IPv6 VIP and what to do."""
    lb = dual(V4)
    assert families_without_members(lb) == ["IPv6"]
    said = readiness(BusView(lb=lb, lb_seq=5), "u-1", applied={}, gate="none")
    assert said is not None and (said.status, said.reason) == ("False", "NoMembers")
    assert "2001:db8:1::7" in said.message and "no IPv6 member node" in said.message
    assert "198.51.100.7 programmed" not in said.message


def test_members_of_both_families_make_it_ready() -> None:
    """An IPv6 member too: True."""
    lb = dual(V4, V6)
    assert families_without_members(lb) == []
    said = readiness(BusView(lb=lb, lb_seq=5), "u-1", applied={}, gate="none")
    assert said is not None and said.status == "True"


def test_a_warning_event_once_then_normal_when_the_family_gets_members() -> None:
    """Losing the IPv6 members is a Warning NoMembers (once); regaining them a Normal."""
    lost = event_for(dual(V4), before=dual(V4, V6))
    assert lost is not None and (lost.type, lost.reason) == ("Warning", "NoMembers")
    assert event_for(dual(V4), before=dual(V4)) is None
    back = event_for(dual(V4, V6), before=dual(V4))
    assert back is not None and (back.type, back.reason) == ("Normal", "MembersAvailable")


REFUSED = PortError(
    vip="2001:db8:1::7", port=443, reason="ApplianceRejected", error="destination in use"
)


def two_ports(*errors: PortError) -> LbProgrammed:
    return LbProgrammed(
        **SVC,
        appliance="bigip-a",
        vips=("198.51.100.7", "2001:db8:1::7"),
        ports=(ServicePort(port=80), ServicePort(port=443)),
        members=(V4, V6),
        port_errors=errors,
    )


def test_ingress_ports_carry_the_error_of_a_refused_port() -> None:
    """Each VIP lists its ports; the refused one has error vipwire.io/ApplianceRejected."""
    assert ingress_for(("198.51.100.7",), two_ports()) == [{"ip": "198.51.100.7", "ipMode": "VIP"}]
    assert ingress_for(two_ports(REFUSED).vips, two_ports(REFUSED)) == [
        {
            "ip": "198.51.100.7",
            "ipMode": "VIP",
            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}],
        },
        {
            "ip": "2001:db8:1::7",
            "ipMode": "VIP",
            "ports": [
                {"port": 80, "protocol": "TCP"},
                {"port": 443, "protocol": "TCP", "error": "vipwire.io/ApplianceRejected"},
            ],
        },
    ]


def _service(ingress: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "u-1",
            "resourceVersion": "41",
            "finalizers": [FINALIZER],
        },
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "vipwire.io/dsr",
            "ports": [{"port": 80}, {"port": 443}],
        },
        "status": {"loadBalancer": {"ingress": ingress}} if ingress else {},
    }


# The watcher writes only VIPs ipam assigned (a forged LbProgrammed reaches no status).
ASSIGNED = VipAssigned(
    **SVC,
    vips=("198.51.100.7", "2001:db8:1::7"),
    pool="p",
    appliance_group="g",
    ports=(ServicePort(port=80), ServicePort(port=443)),
)


def test_the_status_is_written_with_ports_and_rewritten_when_the_refusal_clears() -> None:
    """decide() writes the ports with their error, and writes again (without ports) once
    the appliance takes the port; the condition message names the refused port."""
    snapshot = service_snapshot(
        _service(), cluster="east", load_balancer_class="vipwire.io/dsr", was_ours=True
    )
    now = "2025-01-01T00:00:09.000000Z"
    partial = BusView(vip=ASSIGNED, vip_seq=4, lb=two_ports(REFUSED), lb_seq=5)
    d = decide(_service(), snapshot, partial, applied={}, gate="none", now=now)
    assert d.status is not None
    written = d.status["status"]["loadBalancer"]["ingress"]
    assert written[1]["ports"][1]["error"] == "vipwire.io/ApplianceRejected"
    condition = d.status["status"]["conditions"][0]
    assert condition["status"] == "True" and "2001:db8:1::7 port 443/TCP" in condition["message"]
    again = decide(_service(written), snapshot, partial, applied={}, gate="none", now=now)
    assert again.status is None or "loadBalancer" not in again.status["status"]
    fixed = BusView(vip=ASSIGNED, vip_seq=4, lb=two_ports(), lb_seq=6)
    cleared = decide(_service(written), snapshot, fixed, applied={}, gate="none", now=now)
    assert cleared.status is not None
    assert "ports" not in cleared.status["status"]["loadBalancer"]["ingress"][1]


def test_a_refused_port_is_a_warning_event_once() -> None:
    """PortRefused Warning when the refusal appears, none while it stays the same, a Normal
    PortsProgrammed when it clears."""
    first = event_for(two_ports(REFUSED), before=two_ports())
    assert first is not None and (first.type, first.reason) == ("Warning", "PortRefused")
    assert "destination in use" in first.note
    assert event_for(two_ports(REFUSED), before=two_ports(REFUSED)) is None
    back = event_for(two_ports(), before=two_ports(REFUSED))
    assert back is not None and (back.type, back.reason) == ("Normal", "PortsProgrammed")
