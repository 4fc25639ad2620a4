"""The waterfall: a Service's last change, hop by hop, placed by the stream's timestamps."""

from __future__ import annotations

from collections.abc import Iterable

from vipwire.dashboard.core.views import Hop, TimelineEntry, Waterfall, WaterfallBar


def waterfalls(timeline: Iterable[TimelineEntry]) -> tuple[Waterfall, ...]:
    """Every change the timeline holds (each from a snapshot to the next), newest first."""
    entries = list(timeline)
    starts = [i for i, e in enumerate(entries) if e.hop == "watcher" and e.kind == "service"]
    result = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(entries)
        wf = waterfall(entries[start:end])
        if wf is not None:
            result.append(wf)
    return tuple(reversed(result))


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
