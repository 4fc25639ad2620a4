"""The dashboard's HTTP API schema: every value its JSON endpoints return.

Plain frozen Structs, encoded as they are: a field renamed here is a field
renamed in the API that ``static/app.js`` reads.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from vipwire.contracts import ApplianceStatus, Member, ServicePort

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
    #: The column to sort by (one of :data:`SORTS`; "": cluster, namespace, name); every
    #: name sorts naturally (svc-2 before svc-10).
    sort: str = ""
    desc: bool = False


#: The Services table's sortable columns.
SORTS: Final[tuple[str, ...]] = (
    "name",
    "cluster",
    "state",
    "vip",
    "appliance",
    "nodes",
    "convergence",
    "reason",
    "updated",
)


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
    #: Every change the timeline still holds, newest first, each with its waterfall.
    changes: tuple[Waterfall, ...] = ()


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


class PoolCapacity(msgspec.Struct, frozen=True, kw_only=True):
    """One pool as ipam reports it, its address families added up."""

    name: str
    appliance_group: str
    #: Addresses it can hand out, and of those, held by a Service now.
    size: int
    in_use: int
    families: tuple[str, ...]


class ControlStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The last answers; ``None`` where the service did not answer (shown as unknown)."""

    pools: tuple[PoolCapacity, ...] | None = None
    appliances: tuple[ApplianceStatus, ...] | None = None
    ipam_error: str | None = None
    lbdriver_error: str | None = None
    #: Unix time of the poll these answers come from.
    polled_at: float | None = None


class NodeRow(msgspec.Struct, frozen=True, kw_only=True):
    """One node as the node view shows it: what its agent last said it applied, and when."""

    cluster: str
    node: str
    addresses: tuple[str, ...]
    ready: bool
    eligible: bool
    #: Its agent has reported at least once.
    reporting: bool
    #: The VIPs its agent last reported applied (natural order).
    vips: tuple[str, ...]
    #: The Services (``cluster/ns/name``) those VIPs belong to, as far as the bus says.
    services: tuple[str, ...]
    generation: int | None
    #: Unix time of that report (None: never).
    applied_time: float | None
    #: Seconds between that report and ``now`` (None: never).
    applied_ago_s: float | None


Level = Literal["critical", "warning"]


class Banner(msgspec.Struct, frozen=True, kw_only=True):
    """An alert shown above every page."""

    level: Level
    #: ``pool``, ``appliance``, ``consumer`` or ``convergence``.
    kind: str
    text: str
    #: A page that shows more (None: none).
    href: str | None = None
