"""ipam's lifecycle as one pure function: a message, the Service's record, the claims.

:func:`decide` answers what to do about one message of a Service's life with
a :class:`Plan`: plain data naming the KV writes (each a compare-and-set at
the revision the record was read at) and the messages to publish. The ledger
(:mod:`vipwire.ipam.io.ledger`) carries it out; when a compare-and-set is lost
nothing here needs undoing: the shell re-reads and decides again.

The life of one Service, as decided here:

* a live snapshot of an incarnation that holds VIPs **keeps** them (live VIPs
  never move); its claims follow its changes (ports, policy, labels), and a
  change that no longer fits the others sharing its VIP is **refused** (it
  keeps the VIP as it was, and waits until the change fits);
* a live snapshot of an incarnation that holds nothing gets VIPs (**assign**)
  or a refusal (**refuse**; **wait** for a release when one may help); a
  record of an older incarnation of the name is released first (**replace**);
* a deletion **withdraws** the VIPs (the record turns ``releasing``, the claims
  stay until the appliance is clean); an incarnation that holds claims but no
  record never reached an appliance, and **forgets** them at once;
* LbRemoved (the appliance is clean) **releases** the record and its claims;
  after an operator release the Service is **reassigned** new VIPs.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal, NamedTuple

import msgspec

from vipwire.contracts import (
    LbProgrammed,
    LbRemoved,
    Message,
    ServiceGone,
    ServiceRef,
    ServiceSnapshot,
    StatusWritten,
)
from vipwire.ipam.core.allocator import Allocator
from vipwire.ipam.core.choices import Allocation
from vipwire.ipam.core.claims import ClaimUpdate, Owner, Request, request_of
from vipwire.ipam.core.messages import (
    INVALID_REASON,
    MOVE_REFUSED,
    assigned,
    failed,
    released,
    releasing,
)
from vipwire.ipam.core.moves import MoveStart, advance, begin
from vipwire.ipam.core.records import ServiceRecord
from vipwire.ipam.core.refusals import UNKNOWN_PROFILE, AllocationFailure
from vipwire.ipam.core.requested import unlike
from vipwire.ipam.core.status_vips import StatusVips

Action = Literal[
    "ignore",  # nothing to do (not ipam's message, or another step is under way)
    "keep",  # the incarnation holds VIPs: keep them, follow its changes
    "move",  # it asks for other VIPs: claim them, serve both (see core.moves)
    "step",  # a move goes on: status shows the new VIPs, or the old ones are withdrawn
    "assign",  # new VIPs: claims, then the record, then VipAssigned
    "refuse",  # no VIPs: VipFailed (and wait, when a release may help)
    "replace",  # an older incarnation's record is in the way: release it, decide again
    "withdraw",  # going away: record releasing, VipReleasing; claims stay
    "forget",  # going away without a record: leave the claims now
    "release",  # the appliance is clean: delete the record, leave its claims
    "reassign",  # released on an operator's word: now new VIPs
]


class Outgoing(NamedTuple):
    """One message to publish; ``tag`` names it among one delivery's outputs
    (the message id is derived from the delivery and the tag)."""

    message: Message
    tag: str


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What to do about one message; executed in the order of its fields."""

    action: Action
    #: keep: the record turned active again first (back before the appliance was clean).
    reactivate: ServiceRecord | None = None
    #: keep: claims that follow the Service's change, rewritten before the record.
    updates: tuple[ClaimUpdate, ...] = ()
    #: The record to write (a compare-and-set at the revision read): keep (stale
    #: flag), withdraw (releasing), assign (created), replace/release (deleted).
    record: ServiceRecord | None = None
    #: assign, move: what the allocator chose (nothing reserved: the claims' creates are).
    choice: Allocation | None = None
    #: refuse, or keep with a change refused.
    failure: AllocationFailure | None = None
    #: True: the Service waits for a release (at the back of the queue); False: it
    #: stops waiting; None: as it was.
    wait: bool | None = None
    #: forget: the addresses the incarnation leaves.
    leave: tuple[str, ...] = ()
    #: forget after LbRemoved: VipReleased names what was actually left.
    announce_left: bool = False
    #: keep with a refused change: say the last VipAssigned again after the VipFailed.
    say_again: bool = False
    publish: tuple[Outgoing, ...] = ()
    #: For the log: why VIPs are kept although they would not be given now.
    warnings: tuple[str, ...] = ()


