"""Queries over the read model: what the JSON API returns, computed on request.

Pure: each takes the :class:`~vipwire.dashboard.core.fold.ReadModel` (and
``now`` where a time window matters) and returns values of
:mod:`~vipwire.dashboard.core.views`; none of them changes the model.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Final

from vipwire.contracts import ServiceRef
from vipwire.dashboard.core.fold import ReadModel, ServiceEntry
from vipwire.dashboard.core.sorting import natural_key
from vipwire.dashboard.core.views import (
    SORTS,
    STATES,
    ApplianceUse,
    ClusterSummary,
    Convergence,
    Detail,
    Facets,
    NodeRow,
    NodeState,
    Overview,
    Page,
    PoolUse,
    Query,
    Row,
)
from vipwire.dashboard.core.waterfall import waterfall, waterfalls
from vipwire.metrics import percentile


def _applied_counts(model: ReadModel, view: ServiceEntry) -> tuple[int, int]:
    nodes = model.nodes.get(view.cluster)
    if not nodes:
        return 0, 0
    reporting = [n for n in nodes.values() if n.reporting]
    vips = view.lb_vips
    if not vips:
        return 0, len(reporting)
    return sum(1 for n in reporting if n.applied.issuperset(vips)), len(reporting)


def _row(model: ReadModel, view: ServiceEntry) -> Row:
    applied, total = _applied_counts(model, view)
    return Row(
        key=view.ref.text,
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


def row(model: ReadModel, key: ServiceRef) -> Row | None:
    """One line of the Services table, or None for a Service the model does not hold."""
    view = model.services.get(key)
    return None if view is None else _row(model, view)


def page(model: ReadModel, query: Query) -> Page:
    """One page of the Services table, filtered on the server."""
    needle = query.q.strip().lower()
    per_page = max(1, min(query.per_page, 500))
    matched: list[ServiceRef] = []
    states: Counter[str] = Counter()
    services = model.services
    for key in model.ordered():
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
    if query.sort:
        matched = _sorted(model, matched, query.sort, desc=query.desc)
    elif query.desc:
        matched.reverse()
    pages = max(1, math.ceil(len(matched) / per_page))
    number = max(1, min(query.page, pages))
    chosen = matched[(number - 1) * per_page : number * per_page]
    return Page(
        rows=tuple(_row(model, services[key]) for key in chosen),
        total=len(services),
        matched=len(matched),
        page=number,
        per_page=per_page,
        pages=pages,
        facets=Facets(
            clusters=tuple(sorted(_clusters(model))),
            namespaces=tuple(sorted(model.namespaces)),
            states={s: states.get(s, 0) for s in STATES},
        ),
    )


#: "state" sorts problems first: failed, then the stages of a change, then ready.
_STATE_ORDER: Final = {
    s: i for i, s in enumerate(("failed", "pending", "assigned", "programmed", "deleting", "ready"))
}


def _sort_value(model: ReadModel, view: ServiceEntry, sort: str) -> Any:
    """The value ``sort`` orders by; None sorts last either way."""
    if sort == "name":
        return model.sort_keys[view.ref][2]
    if sort == "cluster":
        return model.sort_keys[view.ref][0]
    if sort == "state":
        return _STATE_ORDER.get(view.state, 99)
    if sort == "vip":
        vips = view.vips or view.lb_vips
        return natural_key(vips[0]) if vips else None
    if sort == "appliance":
        return None if view.appliance is None else natural_key(view.appliance)
    if sort == "nodes":
        applied, total = _applied_counts(model, view)
        return None if not total else (applied / total, applied)
    if sort == "convergence":
        return view.convergence_ms
    if sort == "reason":
        return natural_key(view.error) if view.state == "failed" and view.error else None
    if sort == "updated":
        return view.updated
    raise ValueError(f"cannot sort by {sort!r}: use one of {', '.join(SORTS)}")


def _sorted(model: ReadModel, keys: list[ServiceRef], sort: str, *, desc: bool) -> list[ServiceRef]:
    """``keys`` by ``sort`` (ties: cluster/namespace/name, naturally), values missing last."""
    services = model.services
    valued: list[tuple[Any, ServiceRef]] = []
    missing: list[ServiceRef] = []
    for key in keys:  # already in natural key order: a stable sort keeps it for ties
        value = _sort_value(model, services[key], sort)
        if value is None:
            missing.append(key)
        else:
            valued.append((value, key))
    # Stable either way (reverse=True keeps ties in their order): ties stay in key order.
    valued.sort(key=lambda item: item[0], reverse=desc)
    return [key for _, key in valued] + missing


def nodes(model: ReadModel, now: float, cluster: str = "") -> tuple[NodeRow, ...]:
    """Every node the bus named: which VIPs its agent applied, for which Services, how long ago."""
    rows = []
    for name in sorted(model.nodes, key=natural_key):
        if cluster and name != cluster:
            continue
        for node_name, node in sorted(model.nodes[name].items(), key=lambda i: natural_key(i[0])):
            vips = tuple(sorted(node.applied, key=natural_key))
            owners = {model.owner(name, vip) for vip in vips}
            rows.append(
                NodeRow(
                    cluster=name,
                    node=node_name,
                    addresses=node.addresses,
                    ready=node.ready,
                    eligible=node.eligible,
                    reporting=node.reporting,
                    vips=vips,
                    services=tuple(
                        sorted((o.text for o in owners if o is not None), key=natural_key)
                    ),
                    generation=node.generation,
                    applied_time=node.applied_time,
                    applied_ago_s=None
                    if node.applied_time is None
                    else max(0.0, now - node.applied_time),
                )
            )
    return tuple(rows)


def _clusters(model: ReadModel) -> set[str]:
    return {key[0] for key in model.services} | set(model.nodes)


def detail(model: ReadModel, key: ServiceRef) -> Detail | None:
    """Everything the Service's page shows, or None for a Service the model does not hold."""
    view = model.services.get(key)
    if view is None:
        return None
    members = {m.node for m in view.members}
    nodes = model.nodes.get(view.cluster, {})
    node_states = tuple(
        NodeState(
            node=name,
            member=name in members,
            applied=bool(view.lb_vips) and node.applied.issuperset(view.lb_vips),
            generation=node.generation,
        )
        for name, node in sorted(nodes.items(), key=lambda i: natural_key(i[0]))
    )
    return Detail(
        row=_row(model, view),
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
        changes=waterfalls(view.timeline),
    )


