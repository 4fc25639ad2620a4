"""Tracing and logging shared by every service.

Each service gets its own TracerProvider (so ``service.name`` is right even
when several services share one process, as in ``vipwire up``); nothing here
installs a global provider.

The span waterfall (``vipwire trace``) and the traceparent parser are imported at
once; everything that brings the OpenTelemetry SDK on first use of one of its names.
"""

from typing import TYPE_CHECKING

from vipwire.telemetry._traceparent import TRACEPARENT, TraceParent, parse_traceparent
from vipwire.telemetry._waterfall import SpanRecord, spans_of_line, spans_of_trace, waterfall

if TYPE_CHECKING:
    from vipwire.telemetry._exporters import (
        ConsoleSpanLineExporter,
        OtlpJsonFileExporter,
        span_file,
        traces_data,
    )
    from vipwire.telemetry._logging import TraceIdFilter, configure_logging
    from vipwire.telemetry._tracing import (
        extract_context,
        inject_context,
        make_tracer_provider,
        trace_id_of_current_span,
    )
else:
    #: Where each name imported on first use lives (all of them bring the SDK).
    _LAZY = {
        "ConsoleSpanLineExporter": "_exporters",
        "OtlpJsonFileExporter": "_exporters",
        "span_file": "_exporters",
        "traces_data": "_exporters",
        "TraceIdFilter": "_logging",
        "configure_logging": "_logging",
        "extract_context": "_tracing",
        "inject_context": "_tracing",
        "make_tracer_provider": "_tracing",
        "trace_id_of_current_span": "_tracing",
    }

    def __getattr__(name: str) -> object:
        """Imports the module that defines ``name`` on its first use."""
        where = _LAZY.get(name)
        if where == "_exporters":
            from vipwire.telemetry import _exporters as module
        elif where == "_logging":
            from vipwire.telemetry import _logging as module
        elif where == "_tracing":
            from vipwire.telemetry import _tracing as module
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(module, name)
        globals()[name] = value
        return value


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
