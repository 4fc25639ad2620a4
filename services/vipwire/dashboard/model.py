"""The dashboard's read model: every Service as the bus has told it, and nothing else.

Pure: :meth:`ReadModel.apply` takes one bus message with the time the stream
stored it and says which Services changed; queries take ``now`` as an argument.
No I/O, no clock, no asyncio, so every rule here is tested with plain data.

A Service's state is derived from facts (what ipam assigned, what the
appliance serves, what status shows), never from the order messages arrived
in: on a restart the model is rebuilt from the last message per subject, so
it must reach the same answer from any subset that ends in the same facts.
"""

from __future__ import annotations

import math
import re
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
    ServiceGone,
    ServicePort,
    ServiceSnapshot,
    StatusWritten,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
)

State = Literal["pending", "assigned", "programmed", "ready", "failed", "deleting"]
STATES: Final[tuple[State, ...]] = (
    "pending",
    "assigned",
    "programmed",
    "ready",
    "failed",
    "deleting",
)
Hop = Literal["watcher", "ipam", "lbdriver", "nodeagent", "status"]
HOPS: Final[tuple[Hop, ...]] = ("watcher", "ipam", "lbdriver", "nodeagent", "status")

Key = tuple[str, str, str]  # cluster, namespace, name

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
# A uid seen removed is remembered so that a late message of that Service
# (its status being cleared after the claim was released) does not revive it.
_TOMBSTONES: Final = 50_000
_SAMPLES: Final = 100_000
_FAMILY: Final[dict[type, str]] = {
    ServiceSnapshot: "service",
    ServiceGone: "service",
    VipAssigned: "vip",
    VipReleasing: "vip",
    VipReleased: "vip",
    VipFailed: "vip",
    LbProgrammed: "lb",
    LbFailed: "lb",
    LbRemoved: "lb",
    StatusWritten: "status",
}


def trace_id_from(headers: Mapping[str, str]) -> str | None:
    """The trace id of a W3C ``traceparent`` header, or None."""
    match = _TRACEPARENT.match(headers.get("traceparent", "").strip().lower())
    if match is None or set(match.group(1)) == {"0"}:
        return None
    return match.group(1)


def key_text(key: Key) -> str:
    return "/".join(key)


def parse_key(text: str) -> Key | None:
    parts = text.split("/")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (as ``vipwire up`` reports)."""
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


# --- input and output values ----------------------------------------------------------


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


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    time: float
    hop: Hop
    kind: str
    summary: str
    trace_id: str | None = None
    seq: int = 0
    node: str | None = None


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the Services table."""

    key: str
    cluster: str
    namespace: str
    name: str
    state: State
    vips: tuple[str, ...]
    pool: str | None
    appliance: str | None
    members: int
    nodes_applied: int
    nodes_total: int
    convergence_ms: float | None
    error: str | None
    updated: float


class Facets(msgspec.Struct, frozen=True, kw_only=True):
    clusters: tuple[str, ...]
    namespaces: tuple[str, ...]
    states: dict[str, int]


class Page(msgspec.Struct, frozen=True, kw_only=True):
    rows: tuple[Row, ...]
    total: int
    matched: int
    page: int
    per_page: int
    pages: int
    facets: Facets


class Query(msgspec.Struct, frozen=True, kw_only=True):
    """A Services table request: every filter optional, pages from 1."""

    q: str = ""
    cluster: str = ""
    namespace: str = ""
    state: str = ""
    page: int = 1
    per_page: int = 50


class WaterfallBar(msgspec.Struct, frozen=True, kw_only=True):
    hop: Hop
    label: str
    #: Milliseconds from the start of the change.
    start_ms: float
    end_ms: float
    detail: str = ""
    trace_id: str | None = None
    #: The hop reported a failure (VipFailed, LbFailed): the change stopped there.
    failed: bool = False


class Waterfall(msgspec.Struct, frozen=True, kw_only=True):
    """The last change of a Service, hop by hop, placed by the stream's timestamps."""

    started: float
    trace_id: str | None
    total_ms: float
    complete: bool
    bars: tuple[WaterfallBar, ...]


