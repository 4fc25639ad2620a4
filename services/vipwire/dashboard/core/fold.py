"""The fold: bus messages in, the dashboard's read model out.

Pure: :meth:`ReadModel.apply` takes one bus message with the time the stream
stored it and says which Services changed. No I/O, no clock, no asyncio, so
every rule here is tested with plain data; :mod:`~vipwire.dashboard.core.queries`
reads the model this builds.

A Service's state is derived from facts (what ipam assigned, what the
appliance serves, what status shows), never from the order messages arrived
in: on a restart the model is rebuilt from the last message per subject, so
it must reach the same answer from any subset that ends in the same facts.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from typing import Final, Literal, NamedTuple

import msgspec

from vipwire.contracts import (
    EndpointsSnapshot,
    LbFailed,
    LbProgrammed,
    LbRemoved,
    Member,
    Message,
    NodeApplied,
    NodeGone,
    NodeSnapshot,
    PoolsServed,
    ServiceGone,
    ServicePort,
    ServiceRef,
    ServiceRejected,
    ServiceSnapshot,
    StatusWritten,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
    summary,
    vips_text,
)
from vipwire.dashboard.core.sorting import NaturalKey, natural_key
from vipwire.dashboard.core.views import Hop, State, TimelineEntry

# A uid seen removed is remembered so that a late message of that Service
# (its status being cleared after the claim was released) does not revive it.
_TOMBSTONES: Final = 50_000
_SAMPLES: Final = 100_000
_FAMILY: Final[dict[type, str]] = {
    ServiceSnapshot: "service",
    ServiceGone: "service",
    ServiceRejected: "service",
    VipAssigned: "vip",
    VipReleasing: "vip",
    VipReleased: "vip",
    VipFailed: "vip",
    LbProgrammed: "lb",
    LbFailed: "lb",
    LbRemoved: "lb",
    StatusWritten: "status",
}
_HOP: Final[dict[str, Hop]] = {
    "service": "watcher",
    "vip": "ipam",
    "lb": "lbdriver",
    "status": "status",
}


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One bus message, as the stream delivered it."""

    message: Message
    #: When the stream stored it (Unix seconds).
    time: float
    seq: int = 0
    trace_id: str | None = None


class Change(NamedTuple):
    kind: Literal["added", "changed", "removed", "cluster"]
    #: ``cluster/ns/name`` for Services; the cluster's name for ``cluster``.
    key: str


def _ref_key(ref: ServiceRef) -> tuple[NaturalKey, NaturalKey, NaturalKey]:
    return natural_key(ref[0]), natural_key(ref[1]), natural_key(ref[2])


# --- mutable state --------------------------------------------------------------------


class NodeEntry:
    __slots__ = (
        "addresses",
        "applied",
        "applied_time",
        "eligible",
        "generation",
        "known",
        "ready",
        "reporting",
    )

    def __init__(self) -> None:
        self.addresses: tuple[str, ...] = ()
        self.eligible = True
        self.ready = True
        self.known = False  # a NodeSnapshot was seen
        self.reporting = False  # a NodeApplied was seen
        self.applied: frozenset[str] = frozenset()
        self.generation: int | None = None
        self.applied_time: float | None = None


