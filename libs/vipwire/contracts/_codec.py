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
from vipwire.contracts._subjects import (
    Family,
    Subject,
    SubjectError,
    node_subject,
    parse_subject,
    service_subject,
)


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
    "service-rejected": "service",
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


def family_of(message: Message) -> Family:
    """The subject family a message is published in (``service``, ``vip``, …)."""
    return _FAMILY_OF[str(type(message).__struct_config__.tag)]  # type: ignore[return-value]


def subject_for(message: Message) -> str:
    """The one subject a message belongs on, built from its own fields."""
    family = family_of(message)
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
    return decode_parsed(parsed, data)


def decode_parsed(subject: Subject, data: bytes) -> Message:
    """:func:`decode` for a subject already parsed (consumers parse each one once)."""
    try:
        message: Message = _decoders[subject.family].decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedMessage(subject.raw, str(exc)) from exc
    if message.v != SCHEMA_VERSION:
        raise MalformedMessage(
            subject.raw,
            f"schema version {message.v} is not {SCHEMA_VERSION} (upgrade this consumer)",
        )
    if not _belongs_on(message, subject):
        try:
            expected = subject_for(message)
        except SubjectError as exc:
            raise MalformedMessage(subject.raw, str(exc)) from exc
        raise MalformedMessage(subject.raw, f"payload belongs on {expected!r}")
    return message


def _belongs_on(message: Message, subject: Subject) -> bool:
    """Whether ``subject_for(message) == subject.raw``, without building it: the parsed
    subject's parts are valid, so equal fields build the same subject."""
    if message.cluster != subject.cluster or family_of(message) != subject.family:
        return False
    if isinstance(message, NodeSnapshot | NodeGone | NodeApplied):
        return message.node == subject.node
    return message.namespace == subject.namespace and message.name == subject.name
