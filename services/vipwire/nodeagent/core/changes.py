"""What the bus told the node agent, and what of it is not applied yet (pure).

A message only updates the :class:`~vipwire.nodeagent.core.desired.Desired`
(O(its VIPs)) and marks what it changed: addresses, the nftables table
(``standalone``), or everything (a full read and plan is owed: at start, after
a failed apply, at each resync). The shell applies what is marked and takes
it with :meth:`Changes.take`.
"""

from __future__ import annotations

from typing import NamedTuple

from vipwire.contracts import EndpointsSnapshot, LbProgrammed, LbRemoved, Message
from vipwire.nodeagent.core.desired import Desired, put_endpoints, put_service, service_vips


class Recorded(NamedTuple):
    """What one message changed."""

    #: The set of addresses the node should hold changed (a report is owed).
    vips: bool
    #: Why some of the Service's VIPs are not used, for the shell to warn about.
    ignored: tuple[str, ...] = ()


class Changes:
    """The node's desired state, and what changed in it since the last apply."""

    def __init__(self, *, standalone: bool) -> None:
        self.standalone = standalone
        self.desired = Desired()
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
                key = f"{message.namespace}/{message.name}"
                entry = service_vips(key, message)
                if self.desired.services.get(key) == entry:
                    return None
                added, removed = put_service(self.desired, key, entry)
                ignored = entry.ignored
            case LbRemoved():
                key = f"{message.namespace}/{message.name}"
                if key not in self.desired.services:
                    return None
                added, removed = put_service(self.desired, key, None)
                ignored = ()
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
        self.addresses.update(added)
        self.addresses.update(removed)
        # Ports, policy or a skipped VIP may have changed without any address.
        self.nft = self.nft or self.standalone
        return Recorded(vips=bool(added or removed), ignored=ignored)

    def take(self) -> tuple[bool, set[str]]:
        """What to apply now, forgotten here: whether in full, and the changed addresses.

        An apply that fails sets :attr:`full` again: nothing is lost, the next
        attempt reads the node and plans everything.
        """
        full, changed = self.full, self.addresses
        self.addresses, self.nft, self.full = set(), False, False
        return full, changed
