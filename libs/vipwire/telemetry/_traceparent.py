"""The W3C ``traceparent`` header, read without the SDK's regular expression."""

from __future__ import annotations

from typing import Final, NamedTuple

#: The header (and message header) that carries a span's context.
TRACEPARENT: Final = "traceparent"
_HEX: Final = frozenset("0123456789abcdef")
_SAMPLED: Final = 0x01


class TraceParent(NamedTuple):
    """A valid ``traceparent``: ids as lowercase hex, as the header carries them."""

    trace_id: str
    span_id: str
    sampled: bool
    #: Every trace flag (``sampled`` is bit 0), for a context rebuilt from the header.
    flags: int


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The trace context of a ``traceparent`` value; None if absent or invalid.

    Follows W3C Trace Context: version ``ff`` is invalid, version ``00`` has
    exactly four fields, a later version may append fields (ignored here), and
    an all-zero trace or span id is invalid. Lowercase only, as the spec says.
    """
    if not value:
        return None
    parts = value.strip(" \t").split("-")
    if len(parts) < 4:
        return None
    version, trace_id, span_id, flags = parts[0], parts[1], parts[2], parts[3]
    if (
        len(version) != 2
        or version == "ff"
        or (version == "00" and len(parts) != 4)
        or len(trace_id) != 32
        or len(span_id) != 16
        or len(flags) != 2
        or not _HEX.issuperset(version + trace_id + span_id + flags)
        or trace_id == "0" * 32
        or span_id == "0" * 16
    ):
        return None
    bits = int(flags, 16)
    return TraceParent(trace_id, span_id, bool(bits & _SAMPLED), bits)