class NodeState(msgspec.Struct, frozen=True, kw_only=True):
    node: str
    member: bool
    applied: bool
    generation: int | None


class Detail(msgspec.Struct, frozen=True, kw_only=True):
    row: Row
    uid: str
    ports: tuple[ServicePort, ...]
    appliance_group: str | None
    member_list: tuple[Member, ...]
    status_vips: tuple[str, ...]
    external_traffic_policy: str
    first_seen: float
    error_time: float | None
    nodes: tuple[NodeState, ...]
    #: Newest first.
    timeline: tuple[TimelineEntry, ...]
    waterfall: Waterfall | None


class ClusterSummary(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    services: int
    states: dict[str, int]
    nodes: int
    nodes_ready: int
    nodes_eligible: int
    agents: int


class PoolUse(msgspec.Struct, frozen=True, kw_only=True):
    """A pool as the bus shows it: the VIPs its Services hold now."""

    name: str
    appliance_group: str
    services: int
    vips: int


class ApplianceUse(msgspec.Struct, frozen=True, kw_only=True):
    """An appliance as the bus shows it."""

    name: str
    services: int
    virtual_servers: int
    failing: int
    last_error: str | None
    last_error_time: float | None


class Convergence(msgspec.Struct, frozen=True, kw_only=True):
    """Snapshot published → status written, over a window of recent changes."""

    window_s: float
    count: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


class Overview(msgspec.Struct, frozen=True, kw_only=True):
    services: int
    dropped: int
    states: dict[str, int]
    clusters: tuple[ClusterSummary, ...]
    pools: tuple[PoolUse, ...]
    appliances: tuple[ApplianceUse, ...]
    convergence: Convergence
    last_event: float | None


# --- mutable state --------------------------------------------------------------------


class _Node:
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


class _Service:
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
        "lb_vips",
        "members",
        "name",
        "namespace",
        "pool",
        "ports",
        "seqs",
        "state",
        "status_vips",
        "timeline",
        "uid",
        "updated",
        "vip_error",
        "vips",
    )

    def __init__(self, key: Key, time: float, timeline: int) -> None:
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
        self.lb_error: str | None = None
        self.error: str | None = None
        self.error_time: float | None = None
        self.change_started: float | None = None
        self.change_trace: str | None = None
        self.change_seq = 0
        self.convergence_ms: float | None = None
        self.first_seen = time
        self.updated = time
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
                f"{self.cluster}/{self.namespace}/{self.name}",
                *self.vips,
                self.appliance or "",
                self.pool or "",
            )
        ).lower()

    def _state(self) -> State:
        if self.deleting:
            return "deleting"
        if self.vip_error is not None or self.lb_error is not None:
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
    """Services, nodes and recent convergence, from bus messages only."""

    def __init__(self, *, timeline_events: int = 50, max_services: int = 100_000) -> None:
        self.timeline_events = timeline_events
        self.max_services = max_services
        self._services: dict[Key, _Service] = {}
        self._nodes: dict[str, dict[str, _Node]] = {}
        self._vip_owner: dict[tuple[str, str], Key] = {}
        self._gone: OrderedDict[str, None] = OrderedDict()
        self._order: list[Key] | None = None
        self._namespaces: Counter[str] = Counter()
        self._samples: deque[tuple[float, float]] = deque(maxlen=_SAMPLES)
        self.dropped = 0
        self.last_event: float | None = None

    def __len__(self) -> int:
        return len(self._services)

    # --- applying messages ---------------------------------------------------------

    def apply(self, event: Event) -> list[Change]:
        """Take one message into the model; return what changed."""
        m = event.message
        self.last_event = (
            event.time if self.last_event is None else max(self.last_event, event.time)
        )
        if isinstance(m, NodeSnapshot | NodeGone | NodeApplied):
            return self._apply_node(event, m)
        if isinstance(m, EndpointsSnapshot):
            return []  # not subscribed to: members already say where traffic goes
        key: Key = (m.cluster, m.namespace, m.name)
        uid: str = m.uid
        if uid in self._gone:
            return []
        view = self._services.get(key)
        added = False
        if view is not None and view.uid and uid != view.uid:
            if not isinstance(m, ServiceSnapshot):
                return []  # a message about the Service's previous incarnation
            # Re-created under the same name: a new Service that starts over.
            self._remove(key, view, tombstone=True)
            view = None
        if view is None:
            if len(self._services) >= self.max_services:
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
            return [] if added else [Change("removed", key_text(key))]
        view.refresh()
        self._index_vips(key, view)
        return [Change("added" if added else "changed", key_text(key))]

    def _add(self, key: Key, time: float) -> _Service:
        view = _Service(key, time, self.timeline_events)
        self._services[key] = view
        self._namespaces[key[1]] += 1
        self._order = None
        return view

    def _remove(self, key: Key, view: _Service, *, tombstone: bool) -> None:
        self._services.pop(key, None)
        self._namespaces[key[1]] -= 1
        if self._namespaces[key[1]] <= 0:
            del self._namespaces[key[1]]
        for vip in (*view.vips, *view.lb_vips):
            if self._vip_owner.get((key[0], vip)) == key:
                del self._vip_owner[(key[0], vip)]
        self._order = None
        if tombstone and view.uid:
            self._gone[view.uid] = None
            while len(self._gone) > _TOMBSTONES:
                self._gone.popitem(last=False)

    def _index_vips(self, key: Key, view: _Service) -> None:
        for vip in (*view.vips, *view.lb_vips):
            self._vip_owner[(key[0], vip)] = key

    def _note(self, view: _Service, event: Event, hop: Hop, summary: str) -> None:
        tag = type(event.message).__struct_config__.tag
        view.timeline.append(
            TimelineEntry(
                time=event.time,
                hop=hop,
                kind=str(tag),
                summary=summary,
                trace_id=event.trace_id,
                seq=event.seq,
            )
        )

    def _apply_service(self, view: _Service, event: Event) -> bool:
        """Update one Service; True when it is gone for good."""
        m = event.message
        match m:
            case ServiceSnapshot():
                view.ports = m.ports
                view.etp = m.external_traffic_policy
                view.pool = m.pool or view.pool
                view.deleting = m.deleting
                if m.deleting:
                    rv = m.resource_version
                    self._note(view, event, "watcher", f"deleting (resourceVersion {rv})")
                else:
                    view.change_started = event.time
                    view.change_trace = event.trace_id
                    view.change_seq = event.seq
                    self._note(view, event, "watcher", _snapshot_summary(m))
            case ServiceGone():
                view.deleting = True
                self._note(view, event, "watcher", "gone from the API server")
            case VipAssigned():
                view.vips = m.vips
                view.pool = m.pool
                view.appliance_group = m.appliance_group
                view.ports = m.ports or view.ports
                view.etp = m.external_traffic_policy
                view.vip_error = None
                self._note(
                    view,
                    event,
                    "ipam",
                    f"assigned {_list(m.vips)} from pool {m.pool} (group {m.appliance_group})",
                )
            case VipFailed():
                view.vip_error = f"{m.reason}: {m.message}"
                view.fail(view.vip_error, event.time)
                self._note(view, event, "ipam", view.vip_error)
            case VipReleasing():
                view.deleting = True
                self._note(view, event, "ipam", f"releasing {_list(m.vips)}")
            case VipReleased():
                self._note(view, event, "ipam", f"released {_list(m.vips)}")
                return True
            case LbProgrammed():
                view.lb_vips = m.vips
                view.appliance = m.appliance
                view.members = m.members
                view.lb_error = None
                servers = len(m.vips) * len(m.ports)
                self._note(
                    view,
                    event,
                    "lbdriver",
                    f"programmed on {m.appliance}: {servers} virtual server"
                    f"{'' if servers == 1 else 's'}, {len(m.members)} member"
                    f"{'' if len(m.members) == 1 else 's'}",
                )
            case LbFailed():
                view.appliance = m.appliance
                what = "removing from" if m.removing else "on"
                view.lb_error = f"{m.reason} {what} {m.appliance}: {m.message}"
                view.fail(view.lb_error, event.time)
                self._note(view, event, "lbdriver", view.lb_error)
            case LbRemoved():
                view.lb_vips = ()
                view.members = ()
                view.lb_error = None
                self._note(view, event, "lbdriver", f"removed from {m.appliance}")
            case StatusWritten():
                view.status_vips = m.vips
                if m.vips:
                    self._note(view, event, "status", f"status ingress {_list(m.vips)}")
                    if view.change_started is not None and event.time >= view.change_started:
                        view.convergence_ms = (event.time - view.change_started) * 1000
                        self._samples.append((event.time, view.convergence_ms))
                        view.change_started = None
                else:
                    self._note(view, event, "status", "status cleared")
            case _:
                pass
        return False

    def _apply_node(self, event: Event, m: NodeSnapshot | NodeGone | NodeApplied) -> list[Change]:
        nodes = self._nodes.setdefault(m.cluster, {})
        changes = [Change("cluster", m.cluster)]
        if isinstance(m, NodeGone):
            old = nodes.pop(m.node, None)
            if old is not None:
                changes += self._applied_changed(event, m.cluster, m.node, old.applied, frozenset())
            return changes
        node = nodes.get(m.node)
        if node is None:
            node = nodes[m.node] = _Node()
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
        touched: dict[Key, list[str]] = {}
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
            view = self._services.get(key)
            if view is None:
                continue
            added = [d[1:] for d in diffs if d.startswith("+")]
            removed = [d[1:] for d in diffs if d.startswith("-")]
            parts = []
            if added:
                parts.append(f"serves {_list(added)}")
            if removed:
                parts.append(f"withdrew {_list(removed)}")
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
            changes.append(Change("changed", key_text(key)))
        return changes

    # --- queries -----------------------------------------------------------------

    def _sorted(self) -> list[Key]:
        if self._order is None:
            self._order = sorted(self._services)
        return self._order

    def _applied_counts(self, view: _Service) -> tuple[int, int]:
        nodes = self._nodes.get(view.cluster)
        if not nodes:
            return 0, 0
        reporting = [n for n in nodes.values() if n.reporting]
        vips = view.lb_vips
        if not vips:
            return 0, len(reporting)
        return sum(1 for n in reporting if n.applied.issuperset(vips)), len(reporting)

    def _row(self, key: Key, view: _Service) -> Row:
        applied, total = self._applied_counts(view)
        return Row(
            key=key_text(key),
            cluster=view.cluster,
            namespace=view.namespace,
            name=view.name,
            state=view.state,
            vips=view.vips or view.lb_vips,
            pool=view.pool,
            appliance=view.appliance,
            members=len(view.members),
            nodes_applied=applied,
            nodes_total=total,
            convergence_ms=view.convergence_ms,
            error=view.error if view.state == "failed" else None,
            updated=view.updated,
        )

    def row(self, key: Key) -> Row | None:
        view = self._services.get(key)
        return None if view is None else self._row(key, view)

    def query(self, query: Query) -> Page:
        """One page of the Services table, filtered on the server."""
        needle = query.q.strip().lower()
        per_page = max(1, min(query.per_page, 500))
        matched: list[Key] = []
        states: Counter[str] = Counter()
        services = self._services
        for key in self._sorted():
            view = services[key]
            if query.cluster and view.cluster != query.cluster:
                continue
            if query.namespace and view.namespace != query.namespace:
                continue
            if needle and needle not in view.haystack:
                continue
            states[view.state] += 1
            if query.state and view.state != query.state:
                continue
            matched.append(key)
        pages = max(1, math.ceil(len(matched) / per_page))
        page = max(1, min(query.page, pages))
        chosen = matched[(page - 1) * per_page : page * per_page]
        return Page(
            rows=tuple(self._row(key, services[key]) for key in chosen),
            total=len(services),
            matched=len(matched),
            page=page,
            per_page=per_page,
            pages=pages,
            facets=Facets(
                clusters=tuple(sorted(self._clusters())),
                namespaces=tuple(sorted(self._namespaces)),
                states={s: states.get(s, 0) for s in STATES},
            ),
        )

    def _clusters(self) -> set[str]:
        return {key[0] for key in self._services} | set(self._nodes)

    def detail(self, key: Key) -> Detail | None:
        view = self._services.get(key)
        if view is None:
            return None
        members = {m.node for m in view.members}
        nodes = self._nodes.get(view.cluster, {})
        node_states = tuple(
            NodeState(
                node=name,
                member=name in members,
                applied=bool(view.lb_vips) and node.applied.issuperset(view.lb_vips),
                generation=node.generation,
            )
            for name, node in sorted(nodes.items())
        )
        return Detail(
            row=self._row(key, view),
            uid=view.uid,
            ports=view.ports,
            appliance_group=view.appliance_group,
            member_list=view.members,
            status_vips=view.status_vips,
            external_traffic_policy=view.etp,
            first_seen=view.first_seen,
            error_time=view.error_time,
            nodes=node_states,
            timeline=tuple(reversed(view.timeline)),
            waterfall=waterfall(view.timeline),
        )

    def convergence(self, now: float, window_s: float) -> Convergence:
        since = now - window_s
        values = sorted(ms for t, ms in self._samples if t >= since)
        if not values:
            return Convergence(window_s=window_s, count=0, p50_ms=None, p99_ms=None, max_ms=None)
        return Convergence(
            window_s=window_s,
            count=len(values),
            p50_ms=percentile(values, 50),
            p99_ms=percentile(values, 99),
            max_ms=values[-1],
        )

    def overview(self, now: float, window_s: float) -> Overview:
        states: Counter[str] = Counter()
        per_cluster: dict[str, Counter[str]] = {c: Counter() for c in self._clusters()}
        pools: dict[tuple[str, str], list[int]] = {}
        for view in self._services.values():
            states[view.state] += 1
            per_cluster[view.cluster][view.state] += 1
            if view.pool is not None and view.vips:
                use = pools.setdefault((view.pool, view.appliance_group or ""), [0, 0])
                use[0] += 1
                use[1] += len(view.vips)
        clusters = []
        for name in sorted(per_cluster):
            nodes = self._nodes.get(name, {})
            known = [n for n in nodes.values() if n.known]
            clusters.append(
                ClusterSummary(
                    name=name,
                    services=sum(per_cluster[name].values()),
                    states={s: per_cluster[name].get(s, 0) for s in STATES},
                    nodes=len(known),
                    nodes_ready=sum(1 for n in known if n.ready),
                    nodes_eligible=sum(1 for n in known if n.eligible and n.ready),
                    agents=sum(1 for n in nodes.values() if n.reporting),
                )
            )
        return Overview(
            services=len(self._services),
            dropped=self.dropped,
            states={s: states.get(s, 0) for s in STATES},
            clusters=tuple(clusters),
            pools=tuple(
                PoolUse(name=pool, appliance_group=group, services=use[0], vips=use[1])
                for (pool, group), use in sorted(pools.items())
            ),
            appliances=self.appliances(),
            convergence=self.convergence(now, window_s),
            last_event=self.last_event,
        )

    def appliances(self) -> tuple[ApplianceUse, ...]:
        found: dict[str, list[_Service]] = {}
        for view in self._services.values():
            if view.appliance is not None:
                found.setdefault(view.appliance, []).append(view)
        result = []
        for name, views in sorted(found.items()):
            failing = [v for v in views if v.lb_error is not None]
            latest = max(failing, key=lambda v: v.error_time or 0.0, default=None)
            result.append(
                ApplianceUse(
                    name=name,
                    services=sum(1 for v in views if v.lb_vips),
                    virtual_servers=sum(len(v.lb_vips) * len(v.ports) for v in views),
                    failing=len(failing),
                    last_error=latest.lb_error if latest is not None else None,
                    last_error_time=latest.error_time if latest is not None else None,
                )
            )
        return tuple(result)

    def keys(self) -> Iterator[Key]:
        return iter(self._sorted())


