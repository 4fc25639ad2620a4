"""The chaos scenario's pure parts: a fault schedule from a seed, invariants over plain data.

Nothing here runs anything: :func:`plan_faults` turns a seed into the faults a
run will inject, and :func:`check_invariants` judges one :class:`Observation`
(what the API servers, the ipam KV bucket, the appliance and the node agents
hold, plus what was seen along the way). The harness in
:mod:`vipwire.bench.chaos` gathers the observation and executes the plan.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import msgspec

FaultKind = Literal["kill", "nats-kill", "sigstop", "appliance-restart"]

#: Invariant names, as violations carry them.
VIP_OWNED_TWICE = "vip-owned-twice"
APPLIANCE_ORPHAN = "appliance-object-for-deleted-service"
STUCK_FINALIZER = "deleted-service-stuck"
NO_STATUS_VIP = "live-service-without-status-vip"
NOT_ON_APPLIANCE = "live-service-not-on-appliance"
WRONG_MEMBERS = "live-service-wrong-members"
NOT_ON_NODE = "live-service-vip-missing-on-node"
VIP_CHANGED = "vip-changed"
VIP_LEAKED = "vip-held-for-deleted-service"
CONCURRENT_WRITERS = "two-lbdriver-replicas-writing"

#: Placeholders of :func:`plan_faults` that the harness resolves when the fault fires.
LBDRIVER_LEADER = "lbdriver:leader"
WATCHER_LEADER = "watcher:leader"


class Fault(msgspec.Struct, frozen=True, kw_only=True):
    """One fault: what to do, to which target, and for how long (seconds)."""

    kind: FaultKind
    #: A component name, :data:`LBDRIVER_LEADER`, :data:`WATCHER_LEADER`, a NATS server
    #: index as text (``nats-kill``) or ``appliance``.
    target: str
    #: kill / nats-kill: seconds down before the restart; sigstop: seconds stopped.
    hold_s: float


def plan_faults(
    seed: int,
    count: int,
    components: Sequence[str],
    *,
    nats_servers: int = 3,
    sigstop_s: float = 8.0,
    down_s: tuple[float, float] = (0.5, 3.0),
) -> list[Fault]:
    """``count`` faults drawn from ``seed``: the same seed gives the same schedule.

    Among the first faults (as soon as ``count`` allows) are, at seeded places, one
    NATS server kill, one kill of the lbdriver leader and one SIGSTOP of a leader
    (the acceptance list needs each at least once); the rest are drawn with weights:
    component kills most often, then NATS kills, SIGSTOPs and appliance restarts.
    Faults run one after the other, each restarted (or continued) before the next,
    so two NATS servers are never down at once.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    rng = random.Random(seed)
    low, high = down_s

    def down() -> float:
        return round(rng.uniform(low, high), 2)

    def draw() -> Fault:
        roll = rng.random()
        if roll < 0.55 and components:
            return Fault(kind="kill", target=rng.choice(list(components)), hold_s=down())
        if roll < 0.70:
            return Fault(kind="nats-kill", target=str(rng.randrange(nats_servers)), hold_s=down())
        if roll < 0.80:
            return Fault(kind="kill", target=LBDRIVER_LEADER, hold_s=down())
        if roll < 0.92:
            target = rng.choice((LBDRIVER_LEADER, WATCHER_LEADER))
            return Fault(kind="sigstop", target=target, hold_s=sigstop_s)
        return Fault(kind="appliance-restart", target="appliance", hold_s=down())

    faults = [draw() for _ in range(count)]
    required = [
        Fault(kind="nats-kill", target=str(rng.randrange(nats_servers)), hold_s=down()),
        Fault(kind="kill", target=LBDRIVER_LEADER, hold_s=down()),
        Fault(kind="sigstop", target=LBDRIVER_LEADER, hold_s=sigstop_s),
    ]
    if count >= len(required):
        # Distinct places among the first ten (or all, when fewer).
        places = rng.sample(range(min(count, 10)), len(required))
        for place, fault in zip(places, required, strict=True):
            faults[place] = fault
    return faults


def faults_by_kind(faults: Iterable[Fault]) -> dict[str, int]:
    """How many faults of each kind (the counts add up to the number of faults)."""
    counts: dict[str, int] = defaultdict(int)
    for fault in faults:
        counts[fault.kind] += 1
    return dict(sorted(counts.items()))


# --- observations ---------------------------------------------------------------------


class LiveService(msgspec.Struct, frozen=True, kw_only=True):
    """A Service the load left in place, as its API server has it."""

    uid: str
    status_vips: tuple[str, ...]
    #: ``port/protocol`` of its ports.
    ports: tuple[str, ...]
    #: Nodes that should be the appliance's members (by the Service's traffic policy).
    members: tuple[str, ...]


