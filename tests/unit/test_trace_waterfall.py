"""The file exporter's OTLP-JSON lines, read back and drawn as a waterfall."""

from __future__ import annotations

import io
import json
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from vipwire.telemetry import (
    ConsoleSpanLineExporter,
    OtlpJsonFileExporter,
    SpanRecord,
    spans_of_line,
    spans_of_trace,
    waterfall,
)

T = "4bf92f3577b34da6a3ce929d0e0e4736"


def rec(span_id: str, parent: str | None, name: str, start_ms: float, end_ms: float) -> SpanRecord:
    return SpanRecord(
        trace_id=T,
        span_id=span_id,
        parent_id=parent,
        name=name,
        service="vipwire-" + name.split(maxsplit=1)[0],
        start_ns=int(1_000_000_000_000 + start_ms * 1e6),
        end_ns=int(1_000_000_000_000 + end_ms * 1e6),
    )


def test_children_are_indented_under_their_parent_in_start_order() -> None:
    """A child sits under its parent, one level deeper; siblings go by start time."""
    lines = waterfall(
        [
            rec("c2", "root", "ipam late", 5, 6),
            rec("root", None, "watcher change", 0, 10),
            rec("c1", "root", "ipam early", 1, 2),
            rec("g1", "c1", "lbdriver program", 1.5, 1.8),
        ]
    )
    body = lines[2:]
    assert [line.split("  ")[-1].strip() for line in body] == [
        "watcher change",
        "ipam early",
        "lbdriver program",
        "ipam late",
    ]
    assert "     watcher change" not in body[0]
    assert body[2].endswith("    lbdriver program")  # depth 2
    assert body[1].lstrip().startswith("1.00 ms    1.00 ms")  # offset, duration
    assert "4 spans, 10.0 ms" in lines[0]


def test_a_span_whose_parent_is_missing_is_drawn_as_a_marked_root() -> None:
    """A span whose parent was never recorded is still shown, and says so."""
    lines = waterfall([rec("a", "gone", "ipam orphan", 0, 1)])
    assert "(parent gone not recorded)" in lines[-1]


def test_only_the_asked_trace_is_kept_and_duplicates_once() -> None:
    """Spans of other traces are dropped; a span exported twice counts once."""
    other = SpanRecord("f" * 32, "x", None, "other", "s", 0, 1)
    kept = spans_of_trace([rec("a", None, "w", 0, 1), rec("a", None, "w", 0, 1), other], T.upper())
    assert [s.span_id for s in kept] == ["a"]


def test_the_file_exporter_writes_otlp_json_lines_that_read_back(tmp_path: Path) -> None:
    """Each export batch is one OTLP-JSON line (hex ids), and it reads back with its parents."""
    exporter = OtlpJsonFileExporter(tmp_path)
    provider = TracerProvider(
        resource=Resource.create({"service.name": "vipwire-ipam", "service.instance.id": "2"})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("vipwire")
    with (
        tracer.start_as_current_span("outer") as outer,
        tracer.start_as_current_span("inner") as inner,
    ):
        inner.set_attribute("k8s.service.name", "web")
        inner.set_status(Status(StatusCode.ERROR, "pool exhausted"))
    provider.shutdown()
    lines = exporter.path.read_text().splitlines()
    assert len(lines) == 2  # one batch per ended span with the simple processor
    data = json.loads(lines[0])
    span = data["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == format(outer.get_span_context().trace_id, "032x")
    spans = [s for line in lines for s in spans_of_line(line)]
    by_name = {s.name: s for s in spans}
    assert by_name["inner"].parent_id == by_name["outer"].span_id
    assert by_name["inner"].service == "vipwire-ipam:2"
    assert by_name["inner"].error == "pool exhausted"
    assert by_name["inner"].attributes["k8s.service.name"] == "web"


def test_a_line_that_is_not_otlp_json_is_refused() -> None:
    """Garbage in a span file is an error the reader can name, not a crash."""
    for line in ("not json", '{"spans": []}'):
        try:
            spans_of_line(line)
        except ValueError:
            continue
        raise AssertionError(f"accepted {line!r}")


def test_the_console_exporter_writes_one_readable_line_per_span() -> None:
    """The console exporter names trace, parent, service, span and duration on one line."""
    out = io.StringIO()
    provider = TracerProvider(resource=Resource.create({"service.name": "vipwire-watcher"}))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanLineExporter(out)))
    with provider.get_tracer("t").start_as_current_span("status write"):
        pass
    provider.shutdown()
    line = out.getvalue().strip()
    assert line.startswith("span trace=")
    assert 'vipwire-watcher "status write"' in line and " ms ok" in line


def test_the_file_exporter_without_a_directory_is_a_config_error() -> None:
    """`telemetry.exporter: file` without `file_dir` is refused, naming what to set."""
    from vipwire.runtime import ConfigError, TelemetrySettings, decode_settings

    try:
        decode_settings({"exporter": "file"}, TelemetrySettings, where="telemetry")
    except ConfigError as exc:
        assert "file_dir" in str(exc)
    else:
        raise AssertionError("exporter: file without file_dir was accepted")
    settings = decode_settings(
        {"exporter": "file", "file_dir": "/tmp/x"}, TelemetrySettings, where="telemetry"
    )
    assert settings.exporter == "file"
