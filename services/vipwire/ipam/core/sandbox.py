"""ipam without a KV bucket: the core's plans carried out on plain dictionaries.

One replica, no races: every compare-and-set holds, so a plan lands whole.
What it publishes is what ipam would publish for the same messages in the
same order. Used where the decisions matter and the bucket does not: the
lifecycle's story test, and ``replay --rerun`` (which runs these rules
against a recorded history instead of restating them).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from vipwire.contracts import (
    ANONYMOUS,
    LbProgrammed,
    LbRemoved,
    Message,
    ServiceGone,
    ServiceRef,
    ServiceSnapshot,
    StatusWritten,
    VipAssigned,
    VipMessage,
    VipReleased,
)
from vipwire.ipam.core.allocator import Allocator
from vipwire.ipam.core.claims import Owner, Request, request_of
from vipwire.ipam.core.decide import Outgoing, Plan, decide, withdrawal, would_succeed
from vipwire.ipam.core.messages import in_force, kept_assignment, moved, released
from vipwire.ipam.core.records import ServiceRecord
from vipwire.ipam.core.requested import unlike
from vipwire.ipam.core.status_vips import StatusVips

if TYPE_CHECKING:
    from vipwire.ipam.settings import PoolSettings


class Sandbox:
    """Claims (in the allocator), Service records and the waiting queue, in memory."""

    #: A served Service that asks for other VIPs moves to them (ipam.move_on_change).
    move_on_change = True

    def __init__(
        self, pools: Sequence[PoolSettings], *, profiles: Collection[str] | None = None
    ) -> None:
        """``profiles``: the appliance profiles configured (None: any name is taken)."""
        self.allocator = Allocator(pools, profiles=profiles)
        self.records: dict[ServiceRef, ServiceRecord] = {}
        #: Waiting Services, oldest first: the request and the refusal it was told.
        self.waiting: dict[ServiceRef, tuple[Request, str]] = {}
        #: The newest ``service`` message and ``vip`` message of each Service.
        self.last_service: dict[ServiceRef, ServiceSnapshot | ServiceGone] = {}
        self.last_vip: dict[ServiceRef, Message] = {}
        #: Every Service snapshot's status VIPs, as ipam's index reads them off the
        #: stream (in stream order, ahead of handling: see :meth:`see`).
        self.status = StatusVips()

    def see(self, message: ServiceSnapshot | ServiceGone) -> None:
        """A snapshot is on the stream, not handled yet: its status VIPs are reserved."""
        self.status.see(message)

    def reconfigure(self, pools: Sequence[PoolSettings]) -> None:
        """New pools; no claim moves (those the pools would not give turn stale)."""
        self.allocator = self.allocator.reconfigured(pools)

    # --- messages in, messages out -------------------------------------------------------

    def handle(self, message: Message, *, quiet: bool = False) -> list[Message]:
        """What ipam publishes for ``message``; ``quiet``: a retry (no VipFailed)."""
        read = in_force(message)
        if read is None:
            return []
        message = read
        if isinstance(message, ServiceSnapshot | ServiceGone):
            self.last_service[_ref(message)] = message
            self.status.see(message)
        if isinstance(message, ServiceSnapshot) and not message.deleting:
            return self._live(message, quiet=quiet)
        if isinstance(message, StatusWritten | LbProgrammed):
            return self._step(message)
        if not isinstance(message, ServiceSnapshot | ServiceGone | LbRemoved):
            return []
        ref = _ref(message)
        plan = decide(message, self.records.get(ref), self.allocator)
        if plan.action == "ignore":
            return []
        if plan.action in ("release", "reassign"):
            record = self.records[ref]
            self._release(ref, record)
            if plan.action == "reassign":
                return self._reassign(ref, record)
            return self._publish(plan.publish)
        if plan.action == "forget":
            left = self._leave(Owner(*ref, message.uid), plan.leave)
            if plan.announce_left:
                return self._publish([released(message, left)])
        if plan.record is not None:
            self.records[ref] = plan.record
        self._wait(ref, plan, None)
        return self._publish(plan.publish)

    def release(self, ref: ServiceRef, *, caller: str = ANONYMOUS) -> list[Message]:
        """``caller``'s ``vipwire ipam release``: withdraw now, new VIPs once clean."""
        record = self.records.get(ref)
        if record is None or record.state == "releasing":
            return []
        plan = withdrawal(ref, record, reassign=True, released_by=caller)
        if plan.record is not None:
            self.records[ref] = plan.record
        return self._publish(plan.publish)

    def retry_waiting(self) -> list[Message]:
        """Waiting Services that would get (or keep) their VIPs now, from their newest
        snapshot, quietly: what ipam does when a claim is freed."""
        out: list[Message] = []
        for ref, (request, _) in list(self.waiting.items()):
            if ref not in self.waiting or not would_succeed(request, self.allocator):
                continue
            snap = self.last_service.get(ref)
            if not isinstance(snap, ServiceSnapshot) or snap.deleting:
                del self.waiting[ref]
                continue
            out.extend(self._live(snap, quiet=True, tag="-retried"))
        return out

    # --- carrying plans out ------------------------------------------------------------

    def _live(
        self,
        snap: ServiceSnapshot,
        *,
        quiet: bool,
        tag: str = "",
        honour_status: bool = True,
        released: ServiceRecord | None = None,
    ) -> list[Message]:
        ref = _ref(snap)
        record = self.records.get(ref)
        status, honour = self.status, honour_status
        plan = decide(
            snap,
            record,
            self.allocator,
            status=status,
            honour_status=honour,
            released=released,
            move_on_change=self.move_on_change,
        )
        if plan.action == "replace" and record is not None:
            if record.state == "releasing":
                # Its virtual server may still be on the appliance: the claims stay
                # until its LbRemoved, which forgets them by owner.
                del self.records[ref]
            else:
                self._release(ref, record)
            plan = decide(
                snap,
                None,
                self.allocator,
                status=status,
                honour_status=honour,
                released=released,
            )
        if plan.action == "ignore":
            return []
        if plan.action == "assign":
            assert plan.choice is not None and plan.record is not None
            self.allocator.take(plan.choice)
            self.records[ref] = plan.record
            self.waiting.pop(ref, None)
            return self._publish(plan.publish)
        if plan.action == "refuse":
            self._wait(ref, plan, request_of(snap))
            return [] if quiet else self._publish(plan.publish)
        # keep, or move (claims first, then the record)
        for update in plan.updates:
            self.allocator.claim(update.address, update.after)
        if plan.action == "move":
            assert plan.choice is not None
            self.allocator.take(plan.choice)
        kept = plan.record or plan.reactivate or record
        assert kept is not None
        self.records[ref] = kept
        self._wait(ref, plan, request_of(snap))
        if plan.failure is None:
            return self._publish(plan.publish)
        if quiet:
            return []
        again = kept_assignment(snap, kept, self.last_vip.get(ref), self.allocator)
        return self._publish([*plan.publish, again])

    def _step(self, message: StatusWritten | LbProgrammed) -> list[Message]:
        """A move goes on (see :mod:`~vipwire.ipam.core.moves`): the record first, then
        the old claims left, then VipAssigned says what the appliance serves now."""
        ref = _ref(message)
        record = self.records.get(ref)
        plan = decide(message, record, self.allocator)
        if plan.action != "step" or record is None:
            return []
        after = plan.record or record
        self.records[ref] = after
        self._leave(Owner(*ref, record.uid), plan.leave)
        last = self.last_vip.get(ref)
        out: list[Message] = []
        if plan.say_again and isinstance(last, VipAssigned) and last.uid == after.uid:
            out = self._publish([moved(last, after)])
        snap = self.last_service.get(ref)
        if (
            plan.leave
            and after.move == ""
            and isinstance(snap, ServiceSnapshot)
            and not snap.deleting
            and snap.uid == after.uid
            and unlike(self.allocator, request_of(snap))
        ):
            # Moved: a change made during the move (not followed then) is decided now.
            out += self._live(snap, quiet=False, tag="-moved")
        return out

    def _reassign(self, ref: ServiceRef, record: ServiceRecord) -> list[Message]:
        snap = self.last_service.get(ref)
        if isinstance(snap, ServiceSnapshot) and not snap.deleting and snap.uid == record.uid:
            return self._live(snap, quiet=False, honour_status=False, released=record)
        cluster, namespace, name = ref
        return self._publish(
            [
                VipReleased(
                    cluster=cluster,
                    namespace=namespace,
                    name=name,
                    uid=record.uid,
                    vips=record.vips,
                )
            ]
        )

    def drop(self, ref: ServiceRef) -> ServiceRecord | None:
        """Delete a Service's record and leave its claims (as a release does)."""
        record = self.records.get(ref)
        if record is not None:
            self._release(ref, record)
        return record

    def forget(self, owner: Owner) -> tuple[str, ...]:
        """Leave every claim ``owner`` holds (an incarnation without a record)."""
        return self._leave(owner, self.allocator.held_by(owner))

    def _release(self, ref: ServiceRef, record: ServiceRecord) -> None:
        del self.records[ref]
        self._leave(Owner(*ref, record.uid), record.vips)

    def _leave(self, owner: Owner, addresses: Sequence[str]) -> tuple[str, ...]:
        left = []
        for address in addresses:
            claim = self.allocator.claim_of(address)
            if claim is not None and claim.holds(owner):
                self.allocator.leave(address, owner)
                left.append(address)
        return tuple(left)

    def _wait(self, ref: ServiceRef, plan: Plan, request: Request | None) -> None:
        if plan.wait is None:
            return
        self.waiting.pop(ref, None)
        if plan.wait and request is not None and plan.failure is not None:
            self.waiting[ref] = (request, plan.failure.message)

    def _publish(self, outgoing: Sequence[Outgoing | VipMessage]) -> list[Message]:
        out: list[Message] = []
        for item in outgoing:
            message = item.message if isinstance(item, Outgoing) else item
            self.last_vip[_ref(message)] = message
            out.append(message)
        return out


def _ref(message: ServiceSnapshot | ServiceGone | LbRemoved | Message) -> ServiceRef:
    cluster: str = getattr(message, "cluster", "")
    namespace: str = getattr(message, "namespace", "")
    name: str = getattr(message, "name", "")
    return ServiceRef(cluster, namespace, name)