class ApplianceObject(msgspec.Struct, frozen=True, kw_only=True):
    """One virtual server on the appliance, by the owner tag the lbdriver gave it."""

    owner: str
    address: str
    #: ``port/protocol``.
    port: str
    members: tuple[str, ...]


class Write(msgspec.Struct, frozen=True, kw_only=True):
    """One mutating request the appliance served (its write log), times in seconds."""

    at: float
    end: float
    writer: str
    #: The writer's lease revision, when it sent one.
    lease: int | None = None
    method: str = ""
    path: str = ""


class Observation(msgspec.Struct, kw_only=True):
    """Everything the invariants are judged on; keys are ``cluster/namespace/name``."""

    live: dict[str, LiveService] = {}
    #: Services the load deleted that the API server still has (they should be gone).
    deleted_present: dict[str, tuple[str, ...]] = {}
    #: The ipam KV's service records: key → VIPs.
    kv_records: dict[str, tuple[str, ...]] = {}
    #: The ipam KV's address claims: VIP → keys of its holders.
    kv_claims: dict[str, tuple[str, ...]] = {}
    appliance: list[ApplianceObject] = []
    #: Per cluster, the nodes that must hold every VIP of that cluster.
    eligible_nodes: dict[str, tuple[str, ...]] = {}
    #: ``cluster/node`` → the VIPs its agent last reported applied (missing: no report).
    applied: dict[str, tuple[str, ...]] = {}
    #: Per Service uid: the key and every distinct non-empty VIP set its status showed.
    vip_history: dict[str, tuple[str, list[tuple[str, ...]]]] = {}
    writes: list[Write] = []


class Violation(msgspec.Struct, frozen=True, kw_only=True, order=True):
    invariant: str
    service: str
    detail: str


def cluster_of(key: str) -> str:
    return key.split("/", 1)[0]


def check_invariants(obs: Observation, *, writers_gap_s: float = 1.0) -> list[Violation]:
    """Every invariant the chaos scenario promises, judged on ``obs``; sorted."""
    found: list[Violation] = []
    found += _owned_twice(obs)
    found += _orphans(obs)
    found += [
        Violation(
            invariant=STUCK_FINALIZER,
            service=key,
            detail=f"deleted, still present with finalizers {list(finalizers)}",
        )
        for key, finalizers in obs.deleted_present.items()
    ]
    found += _leaks(obs)
    found += _live(obs)
    found += _changed(obs)
    found += concurrent_writes(obs.writes, writers_gap_s)
    return sorted(set(found))


def _owned_twice(obs: Observation) -> list[Violation]:
    found = []
    by_vip: dict[str, set[str]] = defaultdict(set)
    for key, vips in obs.kv_records.items():
        for vip in vips:
            by_vip[vip].add(key)
    for vip, keys in by_vip.items():
        if len(keys) > 1:
            for key in sorted(keys):
                found.append(_twice(key, f"KV: {vip} in the records of {sorted(keys)}"))
    for vip, holders in obs.kv_claims.items():
        if len(set(holders)) > 1:
            for key in sorted(set(holders)):
                found.append(_twice(key, f"KV: claim addr.{vip} held by {sorted(set(holders))}"))
    in_status: dict[str, set[str]] = defaultdict(set)
    for key, svc in obs.live.items():
        for vip in svc.status_vips:
            in_status[vip].add(key)
    for vip, keys in in_status.items():
        if len(keys) > 1:
            for key in sorted(keys):
                found.append(_twice(key, f"status: {vip} in the status of {sorted(keys)}"))
    return found


def _leaks(obs: Observation) -> list[Violation]:
    """KV records and claims of Services that are gone: addresses never given back."""
    found = [
        Violation(invariant=VIP_LEAKED, service=key, detail=f"KV record still holds {list(vips)}")
        for key, vips in obs.kv_records.items()
        if key not in obs.live
    ]
    for vip, holders in obs.kv_claims.items():
        for key in sorted(set(holders) - set(obs.live)):
            found.append(
                Violation(invariant=VIP_LEAKED, service=key, detail=f"KV claim addr.{vip} held")
            )
    return found


def _twice(key: str, detail: str) -> Violation:
    return Violation(invariant=VIP_OWNED_TWICE, service=key, detail=detail)


def _orphans(obs: Observation) -> list[Violation]:
    found = []
    for obj in obs.appliance:
        if obj.owner not in obs.live:
            found.append(
                Violation(
                    invariant=APPLIANCE_ORPHAN,
                    service=obj.owner,
                    detail=f"virtual server {obj.address} {obj.port} for a Service not live",
                )
            )
    return found


