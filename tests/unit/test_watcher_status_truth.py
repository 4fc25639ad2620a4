"""Status that stays true (watcher core): ApplianceDrift, NoMembers and NodesMissingVip turn
the condition False with a Warning Event, and clear (condition True, a Normal Event)."""

from __future__ import annotations

from typing import Any

import msgspec

from vipwire.contracts import (
    APPLIANCE_DRIFT,
    LbFailed,
    LbProgrammed,
    Member,
    ServicePort,
    VipAssigned,
)
from vipwire.watcher.core.bus_view import BusView, observe
from vipwire.watcher.core.condition import READY, readiness
from vipwire.watcher.core.events import event_for, event_name
from vipwire.watcher.core.node_vips import (
    MissingVips,
    Verdict,
    gain_needs_status,
    node_event,
    nodes_without,
)
from vipwire.watcher.core.term_memory import TermMemory
from vipwire.watcher.core.translate import FINALIZER, service_snapshot
from vipwire.watcher.core.writeback import decide

CLASS = "vipwire.io/dsr"
SVC = {"cluster": "east", "namespace": "shop", "name": "web", "uid": "u-1"}
VIP = "198.51.100.7"
N1 = Member(node="n1", address="192.0.2.11")
NOW = "2025-01-01T00:00:09.000000Z"
INGRESS = [{"ip": VIP, "ipMode": "VIP"}]


def programmed(*members: Member, etp: Any = "Cluster") -> LbProgrammed:
    return LbProgrammed(
        **SVC,
        appliance="bigip-a",
        vips=(VIP,),
        ports=(ServicePort(port=80),),
        members=members,
        external_traffic_policy=etp,
    )


DRIFTED = LbFailed(
    **SVC,
    appliance="bigip-a",
    reason=APPLIANCE_DRIFT,
    message="virtual server vs-1 is missing: ...; re-programming it",
)


def assigned() -> VipAssigned:
    """What ipam assigned the Service (the VIP its programmings name)."""
    return VipAssigned(
        **SVC, vips=(VIP,), pool="p", appliance_group="g", ports=(ServicePort(port=80),)
    )


def service(ingress: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "u-1",
            "resourceVersion": "41",
            "finalizers": [FINALIZER],
        },
        "spec": {"type": "LoadBalancer", "loadBalancerClass": CLASS, "ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": ingress}} if ingress else {},
    }


def condition_of(view: BusView, gate: Any = "none") -> tuple[str, str, str] | None:
    said = readiness(view, "u-1", applied={}, gate=gate)
    return None if said is None else (said.status, said.reason, said.message)


