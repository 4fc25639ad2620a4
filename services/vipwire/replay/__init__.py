"""Replay: the ``VIPWIRE`` stream read back as a timeline, rerun, exported, imported.

Not a service: it composes the pure cores of ipam, lbdriver and nodeagent
(see :mod:`vipwire.replay.rerun`), so no service may import it. Pure parts:
:mod:`.record` (a message and its recorded place in time), :mod:`.exchange`
(the export format), :mod:`.timeline` (scope, bounds, rows),
:mod:`.rerun`. I/O: :mod:`.source` (a live server or a copy of a store).
"""

from vipwire.replay.exchange import ExportFormatError, decode_line, encode_line, read_lines
from vipwire.replay.record import RECORDED_SEQ, RECORDED_TIME, Record, format_time, parse_time
from vipwire.replay.rerun import DEFAULT_LAG, DEFAULT_SETTLE, Divergence, RerunResult, render, rerun
from vipwire.replay.source import (
    ReplayError,
    ReplayUnreachable,
    StreamState,
    find_stream_dir,
    import_records,
    open_source,
    open_target,
    read_records,
    stream_state,
)
from vipwire.replay.timeline import (
    Bound,
    BoundError,
    Row,
    Scope,
    json_row,
    parse_bound,
    parse_cluster,
    parse_service,
    row_of,
    table_header,
    table_row,
)

__all__ = [
    "DEFAULT_LAG",
    "DEFAULT_SETTLE",
    "RECORDED_SEQ",
    "RECORDED_TIME",
    "Bound",
    "BoundError",
    "Divergence",
    "ExportFormatError",
    "Record",
    "ReplayError",
    "ReplayUnreachable",
    "RerunResult",
    "Row",
    "Scope",
    "StreamState",
    "decode_line",
    "encode_line",
    "find_stream_dir",
    "format_time",
    "import_records",
    "json_row",
    "open_source",
    "open_target",
    "parse_bound",
    "parse_cluster",
    "parse_service",
    "parse_time",
    "read_lines",
    "read_records",
    "render",
    "rerun",
    "row_of",
    "stream_state",
    "table_header",
    "table_row",
]
