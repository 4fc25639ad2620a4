"""lbdriver, rerun: every recorded ``lb`` decision against the lbdriver's pure core.

Inputs per Service: its assignment (the last VipAssigned or VipReleasing;
VipFailed leaves it as it was, VipReleased ends it), the Nodes of its
cluster and its endpoints. Checks:

* ``lbdriver.assignment``: an LbProgrammed carries the VIPs, ports and
  traffic policy (and uid) of a VipAssigned current within ``lag`` before it;
* ``lbdriver.members``: its members are what
  :func:`~vipwire.lbdriver.core.desired.desired_virtual_servers` gives for those inputs —
  exactly, for the inputs as they stood just before it; or else every member
  that each input version within ``lag`` agrees on is there, and none that no
  version would give (an lbdriver may not have seen the very latest Node or
  endpoints message: it has two consumers);
* ``lbdriver.invalid``: no LbProgrammed for an assignment the core refuses;
* ``lbdriver.removed``: an LbRemoved answers a VipReleasing of that uid;
* ``lbdriver.settle``: once a Service's inputs have been still for ``settle``,
  the last ``lb`` message before they change again is the recomputed one
  (LbFailed counts: the appliance is outside the sandbox).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, NamedTuple

from vipwire.contracts import (
    EndpointsSnapshot,
    LbFailed,
    LbProgrammed,
    LbRemoved,
    Member,
    NodeGone,
    NodeSnapshot,
    ServicePort,
    ServiceRef,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
    members_text,
    service_subject,
)
from vipwire.lbdriver.core.desired import InvalidAssignment, desired_virtual_servers, members_of
from vipwire.lbdriver.core.outcomes import Assignment
from vipwire.replay.rerun.history import Event, History, candidates, latest
from vipwire.replay.rerun.report import Sink, describe, programmed_text

#: Virtual server names do not matter for members; any valid prefix does.
PREFIX: Final = "vipwire"


class Expected(NamedTuple):
    """The ``lb`` message a Service's inputs call for."""

    kind: Literal["programmed", "removed"]
    uid: str
    vips: tuple[str, ...]
    ports: tuple[ServicePort, ...] = ()
    policy: str = "Cluster"
    members: tuple[Member, ...] = ()
    #: The members with the lbdriver's drain_on_cordon off (a cordoned node kept).
    uncordoned: tuple[Member, ...] | None = None

    def text(self) -> str:
        if self.kind == "removed":
            return f"LbRemoved {', '.join(self.vips)}"
        return programmed_text(self.vips, self.ports, self.policy, self.members)

    def answered_by(self, message: object) -> bool:
        if self.kind == "removed":
            if isinstance(message, LbRemoved):
                return message.uid == self.uid and message.vips == self.vips
            return isinstance(message, LbFailed) and message.removing and message.uid == self.uid
        if isinstance(message, LbFailed):
            return message.uid == self.uid and not message.removing
        return (
            isinstance(message, LbProgrammed)
            and message.uid == self.uid
            and message.vips == self.vips
            and message.ports == self.ports
            and message.external_traffic_policy == self.policy
            and message.members in (self.members, self.uncordoned)
        )


def members(
    assignment: VipAssigned,
    nodes: Mapping[str, NodeSnapshot],
    endpoints: EndpointsSnapshot | None,
    *,
    drain_on_cordon: bool = True,
) -> tuple[Member, ...]:
    """What LbProgrammed.members must be for these inputs (raises InvalidAssignment).

    ``drain_on_cordon``: the lbdriver's setting, which the record does not carry;
    the checks below accept either (a cordoned node is a member or not)."""
    servers = desired_virtual_servers(
        assignment, nodes, endpoints, prefix=PREFIX, drain_on_cordon=drain_on_cordon
    )
    return members_of(servers.values())


def _assignment(event: Event) -> Assignment | None:
    message = event.message
    return message if isinstance(message, VipAssigned | VipReleasing) else None


def _node(event: Event) -> NodeSnapshot | None:
    message = event.message
    return message if isinstance(message, NodeSnapshot) else None


def _endpoints(event: Event) -> EndpointsSnapshot | None:
    message = event.message
    return message if isinstance(message, EndpointsSnapshot) else None