class TestNoMembers:
    def test_a_programming_with_no_member_is_not_ready(self) -> None:
        """Local with 0 endpoints: condition False, reason NoMembers, saying why."""
        said = condition_of(
            BusView(vip=assigned(), vip_seq=1, lb=programmed(etp="Local"), lb_seq=5)
        )
        assert said is not None and said[:2] == ("False", "NoMembers")
        assert "no node holds a ready endpoint" in said[2] and VIP in said[2]
        cluster = condition_of(BusView(vip=assigned(), vip_seq=1, lb=programmed(), lb_seq=5))
        assert cluster is not None and "no node of the cluster is eligible" in cluster[2]

    def test_no_members_is_told_whatever_the_gate(self) -> None:
        """A gate cannot be satisfied without members; the condition says why, not nothing."""
        said = condition_of(
            BusView(vip=assigned(), vip_seq=1, lb=programmed(etp="Local"), lb_seq=5), gate="all"
        )
        assert said is not None and said[1] == "NoMembers"

    def test_members_back_make_it_ready_again(self) -> None:
        """Once a node qualifies again, the condition turns True."""
        view = observe(
            BusView(vip=assigned(), vip_seq=1, lb=programmed(), lb_seq=5), programmed(N1), 6
        )
        said = condition_of(view)
        assert said is not None and said[:2] == ("True", "LoadBalancerProgrammed")

    def test_the_vip_is_written_and_stays_with_no_member(self) -> None:
        """Decision: the VIP goes into (and stays in) status with the condition False."""
        snapshot = service_snapshot(
            service(), cluster="east", load_balancer_class=CLASS, was_ours=True
        )
        view = BusView(vip=assigned(), vip_seq=1, lb=programmed(etp="Local"), lb_seq=5)
        d = decide(service(), snapshot, view, applied={}, gate="none", now=NOW)
        assert d.status is not None
        assert d.status["status"]["loadBalancer"]["ingress"] == INGRESS
        assert d.status["status"]["conditions"][0]["reason"] == "NoMembers"
        kept = decide(service(INGRESS), snapshot, view, applied={}, gate="none", now=NOW)
        assert kept.status is not None and "loadBalancer" not in kept.status["status"]

    def test_warning_when_members_go_then_normal_when_they_return(self) -> None:
        """Losing every member is a Warning NoMembers (once); regaining one a Normal
        MembersAvailable; a member change while serving is no Event."""
        lost = event_for(programmed(etp="Local"), before=programmed(N1, etp="Local"))
        assert lost is not None and (lost.type, lost.reason) == ("Warning", "NoMembers")
        again = event_for(programmed(etp="Local"), before=programmed(etp="Local"))
        assert again is None
        back = event_for(programmed(N1), before=programmed())
        assert back is not None and (back.type, back.reason) == ("Normal", "MembersAvailable")
        other = Member(node="n2", address="192.0.2.12")
        assert event_for(programmed(N1, other), before=programmed(N1)) is None

    def test_a_first_programming_with_no_member_is_a_warning(self) -> None:
        """Created with no endpoint yet: the programming is told as a Warning NoMembers."""
        spec = event_for(programmed(etp="Local"), before=None)
        assert spec is not None and (spec.type, spec.reason) == ("Warning", "NoMembers")
        assert "programmed on appliance bigip-a with no member node" in spec.note


class TestApplianceDrift:
    def test_drift_turns_the_condition_false_with_the_lbdrivers_message(self) -> None:
        """LbFailed ApplianceDrift: condition False, reason ApplianceDrift, message names the
        appliance and what was found (not the reason twice)."""
        view = observe(BusView(vip=assigned(), vip_seq=1, lb=programmed(N1), lb_seq=5), DRIFTED, 8)
        said = condition_of(view)
        assert said == (
            "False",
            "ApplianceDrift",
            "appliance bigip-a: virtual server vs-1 is missing: ...; re-programming it",
        )

    def test_the_vip_stays_in_status_during_drift(self) -> None:
        """Drift is a failure: the VIP already in status is not taken out."""
        snapshot = service_snapshot(
            service(INGRESS), cluster="east", load_balancer_class=CLASS, was_ours=True
        )
        view = observe(BusView(vip=assigned(), vip_seq=1, lb=programmed(N1), lb_seq=5), DRIFTED, 8)
        d = decide(service(INGRESS), snapshot, view, applied={}, gate="none", now=NOW)
        assert d.status is not None and "loadBalancer" not in d.status["status"]

    def test_warning_on_drift_normal_once_repaired(self) -> None:
        """A Warning ApplianceDrift Event, then a Normal DriftRepaired when the repair is
        reported; a failed repair (a new message) is a Warning of its own."""
        found = event_for(DRIFTED, before=programmed(N1))
        assert found is not None and (found.type, found.reason) == ("Warning", "ApplianceDrift")
        assert found.action == "VerifyVirtualServers"
        failed = msgspec.structs.replace(
            DRIFTED, message="vs-1 is missing; re-programming failed (ApplianceRejected: no)"
        )
        refused = event_for(failed, before=DRIFTED)
        assert refused is not None and refused.reason == "ApplianceDrift"
        assert event_name("web", "u-1", refused) != event_name("web", "u-1", found)
        repaired = event_for(programmed(N1), before=failed)
        assert repaired is not None and (repaired.type, repaired.reason) == (
            "Normal",
            "DriftRepaired",
        )
        view = observe(
            observe(BusView(vip=assigned(), vip_seq=1, lb=programmed(N1), lb_seq=5), DRIFTED, 8),
            programmed(N1),
            9,
        )
        said = condition_of(view)
        assert said is not None and said[:2] == ("True", "LoadBalancerProgrammed")

    def test_other_appliance_failures_keep_their_reason(self) -> None:
        """Only the drift reason maps to ApplianceDrift; the others stay ApplianceFailed."""
        other = msgspec.structs.replace(DRIFTED, reason="ApplianceRejected", message="no")
        said = condition_of(BusView(lb=other, lb_seq=5))
        assert said == ("False", "ApplianceFailed", "appliance bigip-a: ApplianceRejected: no")
        back = event_for(programmed(N1), before=other)
        assert back is not None and back.reason == "LoadBalancerProgrammed"


