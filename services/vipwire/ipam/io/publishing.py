"""ipam and the stream: its ``vip`` messages out, the newest message of a subject in.

"No newer message on this Service's subject" is what keeps a slow replica
from acting on an old message; it is asked either by a read of the subject's
last message, or (nats-server 2.11+) by the server itself as it stores a
publish that names the sequence that subject's last message must have.
"""

from __future__ import annotations

import logging
from typing import Final, NamedTuple

from vipwire.bus import Bus, BusError, Delivery, WrongLastSequence
from vipwire.contracts import MalformedMessage, Message, decode, parse_subject

log = logging.getLogger("vipwire.ipam")

#: The first nats-server that checks an expected last sequence of another subject.
_EXPECT_SUBJECT_SINCE: Final = (2, 11)


class Newest(NamedTuple):
    """The last message stored on a subject."""

    message: Message | None  # None: not a message of the contracts
    seq: int
    headers: dict[str, str]

    def delivery(self, subject: str) -> Delivery | None:
        """As if delivered by the consumer (for a step taken outside it)."""
        if self.message is None:
            return None
        return Delivery(
            subject=parse_subject(subject),
            message=self.message,
            seq=self.seq,
            num_delivered=1,
            headers=self.headers,
        )


def server_checks_other_subjects(bus: Bus) -> bool:
    try:
        return bus.server_version[:2] >= _EXPECT_SUBJECT_SINCE
    except ValueError:  # not a semantic version: assume the worst
        return False


class Publisher:
    """Publishes ipam's messages and reads the newest message of a subject."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        #: Whether the server can check "nothing newer on that subject" as it stores a
        #: publish (older ones ignore the header: the check is then a read of its own).
        self.expect_subject = server_checks_other_subjects(bus)

    async def publish(self, message: Message, msg_id: str) -> None:
        await self.bus.publish(message, msg_id=msg_id)

    async def publish_if_newest(self, message: Message, d: Delivery, msg_id: str) -> bool:
        """Publish ``message`` unless a message newer than ``d`` is on ``d``'s subject;
        False: there is one (or ``d``'s is gone), nothing was published.

        One atomic step on the server: the publish names the sequence the last
        message of ``d``'s subject must have (JetStream's expected last subject
        sequence, of another subject than the one published to: nats-server 2.11+).
        """
        try:
            await self.bus.publish(
                message,
                msg_id=msg_id,
                expected_last_subject_seq=d.seq,
                expected_last_subject=d.subject.raw,
            )
        except WrongLastSequence:
            return False
        return True

    async def last(self, subject: str) -> Newest | None:
        """The last message stored on ``subject``; None: none. BusError if it cannot tell."""
        stored = await self.bus.last_message(subject)
        if stored is None:
            return None
        try:
            message: Message | None = decode(subject, stored.data)
        except MalformedMessage:
            message = None
        return Newest(message, stored.seq, dict(stored.headers))

    async def last_seq(self, subject: str) -> int:
        """The sequence of the last message on ``subject`` (0: none or unknown)."""
        try:
            last = await self.bus.last_message(subject)
        except BusError:
            return 0
        return last.seq if last is not None else 0

    async def newest(self, subject: str, seq: int) -> Message | None:
        """The newest message on ``subject`` if it is newer than ``seq``; None otherwise
        (or when unknown: every step is idempotent, so handling it is safe)."""
        try:
            last = await self.last(subject)
        except BusError:
            return None
        if last is None or not last.seq or last.seq <= seq:
            return None
        return last.message

    async def superseded(self, d: Delivery) -> bool:
        """A newer message on this Service's subject exists: let that one decide.

        The consumer skips older snapshots within a replica; this catches one
        that replicas handle out of order (redelivered here, newer one elsewhere).
        """
        seq = await self.last_seq(d.subject.raw)
        return bool(seq and seq > d.seq)
