"""Replay's plain parts: times, bounds, scopes, the export format and timeline rows."""

from __future__ import annotations

import pytest

from vipwire.contracts import (
    LbProgrammed,
    Member,
    ServicePort,
    ServiceSnapshot,
    encode,
    subject_for,
)
from vipwire.replay import (
    RECORDED_SEQ,
    RECORDED_TIME,
    Bound,
    BoundError,
    ExportFormatError,
    Record,
    Scope,
    decode_line,
    encode_line,
    format_time,
    parse_bound,
    parse_service,
    parse_time,
    read_lines,
    row_of,
    table_row,
)
from vipwire.replay.record import import_headers, stored_record

NS = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z


def record(data: bytes, *, subject: str = "vipwire.east.service.shop.web") -> Record:
    return Record(
        seq=7,
        time=format_time(NS),
        time_ns=NS,
        subject=subject,
        headers={
            "Nats-Msg-Id": "east/u/1/service",
            "traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
        },
        data=data,
    )


SNAPSHOT = ServiceSnapshot(
    cluster="east",
    namespace="shop",
    name="web",
    uid="u",
    resource_version="1",
    ports=(ServicePort(port=80),),
)


class TestTimes:
    def test_times_print_with_nanoseconds_and_read_back_exactly(self) -> None:
        """format_time and parse_time are inverses, to the nanosecond."""
        text = format_time(NS)
        assert text == "2026-01-01T00:00:00.123456789Z"
        assert parse_time(text) == NS

    def test_iso_times_without_zone_are_utc_and_offsets_are_honoured(self) -> None:
        """No zone means UTC; +02:00 is two hours earlier in UTC; minutes alone are fine."""
        assert parse_time("2026-01-01T00:00:00") == NS - 123456789
        assert parse_time("2026-01-01T02:00:00+02:00") == NS - 123456789
        assert parse_time("2026-01-01 00:00") == NS - 123456789

    def test_bounds_are_sequences_or_times(self) -> None:
        """seq:N and ISO times; anything else is refused with a hint."""
        assert parse_bound("seq:42") == Bound(seq=42)
        assert parse_bound("2026-01-01T00:00:00.123456789Z") == Bound(time_ns=NS)
        for bad in ("seq:x", "seq:0", "yesterday"):
            with pytest.raises(BoundError):
                parse_bound(bad)

    def test_bounds_are_inclusive(self) -> None:
        """A message at the bound is inside the range, from either end."""
        assert not Bound(seq=5).before(5, 0) and Bound(seq=5).before(4, 0)
        assert not Bound(time_ns=NS).after(9, NS) and Bound(time_ns=NS).after(9, NS + 1)


class TestScopes:
    def test_each_scope_is_one_stream_filter(self) -> None:
        """All, one cluster, one Service (its five per-Service families, no node subjects)."""
        assert Scope().filter == "vipwire.>"
        assert Scope(cluster="east").filter == "vipwire.east.>"
        assert parse_service("east/shop/web").filter == "vipwire.east.*.shop.web"

    def test_a_service_must_be_cluster_namespace_name(self) -> None:
        """Malformed Service names are refused before anything is read."""
        for bad in ("east/web", "East/shop/web", "east/shop/web.x"):
            with pytest.raises(BoundError):
                parse_service(bad)


class TestExportFormat:
    def test_a_json_payload_is_embedded_verbatim_and_reads_back_byte_for_byte(self) -> None:
        """The message stands in the line as itself; decoding gives the same record."""
        original = record(encode(SNAPSHOT))
        line = encode_line(original)
        assert b'"data":{"kind":"service"' in line
        assert decode_line(line) == original
        assert encode_line(decode_line(line)) == line

    @pytest.mark.parametrize(
        "payload",
        [b"\xff\xfe not utf-8", b'{"a": 1}\n', b" {}", b"", b"null", b"not json"],
    )
    def test_other_payloads_travel_as_base64(self, payload: bytes) -> None:
        """Anything that would not come back byte for byte as JSON is base64."""
        line = encode_line(record(payload))
        assert b'"data_b64"' in line and b"\n" not in line
        assert decode_line(line).data == payload

    def test_lines_that_are_not_exports_are_refused_with_their_number(self) -> None:
        """A broken line names itself; blank lines are skipped."""
        good = encode_line(record(b"{}"))
        with pytest.raises(ExportFormatError, match="line 3"):
            list(read_lines([good, b"\n", b'{"seq": 1}']))
        assert len(list(read_lines([good, b"  \n", good]))) == 2

    def test_an_import_keeps_the_recorded_place_in_headers_which_reading_takes_back(self) -> None:
        """Recorded seq/time ride as headers and become the record's seq/time again."""
        original = record(b"{}")
        headers = import_headers(original)
        assert headers[RECORDED_SEQ] == "7" and headers[RECORDED_TIME] == original.time
        again = stored_record(
            seq=1, time_ns=5, subject=original.subject, headers=headers, data=b"{}"
        )
        assert again == original


class TestRows:
    def test_a_row_names_family_object_kind_and_trace(self) -> None:
        """A Service snapshot row: family, ns/name, kind, a summary and the short trace id."""
        row = row_of(record(encode(SNAPSHOT)))
        assert (row.family, row.cluster, row.object, row.kind) == (
            "service",
            "east",
            "shop/web",
            "service",
        )
        assert row.summary == "80/TCP · Cluster"
        assert row.trace_id == "ab" * 16
        assert table_row(row).endswith("abababab")

    def test_programmed_rows_list_members_and_malformed_rows_say_why(self) -> None:
        """LbProgrammed summarises VIPs and members; a payload on the wrong subject is malformed."""
        lb = LbProgrammed(
            cluster="east",
            namespace="shop",
            name="web",
            uid="u",
            appliance="sim-1",
            vips=("198.51.100.1",),
            ports=(ServicePort(port=80),),
            members=(Member(node="n1", address="192.0.2.1"),),
        )
        row = row_of(record(encode(lb), subject=subject_for(lb)))
        assert "198.51.100.1 80/TCP on sim-1" in row.summary and "n1=192.0.2.1" in row.summary
        wrong = row_of(record(encode(lb), subject="vipwire.east.lb.shop.other"))
        assert wrong.kind == "malformed" and "belongs on" in wrong.summary