def convergence(model: ReadModel, now: float, window_s: float) -> Convergence:
    """Snapshot-to-status percentiles of the changes of the last ``window_s`` before ``now``."""
    since = now - window_s
    values = sorted(ms for t, ms in model.samples if t >= since)
    # None, not percentile's NaN, when nothing converged: the page shows "no changes".
    if not values:
        return Convergence(window_s=window_s, count=0, p50_ms=None, p99_ms=None, max_ms=None)
    return Convergence(
        window_s=window_s,
        count=len(values),
        p50_ms=percentile(values, 50),
        p99_ms=percentile(values, 99),
        max_ms=values[-1],
    )


def overview(model: ReadModel, now: float, window_s: float) -> Overview:
    """States per cluster, VIPs per pool, servers per appliance, and recent convergence."""
    states: Counter[str] = Counter()
    per_cluster: dict[str, Counter[str]] = {c: Counter() for c in _clusters(model)}
    pools: dict[tuple[str, str], list[int]] = {}
    for view in model.services.values():
        states[view.state] += 1
        per_cluster[view.cluster][view.state] += 1
        if view.pool is not None and view.vips:
            use = pools.setdefault((view.pool, view.appliance_group or ""), [0, 0])
            use[0] += 1
            use[1] += len(view.vips)
    clusters = []
    for name in sorted(per_cluster):
        nodes = model.nodes.get(name, {})
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
        services=len(model.services),
        dropped=model.dropped,
        states={s: states.get(s, 0) for s in STATES},
        clusters=tuple(clusters),
        pools=tuple(
            PoolUse(name=pool, appliance_group=group, services=use[0], vips=use[1])
            for (pool, group), use in sorted(pools.items())
        ),
        appliances=appliances(model),
        convergence=convergence(model, now, window_s),
        last_event=model.last_event,
    )


def appliances(model: ReadModel) -> tuple[ApplianceUse, ...]:
    """Each appliance the bus has named, with its Services, servers and failures."""
    found: dict[str, list[ServiceEntry]] = {}
    for view in model.services.values():
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
