"""What a slice of history is (scope and bounds) and how it reads: rows for people,
JSON lines for tools. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec

from vipwire.contracts import (
    ROOT,
    MalformedMessage,
    SubjectError,
    summary,
    validate_cluster,
    validate_namespace,
    validate_service_name,
)
from vipwire.replay.exchange import embeddable
from vipwire.replay.record import Record, TimeFormatError, parse_time


class BoundError(ValueError):
    """A ``--since``/``--until`` or ``--service`` that cannot be understood."""


class Bound(msgspec.Struct, frozen=True, kw_only=True):
    """One end of a range: a recorded sequence number or a time (inclusive)."""

    seq: int | None = None
    time_ns: int | None = None

    def before(self, seq: int, time_ns: int) -> bool:
        """A message at ``seq``/``time_ns`` lies before this bound (used as a start)."""
        if self.seq is not None:
            return seq < self.seq
        return self.time_ns is not None and time_ns < self.time_ns

    def after(self, seq: int, time_ns: int) -> bool:
        """A message at ``seq``/``time_ns`` lies after this bound (used as an end)."""
        if self.seq is not None:
            return seq > self.seq
        return self.time_ns is not None and time_ns > self.time_ns


def parse_bound(text: str) -> Bound:
    """``seq:123`` or an ISO 8601 time (no zone: UTC)."""
    text = text.strip()
    if text.lower().startswith("seq:"):
        try:
            seq = int(text[4:])
        except ValueError:
            raise BoundError(f"{text!r}: expected seq:<number>") from None
        if seq < 1:
            raise BoundError(f"{text!r}: sequence numbers start at 1")
        return Bound(seq=seq)
    try:
        return Bound(time_ns=parse_time(text))
    except TimeFormatError as exc:
        raise BoundError(f"{exc}, or seq:<number>") from None


class Scope(msgspec.Struct, frozen=True, kw_only=True):
    """All of history, one cluster's, or one Service's."""

    cluster: str | None = None
    namespace: str | None = None
    name: str | None = None

    @property
    def filter(self) -> str:
        """The one subject filter that selects this scope in the stream."""
        if self.cluster is None:
            return f"{ROOT}.>"
        if self.name is None:
            return f"{ROOT}.{self.cluster}.>"
        # Five tokens: every per-Service family (service, endpoints, vip, lb,
        # status) of this Service; per-node subjects have four.
        return f"{ROOT}.{self.cluster}.*.{self.namespace}.{self.name}"

    def covers(self, cluster: str, namespace: str | None = None, name: str | None = None) -> bool:
        if self.cluster is not None and cluster != self.cluster:
            return False
        if self.name is None:
            return True
        return (namespace, name) == (self.namespace, self.name)

    def describe(self) -> str:
        if self.cluster is None:
            return "all clusters"
        if self.name is None:
            return f"cluster {self.cluster}"
        return f"Service {self.cluster}/{self.namespace}/{self.name}"


def parse_service(text: str) -> Scope:
    """``CLUSTER/NAMESPACE/NAME``."""
    parts = text.split("/")
    if len(parts) != 3:
        raise BoundError(f"{text!r}: expected CLUSTER/NAMESPACE/NAME")
    try:
        return Scope(
            cluster=validate_cluster(parts[0]),
            namespace=validate_namespace(parts[1]),
            name=validate_service_name(parts[2]),
        )
    except SubjectError as exc:
        raise BoundError(str(exc)) from None


def parse_cluster(text: str) -> Scope:
    try:
        return Scope(cluster=validate_cluster(text))
    except SubjectError as exc:
        raise BoundError(str(exc)) from None


# --- rows -----------------------------------------------------------------------


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the timeline."""

    seq: int
    time: str
    subject: str
    family: str
    cluster: str
    #: ``ns/name`` for a Service, the node name for a node.
    object: str
    kind: str
    summary: str
    trace_id: str | None
    msg_id: str | None


def row_of(record: Record) -> Row:
    parsed = record.parsed()
    message = record.decoded()
    if isinstance(message, MalformedMessage):
        kind, line = "malformed", message.reason
    else:
        kind, line = str(type(message).__struct_config__.tag), summary(message)
    return Row(
        seq=record.seq,
        time=record.time,
        subject=record.subject,
        family=parsed.family if parsed else "?",
        cluster=parsed.cluster if parsed else "?",
        object=parsed.key if parsed else record.subject,
        kind=kind,
        summary=line,
        trace_id=record.trace_id,
        msg_id=record.msg_id,
    )


# --- rendering ------------------------------------------------------------------

HEADER: Final = (
    "TIME (UTC)",
    "SEQ",
    "FAMILY",
    "CLUSTER",
    "SERVICE/NODE",
    "KIND",
    "SUMMARY",
    "TRACE",
)
_SUMMARY_WIDTH: Final = 60


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table_line(cells: Sequence[str]) -> str:
    time, seq, family, cluster, obj, kind, summary, trace = cells
    return (
        f"{time:<23}  {seq:>7}  {family:<9}  {_clip(cluster, 10):<10}  {_clip(obj, 24):<24}  "
        f"{kind:<14}  {_clip(summary, _SUMMARY_WIDTH):<{_SUMMARY_WIDTH}}  {trace}"
    ).rstrip()


def table_header() -> str:
    return table_line(HEADER)


def table_row(row: Row) -> str:
    """A row as fixed-width columns (the summary clipped; --json has it whole)."""
    time = row.time.replace("T", " ")[:23]
    return table_line(
        (
            time,
            str(row.seq),
            row.family,
            row.cluster,
            row.object,
            row.kind,
            row.summary,
            (row.trace_id or "")[:8],
        )
    )


class _JsonRow(msgspec.Struct, kw_only=True):
    seq: int
    time: str
    subject: str
    family: str
    cluster: str
    object: str
    kind: str
    summary: str
    trace_id: str | None
    msg_id: str | None
    #: The payload as it is (JSON), or null when it is not JSON.
    message: msgspec.Raw


_row_encoder = msgspec.json.Encoder()


def json_row(row: Row, record: Record) -> bytes:
    """A row for tools: every column in full, and the message itself."""
    payload = msgspec.Raw(record.data if embeddable(record.data) else b"null")
    return _row_encoder.encode(
        _JsonRow(
            seq=row.seq,
            time=row.time,
            subject=row.subject,
            family=row.family,
            cluster=row.cluster,
            object=row.object,
            kind=row.kind,
            summary=row.summary,
            trace_id=row.trace_id,
            msg_id=row.msg_id,
            message=payload,
        )
    )
