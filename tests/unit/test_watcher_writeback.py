"""The watcher's pure write-back decisions: status, condition, finalizer and Events (core)."""

from __future__ import annotations

from typing import Any

from vipwire.contracts import (
    LbFailed,
    LbProgrammed,
    LbRemoved,
    Member,
    ServicePort,
    VipAssigned,
    VipFailed,
    VipReleased,
)
from vipwire.watcher.core.bus_view import BusView, before, observe, superseded
from vipwire.watcher.core.condition import (
    READY,
    Condition,
    conditions_with,
    gate_satisfied,
    readiness,
)
from vipwire.watcher.core.events import (
    CAUSE_ANNOTATION,
    event_for,
    event_name,
    event_object,
    invalid_event,
    series_patch,
)
from vipwire.watcher.core.translate import (
    CLUSTER_ANNOTATION,
    FINALIZER,
    TRACE_ANNOTATION,
    service_snapshot,
)
from vipwire.watcher.core.writeback import (
    Decision,
    finalizer_patch,
    leftover_patch,
    not_assigned,
    trace_patch,
)
from vipwire.watcher.core.writeback import decide as decide_

CLASS = "vipwire.io/dsr"
SVC = {"cluster": "east", "namespace": "shop", "name": "web", "uid": "u-1"}
VIP = "198.51.100.7"
N1 = Member(node="n1", address="192.0.2.11")
N2 = Member(node="n2", address="192.0.2.12")
NOW = "2025-01-01T00:00:09.000000Z"
EARLIER = "2025-01-01T00:00:01.000000Z"


def service(
    *,
    uid: str = "u-1",
    finalizers: tuple[str, ...] = (FINALIZER,),
    ingress: list[dict[str, str]] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    deleting: bool = False,
    lb: bool = True,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "web",
        "namespace": "shop",
        "uid": uid,
        "resourceVersion": "41",
        "finalizers": list(finalizers),
        "annotations": annotations or {},
    }
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    spec = (
        {"type": "LoadBalancer", "loadBalancerClass": CLASS, "ports": [{"port": 80}]}
        if lb
        else {"type": "ClusterIP", "ports": [{"port": 80}]}
    )
    status: dict[str, Any] = {}
    if ingress is not None:
        status["loadBalancer"] = {"ingress": ingress}
    if conditions is not None:
        status["conditions"] = conditions
    return {"metadata": meta, "spec": spec, "status": status}


def programmed(
    vips: tuple[str, ...] = (VIP,), members: tuple[Member, ...] = (N1,), uid: str = "u-1"
) -> LbProgrammed:
    return LbProgrammed(
        **{**SVC, "uid": uid},
        appliance="sim-a",
        vips=vips,
        ports=(ServicePort(port=80),),
        members=members,
    )


def assigned(vips: tuple[str, ...] = (VIP,)) -> VipAssigned:
    return VipAssigned(
        **SVC, vips=vips, pool="p", appliance_group="g", ports=(ServicePort(port=80),)
    )


def decide(
    svc: dict[str, Any],
    view: BusView,
    *,
    applied: dict[str, frozenset[str]] | None = None,
    gate: Any = "none",
    live_seq: int = 0,
    was_ours: bool = True,
    problems: str | None = None,
    too_large: str | None = None,
) -> Decision:
    snapshot = service_snapshot(svc, cluster="east", load_balancer_class=CLASS, was_ours=was_ours)
    return decide_(
        svc,
        snapshot,
        view,
        applied=applied or {},
        gate=gate,
        now=NOW,
        problems=problems,
        live_seq=live_seq,
        too_large=too_large,
    )


def ready(status: str, reason: str, message: str, since: str = NOW) -> dict[str, Any]:
    return {
        "type": READY,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }


PROGRAMMED = ready("True", "LoadBalancerProgrammed", f"{VIP} programmed on appliance sim-a")
INGRESS = [{"ip": VIP, "ipMode": "VIP"}]


def patch(ingress: Any = ..., conditions: Any = ...) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if ingress is not ...:
        body["loadBalancer"] = {"ingress": ingress}
    if conditions is not ...:
        body["conditions"] = conditions
    return {"metadata": {"resourceVersion": "41"}, "status": body}