class ServiceEntry:
    __slots__ = (
        "appliance",
        "appliance_group",
        "change_seq",
        "change_started",
        "change_trace",
        "cluster",
        "convergence_ms",
        "deleting",
        "error",
        "error_time",
        "etp",
        "first_seen",
        "haystack",
        "lb_error",
        "lb_time",
        "lb_vips",
        "members",
        "name",
        "namespace",
        "pool",
        "ports",
        "ref",
        "rejected",
        "seqs",
        "state",
        "status_vips",
        "timeline",
        "uid",
        "updated",
        "vip_error",
        "vips",
    )

    def __init__(self, key: ServiceRef, time: float, timeline: int) -> None:
        self.ref = key
        self.cluster, self.namespace, self.name = key
        self.uid = ""
        self.ports: tuple[ServicePort, ...] = ()
        self.etp = "Cluster"
        self.pool: str | None = None
        self.appliance_group: str | None = None
        self.vips: tuple[str, ...] = ()
        self.lb_vips: tuple[str, ...] = ()
        self.appliance: str | None = None
        self.members: tuple[Member, ...] = ()
        self.status_vips: tuple[str, ...] = ()
        self.deleting = False
        self.vip_error: str | None = None
        #: Why the watcher rejects the Service as it is now (InvalidService), if it does.
        self.rejected: str | None = None
        self.lb_error: str | None = None
        self.error: str | None = None
        self.error_time: float | None = None
        self.change_started: float | None = None
        self.change_trace: str | None = None
        self.change_seq = 0
        self.convergence_ms: float | None = None
        self.first_seen = time
        self.updated = time
        #: When the appliance last served its VIPs (LbProgrammed), for the lagging-agent alert.
        self.lb_time: float | None = None
        self.timeline: deque[TimelineEntry] = deque(maxlen=timeline)
        # Last stream sequence applied per subject family: a consumer re-created
        # after a reconnect delivers the last message of each subject again.
        self.seqs: dict[str, int] = {}
        self.state: State = "pending"
        self.haystack = ""
        self.refresh()

    def refresh(self) -> None:
        self.state = self._state()
        self.haystack = " ".join(
            (
                self.ref.text,
                *self.vips,
                self.appliance or "",
                self.pool or "",
            )
        ).lower()

    def _state(self) -> State:
        if self.deleting:
            return "deleting"
        if self.rejected is not None or self.vip_error is not None or self.lb_error is not None:
            return "failed"
        if self.vips and set(self.lb_vips) == set(self.vips):
            if set(self.status_vips) == set(self.vips):
                return "ready"
            return "programmed"
        if self.vips:
            return "assigned"
        return "pending"

    def fail(self, text: str, time: float) -> None:
        self.error, self.error_time = text, time


# --- the model ------------------------------------------------------------------------


