"""The consumer's per-message shortcuts read exactly what nats-py and OpenTelemetry would."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from vipwire.bus._consumer import _ack_fields, _parent_context
from vipwire.contracts import (
    LbProgrammed,
    MalformedMessage,
    NodeApplied,
    decode,
    decode_parsed,
    encode,
    family_of,
    parse_subject,
    subject_for,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


def _msg(reply: str) -> Msg:
    return Msg(_client=None, subject="vipwire.east.lb.default.web", reply=reply)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.VIPWIRE.ipam.3.1234.77.1732680000123456789.5",
        "$JS.ACK.hub.ACCHASH.VIPWIRE.ipam.3.1234.77.1732680000123456789.5.rand",
        "$JS.ACK._.ACCHASH.VIPWIRE.ipam.1.9.9.1732680000000000000.0",
    ],
)
def test_ack_fields_match_nats_py_metadata(reply: str) -> None:
    """Stream sequence, deliveries and storage time, for the v1 and the v2 ack layouts."""
    meta = _msg(reply).metadata
    seq, delivered, stored = _ack_fields(_msg(reply))
    assert (seq, delivered) == (meta.sequence.stream, meta.num_delivered)
    assert stored == pytest.approx(meta.timestamp.timestamp(), abs=1e-6)


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": f"00-{TRACE}-{SPAN}-01"},
        {"traceparent": f"00-{TRACE}-{SPAN}-00", "Nats-Msg-Id": "x"},
        {"traceparent": f"00-{TRACE}-{SPAN}-01", "tracestate": "vendor=value"},
        {"traceparent": f"00-{TRACE.upper()}-{SPAN}-01"},
        {"traceparent": f"00-{'0' * 32}-{SPAN}-01"},
        {"traceparent": f"00-{TRACE}-{'0' * 16}-01"},
        {"traceparent": f"ff-{TRACE}-{SPAN}-01"},
        {"traceparent": f"00-{TRACE}-{SPAN}-01-extra"},
        {"traceparent": "garbage"},
        {"Nats-Msg-Id": "no trace"},
        {},
    ],
)
def test_parent_context_matches_the_w3c_propagator(headers: dict[str, str]) -> None:
    """Valid, invalid, sampled or not, with tracestate or not: the same parent span."""
    ours = trace.get_current_span(_parent_context(headers)).get_span_context()
    theirs = trace.get_current_span(
        TraceContextTextMapPropagator().extract(dict(headers))
    ).get_span_context()
    assert ours == theirs
    assert ours.trace_state == theirs.trace_state


def test_decode_parsed_checks_the_payload_belongs_on_its_subject() -> None:
    """A payload naming another object (or family) than its subject is malformed, with
    the subject it belongs on; the right one decodes."""
    lb = LbProgrammed(
        cluster="east",
        namespace="default",
        name="web",
        uid="u",
        appliance="sim-1",
        vips=("198.51.100.7",),
        ports=(),
        members=(),
    )
    data = encode(lb)
    assert family_of(lb) == "lb"
    assert decode_parsed(parse_subject(subject_for(lb)), data) == lb
    with pytest.raises(MalformedMessage, match=r"belongs on 'vipwire\.east\.lb\.default\.web'"):
        decode("vipwire.east.lb.default.api", data)
    with pytest.raises(MalformedMessage, match="belongs on"):
        decode("vipwire.west.lb.default.web", data)
    applied = NodeApplied(cluster="east", node="n1.example", generation=1, vips=())
    assert family_of(applied) == "applied"
    assert decode("vipwire.east.applied.n1_example", encode(applied)) == applied
    with pytest.raises(MalformedMessage, match="belongs on"):
        decode("vipwire.east.applied.n2_example", encode(applied))