class TestStatus:
    def test_programmed_writes_ingress_and_ready_condition(self) -> None:
        """Once programmed: the VIPs with ipMode VIP, and vipwire.io/Ready True, guarded by rv."""
        d = decide(service(), BusView(vip=assigned(), vip_seq=1, lb=programmed(), lb_seq=5))
        assert d == Decision(status=patch(INGRESS, [PROGRAMMED]))

    def test_equal_status_is_not_written_again(self) -> None:
        """Status already saying the same: nothing to write (no loop on our own writes)."""
        svc = service(ingress=INGRESS, conditions=[PROGRAMMED])
        assert decide(svc, BusView(vip=assigned(), vip_seq=1, lb=programmed(), lb_seq=5)).nothing

    def test_a_server_that_drops_ip_mode_is_not_written_again_and_again(self) -> None:
        """Kubernetes 1.29 without LoadBalancerIPMode drops ipMode: that counts as written."""
        svc = service(ingress=[{"ip": VIP}], conditions=[PROGRAMMED])
        assert decide(svc, BusView(vip=assigned(), vip_seq=1, lb=programmed(), lb_seq=5)).nothing
        proxy = service(ingress=[{"ip": VIP, "ipMode": "Proxy"}], conditions=[PROGRAMMED])
        assert (
            decide(proxy, BusView(vip=assigned(), vip_seq=1, lb=programmed(), lb_seq=5)).ingress
            == INGRESS
        )

    def test_a_reason_the_api_would_refuse_is_replaced(self) -> None:
        """A failure reason that is no CamelCase word still makes a valid condition."""
        failed = VipFailed(**SVC, reason="no such pool!", message="m")
        said = readiness(BusView(vip=failed, vip_seq=2), "u-1", applied={}, gate="none")
        assert said is not None and said.reason == "AllocationFailed"

    def test_member_changes_cost_no_write(self) -> None:
        """The condition names VIPs and appliance, not members: a new member changes nothing."""
        svc = service(ingress=INGRESS, conditions=[PROGRAMMED])
        assert decide(
            svc, BusView(vip=assigned(), vip_seq=1, lb=programmed(members=(N1, N2)), lb_seq=6)
        ).nothing

    def test_dual_stack_vips_in_order(self) -> None:
        """Every VIP of the Service is an ingress entry, in the order programmed."""
        d = decide(
            service(),
            BusView(
                vip=assigned(vips=(VIP, "2001:db8::7")),
                vip_seq=1,
                lb=programmed(vips=(VIP, "2001:db8::7")),
                lb_seq=5,
            ),
        )
        assert d.ingress == [
            {"ip": VIP, "ipMode": "VIP"},
            {"ip": "2001:db8::7", "ipMode": "VIP"},
        ]

    def test_assigned_but_not_programmed_writes_nothing(self) -> None:
        """A VIP allocated but not yet on the appliance: no status yet."""
        assert decide(service(), BusView(vip=assigned(), vip_seq=3)).nothing

    def test_failure_keeps_ingress_and_says_why_in_the_condition(self) -> None:
        """A later appliance failure leaves the VIPs in status; the condition turns False."""
        failed = LbFailed(**SVC, appliance="a", reason="Timeout", message="no answer")
        svc = service(ingress=INGRESS, conditions=[{**PROGRAMMED, "lastTransitionTime": EARLIER}])
        d = decide(svc, BusView(lb=failed, lb_seq=4))
        assert d.status == patch(
            conditions=[ready("False", "ApplianceFailed", "appliance a: Timeout: no answer")]
        )

    def test_allocation_failure_sets_the_condition(self) -> None:
        """VipFailed: Ready False, reason AllocationFailed, ipam's message."""
        failed = VipFailed(**SVC, reason="AllocationFailed", message="pool gold does not exist")
        d = decide(service(), BusView(vip=failed, vip_seq=3))
        assert d.status == patch(
            conditions=[ready("False", "AllocationFailed", "pool gold does not exist")]
        )

    def test_transition_time_moves_only_with_the_status(self) -> None:
        """Same status, new reason: lastTransitionTime kept; other conditions untouched."""
        other = {"type": "example.com/Thing", "status": "True", "reason": "R", "message": ""}
        svc = service(conditions=[other, ready("False", "AllocationFailed", "full", EARLIER)])
        wanted = Condition(status="False", reason="ApplianceFailed", message="down")
        assert conditions_with(svc, wanted, NOW) == [
            other,
            ready("False", "ApplianceFailed", "down", EARLIER),
        ]
        flipped = Condition(status="True", reason="LoadBalancerProgrammed", message="ok")
        assert conditions_with(svc, flipped, NOW)[1]["lastTransitionTime"] == NOW
        assert conditions_with(svc, None, NOW) == [other]

    def test_messages_about_an_earlier_service_of_the_name_are_ignored(self) -> None:
        """A programmed message for another uid (a deleted namesake) writes nothing."""
        assert decide(
            service(uid="u-2"), BusView(vip=assigned(), vip_seq=1, lb=programmed(), lb_seq=5)
        ).nothing

    def test_services_not_ours_are_never_touched(self) -> None:
        """A Service of another class: no writes, whatever the bus says."""
        svc = service(lb=False, finalizers=())
        assert decide(
            svc, BusView(vip=assigned(), vip_seq=1, lb=programmed(), lb_seq=5), was_ours=False
        ).nothing

    def test_invalid_service_gets_the_condition_and_no_ingress(self) -> None:
        """Problems override everything: Ready False InvalidService, no VIP written."""
        d = decide(
            service(),
            BusView(vip=assigned(), vip_seq=1, lb=programmed(), lb_seq=5),
            problems="bad ips",
        )
        assert d.status == patch(conditions=[ready("False", "InvalidService", "bad ips")])

    def test_too_large_service_says_so_and_keeps_serving(self) -> None:
        """Refused as too large: Ready False TooLarge; the VIP it was programmed with stays."""
        d = decide(
            service(),
            BusView(vip=assigned(), vip_seq=1, lb=programmed(), lb_seq=5),
            too_large="too big",
        )
        assert d.status is not None
        (cond,) = d.status["status"]["conditions"]
        assert (cond["status"], cond["reason"], cond["message"]) == ("False", "TooLarge", "too big")
        assert d.ingress == [{"ip": VIP, "ipMode": "VIP"}]

    def test_invalid_outranks_too_large(self) -> None:
        """Both: what is invalid is told first (fixing it may be all that is needed)."""
        d = decide(service(), BusView(), problems="bad ips", too_large="too big")
        assert d.status == patch(conditions=[ready("False", "InvalidService", "bad ips")])

    def test_smaller_service_leaves_too_large_behind(self) -> None:
        """Published at last, with no outcome yet: TooLarge gives way to Pending."""
        svc = service(conditions=[ready("False", "TooLarge", "too big", EARLIER)])
        d = decide(svc, BusView())
        cond = d.status["status"]["conditions"][0] if d.status else {}
        assert cond["reason"] == "Pending"

    def test_fixed_service_leaves_invalid_behind(self) -> None:
        """Fixed, with no outcome yet: the InvalidService condition gives way to Pending."""
        svc = service(conditions=[ready("False", "InvalidService", "bad ips", EARLIER)])
        d = decide(svc, BusView())
        cond = d.status["status"]["conditions"][0] if d.status else {}
        assert (cond["reason"], cond["lastTransitionTime"]) == ("Pending", EARLIER)


