"""The live table of ``vipwire up``, as pure functions of what the bus said.

:func:`frame` lays out one screen for a terminal of a given size: the header (the
NATS and dashboard URLs) and the summary line first and always, then as many rows
as fit, each cut to the width. :func:`row_lines` gives a row's one-line form, for
piped output, which prints a line only when a row changed. Nothing here touches the
terminal or the clock: the caller passes the size and the time.
"""

from __future__ import annotations

import re
import time as _time_fmt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vipwire.allinone.view import BusView, Row
from vipwire.contracts import ServiceRef
from vipwire.metrics import percentile

#: Row states that count as failed in the summary.
FAILED = ("failed", "appliance-failed", "rejected")

GREEN, YELLOW, RED, BOLD, DIM, RESET = (
    "\x1b[32m",
    "\x1b[33m",
    "\x1b[31m",
    "\x1b[1m",
    "\x1b[2m",
    "\x1b[0m",
)


@dataclass(frozen=True)
class Line:
    """A row as shown: its key and its cells."""

    key: ServiceRef
    vip: str
    state: str
    nodes: str
    detail: str


def state_of(row: Row, status: Sequence[str]) -> str:
    """The row's state as the operator reads it: ``ready`` once programmed and the VIP
    is in the Service's status."""
    if row.state == "programmed" and row.vips and set(row.vips) <= set(status):
        return "ready"
    return row.state


def natural(key: ServiceRef) -> tuple[object, ...]:
    """Sort key that puts svc-2 before svc-10."""
    return tuple(
        tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))
        for text in key
    )


def lines_of(view: BusView, statuses: Mapping[ServiceRef, Sequence[str]]) -> list[Line]:
    out = []
    for key in sorted(view.rows, key=natural):
        row = view.rows[key]
        serving, reporting = view.nodes_applied(row)
        out.append(
            Line(
                key=key,
                vip=",".join(row.vips) or "-",
                state=state_of(row, statuses.get(key, ())),
                nodes=f"{serving}/{reporting}",
                detail=row.detail,
            )
        )
    return out


def summary(lines: Sequence[Line], latencies_ms: Sequence[float]) -> str:
    """``10 Services, 10 ready, 0 failed, p50 41 ms``."""
    ready = sum(1 for line in lines if line.state == "ready")
    failed = sum(1 for line in lines if line.state in FAILED)
    text = f"{len(lines)} Services, {ready} ready, {failed} failed"
    if latencies_ms:
        text += f", p50 {percentile(list(latencies_ms), 50):.0f} ms"
    return text


def _colour(state: str) -> str:
    if state == "ready":
        return GREEN
    if state in FAILED:
        return RED
    return YELLOW


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def frame(
    lines: Sequence[Line],
    *,
    header: Sequence[str],
    summary_line: str,
    width: int,
    height: int,
    colour: bool,
) -> list[str]:
    """One screen: ``header`` lines, the summary, then the rows that fit in
    ``width`` x ``height`` (failed rows first when not all fit; the last line says how
    many did not)."""
    width = max(20, width)
    top = [_cut(h, width) for h in header] + [_cut(summary_line, width), ""]
    if colour:
        top[len(header)] = BOLD + top[len(header)] + RESET
    service_w = max([7, *(len(f"{ln.key.namespace}/{ln.key.name}") for ln in lines)])
    cluster_w = max([7, *(len(ln.key.cluster) for ln in lines)])
    vip_w = max([3, *(len(ln.vip) for ln in lines)])
    state_w = max([5, *(len(ln.state) for ln in lines)])

    def cells(*values: str) -> str:
        cluster, service, vip, state, nodes, detail = values
        return (
            f"{cluster:<{cluster_w}}  {service:<{service_w}}  {vip:<{vip_w}}  "
            f"{state:<{state_w}}  {nodes:>5}  {detail}"
        ).rstrip()

    table = [_cut(cells("CLUSTER", "SERVICE", "VIP", "STATE", "NODES", "REASON"), width)]
    room = max(0, height - len(top) - len(table))
    if len(lines) > room:
        # What needs a look first: failed, then not yet ready; ready rows last.
        order = {state: 0 for state in FAILED}
        lines = sorted(lines, key=lambda ln: order.get(ln.state, 2 if ln.state == "ready" else 1))
    shown = lines if len(lines) <= room else lines[: max(0, room - 1)]
    for ln in shown:
        text = _cut(
            cells(
                ln.key.cluster,
                f"{ln.key.namespace}/{ln.key.name}",
                ln.vip,
                ln.state,
                ln.nodes,
                ln.detail,
            ),
            width,
        )
        if colour:
            start = cluster_w + service_w + vip_w + 6
            end = start + len(ln.state)
            if end <= len(text):
                text = text[:start] + _colour(ln.state) + text[start:end] + RESET + text[end:]
        table.append(text)
    if len(shown) < len(lines) and room:
        more = f"… {len(lines) - len(shown)} more (vipwire services, or the dashboard)"
        table.append(_cut(more, width))
    return (top + table)[: max(1, height)]


def row_line(line: Line, now: float) -> str:
    """One row as a line of piped output, stamped with ``now`` (UTC)."""
    stamp = _time_fmt.strftime("%H:%M:%S", _time_fmt.gmtime(now))
    key = line.key
    text = f"{stamp} {key.cluster}/{key.namespace}/{key.name} {line.vip} {line.state}"
    text += f", nodes {line.nodes}"
    return f"{text}: {line.detail}" if line.detail else text


def row_line_gone(key: ServiceRef, now: float) -> str:
    """A row that left the table (its Service deleted), as a line of piped output."""
    stamp = _time_fmt.strftime("%H:%M:%S", _time_fmt.gmtime(now))
    return f"{stamp} {key.cluster}/{key.namespace}/{key.name} gone"


def changed(before: Mapping[ServiceRef, Line], now: Sequence[Line]) -> list[Line]:
    """The rows that are new or differ from ``before``."""
    return [line for line in now if before.get(line.key) != line]
