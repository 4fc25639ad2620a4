"""NoMembers per VIP family: a dual-stack Service whose IPv6 virtual server has no member
while IPv4 has some is not Ready, with a Warning Event; members of both clear it."""

from __future__ import annotations

from vipwire.contracts import LbProgrammed, Member, ServicePort
from vipwire.watcher.core.bus_view import BusView
from vipwire.watcher.core.condition import families_without_members, readiness
from vipwire.watcher.core.events import event_for

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
