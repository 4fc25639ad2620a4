"""A recorder of what went over the bus, for tests that check what was published.

It listens with a plain core-NATS subscription: it sees every publish as it
happens (a JetStream consumer would add acks, redeliveries and its own order).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any, TypeVar

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from vipwire.contracts import MalformedMessage, Message, decode
from vipwire.runtime import Runtime
from vipwire.testing import eventually

M = TypeVar("M")


class BusRecorder:
    """Every message published on the subjects it listens to, decoded and raw, in order."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        #: (subject, data, Nats-Msg-Id) of each message, in the order they came.
        self.raw: list[tuple[str, bytes, str]] = []

    async def attach(self, runtime: Runtime, subjects: str = "vipwire.>") -> Subscription:
        """Listen on ``subjects`` through ``runtime``'s connection; the caller unsubscribes."""
        sub = await runtime.bus.nc.subscribe(subjects, cb=self.on_msg)
        await runtime.bus.fence()  # the server knows of us before anything is published
        return sub

    async def on_msg(self, msg: Msg) -> None:
        self.raw.append((msg.subject, msg.data, (msg.headers or {}).get("Nats-Msg-Id", "")))
        # Garbage a test put there on purpose is only in ``raw``.
        with contextlib.suppress(MalformedMessage):
            self.messages.append(decode(msg.subject, msg.data))

    def of(self, kind: type[M], **fields: Any) -> list[M]:
        """The messages of ``kind`` whose ``fields`` have the values given."""
        return [
            m
            for m in self.messages
            if isinstance(m, kind) and all(getattr(m, k) == v for k, v in fields.items())
        ]

    async def wait(self, kind: type[M], count: int = 1, **fields: Any) -> M:
        """The ``count``-th message of ``kind`` with those ``fields``, once it has come."""
        await eventually(
            lambda: len(self.of(kind, **fields)) >= count,
            what=f"{count} {kind.__name__} with {fields}",
        )
        return self.of(kind, **fields)[count - 1]

    def family(self, family: str) -> list[tuple[str, bytes, str]]:
        """The raw messages of one subject family (``vipwire.<cluster>.<family>...``)."""
        return [r for r in self.raw if r[0].split(".")[2] == family]

    def duplicates(self, *families: str) -> list[tuple[str, bytes]]:
        """Messages of these families published twice with the same subject and content."""
        counts = Counter((s, d) for s, d, _ in self.raw if s.split(".")[2] in families)
        return [r for r, n in counts.items() if n > 1]
