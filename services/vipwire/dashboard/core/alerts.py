"""The alert banners: what an operator should look at first, from the model and the polls.

Pure: the model, the last control answers and ``now`` in, banners out.

- a pool above 90% of its addresses (ipam's own count);
- an appliance down (the lbdriver's circuit breaker for it is open);
- a consumer lagging or lost: ipam or the lbdriver not answering, the dashboard's own
  reader of the bus not caught up, a node agent that never reported while its
  cluster's others do (lost), or one that still lacks VIPs the appliance has served
  for ``agent_lag_s`` (lagging);
- a Service not converged for ``stuck_s`` (5 minutes): its change started and no
  status with its VIPs has been written since.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

from vipwire.dashboard.core.fold import ReadModel, ServiceEntry
from vipwire.dashboard.core.sorting import natural_key
from vipwire.dashboard.core.views import Banner, ControlStatus

POOL_FULL: Final = 0.9
STUCK_S: Final = 300.0
AGENT_LAG_S: Final = 60.0
#: Services or nodes named in one banner (the rest are counted).
_NAMED: Final = 3


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_NAMED])
    return shown + (f" and {len(items) - _NAMED} more" if len(items) > _NAMED else "")


def _service_href(view: ServiceEntry) -> str:
    return "/services/" + "/".join(quote(p, safe="") for p in view.ref)


def banners(
    model: ReadModel,
    control: ControlStatus,
    now: float,
    *,
    reader: str | None = None,
    stuck_s: float = STUCK_S,
    agent_lag_s: float = AGENT_LAG_S,
) -> tuple[Banner, ...]:
    """The banners to show now, most severe first. ``reader``: why the dashboard's own
    bus reader is not ready (None: it is)."""
    out: list[Banner] = []
    for pool in control.pools or ():
        if pool.size and pool.in_use / pool.size > POOL_FULL:
            share = pool.in_use / pool.size * 100
            out.append(
                Banner(
                    level="critical" if pool.in_use >= pool.size else "warning",
                    kind="pool",
                    text=f"Pool {pool.name} is {share:.0f}% used ({pool.in_use} of {pool.size} "
                    "addresses): new Services there will wait for an address",
                    href="/",
                )
            )
    for appliance in control.appliances or ():
        if appliance.health == "open":
            why = f": {appliance.last_error}" if appliance.last_error else ""
            out.append(
                Banner(
                    level="critical",
                    kind="appliance",
                    text=f"Appliance {appliance.name} is down (its calls fail; retried in "
                    f"{appliance.retry_in_s or 0:.0f} s){why}",
                    href="/appliances",
                )
            )
    out += _consumers(model, control, reader, now, agent_lag_s)
    stuck = [
        v
        for v in model.services.values()
        if v.state not in ("ready", "deleting")
        and v.change_started is not None
        and now - v.change_started >= stuck_s
    ]
    if stuck:
        stuck.sort(key=lambda v: (v.change_started or 0.0, natural_key(v.ref.text)))
        first = stuck[0]
        reason = f" ({first.error})" if first.state == "failed" and first.error else ""
        out.append(
            Banner(
                level="warning",
                kind="convergence",
                text=f"{len(stuck)} Service{'s' if len(stuck) != 1 else ''} not converged for "
                f"{stuck_s / 60:g} minutes: "
                f"{_names([v.ref.text for v in stuck])}; oldest {first.ref.text}, "
                f"{first.state} since {(now - (first.change_started or now)) / 60:.0f} min"
                f"{reason}",
                href=_service_href(first) if len(stuck) == 1 else "/services?sort=state",
            )
        )
    out.sort(key=lambda b: b.level != "critical")
    return tuple(out)


def _consumers(
    model: ReadModel, control: ControlStatus, reader: str | None, now: float, lag_s: float
) -> list[Banner]:
    out: list[Banner] = []
    if reader is not None:
        out.append(
            Banner(
                level="warning",
                kind="consumer",
                text=f"The dashboard's reader of the bus is not caught up ({reader}): "
                "what it shows may be behind",
            )
        )
    if control.polled_at is not None:
        for service, error in (("ipam", control.ipam_error), ("lbdriver", control.lbdriver_error)):
            if error is not None:
                out.append(
                    Banner(
                        level="critical",
                        kind="consumer",
                        text=f"{service} is lost: {error}",
                    )
                )
    for cluster in sorted(model.nodes, key=natural_key):
        nodes = model.nodes[cluster]
        if not any(n.reporting for n in nodes.values()):
            continue  # no agent of this cluster on the bus at all (they may run elsewhere)
        lost = sorted(
            (name for name, n in nodes.items() if n.known and n.ready and not n.reporting),
            key=natural_key,
        )
        if lost:
            out.append(
                Banner(
                    level="warning",
                    kind="consumer",
                    text=f"Node agent{'s' if len(lost) != 1 else ''} lost in {cluster}: "
                    f"{_names(lost)} never reported what it applied",
                    href=f"/nodes?cluster={quote(cluster, safe='')}",
                )
            )
        served = {
            vip
            for v in model.services.values()
            if v.cluster == cluster
            and v.etp == "Cluster"
            and v.lb_time is not None
            and now - v.lb_time >= lag_s
            and not v.deleting
            for vip in v.lb_vips
        }
        lagging = sorted(
            (
                name
                for name, n in nodes.items()
                if n.reporting and n.ready and n.eligible and not served <= n.applied
            ),
            key=natural_key,
        )
        if lagging:
            out.append(
                Banner(
                    level="warning",
                    kind="consumer",
                    text=f"Node agent{'s' if len(lagging) != 1 else ''} lagging in {cluster}: "
                    f"{_names(lagging)} still lack{'s' if len(lagging) == 1 else ''} VIPs the "
                    f"appliance has served for over {lag_s:g} s",
                    href=f"/nodes?cluster={quote(cluster, safe='')}",
                )
            )
    return out