class TestReadiness:
    def test_the_later_of_vip_and_lb_decides(self) -> None:
        """Stream order across the two subjects picks the outcome that counts."""
        failed = VipFailed(**SVC, reason="AllocationFailed", message="full")
        early = BusView(vip=failed, vip_seq=3, lb=programmed(), lb_seq=5)
        late = BusView(vip=failed, vip_seq=7, lb=programmed(), lb_seq=5)
        assert readiness(early, "u-1", applied={}, gate="none") == Condition(
            status="True",
            reason="LoadBalancerProgrammed",
            message=f"{VIP} programmed on appliance sim-a",
        )
        said = readiness(late, "u-1", applied={}, gate="none")
        assert said is not None and said.reason == "AllocationFailed"

    def test_refused_change_still_stands_after_ipam_repeats_the_kept_vips(self) -> None:
        """ipam: VipFailed then the VipAssigned it keeps; the failure is what the user must see."""
        failed = VipFailed(**SVC, reason="AllocationFailed", message="in use")
        view = observe(
            observe(BusView(vip=assigned(), vip_seq=1, lb=programmed(), lb_seq=2), failed, 5),
            assigned(),
            6,
        )
        said = readiness(view, "u-1", applied={}, gate="none")
        assert said is not None and (said.status, said.message) == ("False", "in use")
        fixed = observe(view, assigned(), 9)
        said = readiness(fixed, "u-1", applied={}, gate="none")
        assert said is not None and said.status == "True"

    def test_gate_not_satisfied_says_nothing(self) -> None:
        """Programmed but the node agents have not applied it: no verdict yet."""
        view = BusView(vip=assigned(), vip_seq=1, lb=programmed(), lb_seq=5)
        assert readiness(view, "u-1", applied={}, gate="all") is None


