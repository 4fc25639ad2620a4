"""The node agent's pure bookkeeping of messages: what changed and what is left to apply."""

from __future__ import annotations

import ipaddress

from vipwire.contracts import (
    Endpoint,
    EndpointPort,
    EndpointsSnapshot,
    LbFailed,
    LbProgrammed,
    LbRemoved,
    Member,
    NodeEndpoints,
    ServicePort,
)
from vipwire.nodeagent.core.changes import Changes, Recorded
from vipwire.nodeagent.core.desired import VipRanges, parse_ranges

NODE = "node-a"


def ranges(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return parse_ranges(cidrs)[0]


#: Every VIP these tests use is inside.
LAB = VipRanges(pools=ranges("192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32"))


def lb(name: str, *vips: str, port: int = 80) -> LbProgrammed:
    return LbProgrammed(
        cluster="east",
        namespace="default",
        name=name,
        uid=f"uid-{name}",
        appliance="sim-1",
        vips=vips,
        ports=(ServicePort(port=port),),
        members=(Member(node=NODE, address="198.51.100.1"),),
    )


def removed(name: str) -> LbRemoved:
    return LbRemoved(
        cluster="east", namespace="default", name=name, uid=f"uid-{name}", appliance="sim-1"
    )


def eps(name: str, address: str) -> EndpointsSnapshot:
    endpoint = Endpoint(addresses=(address,), ready=True, ports=(EndpointPort(port=8080),))
    return EndpointsSnapshot(
        cluster="east",
        namespace="default",
        name=name,
        nodes=(NodeEndpoints(node=NODE, endpoints=(endpoint,)),),
    )


def test_a_fresh_state_owes_a_full_plan() -> None:
    """Before the first apply everything is pending: a full read and plan."""
    changes = Changes(standalone=False, ranges=LAB)
    assert changes.pending and changes.full
    assert changes.take() == (True, set())
    assert not changes.pending


def test_a_new_service_marks_its_addresses_and_a_repeat_changes_nothing() -> None:
    """LbProgrammed marks the VIPs it adds; the same message again is no change."""
    changes = Changes(standalone=False, ranges=LAB)
    changes.take()
    assert changes.record(lb("web", "192.0.2.10")) == Recorded(vips=True)
    assert changes.take() == (False, {"192.0.2.10"})
    assert changes.record(lb("web", "192.0.2.10")) is None
    assert not changes.pending


def test_an_address_shared_by_two_services_changes_only_with_the_last() -> None:
    """A VIP wanted by two Services stays wanted until both are gone."""
    changes = Changes(standalone=False, ranges=LAB)
    changes.take()
    changes.record(lb("web", "192.0.2.10"))
    changes.record(lb("api", "192.0.2.10"))
    changes.take()
    assert changes.record(removed("web")) == Recorded(vips=False)
    assert changes.take() == (False, set())
    assert changes.record(removed("api")) == Recorded(vips=True)
    assert changes.take() == (False, {"192.0.2.10"})
    assert changes.record(removed("api")) is None


def test_a_port_change_in_kube_proxy_mode_is_recorded_without_work() -> None:
    """A Service whose ports changed is remembered, but nothing is owed in kube-proxy mode."""
    changes = Changes(standalone=False, ranges=LAB)
    changes.take()
    changes.record(lb("web", "192.0.2.10"))
    changes.take()
    assert changes.record(lb("web", "192.0.2.10", port=443)) == Recorded(vips=False)
    assert not changes.pending


def test_standalone_marks_the_table_for_ports_and_endpoints() -> None:
    """In standalone mode ports and endpoints make the nftables table pending."""
    changes = Changes(standalone=True, ranges=LAB)
    changes.take()
    changes.record(lb("web", "192.0.2.10"))
    changes.take()
    assert changes.record(lb("web", "192.0.2.10", port=443)) == Recorded(vips=False)
    assert changes.nft and changes.pending
    changes.take()
    assert changes.record(eps("web", "10.0.0.5")) == Recorded(vips=False)
    assert changes.nft
    changes.take()
    assert changes.record(eps("web", "10.0.0.5")) is None


def test_endpoints_are_ignored_in_kube_proxy_mode() -> None:
    """kube-proxy steers to the pods, so endpoints change nothing there."""
    changes = Changes(standalone=False, ranges=LAB)
    changes.take()
    assert changes.record(eps("web", "10.0.0.5")) is None
    assert not changes.pending


def test_a_failure_report_keeps_the_vips() -> None:
    """LbFailed changes nothing: the appliance may still serve the old VIPs."""
    changes = Changes(standalone=False, ranges=LAB)
    changes.take()
    changes.record(lb("web", "192.0.2.10"))
    changes.take()
    failed = LbFailed(
        cluster="east",
        namespace="default",
        name="web",
        uid="uid-web",
        appliance="sim-1",
        reason="Unreachable",
        message="down",
    )
    assert changes.record(failed) is None
    assert "192.0.2.10" in changes.desired.refs


def test_unusable_vips_are_named_for_the_shell_to_warn_about() -> None:
    """A VIP that cannot go on lo is skipped, and the reason comes back with the change."""
    changes = Changes(standalone=False, ranges=LAB)
    changes.take()
    recorded = changes.record(lb("web", "192.0.2.10", "127.0.0.1"))
    assert recorded is not None and recorded.vips
    assert len(recorded.ignored) == 1 and "127.0.0.1" in recorded.ignored[0]
    assert changes.take() == (False, {"192.0.2.10"})


def test_a_vip_outside_the_ranges_refuses_the_message_and_keeps_what_was_served() -> None:
    """A programmed Service naming a VIP outside the ranges is refused as a whole (named
    as ``ns/name vip``), and the VIP served for it before stays on the node."""
    changes = Changes(standalone=False, ranges=LAB)
    changes.take()
    changes.record(lb("web", "192.0.2.10"))
    changes.take()
    recorded = changes.record(lb("web", "192.0.2.1", "8.8.8.8"))
    assert recorded == Recorded(vips=False, refused=("default/web 8.8.8.8",))
    assert set(changes.desired.refs) == {"192.0.2.10"}
    assert changes.refused_vips() == ("default/web 8.8.8.8",)
    assert changes.take() == (False, set())
    fixed = changes.record(lb("web", "192.0.2.11"))
    assert fixed is not None and fixed.vips and fixed.refused == ()
    assert set(changes.desired.refs) == {"192.0.2.11"} and changes.refused_vips() == ()


def test_unknown_ranges_apply_nothing_until_known_then_judge_every_service() -> None:
    """With no range known nothing is applied (every message kept); the first ranges
    judge each Service: inside ones apply, outside ones are refused, and a full plan
    is owed."""
    changes = Changes(standalone=False, ranges=VipRanges())
    changes.take()
    assert changes.record(lb("web", "192.0.2.10")) == Recorded(vips=False)
    assert changes.record(lb("evil", "10.0.0.1")) == Recorded(vips=False)
    assert changes.desired.refs == {} and not changes.pending
    recorded = changes.set_ranges(VipRanges(pools=ranges("192.0.2.0/24")))
    assert recorded == Recorded(vips=True, refused=("default/evil 10.0.0.1",))
    assert set(changes.desired.refs) == {"192.0.2.10"} and changes.full
    assert changes.set_ranges(VipRanges(pools=ranges("192.0.2.0/24"))) is None


def test_a_vip_must_be_inside_both_the_pools_and_the_configured_ranges() -> None:
    """Pools and nodeagent.vip_ranges both known: a VIP inside only one is refused;
    ranges that shrink take off a served VIP now outside them."""
    both = VipRanges(pools=ranges("192.0.2.0/24"), config=ranges("192.0.2.0/28"))
    changes = Changes(standalone=False, ranges=both)
    changes.take()
    changes.record(lb("web", "192.0.2.5"))
    refused = changes.record(lb("api", "192.0.2.100"))
    assert refused is not None and refused.refused == ("default/api 192.0.2.100",)
    assert set(changes.desired.refs) == {"192.0.2.5"}
    shrunk = changes.set_ranges(both._replace(pools=ranges("198.51.100.0/24")))
    assert shrunk is not None and shrunk.vips
    assert changes.desired.refs == {}
    assert changes.refused_vips() == ("default/api 192.0.2.100", "default/web 192.0.2.5")


def test_removing_a_refused_service_forgets_its_refusal() -> None:
    """LbRemoved of a Service whose message was refused clears the refusal."""
    changes = Changes(standalone=False, ranges=LAB)
    changes.record(lb("evil", "203.0.113.66"))
    assert changes.refused_vips() == ("default/evil 203.0.113.66",)
    changes.record(removed("evil"))
    assert changes.refused_vips() == ()


def test_outside_checks_each_family_and_calls_everything_outside_when_nothing_is_known() -> None:
    """IPv6 VIPs are judged against IPv6 ranges; with no range known every VIP is outside."""
    from vipwire.nodeagent.core.desired import outside

    pools = VipRanges(config=ranges("2001:db8::/64"))
    assert outside(("2001:db8::1", "2001:db9::1", "192.0.2.1"), pools) == (
        "2001:db9::1",
        "192.0.2.1",
    )
    assert outside(("192.0.2.1",), VipRanges()) == ("192.0.2.1",)
