"""One message of the ``VIPWIRE`` stream as replay sees it, and how it is named in time.

A record keeps the payload as the exact bytes the stream holds: decoding is
for reading, never for passing on. Its ``seq`` and ``time`` are where the
message sits in the history it was *recorded* in: for a stream filled by
``vipwire replay --import`` those come from the ``Vipwire-Recorded-*``
headers the import wrote, so a divergence found in a bug report's history
names the same sequence number as the reporter's own stream.
"""

from __future__ import annotations

import datetime
import re
from typing import Final

import msgspec

from vipwire.contracts import (
    MalformedMessage,
    Message,
    Subject,
    SubjectError,
    decode,
    parse_subject,
)
from vipwire.telemetry import TRACEPARENT, parse_traceparent

#: Headers an import adds so that the original sequence and time survive it.
RECORDED_SEQ: Final = "Vipwire-Recorded-Seq"
RECORDED_TIME: Final = "Vipwire-Recorded-Time"

_NS: Final = 1_000_000_000
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_ISO: Final = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<clock>\d{2}:\d{2}(?::\d{2})?)"
    r"(?:[.,](?P<fraction>\d{1,9}))?(?P<zone>Z|z|[+-]\d{2}:?\d{2})?$"
)


class TimeFormatError(ValueError):
    """A text that is not an ISO 8601 / RFC 3339 time."""


def format_time(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 UTC with nine fraction digits."""
    seconds, fraction = divmod(ns, _NS)
    moment = _EPOCH + datetime.timedelta(seconds=seconds)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"


def parse_time(text: str) -> int:
    """An ISO 8601 time as nanoseconds since the epoch; no zone means UTC."""
    match = _ISO.match(text.strip())
    if match is None:
        raise TimeFormatError(f"{text!r} is not an ISO 8601 time (e.g. 2025-01-31T12:00:00Z)")
    zone = match["zone"] or "Z"
    if zone in ("Z", "z"):
        zone = "+00:00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    clock = match["clock"] if match["clock"].count(":") == 2 else f"{match['clock']}:00"
    try:
        moment = datetime.datetime.fromisoformat(f"{match['date']}T{clock}{zone}")
    except ValueError as exc:
        raise TimeFormatError(f"{text!r} is not a valid time: {exc}") from None
    whole = (moment - _EPOCH) // datetime.timedelta(seconds=1)
    fraction = int((match["fraction"] or "0").ljust(9, "0"))
    return whole * _NS + fraction


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """One stream message: where it sits in its recorded history, and its exact bytes."""

    seq: int
    #: RFC 3339 text as recorded (kept verbatim so an export reproduces it).
    time: str
    time_ns: int
    subject: str
    #: Every header but the ``Vipwire-Recorded-*`` ones, in the order stored.
    headers: dict[str, str]
    data: bytes

    @property
    def msg_id(self) -> str | None:
        return self.headers.get("Nats-Msg-Id")

    @property
    def trace_id(self) -> str | None:
        """The W3C trace id from ``traceparent`` (32 hex digits), if there is one."""
        parent = parse_traceparent(self.headers.get(TRACEPARENT))
        return None if parent is None else parent.trace_id

    def parsed(self) -> Subject | None:
        try:
            return parse_subject(self.subject)
        except SubjectError:
            return None

    def decoded(self) -> Message | MalformedMessage:
        """The contract message, or why the payload is not one."""
        try:
            return decode(self.subject, self.data)
        except MalformedMessage as exc:
            return exc


def stored_record(
    *, seq: int, time_ns: int, subject: str, headers: dict[str, str] | None, data: bytes
) -> Record:
    """A record from what a stream returns: recorded seq/time headers win over the stream's."""
    headers = dict(headers or {})
    recorded_seq = headers.pop(RECORDED_SEQ, None)
    recorded_time = headers.pop(RECORDED_TIME, None)
    time = format_time(time_ns)
    if recorded_seq is not None and recorded_time is not None:
        try:
            seq, time_ns, time = int(recorded_seq), parse_time(recorded_time), recorded_time
        except (ValueError, TimeFormatError):
            # Not ours after all: keep them visible rather than guess.
            headers[RECORDED_SEQ] = recorded_seq
            headers[RECORDED_TIME] = recorded_time
    return Record(seq=seq, time=time, time_ns=time_ns, subject=subject, headers=headers, data=data)


def import_headers(record: Record) -> dict[str, str]:
    """The headers an import publishes: the record's own, then where it was recorded."""
    return {**record.headers, RECORDED_SEQ: str(record.seq), RECORDED_TIME: record.time}
