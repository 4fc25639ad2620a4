"""Span exporters for a run without a collector: OTLP-JSON lines in a file, or the console.

The file exporter writes **one export batch per line**: each line is an OTLP-JSON
``TracesData`` object (``{"resourceSpans": [...]}``, ids as lowercase hex, times as
decimal strings of Unix nanoseconds), the shape the OpenTelemetry Collector's own
file exporter writes, so the files can be fed to a collector later. Every provider of
one process appends to the same ``spans-<host>-<pid>.jsonl`` in the directory (a lock keeps
lines whole); ``vipwire trace`` reads every ``*.jsonl`` there.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from vipwire.telemetry._waterfall import service_label

_files_lock = threading.Lock()
_files: dict[Path, _SharedFile] = {}


class _SharedFile:
    """One append-only file shared by every exporter of this process that names it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.users = 0
        self._fh: IO[str] | None = None

    def write_line(self, line: str) -> None:
        with self.lock:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = self.path.open("a", encoding="utf-8")
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        with self.lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def span_file(directory: str | os.PathLike[str]) -> Path:
    """The file this process's spans go to in ``directory`` (host and pid: a directory
    shared by several machines or restarts never mixes two writers in one file)."""
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.uname().nodename)
    return Path(directory) / f"spans-{host or 'host'}-{os.getpid()}.jsonl"


class OtlpJsonFileExporter(SpanExporter):
    """Appends each export batch as one OTLP-JSON line to ``spans-<host>-<pid>.jsonl``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        path = span_file(directory)
        with _files_lock:
            shared = _files.get(path)
            if shared is None:
                shared = _files[path] = _SharedFile(path)
            shared.users += 1
        self._file = shared
        self._closed = False

    @property
    def path(self) -> Path:
        return self._file.path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closed or not spans:
            return SpanExportResult.SUCCESS
        try:
            self._file.write_line(json.dumps(traces_data(spans), separators=(",", ":")))
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _files_lock:
            self._file.users -= 1
            if self._file.users == 0:
                self._file.close()
                _files.pop(self._file.path, None)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class ConsoleSpanLineExporter(SpanExporter):
    """One readable line per span on stderr (or ``stream``):

    ``span trace=<id> id=<id> parent=<id or -> vipwire-ipam "ipam allocate" 1.93 ms ok``
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        out = self._stream or sys.stderr
        try:
            for span in spans:
                out.write(console_line(span) + "\n")
            out.flush()
        except (OSError, ValueError):
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def console_line(span: ReadableSpan) -> str:
    ctx = span.context
    trace_id = format(ctx.trace_id, "032x") if ctx else "-"
    span_id = format(ctx.span_id, "016x") if ctx else "-"
    parent = format(span.parent.span_id, "016x") if span.parent else "-"
    service = _service_label(span)
    duration = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
    status = span.status.status_code.name.lower() if span.status else "unset"
    status = "ok" if status == "unset" else status
    if span.status is not None and span.status.description:
        status += f" ({span.status.description})"
    return (
        f"span trace={trace_id} id={span_id} parent={parent} {service} "
        f"{json.dumps(span.name)} {duration:.2f} ms {status}"
    )


def _service_label(span: ReadableSpan) -> str:
    attrs = span.resource.attributes
    return service_label(str(attrs.get("service.name", "?")), attrs.get("service.instance.id"))


# --- OTLP-JSON encoding ---------------------------------------------------------------


def _any_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _attributes(attrs: Any) -> list[dict[str, Any]]:
    return [{"key": str(k), "value": _any_value(v)} for k, v in (attrs or {}).items()]


def _span(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.context
    out: dict[str, Any] = {
        "traceId": format(ctx.trace_id, "032x") if ctx else "",
        "spanId": format(ctx.span_id, "016x") if ctx else "",
        "name": span.name,
        # OTLP counts SPAN_KIND_UNSPECIFIED as 0; the SDK's INTERNAL is 0.
        "kind": span.kind.value + 1,
        "startTimeUnixNano": str(span.start_time or 0),
        "endTimeUnixNano": str(span.end_time or 0),
        "attributes": _attributes(span.attributes),
    }
    if span.parent is not None:
        out["parentSpanId"] = format(span.parent.span_id, "016x")
    if span.events:
        out["events"] = [
            {
                "timeUnixNano": str(e.timestamp),
                "name": e.name,
                "attributes": _attributes(e.attributes),
            }
            for e in span.events
        ]
    if span.status is not None:
        status: dict[str, Any] = {"code": span.status.status_code.value}
        if span.status.description:
            status["message"] = span.status.description
        out["status"] = status
    return out


def traces_data(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """OTLP-JSON ``TracesData`` of ``spans``, grouped by resource and scope."""
    by_resource: dict[int, tuple[Any, dict[tuple[str, str], list[dict[str, Any]]]]] = {}
    for span in spans:
        _, scopes = by_resource.setdefault(id(span.resource), (span.resource, {}))
        scope = span.instrumentation_scope
        key = (scope.name if scope else "", (scope.version or "") if scope else "")
        scopes.setdefault(key, []).append(_span(span))
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": _attributes(resource.attributes)},
                "scopeSpans": [
                    {"scope": {"name": name, **({"version": ver} if ver else {})}, "spans": items}
                    for (name, ver), items in scopes.items()
                ],
            }
            for resource, scopes in by_resource.values()
        ]
    }
