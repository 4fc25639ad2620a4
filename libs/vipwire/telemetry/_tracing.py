from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from vipwire.telemetry._exporters import ConsoleSpanLineExporter, OtlpJsonFileExporter

_propagator: Final = TraceContextTextMapPropagator()


def make_tracer_provider(
    service_name: str,
    *,
    processors: Sequence[SpanProcessor] = (),
    otlp_endpoint: str | None = None,
    attributes: Mapping[str, str] | None = None,
    exporter: str = "otlp",
    file_dir: str | None = None,
) -> TracerProvider:
    """A provider for one service, exporting as ``exporter`` says:

    - ``otlp``: over OTLP/HTTP when an endpoint is known (``otlp_endpoint``, default
      ``OTEL_EXPORTER_OTLP_ENDPOINT``, the standard variable, so a deployment
      configures every service the same way); no export without one;
    - ``file``: OTLP-JSON lines in ``file_dir`` (read them with ``vipwire trace``);
    - ``console``: one readable line per span on stderr.
    """
    resource = Resource.create({"service.name": service_name, **(attributes or {})})
    provider = TracerProvider(resource=resource)
    for processor in processors:
        provider.add_span_processor(processor)
    if exporter == "file":
        if not file_dir:
            raise ValueError("telemetry.exporter is file but telemetry.file_dir is not set")
        # A short delay: `vipwire trace` right after a change should find its spans.
        provider.add_span_processor(
            BatchSpanProcessor(OtlpJsonFileExporter(file_dir), schedule_delay_millis=200)
        )
        return provider
    if exporter == "console":
        provider.add_span_processor(
            BatchSpanProcessor(ConsoleSpanLineExporter(), schedule_delay_millis=200)
        )
        return provider
    if exporter != "otlp":
        raise ValueError(f"telemetry.exporter {exporter!r}: use otlp, console or file")
    endpoint = otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint:
        # Imported lazily: the exporter pulls in protobuf, which a run
        # without a collector never needs.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        traces_url = endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url)))
    return provider


def inject_context(headers: dict[str, str], ctx: otel_context.Context | None = None) -> None:
    """Write the W3C trace context of ``ctx`` (default: the current one) into headers."""
    _propagator.inject(headers, context=ctx)


def extract_context(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The parent context carried by a message's headers (empty if none)."""
    return _propagator.extract(dict(headers or {}))


def trace_id_of_current_span() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x")
