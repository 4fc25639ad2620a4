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
    PoolsMessage,
    PoolsServed,
    ServiceMessage,
    StatusMessage,
    VipMessage,
)
from vipwire.contracts._subjects import (
    Family,
    Subject,
    SubjectError,
    cluster_subject,
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


class SubjectMismatch(MalformedMessage):
    """A well-formed payload whose own fields disagree with the subject it came on.

    Not poison in the usual sense: the subject's state is still its last message that
    agrees with it. ``disagreements`` names each field (``cluster 'west' (subject
    says 'east')``), for the log line an operator reads.
    """

    def __init__(
        self, subject: str, disagreements: tuple[str, ...], belongs_on: str | None
    ) -> None:
        where = f"; it belongs on {belongs_on!r}" if belongs_on is not None else ""
        super().__init__(
            subject, "payload disagrees with its subject: " + "; ".join(disagreements) + where
        )
        self.disagreements = disagreements


_encoder: Final = msgspec.json.Encoder()
_decoders: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    "service": msgspec.json.Decoder(ServiceMessage),
    "endpoints": msgspec.json.Decoder(EndpointsMessage),
    "node": msgspec.json.Decoder(NodeMessage),
    "vip": msgspec.json.Decoder(VipMessage),
    "lb": msgspec.json.Decoder(LbMessage),
    "applied": msgspec.json.Decoder(AppliedMessage),
    "status": msgspec.json.Decoder(StatusMessage),
    "pools": msgspec.json.Decoder(PoolsMessage),
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
    "pools-served": "pools",
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
    if isinstance(message, PoolsServed):
        return cluster_subject("pools", message.cluster)
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
    disagreements = subject_disagreements(message, subject)
    if disagreements:
        try:
            expected: str | None = subject_for(message)
        except SubjectError:
            expected = None  # its own fields build no valid subject
        raise SubjectMismatch(subject.raw, disagreements, expected)
    return message


def subject_disagreements(message: Message, subject: Subject) -> tuple[str, ...]:
    """What a payload says that its subject does not: empty when they agree.

    The parsed subject's parts are valid, so a payload agreeing on family, cluster
    and object (namespace and name, or node) belongs on exactly that subject. Each
    entry names a field, the payload's value and the subject's.
    """
    found: list[str] = []
    family = family_of(message)
    if family != subject.family:
        found.append(f"family {family!r} (subject says {subject.family!r})")
    if message.cluster != subject.cluster:
        found.append(f"cluster {message.cluster!r} (subject says {subject.cluster!r})")
    if isinstance(message, NodeSnapshot | NodeGone | NodeApplied):
        if message.node != subject.node:
            found.append(f"node {message.node!r} (subject says {subject.node!r})")
        return tuple(found)
    if isinstance(message, PoolsServed):
        return tuple(found)
    if message.namespace != subject.namespace:
        found.append(f"namespace {message.namespace!r} (subject says {subject.namespace!r})")
    if message.name != subject.name:
        found.append(f"name {message.name!r} (subject says {subject.name!r})")
    return tuple(found)