class TestGate:
    def test_gate_none_needs_no_node(self) -> None:
        """Gate none: programmed is enough, even without members."""
        assert gate_satisfied(programmed(members=()), {}, "none")

    def test_gate_any_and_all(self) -> None:
        """any: one member serving every VIP; all: every member doing so."""
        lb = programmed(members=(N1, N2))
        one = {"n1": frozenset({VIP})}
        both = {"n1": frozenset({VIP}), "n2": frozenset({VIP, "198.51.100.99"})}
        assert not gate_satisfied(lb, {}, "any")
        assert gate_satisfied(lb, one, "any")
        assert not gate_satisfied(lb, one, "all")
        assert gate_satisfied(lb, both, "all")

    def test_a_node_with_only_some_vips_does_not_count(self) -> None:
        """Dual-stack: a node counts only once it serves all the Service's VIPs."""
        lb = programmed(vips=(VIP, "2001:db8::7"))
        assert not gate_satisfied(lb, {"n1": frozenset({VIP})}, "any")

    def test_no_members_never_satisfies_a_node_gate(self) -> None:
        """Without members no traffic can flow, so any/all are not satisfied."""
        lb = programmed(members=())
        assert not gate_satisfied(lb, {"n1": frozenset({VIP})}, "any")
        assert not gate_satisfied(lb, {}, "all")

    def test_decide_waits_for_the_gate(self) -> None:
        """With gate all, status waits until every member applied the VIP."""
        view = BusView(vip=assigned(), vip_seq=1, lb=programmed(members=(N1, N2)), lb_seq=5)
        assert decide(service(), view, gate="all", applied={"n1": frozenset({VIP})}).nothing
        applied = {"n1": frozenset({VIP}), "n2": frozenset({VIP})}
        assert decide(service(), view, gate="all", applied=applied).ingress == INGRESS


class TestRelease:
    def test_released_deleted_service_only_loses_the_finalizer(self) -> None:
        """Deleted + VipReleased for this uid: drop the finalizer; the object goes away."""
        svc = service(deleting=True, ingress=INGRESS, conditions=[PROGRAMMED])
        view = BusView(vip=VipReleased(**SVC, vips=(VIP,)), vip_seq=9)
        assert decide(svc, view, live_seq=4) == Decision(remove_finalizer=True)

    def test_type_changed_away_is_released_and_cleared(self) -> None:
        """No longer a LoadBalancer, once released: ingress and our condition cleared, let go."""
        svc = service(lb=False, ingress=INGRESS, conditions=[PROGRAMMED])
        view = BusView(vip=VipReleased(**SVC), vip_seq=9)
        assert decide(svc, view) == Decision(status=patch(None, None), remove_finalizer=True)

    def test_cleanup_blocked_keeps_the_finalizer_and_says_why(self) -> None:
        """The appliance refuses to let go: finalizer stays, condition CleanupBlocked."""
        blocked = LbFailed(
            **SVC, appliance="sim-1", reason="Unavailable", message="down", removing=True
        )
        d = decide(service(deleting=True), BusView(lb=blocked, lb_seq=8))
        assert not d.remove_finalizer
        assert d.status == patch(
            conditions=[ready("False", "CleanupBlocked", "appliance sim-1: Unavailable: down")]
        )

    def test_no_release_no_removal(self) -> None:
        """Deleting but ipam has not released: keep the finalizer, keep the status."""
        failed = VipFailed(**SVC, reason="AllocationFailed", message="full")
        assert decide(service(deleting=True), BusView()).nothing
        assert decide(service(deleting=True), BusView(vip=failed, vip_seq=3)).nothing

    def test_release_from_an_earlier_life_does_not_count(self) -> None:
        """A VipReleased older than our last live snapshot belongs to a previous cycle."""
        view = BusView(vip=VipReleased(**SVC), vip_seq=3)
        assert decide(service(deleting=True), view, live_seq=7).nothing

    def test_release_of_another_uid_does_not_count(self) -> None:
        """A VipReleased for a namesake with another uid never lets this Service go."""
        view = BusView(vip=VipReleased(**{**SVC, "uid": "u-0"}), vip_seq=9)
        assert decide(service(deleting=True), view).nothing

    def test_a_live_service_ignores_releases(self) -> None:
        """VipReleased for a live Service (not deleting) removes nothing."""
        view = BusView(vip=VipReleased(**SVC), vip_seq=9)
        assert decide(service(), view).nothing

    def test_leftover_condition_on_a_plain_service_is_removed(self) -> None:
        """Our condition on a Service no load balancer serves any more is cleared."""
        svc = service(lb=False, finalizers=(), conditions=[ready("False", "InvalidService", "x")])
        assert leftover_patch(svc, now=NOW) == patch(conditions=None)
        assert leftover_patch(service(conditions=[PROGRAMMED]), now=NOW) is None
        assert leftover_patch(service(lb=False, finalizers=()), now=NOW) is None


