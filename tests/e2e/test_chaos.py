"""A short chaos run: every component killed, stopped or restarted under load, 0 violations."""

from __future__ import annotations

from typing import Any

from vipwire.bench.chaos import ChaosOptions, chaos


def _faults(data: dict[str, Any], kind: str, prefix: str = "", *, leader: bool = False) -> int:
    return sum(
        1
        for e in data["fault_log"]
        if e["kind"] == kind
        and str(e.get("target", "")).startswith(prefix)
        and (e.get("leader", False) or not leader)
        and "error" not in e
    )


async def test_a_short_chaos_run_keeps_every_invariant() -> None:
    """2 clusters, 200 Services created (some updated and deleted) in 70 s on a 3-server
    NATS cluster with 2 replicas of ipam, lbdriver and each watcher, while a fault hits
    every 5 s (a NATS server kill, an lbdriver leader kill and a leader SIGSTOP among
    them): it converges and no invariant is violated."""
    result = await chaos(
        ChaosOptions(duration_s=70.0, fault_interval_s=5.0, seed=14, clusters=2, services=200)
    )
    data = result.data
    assert data["violations"] == [], result.table()
    assert data["converged_after_last_fault_s"] is not None, result.table()
    assert data["faults"] >= 10, result.table()
    assert _faults(data, "nats-kill") >= 1, result.table()
    assert _faults(data, "kill", "lbdriver-", leader=True) >= 1, result.table()
    assert _faults(data, "sigstop", leader=True) >= 1, result.table()
    assert data["services_created"] >= 190, result.table()
    # Kill -9 of the lbdriver leader: a standby writes within 5 s (plus the polling).
    assert data["max_takeover_s"] is not None and data["max_takeover_s"] <= 6.0, result.table()
