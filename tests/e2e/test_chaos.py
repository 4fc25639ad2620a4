"""A short chaos run: every component killed, stopped or restarted under load, 0 violations."""

from __future__ import annotations

from typing import Any

from vipwire.bench.chaos import ChaosOptions, chaos

#: Seed 283 puts every fault kind in the first five faults (a kill of the lbdriver
#: leader, a SIGSTOP of it, a NATS server kill, an appliance restart), so they all run
#: even when a loaded machine makes each fault slower; then another lbdriver leader
#: kill, a watcher leader kill and node agent kills.
SEED = 283
SERVICES = 120


def _faults(data: dict[str, Any], kind: str, prefix: str = "", *, leader: bool = False) -> int:
    return sum(
        1
        for e in data["fault_log"]
        if e["kind"] == kind
        and str(e.get("target", "")).startswith(prefix)
        and (e.get("leader", False) or not leader)
        and "error" not in e
    )


def _leader_faults(data: dict[str, Any]) -> str:
    """The leader faults, one per line, with when each hit and its takeover: what to read
    first when a takeover is over its bound (what came just before it, how loaded)."""
    keys = ("kind", "target", "standby_ready", "leader_wait_s", "hit_at", "takeover_s")
    return "\n".join(
        " ".join(f"{k}={e.get(k)}" for k in keys) for e in data["fault_log"] if e.get("leader")
    )


async def test_a_short_chaos_run_keeps_every_invariant() -> None:
    """2 clusters, 120 Services created (some updated and deleted) in 45 s on a 3-server
    NATS cluster with 2 replicas of ipam, lbdriver and each watcher, while a fault hits
    every 4 s (every kind: kills of the lbdriver and watcher leaders, a SIGSTOP of the
    lbdriver leader, a NATS server kill, an appliance restart): it converges and no
    invariant is violated."""
    result = await chaos(
        ChaosOptions(
            duration_s=45.0, fault_interval_s=4.0, seed=SEED, clusters=2, services=SERVICES
        )
    )
    data = result.data
    assert data["violations"] == [], result.table()
    assert data["converged_after_last_fault_s"] is not None, result.table()
    assert data["faults"] >= 5, result.table()
    kinds = {"kill", "nats-kill", "sigstop", "appliance-restart"}
    assert set(data["faults_by_kind"]) == kinds, result.table()
    assert _faults(data, "nats-kill") >= 1, result.table()
    assert _faults(data, "appliance-restart") >= 1, result.table()
    assert _faults(data, "kill", "lbdriver-", leader=True) >= 1, result.table()
    assert _faults(data, "sigstop", "lbdriver-", leader=True) >= 1, result.table()
    assert data["services_created"] >= 0.95 * SERVICES, result.table()
    # Kill -9 or SIGSTOP of the lbdriver leader: a standby writes within its lease (3 s)
    # of the last renewal it saw, plus the harness's polling; counted from the blow.
    assert data["max_takeover_s"] is not None and data["max_takeover_s"] <= 6.0, (
        result.table() + "\n" + _leader_faults(data)
    )