class TestFinalizerPatch:
    def test_add_keeps_other_finalizers_marks_and_sets_the_precondition(self) -> None:
        """Adding appends ours, with our cluster annotation, guarded by the resourceVersion."""
        p = finalizer_patch(service(finalizers=("example.com/x",)), present=True, cluster="east")
        assert p == {
            "metadata": {
                "annotations": {CLUSTER_ANNOTATION: "east"},
                "finalizers": ["example.com/x", FINALIZER],
                "resourceVersion": "41",
            }
        }

    def test_finalizer_without_our_mark_gets_the_mark(self) -> None:
        """A finalizer already there (older vipwire, or a namesake controller) gets marked."""
        p = finalizer_patch(service(), present=True, cluster="east")
        assert p == {
            "metadata": {"annotations": {CLUSTER_ANNOTATION: "east"}, "resourceVersion": "41"}
        }

    def test_remove_keeps_others_drops_the_mark_and_records_the_trace(self) -> None:
        """Removing keeps foreign finalizers; an empty list is removed altogether."""
        both = service(finalizers=("example.com/x", FINALIZER))
        only = service(finalizers=(FINALIZER,), annotations={CLUSTER_ANNOTATION: "east"})
        assert finalizer_patch(both, present=False, cluster="east", trace_id="ab") == {
            "metadata": {
                "annotations": {CLUSTER_ANNOTATION: None, TRACE_ANNOTATION: "ab"},
                "finalizers": ["example.com/x"],
                "resourceVersion": "41",
            }
        }
        removed = finalizer_patch(only, present=False, cluster="east")
        assert removed is not None and removed["metadata"]["finalizers"] is None

    def test_adding_records_the_trace_in_the_same_patch(self) -> None:
        """Adding with a trace id writes it along (one PATCH); a finalizer already marked
        is not patched for the trace alone."""
        p = finalizer_patch(service(finalizers=()), present=True, cluster="east", trace_id="ab")
        assert p == {
            "metadata": {
                "annotations": {CLUSTER_ANNOTATION: "east", TRACE_ANNOTATION: "ab"},
                "finalizers": [FINALIZER],
                "resourceVersion": "41",
            }
        }
        marked = service(annotations={CLUSTER_ANNOTATION: "east"})
        assert finalizer_patch(marked, present=True, cluster="east", trace_id="ab") is None
        recorded = service(finalizers=(), annotations={TRACE_ANNOTATION: "ab"})
        again = finalizer_patch(recorded, present=True, cluster="east", trace_id="ab")
        assert again is not None and TRACE_ANNOTATION not in again["metadata"]["annotations"]

    def test_nothing_to_do(self) -> None:
        """Already as wanted: no patch."""
        marked = service(annotations={CLUSTER_ANNOTATION: "east"})
        assert finalizer_patch(marked, present=True, cluster="east") is None
        assert finalizer_patch(service(finalizers=()), present=False, cluster="east") is None

    def test_trace_annotation_only_when_it_changes(self) -> None:
        """The last trace id is recorded by a metadata patch, not repeated."""
        assert trace_patch(service(), "ab") == {
            "metadata": {"annotations": {TRACE_ANNOTATION: "ab"}}
        }
        assert trace_patch(service(annotations={TRACE_ANNOTATION: "ab"}), "ab") is None