class ReadModel:
    """Services, nodes and recent convergence, from bus messages only.

    The public attributes are what :mod:`~vipwire.dashboard.core.queries` reads;
    only :meth:`apply` writes them.
    """

    def __init__(self, *, timeline_events: int = 50, max_services: int = 100_000) -> None:
        self.timeline_events = timeline_events
        self.max_services = max_services
        self.services: dict[ServiceRef, ServiceEntry] = {}
        #: cluster → node name → what the bus said about it.
        self.nodes: dict[str, dict[str, NodeEntry]] = {}
        #: How many Services each namespace holds (the namespace filter's choices).
        self.namespaces: Counter[str] = Counter()
        #: (stream time, convergence ms) of recent changes.
        self.samples: deque[tuple[float, float]] = deque(maxlen=_SAMPLES)
        self.dropped = 0
        self.last_event: float | None = None
        self._vip_owner: dict[tuple[str, str], ServiceRef] = {}
        self._gone: OrderedDict[str, None] = OrderedDict()
        self._order: list[ServiceRef] | None = None
        #: Each Service's natural sort key, made once when it comes.
        self.sort_keys: dict[ServiceRef, tuple[NaturalKey, NaturalKey, NaturalKey]] = {}

    def __len__(self) -> int:
        return len(self.services)

    # --- applying messages ---------------------------------------------------------

    def apply(self, event: Event) -> list[Change]:
        """Take one message into the model; return what changed."""
        m = event.message
        self.last_event = (
            event.time if self.last_event is None else max(self.last_event, event.time)
        )
        if isinstance(m, NodeSnapshot | NodeGone | NodeApplied):
            return self._apply_node(event, m)
        if isinstance(m, EndpointsSnapshot | PoolsServed):
            # Not subscribed to: members already say where traffic goes; pools are
            # no Service's (replay hands every family).
            return []
        key = ServiceRef(m.cluster, m.namespace, m.name)
        uid: str = m.uid
        if uid in self._gone:
            return []
        view = self.services.get(key)
        added = False
        if view is not None and view.uid and uid != view.uid:
            if not isinstance(m, ServiceSnapshot):
                return []  # a message about the Service's previous incarnation
            # Re-created under the same name: a new Service that starts over.
            self._remove(key, view, tombstone=True)
            view = None
        if view is None:
            if len(self.services) >= self.max_services:
                self.dropped += 1
                return []
            view = self._add(key, event.time)
            added = True
        view.uid = view.uid or uid
        family = _FAMILY[type(m)]
        if event.seq and event.seq <= view.seqs.get(family, 0):
            return []
        view.seqs[family] = event.seq
        view.updated = max(view.updated, event.time)
        removed = self._apply_service(view, event)
        if removed:
            self._remove(key, view, tombstone=True)
            return [] if added else [Change("removed", key.text)]
        view.refresh()
        self._index_vips(key, view)
        return [Change("added" if added else "changed", key.text)]

    def _add(self, key: ServiceRef, time: float) -> ServiceEntry:
        view = ServiceEntry(key, time, self.timeline_events)
        self.services[key] = view
        self.sort_keys[key] = _ref_key(key)
        self.namespaces[key[1]] += 1
        self._order = None
        return view

    def _remove(self, key: ServiceRef, view: ServiceEntry, *, tombstone: bool) -> None:
        self.services.pop(key, None)
        self.sort_keys.pop(key, None)
        self.namespaces[key[1]] -= 1
        if self.namespaces[key[1]] <= 0:
            del self.namespaces[key[1]]
        for vip in (*view.vips, *view.lb_vips):
            if self._vip_owner.get((key[0], vip)) == key:
                del self._vip_owner[(key[0], vip)]
        self._order = None
        if tombstone and view.uid:
            self._gone[view.uid] = None
            while len(self._gone) > _TOMBSTONES:
                self._gone.popitem(last=False)

    def _index_vips(self, key: ServiceRef, view: ServiceEntry) -> None:
        for vip in (*view.vips, *view.lb_vips):
            self._vip_owner[(key[0], vip)] = key

    def _note(self, view: ServiceEntry, event: Event, hop: Hop, text: str) -> None:
        tag = type(event.message).__struct_config__.tag
        view.timeline.append(
            TimelineEntry(
                time=event.time,
                hop=hop,
                kind=str(tag),
                summary=text,
                trace_id=event.trace_id,
                seq=event.seq,
            )
        )

    def _apply_service(self, view: ServiceEntry, event: Event) -> bool:
        """Update one Service; True when it is gone for good."""
        m = event.message
        self._note(view, event, _HOP[_FAMILY[type(m)]], summary(m))
        match m:
            case ServiceSnapshot():
                view.ports = m.ports
                view.etp = m.external_traffic_policy
                view.pool = m.pool or view.pool
                view.deleting = m.deleting
                view.rejected = None
                if not m.deleting:
                    view.change_started = event.time
                    view.change_trace = event.trace_id
                    view.change_seq = event.seq
            case ServiceGone():
                view.deleting = True
            case ServiceRejected():
                # Not an end: it keeps what its last valid snapshot asked, if any.
                view.rejected = f"{m.reason}: {m.message}"
                view.fail(view.rejected, event.time)
                view.change_trace = event.trace_id or m.trace_id
            case VipAssigned():
                view.vips = m.vips
                view.pool = m.pool
                view.appliance_group = m.appliance_group
                view.ports = m.ports or view.ports
                view.etp = m.external_traffic_policy
                view.vip_error = None
            case VipFailed():
                view.vip_error = f"{m.reason}: {m.message}"
                view.fail(view.vip_error, event.time)
            case VipReleasing():
                view.deleting = True
            case VipReleased():
                return True
            case LbProgrammed():
                view.lb_vips = m.vips
                view.lb_time = event.time
                view.appliance = m.appliance
                view.members = m.members
                view.lb_error = None
            case LbFailed():
                view.appliance = m.appliance
                what = "removing from" if m.removing else "on"
                view.lb_error = f"{m.reason} {what} {m.appliance}: {m.message}"
                view.fail(view.lb_error, event.time)
            case LbRemoved():
                view.lb_vips = ()
                view.members = ()
                view.lb_error = None
            case StatusWritten():
                view.status_vips = m.vips
                started = view.change_started
                if m.vips and started is not None and event.time >= started:
                    view.convergence_ms = (event.time - started) * 1000
                    self.samples.append((event.time, view.convergence_ms))
                    view.change_started = None
            case _:
                pass
        return False

    def _apply_node(self, event: Event, m: NodeSnapshot | NodeGone | NodeApplied) -> list[Change]:
        nodes = self.nodes.setdefault(m.cluster, {})
        changes = [Change("cluster", m.cluster)]
        if isinstance(m, NodeGone):
            old = nodes.pop(m.node, None)
            if old is not None:
                changes += self._applied_changed(event, m.cluster, m.node, old.applied, frozenset())
            return changes
        node = nodes.get(m.node)
        if node is None:
            node = nodes[m.node] = NodeEntry()
        if isinstance(m, NodeSnapshot):
            node.known = True
            node.addresses, node.eligible, node.ready = m.addresses, m.eligible, m.ready
            return changes
        if node.generation is not None and m.generation < node.generation:
            return []  # an older apply overtaken by a newer one
        before, node.applied = node.applied, frozenset(m.vips)
        node.generation, node.applied_time, node.reporting = m.generation, event.time, True
        return changes + self._applied_changed(event, m.cluster, m.node, before, node.applied)

    def _applied_changed(
        self, event: Event, cluster: str, node: str, before: frozenset[str], after: frozenset[str]
    ) -> list[Change]:
        """Note on each affected Service's timeline that a node took up or dropped its VIP."""
        touched: dict[ServiceRef, list[str]] = {}
        for vip in after - before:
            owner = self._vip_owner.get((cluster, vip))
            if owner is not None:
                touched.setdefault(owner, []).append(f"+{vip}")
        for vip in before - after:
            owner = self._vip_owner.get((cluster, vip))
            if owner is not None:
                touched.setdefault(owner, []).append(f"-{vip}")
        changes: list[Change] = []
        for key, diffs in touched.items():
            view = self.services.get(key)
            if view is None:
                continue
            added = [d[1:] for d in diffs if d.startswith("+")]
            removed = [d[1:] for d in diffs if d.startswith("-")]
            parts = []
            if added:
                parts.append(f"serves {vips_text(added)}")
            if removed:
                parts.append(f"withdrew {vips_text(removed)}")
            view.timeline.append(
                TimelineEntry(
                    time=event.time,
                    hop="nodeagent",
                    kind="node-applied",
                    summary=f"{node} {' and '.join(parts)}",
                    trace_id=event.trace_id,
                    seq=event.seq,
                    node=node,
                )
            )
            view.updated = max(view.updated, event.time)
            changes.append(Change("changed", key.text))
        return changes

    # --- reading ---------------------------------------------------------------------

    def ordered(self) -> list[ServiceRef]:
        """Every Service's key, sorted (cached until a Service comes or goes)."""
        if self._order is None:
            self._order = sorted(self.services, key=self.sort_keys.__getitem__)
        return self._order

    def owner(self, cluster: str, vip: str) -> ServiceRef | None:
        """The Service that holds ``vip`` in ``cluster``, as far as the bus says."""
        return self._vip_owner.get((cluster, vip))

    def keys(self) -> Iterator[ServiceRef]:
        return iter(self.ordered())
