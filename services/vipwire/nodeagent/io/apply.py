"""Where plans meet the node: the ``Applier`` seam and its implementations.

The service never touches the node itself: it asks an applier what the node
has, plans, and hands the applier the actions. ``DryRunApplier`` records them
and simulates their effect; ``LinuxApplier`` (``nodeagent.io.linux``) runs them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Protocol

from vipwire.nodeagent.core.desired import Sysctl
from vipwire.nodeagent.core.plan import (
    Action,
    AddAddress,
    AppliedState,
    DeleteNftTable,
    InterfaceAddress,
    RemoveAddress,
    ReplaceNftTable,
    SetSysctl,
    address_order,
    describe,
)
from vipwire.nodeagent.settings import NodeagentSettings

log = logging.getLogger("vipwire.nodeagent.apply")


class ApplyError(Exception):
    """The node could not be read or changed; the service retries later."""


class ApplierUnavailable(ApplyError):
    """No applier can serve these settings (yet)."""


class Applier(Protocol):
    """Reads and changes the node's VIP addresses, sysctls and nftables table.

    ``apply`` runs the actions in order and stops at the first that fails,
    raising :class:`ApplyError` (from the cause): later actions rely on earlier
    ones (no VIP is added before the ARP sysctls are set). Every action is
    idempotent, so after a failure the service simply reads, plans and applies
    again.
    """

    @property
    def dry_run(self) -> bool:
        """True when nothing on the node is really changed."""
        ...

    async def current(self) -> AppliedState: ...

    async def apply(self, actions: Sequence[Action]) -> None: ...


class DryRunApplier:
    """Records every action list and keeps the state the node would have.

    One instance outlives a service restart in tests, as the node does. The
    state is kept as a map, so an apply costs O(its actions) (as on a real
    node), not a :func:`simulate` of the whole node.
    """

    def __init__(self, initial: AppliedState | None = None, *, failures: int = 0) -> None:
        self._load(initial or AppliedState())
        #: Every non-empty action list applied, oldest first.
        self.history: list[tuple[Action, ...]] = []
        #: The last nftables script a replace would have loaded.
        self.nft_script: str | None = None
        #: How many of the next ``apply`` calls fail (to exercise retries).
        self.failures = failures

    def _load(self, state: AppliedState) -> None:
        self._addresses = {(a.interface, a.address, a.prefix): a for a in state.addresses}
        self._sysctls = {s.key: s.value for s in state.sysctls}
        self._digest = state.nft_digest
        self._state: AppliedState | None = state

    @property
    def dry_run(self) -> bool:
        return True

    @property
    def state(self) -> AppliedState:
        if self._state is None:
            self._state = AppliedState(
                addresses=tuple(sorted(self._addresses.values(), key=address_order)),
                sysctls=tuple(Sysctl(key=k, value=v) for k, v in sorted(self._sysctls.items())),
                nft_digest=self._digest,
            )
        return self._state

    @property
    def writes(self) -> int:
        """How many times the node would have been changed."""
        return len(self.history)

    def tamper(self, state: AppliedState) -> None:
        """Change the simulated node behind the agent's back (as an operator might)."""
        self._load(state)

    async def current(self) -> AppliedState:
        return self.state

    async def apply(self, actions: Sequence[Action]) -> None:
        batch = tuple(actions)
        if not batch:
            return
        if self.failures > 0:
            self.failures -= 1
            raise ApplyError("simulated failure of the dry-run applier")
        for action in batch:
            if log.isEnabledFor(logging.INFO):
                log.info("dry run: would %s", describe(action))
            match action:
                case AddAddress(interface=ifname, address=address, prefix=prefix):
                    self._addresses[(ifname, address, prefix)] = InterfaceAddress(
                        interface=ifname, address=address, prefix=prefix, owned=True
                    )
                case RemoveAddress(interface=ifname, address=address, prefix=prefix):
                    self._addresses.pop((ifname, address, prefix), None)
                case SetSysctl(key=key, value=value):
                    self._sysctls[key] = value
                case ReplaceNftTable(ruleset=ruleset):
                    self.nft_script = action.script
                    self._digest = ruleset.digest
                case DeleteNftTable():
                    self._digest = None
        self.history.append(batch)
        self._state = None


def make_applier(settings: NodeagentSettings) -> Applier:
    """The applier these settings ask for."""
    if settings.dry_run:
        return DryRunApplier()
    if not sys.platform.startswith("linux"):
        raise ApplierUnavailable(
            f"nodeagent.dry_run is false, but only Linux nodes can be changed (this is "
            f"{sys.platform}); set dry_run: true"
        )
    # Imported here: the Linux applier depends on this module for its errors.
    from vipwire.nodeagent.io.linux import LinuxApplier

    return LinuxApplier.from_settings(settings)
