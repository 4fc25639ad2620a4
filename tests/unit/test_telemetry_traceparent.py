"""parse_traceparent: the W3C traceparent header, valid or None."""

from __future__ import annotations

import pytest

from vipwire.telemetry import TraceParent, parse_traceparent

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


def test_a_valid_header() -> None:
    """Version 00 gives the ids as written and the sampled flag."""
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-01") == TraceParent(TRACE, SPAN, True, 1)
    assert parse_traceparent(f" 00-{TRACE}-{SPAN}-00\t") == TraceParent(TRACE, SPAN, False, 0)


def test_a_later_version_may_append_fields() -> None:
    """A version above 00 may carry more fields, which are ignored."""
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-03-what") == TraceParent(TRACE, SPAN, True, 3)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"00-{TRACE.upper()}-{SPAN}-01",
        f"00-{'0' * 32}-{SPAN}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"ff-{TRACE}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}-01-extra",
        f"00-{TRACE[:-1]}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}-1",
        f"0-{TRACE}-{SPAN}-01",
        f"00-{TRACE[:-1]}g-{SPAN}-01",
    ],
)
def test_invalid_headers_are_none(value: str | None) -> None:
    """Anything the W3C spec says to ignore parses to None."""
    assert parse_traceparent(value) is None