class TestView:
    def test_observe_keeps_the_newest_and_what_it_replaced(self) -> None:
        """A newer lb message replaces the held one and remembers it; older ones are ignored."""
        first, second = programmed(), programmed(members=(N1, N2))
        v = observe(BusView(), first, 3)
        v = observe(v, second, 7)
        assert (v.lb, v.lb_seq, v.lb_before) == (second, 7, first)
        assert observe(v, first, 5) == v
        assert before(v, second, 7) == first  # a redelivery of seq 7 is judged as the first time
        assert before(v, second, 9) == second

    def test_vip_and_lb_are_tracked_apart(self) -> None:
        """vip and lb subjects have their own sequences and pasts."""
        v = observe(BusView(), assigned(), 8)
        v = observe(v, VipReleased(**SVC), 10)
        v = observe(v, LbRemoved(**SVC, appliance="a"), 4)
        assert (v.vip_seq, v.lb_seq) == (10, 4)
        assert before(v, VipReleased(**SVC), 10) == assigned()

    def test_only_a_message_older_than_the_held_one_is_superseded(self) -> None:
        """A redelivery overtaken on its own subject is superseded; the held message
        itself (a redelivery of it) and the other family's are not."""
        v = observe(observe(BusView(), assigned(), 8), programmed(), 5)
        assert superseded(v, assigned(), 7)
        assert not superseded(v, assigned(), 8)
        assert not superseded(v, VipReleased(**SVC), 9)
        assert superseded(v, LbRemoved(**SVC, appliance="a"), 4)
        assert not superseded(v, programmed(), 7)  # older than the vip, newer than the lb