IGNORE = Plan(action="ignore")


def decide(
    message: Message,
    record: ServiceRecord | None,
    allocator: Allocator,
    *,
    skip: Collection[str] = (),
    status: StatusVips | None = None,
    honour_status: bool = True,
    released: ServiceRecord | None = None,
    move_on_change: bool = True,
) -> Plan:
    """What to do about ``message``, given the Service's ``record`` (as read from the
    KV, None: none) and the claims the ``allocator`` knows; ``skip``: addresses this
    replica is claiming right now for others (never chosen as new); ``status``:
    every live Service's status VIPs, reserved for them (``honour_status``: False
    when the Service asked for new VIPs; see :meth:`Allocator.choose`);
    ``released``: the record an operator's release just ended (its new VipAssigned
    says who asked and what was released); ``move_on_change``: a served Service that
    asks for other VIPs moves to them (else it keeps them, and is told why)."""
    if isinstance(message, ServiceSnapshot) and not message.deleting:
        return _live(
            message,
            record,
            allocator,
            skip,
            status=status,
            honour_status=honour_status,
            released=released,
            move_on_change=move_on_change,
        )
    if isinstance(message, StatusWritten | LbProgrammed):
        return _step(message, record, allocator)
    if isinstance(message, LbRemoved):
        return _lb_removed(message, record, allocator)
    if isinstance(message, ServiceSnapshot | ServiceGone):
        return _going(message, record, allocator)
    return IGNORE  # LbProgrammed / LbFailed / vip messages: nothing for ipam to do


def _live(
    snap: ServiceSnapshot,
    record: ServiceRecord | None,
    allocator: Allocator,
    skip: Collection[str],
    *,
    status: StatusVips | None = None,
    honour_status: bool = True,
    released: ServiceRecord | None = None,
    move_on_change: bool = True,
) -> Plan:
    if record is not None and record.uid == snap.uid:
        return _keep(snap, record, allocator, skip=skip, move_on_change=move_on_change)
    if record is not None:
        # The name now belongs to a new incarnation: free the old one's claims first.
        return Plan(action="replace", record=record)
    request = request_of(snap)
    choice = allocator.unknown_profile(snap.profile) or allocator.choose(
        request, skip=skip, status=status, honour_status=honour_status
    )
    if isinstance(choice, AllocationFailure):
        return Plan(
            action="refuse",
            failure=choice,
            wait=choice.retryable,
            publish=(Outgoing(_failed(snap, choice), "vip-failed"),),
        )
    created = ServiceRecord(
        uid=request.uid,
        vips=choice.addresses,
        pool=choice.pool,
        appliance_group=choice.appliance_group,
    )
    return Plan(
        action="assign",
        choice=choice,
        record=created,
        wait=False,
        publish=(
            Outgoing(
                assigned(
                    snap,
                    created,
                    notes=choice.notes,
                    released=released,
                    sharing_refused=choice.sharing_refused,
                    profile=allocator.profile_for(snap.profile, created.pool),
                ),
                "vip-assigned",
            ),
        ),
        warnings=(*choice.notes, *filter(None, (choice.sharing_refused,))),
    )