# --- the waterfall ----------------------------------------------------------------------


def waterfall(timeline: Iterable[TimelineEntry]) -> Waterfall | None:
    """The hops of the last change, from its snapshot to the status write.

    Each bar runs from the message that caused the hop to the one the hop
    published, so its length is the time that hop (and the bus in front of it)
    took. Node agents get one bar from the appliance being programmed to the
    last node that took the VIP up.
    """
    entries = list(timeline)
    start_index = None
    for i in range(len(entries) - 1, -1, -1):
        entry = entries[i]
        if entry.hop == "watcher" and entry.kind == "service":
            start_index = i
            break
    if start_index is None:
        return None
    start = entries[start_index]
    after = entries[start_index + 1 :]
    t0 = start.time

    def ms(t: float) -> float:
        return max(0.0, (t - t0) * 1000)

    bars = [
        WaterfallBar(
            hop="watcher",
            label="snapshot published",
            start_ms=0.0,
            end_ms=0.0,
            detail=start.summary,
            trace_id=start.trace_id,
        )
    ]
    ipam = next((e for e in after if e.hop == "ipam"), None)
    if ipam is None:
        return _done(start, bars, complete=False)
    bars.append(_bar(ipam, "ipam", 0.0, ms(ipam.time)))
    lb = next((e for e in after if e.hop == "lbdriver" and e.time >= ipam.time), None)
    if lb is None:
        return _done(start, bars, complete=False)
    bars.append(_bar(lb, "lbdriver", ms(ipam.time), ms(lb.time)))
    applies = [e for e in after if e.hop == "nodeagent" and e.time >= lb.time]
    if applies:
        last = max(applies, key=lambda e: e.time)
        nodes = sorted({e.node or "?" for e in applies})
        bars.append(
            WaterfallBar(
                hop="nodeagent",
                label=f"{len(nodes)} node agent{'' if len(nodes) == 1 else 's'}",
                start_ms=ms(lb.time),
                end_ms=ms(last.time),
                detail=", ".join(nodes),
                trace_id=last.trace_id,
            )
        )
    status = next((e for e in after if e.hop == "status" and e.time >= lb.time), None)
    if status is not None:
        bars.append(_bar(status, "status", ms(lb.time), ms(status.time)))
    return _done(start, bars, complete=status is not None)


def _bar(entry: TimelineEntry, hop: Hop, start_ms: float, end_ms: float) -> WaterfallBar:
    return WaterfallBar(
        hop=hop,
        label=entry.kind,
        start_ms=start_ms,
        end_ms=max(start_ms, end_ms),
        detail=entry.summary,
        trace_id=entry.trace_id,
        failed=entry.kind.endswith("-failed"),
    )


def _done(start: TimelineEntry, bars: list[WaterfallBar], *, complete: bool) -> Waterfall:
    return Waterfall(
        started=start.time,
        trace_id=start.trace_id,
        total_ms=max(b.end_ms for b in bars),
        complete=complete,
        bars=tuple(bars),
    )


def _list(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "nothing"


def _snapshot_summary(m: ServiceSnapshot) -> str:
    ports = ", ".join(f"{p.port}/{p.protocol}" for p in m.ports) or "no ports"
    parts = [f"snapshot (resourceVersion {m.resource_version}): {ports}"]
    if m.external_traffic_policy == "Local":
        parts.append("externalTrafficPolicy Local")
    if m.pool:
        parts.append(f"pool {m.pool}")
    if m.requested_ips:
        parts.append(f"asks for {_list(m.requested_ips)}")
    return "; ".join(parts)
