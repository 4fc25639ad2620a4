"""Several filters, one consumer each: what a service reading several families uses.

The NATS server checks a consumer's filter against the identity's permissions only
when the consumer has exactly one (it travels in the API subject), so a service
that reads several families holds one consumer per family. Messages of different
subjects were never handled in order anyway (each subject has its lane); each
subject still is, within its consumer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import TYPE_CHECKING

import msgspec

from vipwire.bus._consumer import ConsumerSpec, PullConsumer

if TYPE_CHECKING:
    from vipwire.bus._bus import Bus
    from vipwire.bus._consumer import Handler, OnUnreadable


def part_name(durable: str, filter_: str) -> str:
    """The durable name of one filter's consumer: ``<durable>-<family>`` (the family
    token of ``vipwire.<cluster>.<family>.>``), else the filter's tokens joined."""
    tokens = filter_.split(".")
    if len(tokens) >= 3 and tokens[2] not in ("*", ">"):
        part = tokens[2]
    else:
        part = "-".join(t for t in tokens[1:] if t not in ("*", ">")) or "all"
    return f"{durable}-{part}"


def split(spec: ConsumerSpec) -> list[ConsumerSpec]:
    """One spec per filter of ``spec`` (durable ones named by :func:`part_name`)."""
    if len(spec.filters) == 1:
        return [spec]
    return [
        msgspec.structs.replace(
            spec,
            filters=(f,),
            durable=None if spec.durable is None else part_name(spec.durable, f),
        )
        for f in spec.filters
    ]


class ConsumerGroup:
    """One :class:`PullConsumer` per filter, started, awaited and stopped together."""

    def __init__(
        self,
        bus: Bus,
        spec: ConsumerSpec,
        handler: Handler,
        on_unreadable: OnUnreadable | None,
        *,
        untraced: Collection[str] = (),
    ) -> None:
        """``untraced``: filters whose consumer makes no span per delivery (see
        :attr:`ConsumerSpec.traced`), though ``spec`` traces the others."""
        self.spec = spec
        parts = [
            msgspec.structs.replace(part, traced=False) if part.filters[0] in untraced else part
            for part in split(spec)
        ]
        self.parts: tuple[PullConsumer, ...] = tuple(
            bus.consumer(part, handler, on_unreadable=on_unreadable) for part in parts
        )

    async def start(self) -> None:
        for part in self.parts:
            await part.start()

    async def caught_up(self, timeout: float | None = None) -> None:
        """Every part has handled what existed when it started."""
        await asyncio.wait_for(asyncio.gather(*(p.caught_up() for p in self.parts)), timeout)

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.parts))

    @property
    def problem(self) -> str | None:
        problems = [p for part in self.parts if (p := part.problem) is not None]
        return "; ".join(problems) if problems else None

    @property
    def label(self) -> str:
        return ",".join(part.label for part in self.parts)
