"""``vipwire trace TRACE_ID``: one trace's spans as an indented waterfall, without Jaeger.

Reads the OTLP-JSON lines the ``file`` exporter writes (``telemetry.exporter: file``;
``vipwire up`` writes them to ``<state dir>/traces``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

#: The span store when ``--store`` is not given.
STORE_ENV = "VIPWIRE_TRACE_DIR"

EXAMPLE = """example:
  vipwire trace 4bf92f3577b34da6a3ce929d0e0e4736 --store /tmp/vw/traces
  (the id: a Service's vipwire.io/last-trace-id annotation, or the dashboard)"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "trace",
        help="print a trace's spans as a waterfall, from the file exporter's store",
        description="Print one trace's spans as an indented waterfall (parent above child;\n"
        "offset from the trace's start and duration in ms; the service of each span),\n"
        "read from the OTLP-JSON files of `telemetry.exporter: file`.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "trace_id",
        metavar="TRACE_ID",
        help="the trace id: 32 hex digits (a Service's vipwire.io/last-trace-id annotation)",
    )
    parser.add_argument(
        "--store",
        metavar="DIR",
        help=f"the span files' directory (telemetry.file_dir; a `vipwire up` state directory "
        f"also works); default: ${STORE_ENV}",
    )
    return parser


def _store(args: argparse.Namespace) -> Path | None:
    raw = args.store or os.environ.get(STORE_ENV)
    if not raw:
        return None
    path = Path(raw)
    # A `vipwire up` state directory: its spans are in traces/.
    if (path / "traces").is_dir() and not any(path.glob("*.jsonl")):
        return path / "traces"
    return path


def execute(args: argparse.Namespace) -> int:
    from vipwire.telemetry import SpanRecord, spans_of_line, spans_of_trace, waterfall

    trace_id = str(args.trace_id).strip().lower()
    if len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
        print(
            f"vipwire trace: {args.trace_id!r} is not a trace id (32 hex digits, as in the "
            "vipwire.io/last-trace-id annotation)",
            file=sys.stderr,
        )
        return 2
    store = _store(args)
    if store is None:
        print(
            f"vipwire trace: no span store: give --store DIR (telemetry.file_dir; `vipwire up` "
            f"keeps spans in <state dir>/traces) or set {STORE_ENV}",
            file=sys.stderr,
        )
        return 2
    if not store.is_dir():
        print(
            f"vipwire trace: {store} is not a directory; give the telemetry.file_dir of the "
            "file exporter",
            file=sys.stderr,
        )
        return 2
    files = sorted(store.glob("*.jsonl"))
    spans: list[SpanRecord] = []
    bad = 0
    for file in files:
        try:
            text = file.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            print(f"vipwire trace: cannot read {file}: {exc.strerror}", file=sys.stderr)
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if trace_id not in line:  # cheap: most lines are other traces
                continue
            try:
                spans.extend(spans_of_line(line))
            except ValueError as exc:
                bad += 1
                if bad <= 3:
                    print(f"vipwire trace: {file}:{number}: skipped: {exc}", file=sys.stderr)
    found = spans_of_trace(spans, trace_id)
    if not found:
        print(
            f"vipwire trace: no span of trace {trace_id} in {len(files)} file(s) under {store} "
            "(spans reach the files within a second; is telemetry.exporter file there?)",
            file=sys.stderr,
        )
        return 1
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 0
    for line in waterfall(found, width=width):
        print(line)
    return 0