def _keep(
    snap: ServiceSnapshot,
    record: ServiceRecord,
    allocator: Allocator,
    *,
    skip: Collection[str] = (),
    move_on_change: bool = True,
) -> Plan:
    """The Service holds VIPs: it keeps them, or moves to those it asks for now
    (make-before-break, see :mod:`~vipwire.ipam.core.moves`); its claims follow its
    changes."""
    if record.state == "releasing" and record.reassign:
        return IGNORE  # an operator release is under way: LbRemoved re-allocates
    reactivate = None
    if record.state == "releasing":
        # Back before the appliance was cleaned (type changed back): the claims
        # are still held, so the Service keeps its VIPs.
        reactivate = record = msgspec.structs.replace(record, state="active")
    request = request_of(snap)
    # A profile that does not exist is refused like a change that does not fit: the
    # Service keeps its VIPs and the appliance keeps what it was last told.
    refreshed = allocator.unknown_profile(snap.profile) or allocator.refresh(request)
    updates = () if isinstance(refreshed, AllocationFailure) else tuple(refreshed)
    changed = {u.address: u.after for u in updates}
    stale = "; ".join(allocator.stale_reasons(request.owner, changed)) or None
    write = None
    if stale != record.stale:
        write = record = msgspec.structs.replace(record, stale=stale)
    service = request.service
    warnings: list[str] = []
    if stale is not None:
        warnings.append(
            f"{service} keeps {', '.join(record.vips)} although stale: {stale} "
            f"(release it with: vipwire ipam release {service})"
        )
    # A move under way finishes first (its record names old and new VIPs).
    differs = unlike(allocator, request) if record.move == "" else ()
    refused_move: tuple[Outgoing, ...] = ()
    moving: MoveStart | None = None
    if differs and not isinstance(refreshed, AllocationFailure):
        started = (
            begin(request, record, allocator, skip=skip) if move_on_change and not stale else None
        )
        if isinstance(started, MoveStart):
            moving = started
            write = record = started.record
            warnings.append(
                f"{service} moves to {', '.join(started.choice.addresses)} as it "
                f"{'; '.join(differs)} (make-before-break)"
            )
        else:
            if isinstance(started, AllocationFailure):
                why = f"it cannot move: {started.message}"
            elif stale:
                why = "stale VIPs do not move"
            else:
                why = "the VIPs of a served Service do not move (ipam.move_on_change is off)"
            kept = (
                f"{service} keeps {', '.join(record.vips)} although it {'; '.join(differs)}: "
                f"{why}; to move it, release them (vipwire ipam release {service}): it then "
                "gets what it asks for"
            )
            warnings.append(kept)
            # Explained, not ignored: a Warning Event and the condition say what it keeps
            # and why (the VipAssigned that follows repeats what it keeps).
            failure = failed(snap, kept, retryable=False, reason=MOVE_REFUSED)
            refused_move = (Outgoing(failure, "vip-move-refused"),)
    if isinstance(refreshed, AllocationFailure):
        return Plan(
            action="keep",
            reactivate=reactivate,
            record=write,
            failure=refreshed,
            wait=True,
            say_again=True,
            publish=(Outgoing(_failed(snap, refreshed), "vip-failed"),),
            warnings=tuple(warnings),
        )
    return Plan(
        action="move" if moving is not None else "keep",
        reactivate=reactivate,
        updates=updates,
        record=write,
        choice=moving.choice if moving is not None else None,
        wait=False,
        publish=(
            *refused_move,
            Outgoing(
                assigned(snap, record, profile=allocator.profile_for(snap.profile, record.pool)),
                "vip-assigned",
            ),
        ),
        warnings=tuple(warnings),
    )


def _step(
    message: StatusWritten | LbProgrammed, record: ServiceRecord | None, allocator: Allocator
) -> Plan:
    """A move goes on when status shows the new VIPs (the old ones are then withdrawn),
    and ends when the appliance no longer serves the old ones (their claims are left)."""
    if record is None:
        return IGNORE
    owner = Owner(message.cluster, message.namespace, message.name, message.uid)
    step = advance(message, record, allocator.held_by(owner))
    if step is None:
        return IGNORE
    return Plan(
        action="step",
        record=step.record if step.record != record else None,
        leave=step.leave,
        say_again=step.announce,
    )


