"""One encoder and one decoder for everything on the bus."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from vipwire.contracts._messages import (
    SCHEMA_VERSION,
    AppliedMessage,
    EndpointsMessage,
    LbMessage,
    Message,
    NodeApplied,
    NodeGone,
    NodeMessage,
    NodeSnapshot,
    ServiceMessage,
    StatusMessage,
    VipMessage,
)
from vipwire.contracts._subjects import SubjectError, node_subject, parse_subject, service_subject


class MalformedMessage(ValueError):
    """A payload that does not decode as its subject's contract says.

    Poison for any consumer: it will never decode, however often it is tried.
    """

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"malformed message on {subject!r}: {reason}")
        self.subject = subject
        self.reason = reason


_encoder: Final = msgspec.json.Encoder()
_decoders: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    "service": msgspec.json.Decoder(ServiceMessage),
    "endpoints": msgspec.json.Decoder(EndpointsMessage),
    "node": msgspec.json.Decoder(NodeMessage),
    "vip": msgspec.json.Decoder(VipMessage),
    "lb": msgspec.json.Decoder(LbMessage),
    "applied": msgspec.json.Decoder(AppliedMessage),
    "status": msgspec.json.Decoder(StatusMessage),
}
_FAMILY_OF: Final[dict[str, str]] = {
    "service": "service",
    "service-gone": "service",
    "endpoints": "endpoints",
    "node": "node",
    "node-gone": "node",
    "vip-assigned": "vip",
    "vip-releasing": "vip",
    "vip-released": "vip",
    "vip-failed": "vip",
    "lb-programmed": "lb",
    "lb-failed": "lb",
    "lb-removed": "lb",
    "node-applied": "applied",
    "status-written": "status",
}


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def subject_for(message: Message) -> str:
    """The one subject a message belongs on, built from its own fields."""
    tag = type(message).__struct_config__.tag
    family = _FAMILY_OF[str(tag)]
    if isinstance(message, NodeSnapshot | NodeGone | NodeApplied):
        return node_subject(family, message.cluster, message.node)  # type: ignore[arg-type]
    return service_subject(
        family,  # type: ignore[arg-type]
        message.cluster,
        message.namespace,
        message.name,
    )


def decode(subject: str, data: bytes) -> Message:
    """Decode a payload for its subject, or raise :class:`MalformedMessage`.

    The payload must name the same cluster and object as its subject: a
    message filed under the wrong subject would corrupt whoever keys on it.
    """
    try:
        parsed = parse_subject(subject)
    except SubjectError as exc:
        raise MalformedMessage(subject, str(exc)) from exc
    try:
        message: Message = _decoders[parsed.family].decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedMessage(subject, str(exc)) from exc
    if message.v != SCHEMA_VERSION:
        raise MalformedMessage(
            subject, f"schema version {message.v} is not {SCHEMA_VERSION} (upgrade this consumer)"
        )
    try:
        expected = subject_for(message)
    except SubjectError as exc:
        raise MalformedMessage(subject, str(exc)) from exc
    if expected != subject:
        raise MalformedMessage(subject, f"payload belongs on {expected!r}")
    return message
