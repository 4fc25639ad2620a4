"""Where plans meet the node: the ``Applier`` seam and its implementations.

The service never touches the node itself: it asks an applier what the node
has, plans, and hands the applier the actions. ``DryRunApplier`` records them
and simulates their effect; ``LinuxApplier`` (``nodeagent.linux``) runs them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Protocol

from vipwire.nodeagent.plan import Action, AppliedState, ReplaceNftTable, describe, simulate
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

    One instance outlives a service restart in tests, as the node does.
    """

    def __init__(self, initial: AppliedState | None = None, *, failures: int = 0) -> None:
        self._state = initial or AppliedState()
        #: Every non-empty action list applied, oldest first.
        self.history: list[tuple[Action, ...]] = []
        #: The last nftables script a replace would have loaded.
        self.nft_script: str | None = None
        #: How many of the next ``apply`` calls fail (to exercise retries).
        self.failures = failures

    @property
    def dry_run(self) -> bool:
        return True

    @property
    def state(self) -> AppliedState:
        return self._state

    @property
    def writes(self) -> int:
        """How many times the node would have been changed."""
        return len(self.history)

    def tamper(self, state: AppliedState) -> None:
        """Change the simulated node behind the agent's back (as an operator might)."""
        self._state = state

    async def current(self) -> AppliedState:
        return self._state

    async def apply(self, actions: Sequence[Action]) -> None:
        batch = tuple(actions)
        if not batch:
            return
        if self.failures > 0:
            self.failures -= 1
            raise ApplyError("simulated failure of the dry-run applier")
        for action in batch:
            log.info("dry run: would %s", describe(action))
            if isinstance(action, ReplaceNftTable):
                self.nft_script = action.script
        self.history.append(batch)
        self._state = simulate(self._state, batch)


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
    from vipwire.nodeagent.linux import LinuxApplier

    return LinuxApplier.from_settings(settings)