def _failed(snap: ServiceSnapshot, failure: AllocationFailure) -> Message:
    """VipFailed; an unknown profile is the Service's own mistake: InvalidService."""
    if failure.code == UNKNOWN_PROFILE:
        return failed(snap, failure.message, INVALID_REASON, retryable=failure.retryable)
    return failed(snap, failure.message, retryable=failure.retryable)


def _going(
    message: ServiceSnapshot | ServiceGone, record: ServiceRecord | None, allocator: Allocator
) -> Plan:
    """The Service is going away: withdraw first, release on LbRemoved."""
    ref = ServiceRef(message.cluster, message.namespace, message.name)
    if record is not None and record.uid == message.uid:
        return msgspec.structs.replace(_withdraw(ref, record, "vip-releasing"), wait=False)
    # This incarnation has no record: whatever it claimed was never published,
    # so it is on no appliance and can go at once.
    owner = Owner(*ref, message.uid)
    publish: list[Outgoing] = []
    write = None
    if record is not None:
        # An older incarnation's record outlived it (its deletion was never seen;
        # this message is the newest about the name): withdraw it too.
        older = _withdraw(ref, record, "vip-releasing-older")
        write = older.record
        publish.extend(older.publish)
    publish.append(Outgoing(released(message, ()), "vip-released"))
    return Plan(
        action="forget",
        leave=allocator.held_by(owner),
        record=write,
        wait=False,
        publish=tuple(publish),
    )


def withdrawal(
    ref: ServiceRef,
    record: ServiceRecord,
    *,
    reassign: bool = False,
    released_by: str | None = None,
) -> Plan:
    """Mark a record releasing (its claims stay) and ask for its VIPs' withdrawal.

    The lbdriver removes this Service's own virtual servers only, so a VIP it
    shares keeps serving the others. ``reassign``: an operator's release, asked
    by ``released_by`` (kept in the record until the new VIPs are announced).
    """
    return _withdraw(ref, record, "vip-releasing", reassign=reassign, released_by=released_by)


def _withdraw(
    ref: ServiceRef,
    record: ServiceRecord,
    tag: str,
    *,
    reassign: bool = False,
    released_by: str | None = None,
) -> Plan:
    write = None
    by = released_by if reassign else None
    if record.state == "active" or record.reassign != reassign or record.released_by != by:
        write = record = msgspec.structs.replace(
            record, state="releasing", reassign=reassign, released_by=by
        )
    return Plan(action="withdraw", record=write, publish=(Outgoing(releasing(ref, record), tag),))


def _lb_removed(message: LbRemoved, record: ServiceRecord | None, allocator: Allocator) -> Plan:
    """The appliance is clean of this Service: now it can leave its claims."""
    if record is not None and record.uid == message.uid:
        if record.state == "active":
            return IGNORE  # it came back before the removal was reported
        if record.reassign:
            return Plan(action="reassign", record=record)
        return Plan(
            action="release",
            record=record,
            publish=(Outgoing(released(message, record.vips), "vip-released"),),
        )
    # Already released (a redelivery), or never recorded: finish the job.
    owner = Owner(message.cluster, message.namespace, message.name, message.uid)
    return Plan(
        action="forget",
        leave=allocator.held_by(owner),
        announce_left=record is None,
        publish=(Outgoing(released(message, ()), "vip-released"),) if record is None else (),
    )


def would_succeed(request: Request, allocator: Allocator) -> bool:
    """Whether a waiting Service would get (or keep, changed) its VIPs now."""
    if allocator.held_by(request.owner):
        return not isinstance(allocator.refresh(request), AllocationFailure)
    return not isinstance(allocator.choose(request), AllocationFailure)
