"""A served Service that asks for other VIPs moves to them, make-before-break.

The steps of a move, as states of the Service's record (``ServiceRecord.move``);
each step is one compare-and-set of the record, decided here from plain data:

* ``""`` (steady): ``vips`` are the Service's VIPs, and nothing else is claimed.
* **adding**: it asked for other VIPs (``vipwire.io/ips``, ``loadBalancerIP``,
  ``vipwire.io/pool``): the new ones are claimed (claims first, then the record)
  and ``vips`` names old and new; VipAssigned lists them all, so the appliance
  serves both, and the watcher writes the new ones into status only once every
  member node holds them. ``moving_from``: the old VIPs it no longer asks for.
* **withdrawing**: a StatusWritten lists every VIP of the record: the new ones
  are in status, on the appliance and on the nodes. Only now VipAssigned lists
  the new ones only (``moving_from`` says which left), and the appliance and the
  nodes withdraw the old ones; their claims are still held.
* back to steady: an LbProgrammed without any old VIP (the appliance no longer
  serves them): the old claims are left, ``vips`` names the new ones.

Invariants after every step (:func:`broken`): every VIP of the record is
claimed by the Service; ``moving_from`` is within ``vips`` and empty exactly
when steady; what VipAssigned lists is within ``vips``, and while adding it is
all of ``vips`` (the old VIPs serve until the new ones serve everywhere).

A move that cannot keep both on one appliance (the new pool's appliance group
is another) is refused: the Service keeps what it holds and is told why.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

import msgspec

from vipwire.contracts import LbProgrammed, StatusWritten
from vipwire.ipam.core.allocator import Allocator
from vipwire.ipam.core.choices import Allocation
from vipwire.ipam.core.claims import Owner, Request
from vipwire.ipam.core.records import ServiceRecord
from vipwire.ipam.core.refusals import INVALID_REQUEST, AllocationFailure


class MoveStart(NamedTuple):
    """The first step: the record while adding, and the claims to take."""

    record: ServiceRecord
    choice: Allocation


class MoveStep(NamedTuple):
    """A later step: the record after it, and the claims to leave (withdrawn)."""

    record: ServiceRecord
    leave: tuple[str, ...] = ()
    #: Whether VipAssigned must say the record again (what the appliance serves changed).
    announce: bool = True


def begin(
    request: Request, record: ServiceRecord, allocator: Allocator, *, skip: Collection[str] = ()
) -> MoveStart | AllocationFailure | None:
    """Start moving a steady Service to what it asks for (None: it holds that already)."""
    choice = allocator.choose(request, skip=skip, honour_status=False)
    if isinstance(choice, AllocationFailure):
        return choice
    wanted = choice.addresses
    if set(wanted) == set(record.vips):
        return None
    if choice.appliance_group != record.appliance_group:
        return AllocationFailure(
            code=INVALID_REQUEST,
            message=f"what it asks for is served by appliance group {choice.appliance_group!r}, "
            f"its VIPs by {record.appliance_group!r}: a move cannot serve both at once",
            retryable=False,
        )
    old = tuple(v for v in record.vips if v not in wanted)
    added = tuple(v for v in wanted if v not in record.vips)
    if not old:
        # Only more (a family added): nothing to withdraw, no move.
        after = msgspec.structs.replace(record, vips=wanted, pool=choice.pool)
    else:
        after = msgspec.structs.replace(
            record, vips=(*record.vips, *added), pool=choice.pool, move="adding", moving_from=old
        )
    return MoveStart(after, choice)


def announced(record: ServiceRecord) -> tuple[str, ...]:
    """The VIPs VipAssigned lists for ``record``: all of them but those withdrawn."""
    if record.move == "withdrawing":
        return tuple(v for v in record.vips if v not in record.moving_from)
    return record.vips


def advance(
    message: StatusWritten | LbProgrammed, record: ServiceRecord, held: Collection[str]
) -> MoveStep | None:
    """The next step of a move that ``message`` allows (None: none). ``held``: what the
    Service's incarnation holds (a claim of a finished move left behind by a crash
    is left once the appliance no longer serves it)."""
    if message.uid != record.uid or record.state != "active":
        return None
    if isinstance(message, StatusWritten):
        if record.move == "adding" and set(record.vips) <= set(message.vips):
            return MoveStep(msgspec.structs.replace(record, move="withdrawing"))
        return None
    if record.move == "withdrawing":
        if set(record.moving_from) & set(message.vips):
            return None  # still on the appliance
        after = msgspec.structs.replace(record, vips=announced(record), move="", moving_from=())
        return MoveStep(after, leave=record.moving_from)
    if record.move == "":
        stray = tuple(a for a in sorted(held) if a not in record.vips and a not in message.vips)
        if stray:
            return MoveStep(record, leave=stray, announce=False)
    return None


def broken(record: ServiceRecord, allocator: Allocator, owner: Owner) -> list[str]:
    """What is wrong with a record and the claims (empty: the invariants hold)."""
    out: list[str] = []
    held = set(allocator.held_by(owner))
    missing = [v for v in record.vips if v not in held]
    if missing:
        out.append(f"{owner.service}: {', '.join(missing)} named but not claimed")
    if not set(record.moving_from) <= set(record.vips):
        out.append(f"{owner.service}: moving from {record.moving_from} not within {record.vips}")
    if bool(record.moving_from) != (record.move != ""):
        out.append(f"{owner.service}: move {record.move!r} with moving_from {record.moving_from}")
    if record.move == "adding" and announced(record) != record.vips:
        out.append(f"{owner.service}: old VIPs withdrawn while adding")
    return out
