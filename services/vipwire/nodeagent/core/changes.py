"""What the bus told the node agent, and what of it is not applied yet (pure).

A message only updates the :class:`~vipwire.nodeagent.core.desired.Desired`
(O(its VIPs)) and marks what it changed: addresses, the nftables table
(``standalone``), or everything (a full read and plan is owed: at start, after
a failed apply, at each resync). The shell applies what is marked and takes
it with :meth:`Changes.take`.

Every programmed Service is judged against the ranges its VIPs may be in
(:func:`~vipwire.nodeagent.core.desired.judge`): refused messages are never
applied, and while no range is known nothing is applied at all (the latest
message of each Service is kept, and judged once ranges are known).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from vipwire.contracts import EndpointsSnapshot, FeedService, LbProgrammed, LbRemoved, Message
from vipwire.nodeagent.core.desired import (
    Desired,
    ServiceVips,
    VipRanges,
    judge,
    outside,
    put_endpoints,
    put_service,
    service_vips,
)


class Recorded(NamedTuple):
    """What one message changed."""

    #: The set of addresses the node should hold changed (a report is owed).
    vips: bool
    #: Why some of the Service's VIPs are not used, for the shell to warn about.
    ignored: tuple[str, ...] = ()
    #: VIPs newly refused (outside the ranges), as ``ns/name vip``: counted, warned.
    refused: tuple[str, ...] = ()


class Changes:
    """The node's desired state, and what changed in it since the last apply."""

    def __init__(self, *, standalone: bool, ranges: VipRanges) -> None:
        self.standalone = standalone
        self.ranges = ranges
        self.desired = Desired()
        #: The last programmed VIPs of every Service, applied or not.
        self.latest: dict[str, ServiceVips] = {}
        #: Services whose last message is refused: their VIPs outside the ranges.
        self.refused: dict[str, tuple[str, ...]] = {}
        #: Addresses (canonical text) that became wanted or unwanted.
        self.addresses: set[str] = set()
        #: The nftables table may differ (``standalone`` only).
        self.nft = False
        #: A full read of the node and plan is owed.
        self.full = True

    @property
    def pending(self) -> bool:
        return self.full or bool(self.addresses) or self.nft

    def record(self, message: Message) -> Recorded | None:
        """Remember what the message says; None if that is what was known already."""
        match message:
            case LbProgrammed():
                return self.put(f"{message.namespace}/{message.name}", message)
            case LbRemoved():
                return self.gone(f"{message.namespace}/{message.name}")
            case EndpointsSnapshot() if self.standalone:
                key = f"{message.namespace}/{message.name}"
                if not put_endpoints(self.desired, key, message):
                    return None
                self.nft = True
                return Recorded(vips=False)
            case _:
                # LbFailed: the appliance may still serve the old VIPs, so the
                # node keeps them until LbProgrammed or LbRemoved says otherwise.
                return None

    def put(self, key: str, programmed: LbProgrammed | FeedService) -> Recorded | None:
        """One Service programmed (``ns/name``); None if that was known already."""
        entry = service_vips(key, programmed)
        if self.latest.get(key) == entry:
            return None
        self.latest[key] = entry
        return self._judge(key)

    def gone(self, key: str) -> Recorded | None:
        """One Service no longer programmed; None if it was not known."""
        self.latest.pop(key, None)
        self.refused.pop(key, None)
        if key not in self.desired.services:
            return None
        added, removed = put_service(self.desired, key, None)
        self.addresses.update(added)
        self.addresses.update(removed)
        self.nft = self.nft or self.standalone
        return Recorded(vips=bool(added or removed))

    def _judge(self, key: str) -> Recorded | None:
        """Apply, refuse or hold the latest message of one Service (see ``judge``)."""
        entry = self.latest[key]
        judged = judge(entry, self.ranges)
        if judged is None:
            return Recorded(vips=False, ignored=entry.ignored)
        if judged.apply:
            self.refused.pop(key, None)
            chosen: ServiceVips | None = entry
        else:
            before = self.refused.get(key, ())
            self.refused[key] = judged.refused
            newly = tuple(f"{key} {vip}" for vip in judged.refused if vip not in before)
            current = self.desired.services.get(key)
            # What was served for it before stays, while still inside the ranges.
            if current is None or not outside(current.vips, self.ranges):
                return Recorded(vips=False, ignored=entry.ignored, refused=newly)
            chosen = None
        if self.desired.services.get(key) == chosen:
            return None
        added, removed = put_service(self.desired, key, chosen)
        self.addresses.update(added)
        self.addresses.update(removed)
        self.nft = self.nft or self.standalone
        refused = () if judged.apply else tuple(f"{key} {v}" for v in judged.refused)
        return Recorded(vips=bool(added or removed), ignored=entry.ignored, refused=refused)

    def feed(
        self, put: Sequence[FeedService], gone: Sequence[str], *, table: bool
    ) -> Recorded | None:
        """A feed delta (``put``, ``gone``), or with ``table`` the whole table: every
        Service not in it is gone, and a full plan is owed. None: nothing changed."""
        if table:
            keys = {service.key for service in put}
            gone = [key for key in sorted(self.latest.keys() | self.desired.services.keys())
                    if key not in keys]  # fmt: skip
            self.full = True
        vips = False
        ignored: list[str] = []
        refused: list[str] = []
        changed = False
        for key in gone:
            recorded = self.gone(key)
            if recorded is not None:
                changed = True
                vips = vips or recorded.vips
        for service in put:
            recorded = self.put(service.key, service)
            if recorded is not None:
                changed = True
                vips = vips or recorded.vips
                ignored.extend(recorded.ignored)
                refused.extend(recorded.refused)
        if not changed and not table:
            return None
        return Recorded(vips=vips, ignored=tuple(ignored), refused=tuple(refused))

    def set_ranges(self, ranges: VipRanges) -> Recorded | None:
        """New ranges (a ``PoolsServed``): every Service is judged again; a full plan
        is owed. The newly refused VIPs are in the answer; None: nothing changed."""
        if ranges == self.ranges:
            return None
        self.ranges = ranges
        self.full = True
        changed = False
        refused: list[str] = []
        for key in sorted(self.latest):
            recorded = self._judge(key)
            if recorded is not None:
                changed = changed or recorded.vips
                refused.extend(recorded.refused)
        return Recorded(vips=changed, refused=tuple(refused))

    def refused_vips(self) -> tuple[str, ...]:
        """Every VIP refused now, as ``ns/name vip`` (sorted): what the report carries."""
        return tuple(f"{key} {vip}" for key in sorted(self.refused) for vip in self.refused[key])

    def take(self) -> tuple[bool, set[str]]:
        """What to apply now, forgotten here: whether in full, and the changed addresses.

        An apply that fails sets :attr:`full` again: nothing is lost, the next
        attempt reads the node and plans everything.
        """
        full, changed = self.full, self.addresses
        self.addresses, self.nft, self.full = set(), False, False
        return full, changed
