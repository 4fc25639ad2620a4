"""The dashboard's bus reader takes the trace id of each message from its headers."""

from __future__ import annotations

import pytest

from vipwire.dashboard.io.reading import trace_id_from

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class TestTraceId:
    def test_reads_the_trace_id_of_a_traceparent(self) -> None:
        """The trace id is the second field of a W3C traceparent."""
        headers = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
        assert trace_id_from(headers) == TRACE

    @pytest.mark.parametrize("value", ["", "garbage", f"00-{'0' * 32}-00f067aa0ba902b7-01"])
    def test_no_trace_id_from_a_missing_or_invalid_header(self, value: str) -> None:
        """Missing, malformed or all-zero trace ids are None, never an error."""
        assert trace_id_from({"traceparent": value} if value else {}) is None