class TestEvents:
    def test_vip_failed_is_a_warning_with_its_message(self) -> None:
        """VipFailed: Warning AllocationFailed, note = the message."""
        spec = event_for(VipFailed(**SVC, reason="AllocationFailed", message="full"), before=None)
        assert spec is not None
        assert (spec.type, spec.reason, spec.note) == ("Warning", "AllocationFailed", "full")

    def test_ip_allocated_once_per_vip_set(self) -> None:
        """VipAssigned: Normal IPAllocated when new or changed, not on a repeat or a kept VIP."""
        first = event_for(assigned(), before=None)
        assert first is not None and (first.type, first.reason) == ("Normal", "IPAllocated")
        assert VIP in first.note and "pool p" in first.note
        assert event_for(assigned(), before=assigned()) is None
        assert event_for(assigned(("198.51.100.8",)), before=assigned()) is not None
        failed = VipFailed(**SVC, reason="AllocationFailed", message="in use")
        assert event_for(assigned(), before=failed) is None

    def test_lb_failed_is_appliance_failed_or_cleanup_blocked(self) -> None:
        """LbFailed: ApplianceFailed while programming, CleanupBlocked while removing."""
        failed = LbFailed(**SVC, appliance="f5-a", reason="Timeout", message="no answer")
        spec = event_for(failed, before=None)
        assert spec is not None and (spec.type, spec.reason) == ("Warning", "ApplianceFailed")
        assert "f5-a" in spec.note and "no answer" in spec.note
        removing = LbFailed(**SVC, appliance="f5-a", reason="Timeout", message="x", removing=True)
        spec = event_for(removing, before=None)
        assert spec is not None and spec.reason == "CleanupBlocked"
        assert "finalizer stays" in spec.note

    def test_programmed_is_announced_once_per_vip_set(self) -> None:
        """First programming (or new VIPs) is a Normal Event; member changes are not."""
        first = event_for(programmed(), before=None)
        assert first is not None and (first.type, first.reason) == (
            "Normal",
            "LoadBalancerProgrammed",
        )
        assert VIP in first.note
        assert event_for(programmed(members=(N1, N2)), before=programmed()) is None
        assert event_for(programmed(vips=("198.51.100.8",)), before=programmed()) is not None
        failed = LbFailed(**SVC, appliance="a", reason="r", message="m")
        assert event_for(programmed(), before=failed) is not None

    def test_release_is_announced_and_removal_is_not(self) -> None:
        """VipReleased with VIPs: Normal IPReleased; LbRemoved: nothing."""
        spec = event_for(VipReleased(**SVC, vips=(VIP,)), before=None)
        assert spec is not None and spec.reason == "IPReleased"
        assert event_for(VipReleased(**SVC), before=None) is None
        assert event_for(LbRemoved(**SVC, appliance="a"), before=None) is None

    def test_event_object_has_every_required_field_and_the_trace(self) -> None:
        """events.k8s.io/v1 fields: eventTime, reporting*, action, reason, regarding, type."""
        spec = event_for(
            VipFailed(**SVC, reason="AllocationFailed", message="x" * 5000), before=None
        )
        assert spec is not None
        name = event_name("web", "u-1", spec)
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        body = event_object(
            spec,
            service(),
            name=name,
            event_time="2025-01-01T00:00:00.000000Z",
            instance="w-0",
            cause="vipwire.east.vip.shop.web#12",
            trace_id=trace,
        )
        assert body["apiVersion"] == "events.k8s.io/v1"
        assert body["metadata"] == {
            "name": name,
            "namespace": "shop",
            "annotations": {CAUSE_ANNOTATION: "vipwire.east.vip.shop.web#12"},
        }
        assert body["reportingController"] == "vipwire.io/watcher"
        assert body["reportingInstance"] == "w-0"
        assert body["action"] == "AllocateVIP"
        assert body["type"] == "Warning"
        assert body["regarding"] == {
            "apiVersion": "v1",
            "kind": "Service",
            "namespace": "shop",
            "name": "web",
            "uid": "u-1",
            "resourceVersion": "41",
        }
        assert len(body["note"].encode()) <= 1024
        assert body["note"].endswith(f"(trace {trace})")

    def test_event_name_is_fixed_by_what_it_says(self) -> None:
        """Same Service and content: same name (a series); another note: another Event."""
        a = event_name("web", "u-1", invalid_event("bad ips"))
        assert a == event_name("web", "u-1", invalid_event("bad ips"))
        assert a != event_name("web", "u-1", invalid_event("bad pool"))
        assert a != event_name("web", "u-2", invalid_event("bad ips"))
        assert a.startswith("web.")

    def test_series_counts_each_cause_once(self) -> None:
        """A repeat becomes series.count (at least 2); the same cause again counts nothing."""
        created = {
            "metadata": {
                "name": "web.x",
                "resourceVersion": "7",
                "annotations": {CAUSE_ANNOTATION: "s#1"},
            }
        }
        assert series_patch(created, cause="s#1", now=NOW) is None
        first = series_patch(created, cause="s#2", now=NOW)
        assert first == {
            "metadata": {"annotations": {CAUSE_ANNOTATION: "s#2"}, "resourceVersion": "7"},
            "series": {"count": 2, "lastObservedTime": NOW},
        }
        again = {**created, "series": {"count": 2, "lastObservedTime": EARLIER}}
        nxt = series_patch(again, cause="s#3", now=NOW)
        assert nxt is not None and nxt["series"]["count"] == 3


class TestOnlyAssignedVips:
    def test_a_programming_naming_vips_ipam_did_not_assign_is_not_written(self) -> None:
        """An LbProgrammed with the gateway and 8.8.8.8 besides the assigned VIP: no
        ingress is written, and the foreign VIPs are named for the shell to count."""
        view = BusView(
            vip=assigned(), vip_seq=1, lb=programmed(vips=(VIP, "192.0.2.1", "8.8.8.8")), lb_seq=5
        )
        d = decide(service(), view)
        assert d.ingress is None
        assert d.unassigned == ("192.0.2.1", "8.8.8.8")
        assert not_assigned(programmed(), view) == ()

    def test_with_no_assignment_known_nothing_is_written_nor_blamed(self) -> None:
        """No VipAssigned of the Service's incarnation: nothing can be checked, so no
        ingress is written and nothing is reported as unassigned."""
        d = decide(service(), BusView(lb=programmed(), lb_seq=5))
        assert d.ingress is None and d.unassigned == ()
