"""Tracing and logging shared by every service.

Each service gets its own TracerProvider (so ``service.name`` is right even
when several services share one process, as in ``vipwire up``); nothing here
installs a global provider.
"""

from vipwire.telemetry._exporters import (
    ConsoleSpanLineExporter,
    OtlpJsonFileExporter,
    span_file,
    traces_data,
)
from vipwire.telemetry._logging import TraceIdFilter, configure_logging
from vipwire.telemetry._traceparent import TraceParent, parse_traceparent
from vipwire.telemetry._tracing import (
    TRACEPARENT,
    extract_context,
    inject_context,
    make_tracer_provider,
    trace_id_of_current_span,
)
from vipwire.telemetry._waterfall import SpanRecord, spans_of_line, spans_of_trace, waterfall

__all__ = [
    "TRACEPARENT",
    "ConsoleSpanLineExporter",
    "OtlpJsonFileExporter",
    "SpanRecord",
    "TraceIdFilter",
    "TraceParent",
    "configure_logging",
    "extract_context",
    "inject_context",
    "make_tracer_provider",
    "parse_traceparent",
    "span_file",
    "spans_of_line",
    "spans_of_trace",
    "trace_id_of_current_span",
    "traces_data",
    "waterfall",
]