N2 = Member(node="n2", address="192.0.2.12")


class TestNodesMissingVip:
    def test_only_member_nodes_that_reported_without_the_vip_are_missing(self) -> None:
        """A member whose agent reports it without a VIP is missing; one that never
        reported is not judged; a non-member is not asked."""
        lb = programmed(N1, N2)
        applied = {"n1": frozenset({"198.51.100.9"}), "n3": frozenset()}
        assert nodes_without(lb, applied) == {"n1"}
        assert nodes_without(lb, {"n1": frozenset({VIP}), "n2": frozenset({VIP})}) == set()

    def test_grace_runs_from_first_found_and_survives_later_judgements(self) -> None:
        """A node is overdue only once it has been missing for the whole grace period,
        counted from when it was first found; the verdict says when to look again."""
        tracker = MissingVips(grace_s=30.0)
        first = tracker.judge("shop/web", frozenset({"n1"}), now=100.0)
        assert first == Verdict(frozenset(), 130.0)
        later = tracker.judge("shop/web", frozenset({"n1", "n2"}), now=120.0)
        assert later == Verdict(frozenset(), 130.0)
        due = tracker.judge("shop/web", frozenset({"n1", "n2"}), now=130.0)
        assert due == Verdict(frozenset({"n1"}), 150.0)
        assert tracker.judge("shop/web", frozenset({"n2"}), now=151.0).overdue == {"n2"}

    def test_holding_it_again_clears_and_restarts_the_grace(self) -> None:
        """Once every member holds the VIP the Service is forgotten: a later withdrawal
        gets a full grace period again."""
        tracker = MissingVips(grace_s=30.0)
        tracker.judge("shop/web", frozenset({"n1"}), now=100.0)
        assert tracker.judge("shop/web", frozenset(), now=110.0) == Verdict(frozenset(), None)
        assert len(tracker) == 0
        assert tracker.judge("shop/web", frozenset({"n1"}), now=200.0).overdue == set()

    def test_overdue_nodes_turn_the_condition_false_naming_them(self) -> None:
        """NodesMissingVip: condition False, naming the nodes; it beats the gate, which
        would otherwise say nothing (and leave True standing)."""
        view = BusView(vip=assigned(), vip_seq=1, lb=programmed(N1, N2), lb_seq=5)
        said = readiness(view, "u-1", applied={}, gate="all", missing={"n2"})
        assert said is not None and (said.status, said.reason) == ("False", "NodesMissingVip")
        assert "node agents of n2 report their node without it" in said.message
        many = readiness(view, "u-1", applied={}, gate="none", missing={f"n{i}" for i in range(8)})
        assert many is not None and "and 3 more" in many.message

    def test_events_on_the_transitions_only(self) -> None:
        """A write turning the condition to NodesMissingVip is a Warning; one turning it
        back to True a Normal NodesHoldVip; anything else is no Event of ours."""
        true = {
            "type": READY,
            "status": "True",
            "reason": "LoadBalancerProgrammed",
            "message": "ok",
        }
        missing = {**true, "status": "False", "reason": "NodesMissingVip", "message": "n2 lacks"}
        svc: dict[str, Any] = {"metadata": {}, "status": {"conditions": [true]}}
        to_missing = {"status": {"conditions": [missing]}}
        spec = node_event(svc, to_missing)
        assert spec is not None and (spec.type, spec.reason) == ("Warning", "NodesMissingVip")
        assert spec.note == "n2 lacks"
        held = {"metadata": {}, "status": {"conditions": [missing]}}
        back = node_event(held, {"status": {"conditions": [true]}})
        assert back is not None and (back.type, back.reason) == ("Normal", "NodesHoldVip")
        assert node_event(held, to_missing) is None  # the same verdict again
        assert node_event(svc, {"status": {"loadBalancer": {}}}) is None  # no condition written
        drift = {**missing, "reason": "ApplianceDrift"}
        assert node_event(svc, {"status": {"conditions": [drift]}}) is None

    def test_a_node_report_concerns_only_services_whose_vip_came_or_went(self) -> None:
        """A node's first report concerns every Service it is a member of; later ones only
        those with a VIP that came or went (not every Service of the cluster each time)."""
        memory = TermMemory(gating=True)
        memory.observe("shop/web", programmed(N1), 4)
        assert memory.observe_applied("n1", (VIP,), 5).concerned == ["shop/web"]
        assert memory.observe_applied("n1", (VIP, "198.51.100.99"), 6).concerned == []
        assert memory.observe_applied("n1", ("198.51.100.99",), 7).concerned == ["shop/web"]
        assert memory.observe_applied("n2", (), 8).concerned == []  # not a member
        assert memory.observe_applied("n1", (VIP,), 6).concerned == []  # overtaken redelivery

    def test_a_report_that_only_gains_a_vip_is_told_apart_from_one_that_loses_it(self) -> None:
        """A node's first report and a lost VIP call for judging the Service; a gained VIP
        alone is reported apart (it can make no node missing)."""
        memory = TermMemory(gating=True)
        memory.observe("shop/web", programmed(N1, N2), 4)
        assert memory.observe_applied("n1", (), 5).judge == ("shop/web",)
        gained = memory.observe_applied("n1", (VIP,), 6)
        assert (gained.judge, gained.gained) == ((), ("shop/web",))
        lost = memory.observe_applied("n1", (), 7)
        assert (lost.judge, lost.gained) == (("shop/web",), ())

    def test_a_node_found_with_the_vip_changes_the_verdict_only_when_overdue(self) -> None:
        """A node that gains the VIP within its grace is forgotten without a new verdict;
        one past its grace changes the verdict; the last one found ends the waiting."""
        tracker = MissingVips(grace_s=30.0)
        tracker.judge("shop/web", frozenset({"n1", "n2", "n3"}), now=100.0)
        assert tracker.found("shop/web", "n1", now=110.0) == (False, True)
        assert tracker.found("shop/web", "n1", now=111.0) == (False, True)  # not missing
        assert tracker.found("shop/web", "n2", now=130.0) == (True, True)
        assert tracker.found("shop/web", "n3", now=131.0) == (True, False)
        assert len(tracker) == 0
        assert tracker.found("shop/other", "n1", now=131.0) == (False, False)
        # Lost again after it was found: a full grace period from then.
        tracker.judge("shop/web", frozenset({"n1"}), now=200.0)
        assert tracker.judge("shop/web", frozenset({"n1"}), now=229.0).overdue == set()

    def test_a_gained_vip_needs_the_status_judged_only_for_a_gate_or_a_move(self) -> None:
        """Without a gate and outside a move, a gained VIP cannot change the status but
        through the NodesMissingVip verdict; with a gate, or during a move, it can."""
        assert not gain_needs_status("none", moving=False, nodes_known=True)
        assert gain_needs_status("any", moving=False, nodes_known=True)
        assert gain_needs_status("all", moving=False, nodes_known=True)
        assert gain_needs_status("none", moving=True, nodes_known=True)
        assert not gain_needs_status("none", moving=True, nodes_known=False)

    def test_the_memory_knows_which_services_are_moving(self) -> None:
        """A VipAssigned with moving_from marks its Service as moving; the next one without
        it, or the Service forgotten, clears it."""
        memory = TermMemory(gating=True)
        move = msgspec.structs.replace(assigned(), moving_from=("198.51.100.1",))
        memory.observe("shop/web", move, 3)
        assert "shop/web" in memory.moving
        memory.observe("shop/web", assigned(), 4)
        assert "shop/web" not in memory.moving
