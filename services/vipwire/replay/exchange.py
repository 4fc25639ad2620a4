"""The export format: one JSON object per stream message, one per line.

``{"seq":…,"time":…,"subject":…,"headers":{…},"data":<the payload>}``

``data`` is the payload itself, byte for byte, when it is a JSON value
written on one line without surrounding whitespace (every vipwire message
is): a reader sees the message as it is and can edit it. Any other payload
goes in ``data_b64`` (standard base64) instead. ``seq`` and ``time`` are
where the message was recorded (see :mod:`vipwire.replay.record`); an
import keeps them, so exporting an imported history gives the same file.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator

import msgspec

from vipwire.replay.record import Record, TimeFormatError, parse_time


class ExportFormatError(ValueError):
    """A line that is not an exported stream message."""


class _Line(msgspec.Struct, kw_only=True, omit_defaults=True):
    seq: int
    time: str
    subject: str
    headers: dict[str, str]
    #: Empty: absent (the payload is in data_b64).
    data: msgspec.Raw = msgspec.Raw()
    data_b64: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Line)


def embeddable(payload: bytes) -> bool:
    """Whether a payload can stand in a line as itself and come back byte for byte."""
    if not payload or payload != payload.strip() or b"\n" in payload or b"\r" in payload:
        return False
    if payload == b"null":
        return False  # would read back as "no data"
    try:
        payload.decode("utf-8")
        msgspec.json.decode(payload)
    except (UnicodeDecodeError, msgspec.DecodeError):
        return False
    return True


def encode_line(record: Record) -> bytes:
    """One record as one line (without the newline)."""
    line = _Line(seq=record.seq, time=record.time, subject=record.subject, headers=record.headers)
    if embeddable(record.data):
        line.data = msgspec.Raw(record.data)
    else:
        line.data_b64 = base64.b64encode(record.data).decode("ascii")
    return _encoder.encode(line)


def decode_line(raw: bytes, *, number: int = 0) -> Record:
    where = f"line {number}: " if number else ""
    try:
        line = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise ExportFormatError(f"{where}not an exported message: {exc}") from None
    embedded = bytes(line.data)
    if bool(embedded) == (line.data_b64 is not None):
        raise ExportFormatError(f"{where}needs exactly one of data and data_b64")
    if embedded:
        data = embedded
    else:
        try:
            data = base64.b64decode(line.data_b64 or "", validate=True)
        except binascii.Error as exc:
            raise ExportFormatError(f"{where}data_b64 is not base64: {exc}") from None
    try:
        time_ns = parse_time(line.time)
    except TimeFormatError as exc:
        raise ExportFormatError(f"{where}{exc}") from None
    return Record(
        seq=line.seq,
        time=line.time,
        time_ns=time_ns,
        subject=line.subject,
        headers=line.headers,
        data=data,
    )


def read_lines(lines: Iterable[bytes]) -> Iterator[Record]:
    """Records from an export, skipping blank lines; raises :class:`ExportFormatError`."""
    for number, raw in enumerate(lines, start=1):
        if raw.strip():
            yield decode_line(raw.rstrip(b"\r\n"), number=number)
