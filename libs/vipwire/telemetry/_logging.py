from __future__ import annotations

import logging
import sys

from vipwire.telemetry._tracing import trace_id_of_current_span

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [trace=%(trace_id)s] %(message)s"


class TraceIdFilter(logging.Filter):
    """Stamps every record with the current trace id, so a log line leads to its trace."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = trace_id_of_current_span() or "-"
        return True


def configure_logging(level: str | int = "INFO", stream: object = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.addFilter(TraceIdFilter())
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # nats-py logs every reconnect attempt at ERROR through its callbacks,
    # which the bus already reports once with context.
    logging.getLogger("nats").setLevel(logging.WARNING)
