"""The node agent's pure bookkeeping of messages: what changed and what is left to apply."""

from __future__ import annotations

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

NODE = "node-a"


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
    changes = Changes(standalone=False)
    assert changes.pending and changes.full
    assert changes.take() == (True, set())
    assert not changes.pending


def test_a_new_service_marks_its_addresses_and_a_repeat_changes_nothing() -> None:
    """LbProgrammed marks the VIPs it adds; the same message again is no change."""
    changes = Changes(standalone=False)
    changes.take()
    assert changes.record(lb("web", "192.0.2.10")) == Recorded(vips=True)
    assert changes.take() == (False, {"192.0.2.10"})
    assert changes.record(lb("web", "192.0.2.10")) is None
    assert not changes.pending


def test_an_address_shared_by_two_services_changes_only_with_the_last() -> None:
    """A VIP wanted by two Services stays wanted until both are gone."""
    changes = Changes(standalone=False)
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
    changes = Changes(standalone=False)
    changes.take()
    changes.record(lb("web", "192.0.2.10"))
    changes.take()
    assert changes.record(lb("web", "192.0.2.10", port=443)) == Recorded(vips=False)
    assert not changes.pending


def test_standalone_marks_the_table_for_ports_and_endpoints() -> None:
    """In standalone mode ports and endpoints make the nftables table pending."""
    changes = Changes(standalone=True)
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
    changes = Changes(standalone=False)
    changes.take()
    assert changes.record(eps("web", "10.0.0.5")) is None
    assert not changes.pending


def test_a_failure_report_keeps_the_vips() -> None:
    """LbFailed changes nothing: the appliance may still serve the old VIPs."""
    changes = Changes(standalone=False)
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
    changes = Changes(standalone=False)
    changes.take()
    recorded = changes.record(lb("web", "192.0.2.10", "127.0.0.1"))
    assert recorded is not None and recorded.vips
    assert len(recorded.ignored) == 1 and "127.0.0.1" in recorded.ignored[0]
    assert changes.take() == (False, {"192.0.2.10"})