class LbdriverCheck:
    def __init__(self, history: History, sink: Sink, *, lag_ns: int, settle_ns: int) -> None:
        self.history = history
        self.sink = sink
        self.lag_ns = lag_ns
        self.settle_ns = settle_ns
        self.settle = history.complete
        # Positions of each input, by subject (assignment: vip messages but VipFailed).
        self.assign_pos: dict[str, list[int]] = {}
        self.node_pos: dict[str, dict[str, list[int]]] = {}
        self.lb_pos: dict[str, list[int]] = {}
        for event in history.events:
            s = event.subject
            match event.message:
                case VipAssigned() | VipReleasing() | VipReleased():
                    self.assign_pos.setdefault(s.raw, []).append(event.pos)
                case NodeSnapshot() | NodeGone():
                    assert s.node is not None
                    self.node_pos.setdefault(s.cluster, {}).setdefault(s.node, []).append(event.pos)
                case LbProgrammed() | LbRemoved() | LbFailed():
                    self.lb_pos.setdefault(s.raw, []).append(event.pos)
                case _:
                    pass
        # The sweep's view: inputs as they stand now.
        self.nodes: dict[str, dict[str, NodeSnapshot]] = {}
        self.endpoints: dict[ServiceRef, EndpointsSnapshot] = {}
        self.assignments: dict[ServiceRef, Assignment] = {}
        self.expected: dict[ServiceRef, tuple[int, Expected | None]] = {}

    # --- the sweep ---------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        message = event.message
        affected: list[ServiceRef] = []
        match message:
            case LbProgrammed():
                self._on_programmed(event, message)
            case LbRemoved():
                self._on_removed(event, message)
            case VipAssigned() | VipReleasing():
                ref = ServiceRef(message.cluster, message.namespace, message.name)
                self.assignments[ref] = message
                affected = [ref]
            case VipReleased():
                ref = ServiceRef(message.cluster, message.namespace, message.name)
                self.assignments.pop(ref, None)
                affected = [ref]
            case VipFailed():
                pass
            case NodeSnapshot():
                self.nodes.setdefault(message.cluster, {})[message.node] = message
                affected = self._in_cluster(message.cluster)
            case NodeGone():
                self.nodes.setdefault(message.cluster, {}).pop(message.node, None)
                affected = self._in_cluster(message.cluster)
            case EndpointsSnapshot():
                ref = ServiceRef(message.cluster, message.namespace, message.name)
                self.endpoints[ref] = message
                affected = [ref]
            case _:
                pass
        if self.settle:
            for ref in affected:
                self._track(ref, event.pos)

    def finish(self) -> None:
        if self.settle:
            for ref, (start, expected) in list(self.expected.items()):
                self._close(ref, start, expected, None)

    def _in_cluster(self, cluster: str) -> list[ServiceRef]:
        return [r for r, a in self.assignments.items() if r[0] == cluster]

    # --- decisions ------------------------------------------------------------------------

    def _on_programmed(self, event: Event, lb: LbProgrammed) -> None:
        self.sink.decision("lbdriver", event)
        ref = ServiceRef(lb.cluster, lb.namespace, lb.name)
        vip_subject = service_subject("vip", *ref)
        start = self.history.window_start(event.pos, self.lag_ns)
        versions = candidates(
            self.history, self.assign_pos.get(vip_subject, []), start, event.pos, _assignment
        )
        matched = [
            a
            for a in versions
            if isinstance(a, VipAssigned)
            and a.uid == lb.uid
            and a.vips == lb.vips
            and a.ports == lb.ports
            and a.external_traffic_policy == lb.external_traffic_policy
        ]
        current = self.assignments.get(ref)
        if not matched:
            self.sink.diverge(
                "lbdriver",
                event,
                "lbdriver.assignment",
                recorded=describe(lb),
                recomputed=self._expected_text(ref, current),
                detail="its VIPs, ports or traffic policy were not assigned (within --lag)",
            )
            return
        assignment = current if current in matched else matched[-1]
        assert isinstance(assignment, VipAssigned)
        try:
            exact = members(assignment, self.nodes.get(lb.cluster, {}), self.endpoints.get(ref))
        except InvalidAssignment as exc:
            self.sink.diverge(
                "lbdriver",
                event,
                "lbdriver.invalid",
                recorded=describe(lb),
                recomputed=f"LbFailed InvalidAssignment: {exc}",
            )
            return
        if lb.members == exact:
            return
        nodes, eps = self.nodes.get(lb.cluster, {}), self.endpoints.get(ref)
        if lb.members == members(assignment, nodes, eps, drain_on_cordon=False):
            return  # an lbdriver with drain_on_cordon off
        missing, unexpected = self._bounds(event, ref, matched, start, set(lb.members))
        if not missing and not unexpected:
            return
        why = []
        if missing:
            why.append(f"missing {members_text(sorted(missing))}")
        if unexpected:
            why.append(
                f"not a member for any input within --lag: {members_text(sorted(unexpected))}"
            )
        self.sink.diverge(
            "lbdriver",
            event,
            "lbdriver.members",
            recorded=describe(lb),
            recomputed=programmed_text(
                assignment.vips,
                assignment.ports,
                assignment.external_traffic_policy,
                exact,
            ),
            detail="; ".join(why),
        )

    def _bounds(
        self,
        event: Event,
        ref: ServiceRef,
        assignments: list[VipAssigned],
        start: int,
        recorded: set[Member],
    ) -> tuple[set[Member], set[Member]]:
        """Members every input version within the window agrees on but the record lacks,
        and members the record has that no version would give."""
        history = self.history
        cluster = ref[0]
        ep_subject = service_subject("endpoints", *ref)
        endpoint_versions = candidates(
            history, history.positions(ep_subject), start, event.pos, _endpoints
        )
        certain: set[Member] = set()
        possible: set[Member] = set()
        for node, positions in self.node_pos.get(cluster, {}).items():
            versions = candidates(history, positions, start, event.pos, _node)
            outcomes: list[frozenset[Member]] = []
            for assignment in assignments:
                local = assignment.external_traffic_policy == "Local"
                for version in versions:
                    nodes = {node: version} if version is not None else {}
                    for eps in endpoint_versions if local else [None]:
                        for cordon in (True, False):
                            try:
                                given = members(assignment, nodes, eps, drain_on_cordon=cordon)
                                outcomes.append(frozenset(given))
                            except InvalidAssignment:
                                outcomes.append(frozenset())
            if outcomes:
                certain |= frozenset.intersection(*outcomes)
                possible |= frozenset.union(*outcomes)
        unexpected = recorded - possible if history.complete else set()
        return certain - recorded, unexpected

    def _on_removed(self, event: Event, lb: LbRemoved) -> None:
        self.sink.decision("lbdriver", event)
        ref = ServiceRef(lb.cluster, lb.namespace, lb.name)
        vip_subject = service_subject("vip", *ref)
        start = self.history.window_start(event.pos, self.lag_ns)
        versions = candidates(
            self.history, self.assign_pos.get(vip_subject, []), start, event.pos, _assignment
        )
        if any(
            isinstance(a, VipReleasing) and a.uid == lb.uid and a.vips == lb.vips for a in versions
        ):
            return
        self.sink.diverge(
            "lbdriver",
            event,
            "lbdriver.removed",
            recorded=describe(lb),
            recomputed=self._expected_text(ref, self.assignments.get(ref)),
            detail="no VipReleasing of these VIPs for this uid (within --lag)",
        )

    # --- settling ---------------------------------------------------------------------------

    def _expected(self, ref: ServiceRef) -> Expected | None:
        assignment = self.assignments.get(ref)
        if isinstance(assignment, VipReleasing):
            return Expected("removed", assignment.uid, assignment.vips)
        if assignment is None:
            return None
        nodes, eps = self.nodes.get(ref[0], {}), self.endpoints.get(ref)
        try:
            found = members(assignment, nodes, eps)
            kept = members(assignment, nodes, eps, drain_on_cordon=False)
        except InvalidAssignment:
            return None  # an LbFailed is due, which the sandbox cannot judge
        return Expected(
            "programmed",
            assignment.uid,
            assignment.vips,
            assignment.ports,
            assignment.external_traffic_policy,
            found,
            kept if kept != found else None,
        )

    def _expected_text(self, ref: ServiceRef, assignment: Assignment | None) -> str:
        if assignment is None:
            return "nothing (no VIP assigned)"
        if isinstance(assignment, VipReleasing):
            return f"LbRemoved {', '.join(assignment.vips)}"
        try:
            found = members(assignment, self.nodes.get(ref[0], {}), self.endpoints.get(ref))
        except InvalidAssignment as exc:
            return f"LbFailed InvalidAssignment: {exc}"
        return programmed_text(
            assignment.vips, assignment.ports, assignment.external_traffic_policy, found
        )

    def _track(self, ref: ServiceRef, pos: int) -> None:
        expected = self._expected(ref)
        previous = self.expected.get(ref)
        if previous is not None and previous[1] == expected:
            return
        if previous is not None:
            self._close(ref, previous[0], previous[1], pos)
        self.expected[ref] = (pos, expected)

    def _close(
        self, ref: ServiceRef, start: int, expected: Expected | None, end: int | None
    ) -> None:
        """The inputs of ``ref`` called for ``expected`` from ``start`` until ``end``."""
        if expected is None:
            return
        history = self.history
        until = history.clock(end) if end is not None else history.end_ns
        still = until - history.clock(start)
        if still < self.settle_ns:
            return
        positions = self.lb_pos.get(service_subject("lb", *ref), [])
        last_pos = latest(positions, end if end is not None else len(history.events))
        last = history.events[last_pos].message if last_pos is not None else None
        if expected.answered_by(last):
            return
        blamed = last_pos if last_pos is not None and last_pos > start else start
        where = f" (seq {history.events[last_pos].seq})" if last_pos is not None else ""
        self.sink.diverge(
            "lbdriver",
            history.events[blamed],
            "lbdriver.settle",
            recorded=describe(last) + where,
            recomputed=expected.text(),
            detail=f"the inputs stood still from seq {history.events[start].seq} for "
            f"{still / 1e9:.2f}s without this lb message",
        )