def _live(obs: Observation) -> list[Violation]:
    found = []
    on_appliance: dict[str, list[ApplianceObject]] = defaultdict(list)
    for obj in obs.appliance:
        on_appliance[obj.owner].append(obj)
    for key, svc in sorted(obs.live.items()):
        if not svc.status_vips:
            found.append(Violation(invariant=NO_STATUS_VIP, service=key, detail="no VIP"))
            continue
        objects = on_appliance.get(key, [])
        have = {(o.address, o.port) for o in objects}
        want = {(vip, port) for vip in svc.status_vips for port in svc.ports}
        missing = sorted(want - have)
        if missing:
            found.append(
                Violation(
                    invariant=NOT_ON_APPLIANCE,
                    service=key,
                    detail=f"missing {missing}; appliance has {sorted(have)}",
                )
            )
        for obj in objects:
            if (obj.address, obj.port) in want and set(obj.members) != set(svc.members):
                found.append(
                    Violation(
                        invariant=WRONG_MEMBERS,
                        service=key,
                        detail=f"{obj.address} {obj.port}: members {sorted(obj.members)}, "
                        f"eligible {sorted(svc.members)}",
                    )
                )
        cluster = cluster_of(key)
        for node in obs.eligible_nodes.get(cluster, ()):
            applied = obs.applied.get(f"{cluster}/{node}")
            lacking = [v for v in svc.status_vips if applied is None or v not in applied]
            if lacking:
                found.append(
                    Violation(
                        invariant=NOT_ON_NODE,
                        service=key,
                        detail=f"node {node} lacks {lacking}"
                        + (" (no report from its agent)" if applied is None else ""),
                    )
                )
    return found


def _changed(obs: Observation) -> list[Violation]:
    found = []
    for uid, (key, history) in obs.vip_history.items():
        if len(history) > 1:
            steps = " -> ".join(",".join(v) for v in history)
            found.append(
                Violation(invariant=VIP_CHANGED, service=key, detail=f"uid {uid}: {steps}")
            )
    return found


def concurrent_writes(writes: Sequence[Write], gap_s: float) -> list[Violation]:
    """Writes that show two lbdriver replicas writing in the same moment.

    Three signs, each a violation: two writers' requests overlapping in time; a
    write under a lease revision older than one another writer already wrote
    under (a deposed leader wrote after its successor); and, where no revisions
    are sent, a writer writing again less than ``gap_s`` after another one took
    over (A, B, A: a legitimate handover back takes at least a lease's time).
    """
    found = []
    ordered = sorted(writes, key=lambda w: (w.at, w.end))
    last_by: dict[str, float] = {}
    newest: tuple[int, str] | None = None  # (lease, writer) of the newest revision seen
    open_: list[Write] = []
    for w in ordered:
        open_ = [o for o in open_ if o.end > w.at]
        for o in open_:
            if o.writer != w.writer:
                found.append(_concurrent(w, f"overlaps {o.writer}'s {o.method} {o.path}"))
        open_.append(w)
        if w.lease is not None:
            if newest is not None and w.lease < newest[0] and newest[1] != w.writer:
                found.append(
                    _concurrent(w, f"lease {w.lease} after {newest[1]} wrote under {newest[0]}")
                )
            if newest is None or w.lease >= newest[0]:
                newest = (w.lease, w.writer)
        else:
            mine = last_by.get(w.writer)
            for other, at in last_by.items():
                if other != w.writer and mine is not None and mine <= at and w.at - at < gap_s:
                    found.append(_concurrent(w, f"{w.at - at:.3f} s after {other} took over"))
        last_by[w.writer] = w.at
    return found


def _concurrent(w: Write, why: str) -> Violation:
    return Violation(
        invariant=CONCURRENT_WRITERS,
        service=w.path or "-",
        detail=f"{w.writer} wrote {w.method} {w.path} at {w.at:.3f}: {why}",
    )


def record_vips(
    history: dict[str, tuple[str, list[tuple[str, ...]]]],
    uid: str,
    key: str,
    vips: Iterable[str],
) -> None:
    """Note the VIPs a Service's status shows now (only a new non-empty set is kept)."""
    current = tuple(sorted(vips))
    if not current:
        return
    _, seen = history.setdefault(uid, (key, []))
    if not seen or seen[-1] != current:
        seen.append(current)


def eligible_members(
    policy: str, ready_nodes: Iterable[str], endpoint_nodes: Iterable[str]
) -> tuple[str, ...]:
    """The appliance members a Service should have: every ready node (Cluster), or the
    ready nodes with a ready endpoint (Local)."""
    ready = set(ready_nodes)
    if policy == "Local":
        return tuple(sorted(ready & set(endpoint_nodes)))
    return tuple(sorted(ready))


def summarise(violations: Sequence[Violation]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for v in violations:
        counts[v.invariant] += 1
    return dict(sorted(counts.items()))


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def kinds_text(by_kind: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in by_kind.items()) or "none"
