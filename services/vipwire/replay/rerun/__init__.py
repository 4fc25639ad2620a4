"""``vipwire replay --rerun``: recorded inputs through the pure cores, decisions compared.

Pure: a list of records in, a :class:`RerunResult` out. The sandbox is an
:class:`~vipwire.ipam.Allocator` holding the claims history implies, and the
lbdriver's and node agent's desired-state functions over the inputs as they
stood; nothing touches NATS or an appliance. See each module for exactly
what it checks: :mod:`.ipam`, :mod:`.lbdriver`, :mod:`.nodeagent`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vipwire.ipam import PoolSettings
from vipwire.replay.record import Record
from vipwire.replay.rerun.history import Event, History
from vipwire.replay.rerun.ipam import IpamCheck
from vipwire.replay.rerun.lbdriver import LbdriverCheck
from vipwire.replay.rerun.nodeagent import NodeagentCheck
from vipwire.replay.rerun.report import (
    COMPONENTS,
    Component,
    Divergence,
    RerunResult,
    Sink,
    render,
)
from vipwire.replay.timeline import Bound, Scope

#: Seconds before its message a decision may have been taken (``--lag``): how far
#: a service's view of its inputs may trail the stream.
DEFAULT_LAG = 0.5
#: Seconds a service may take to act on a change (``--settle``): coalescing
#: windows, retries, appliance writes.
DEFAULT_SETTLE = 5.0


def rerun(
    records: Iterable[Record],
    pools: Sequence[PoolSettings],
    *,
    scope: Scope | None = None,
    since: Bound | None = None,
    until: Bound | None = None,
    lag: float = DEFAULT_LAG,
    settle: float = DEFAULT_SETTLE,
    ipam_replicas: int = 1,
) -> RerunResult:
    """Check every recorded decision of ``records`` (a whole history, in stream order).

    Decisions and divergences outside ``scope`` and ``since``..``until`` are
    neither counted nor reported, but every record feeds the sandbox: a
    decision depends on everything before it.
    """
    history = History(records)
    sink = Sink(scope=scope or Scope(), since=since, until=until)
    lag_ns = int(lag * 1e9)
    settle_ns = int(settle * 1e9)
    exact = history.complete and ipam_replicas == 1
    checks = (
        IpamCheck(history, sink, pools, exact=exact, settle_ns=settle_ns),
        LbdriverCheck(history, sink, lag_ns=lag_ns, settle_ns=settle_ns),
        NodeagentCheck(history, sink, lag_ns=lag_ns, settle_ns=settle_ns),
    )
    for event in history.events:
        for check in checks:
            check.on_event(event)
    for check in checks:
        check.finish()
    notes: list[str] = []
    if history.first_seq is not None and not history.complete:
        why = (
            f"starts at seq {history.first_seq}, not 1"
            if history.first_seq != 1
            else f"misses messages ({history.gaps} gaps in its sequence numbers)"
        )
        notes.append(
            f"the history {why}: some inputs are unknown, so exact addresses, "
            "'held nothing' and settling are not checked"
        )
    elif ipam_replicas != 1:
        notes.append(f"{ipam_replicas} ipam replicas: exact addresses are not compared")
    if history.malformed:
        notes.append(f"{len(history.malformed)} malformed messages were skipped")
    order = {c: i for i, c in enumerate(COMPONENTS)}
    divergences = sorted(sink.divergences, key=lambda d: (d.seq, order[d.component]))
    return RerunResult(
        checked=sink.checked,
        divergences=divergences,
        complete=history.complete,
        exact_addresses=exact,
        malformed=len(history.malformed),
        notes=notes,
    )


__all__ = [
    "DEFAULT_LAG",
    "DEFAULT_SETTLE",
    "Component",
    "Divergence",
    "Event",
    "History",
    "RerunResult",
    "render",
    "rerun",
]
