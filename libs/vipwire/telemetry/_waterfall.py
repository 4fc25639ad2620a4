"""A trace's spans, read back from OTLP-JSON lines and drawn as an indented waterfall.

Pure: the caller reads the files (``vipwire trace``) and passes their lines in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SpanRecord:
    """One span as the waterfall needs it."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    start_ns: int
    end_ns: int
    error: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


def service_label(name: str, instance: object) -> str:
    """``name:instance`` (``vipwire-nodeagent:west/west-node-1``), or ``name`` when the
    instance is absent or only the random UUID the SDK makes up for every provider."""
    text = str(instance) if instance else ""
    parts = text.split("-")
    if not text or (len(text) == 36 and [len(p) for p in parts] == [8, 4, 4, 4, 12]):
        return name
    return f"{name}:{text}"


def _value(v: dict[str, Any]) -> str:
    for key in ("stringValue", "intValue", "doubleValue", "boolValue"):
        if key in v:
            return str(v[key])
    return json.dumps(v)


def _attrs(items: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        if isinstance(item, dict) and "key" in item:
            out[str(item["key"])] = _value(item.get("value") or {})
    return out


def spans_of_line(line: str) -> list[SpanRecord]:
    """Every span of one OTLP-JSON ``TracesData`` line; [] for a blank line.

    Raises ValueError for a line that is not OTLP-JSON (the caller names the file).
    """
    if not line.strip():
        return []
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or "resourceSpans" not in data:
        raise ValueError("not an OTLP-JSON TracesData object (no resourceSpans)")
    out: list[SpanRecord] = []
    for rs in data["resourceSpans"] or ():
        resource = _attrs((rs.get("resource") or {}).get("attributes"))
        service = resource.get("service.name", "?")
        label = service_label(service, resource.get("service.instance.id"))
        for ss in rs.get("scopeSpans") or ():
            for s in ss.get("spans") or ():
                status = s.get("status") or {}
                error = None
                if status.get("code") == 2:
                    error = str(status.get("message") or "error")
                out.append(
                    SpanRecord(
                        trace_id=str(s.get("traceId", "")).lower(),
                        span_id=str(s.get("spanId", "")).lower(),
                        parent_id=(str(s["parentSpanId"]).lower() or None)
                        if s.get("parentSpanId")
                        else None,
                        name=str(s.get("name", "")),
                        service=label,
                        start_ns=int(s.get("startTimeUnixNano", 0)),
                        end_ns=int(s.get("endTimeUnixNano", 0)),
                        error=error,
                        attributes=_attrs(s.get("attributes")),
                    )
                )
    return out


def spans_of_trace(spans: Iterable[SpanRecord], trace_id: str) -> list[SpanRecord]:
    """The spans of ``trace_id`` (once each, however often a file repeats them)."""
    wanted = trace_id.strip().lower()
    seen: dict[str, SpanRecord] = {}
    for span in spans:
        if span.trace_id == wanted:
            seen.setdefault(span.span_id, span)
    return list(seen.values())


def waterfall(spans: list[SpanRecord], *, width: int = 0) -> list[str]:
    """The lines of an indented waterfall: parent above child, siblings by start time.

    Each line: offset from the trace's first span and duration in ms, the service
    (``name:instance``), then the span name indented by its depth. A span whose
    parent is not among ``spans`` (not exported, or still in a buffer) is drawn as a
    root, marked ``(parent … not recorded)``. ``width`` > 0 cuts lines to it.
    """
    if not spans:
        return []
    by_id = {s.span_id: s for s in spans}
    children: dict[str | None, list[SpanRecord]] = {}
    for s in spans:
        parent = s.parent_id if s.parent_id in by_id else None
        children.setdefault(parent, []).append(s)
    for items in children.values():
        items.sort(key=lambda s: (s.start_ns, s.span_id))
    t0 = min(s.start_ns for s in spans)
    t1 = max(s.end_ns for s in spans)
    services = sorted({s.service.split(":", 1)[0] for s in spans})
    svc_width = min(40, max(len(s.service) for s in spans))
    lines = [
        f"trace {spans[0].trace_id}: {len(spans)} spans, {(t1 - t0) / 1e6:.1f} ms, "
        f"{len(services)} services ({', '.join(services)})",
        f"{'OFFSET':>10} {'DURATION':>10}  {'SERVICE':<{svc_width}}  SPAN",
    ]

    def walk(span: SpanRecord, depth: int, visited: set[str]) -> None:
        if span.span_id in visited:  # a cycle in bad data: draw each span once
            return
        visited.add(span.span_id)
        offset = (span.start_ns - t0) / 1e6
        duration = (span.end_ns - span.start_ns) / 1e6
        text = "  " * depth + span.name
        if span.parent_id is not None and span.parent_id not in by_id:
            text += f" (parent {span.parent_id} not recorded)"
        if span.error is not None:
            text += f"  ERROR: {span.error}"
        service = span.service[:svc_width]
        line = f"{offset:>7.2f} ms {duration:>7.2f} ms  {service:<{svc_width}}  {text}"
        lines.append(line[: max(width, 40)] if width > 0 else line)
        for child in children.get(span.span_id, ()):
            walk(child, depth + 1, visited)

    visited: set[str] = set()
    for root in children.get(None, ()):
        walk(root, 0, visited)
    return lines
