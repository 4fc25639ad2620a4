"""Where plans meet the node: the ``Applier`` seam and its implementations.

The service never touches the node itself: it asks an applier what the node
has, plans, and hands the applier the actions. ``DryRunApplier`` records them
and simulates their effect; the real Linux one (issue 6) will run them.
"""

from __future__ import annotations

import logging
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


# --- LinuxApplier (issue 6) -----------------------------------------------------
#
# The real applier goes here, as ``class LinuxApplier`` satisfying ``Applier``,
# and ``make_applier`` returns it when ``dry_run`` is false. What the core
# already expects of it:
#
# * ``current()`` lists the addresses of the loopback interface (``ip -json
#   address show dev lo``), with ``owned=True`` exactly for those it added,
#   which it marks when adding (address protocol ``ip address add … proto N``,
#   Linux >= 5.18; an IPv4 label alone cannot mark IPv6); it reads the ARP
#   sysctls from /proc/sys (a ``/`` in a key is a ``.`` in the path); and it
#   reads the digest from the prerouting rule whose comment starts with
#   ``desired.DIGEST_PREFIX`` (``nft -j list table inet <table>``), None when
#   the table does not exist, "" when it exists without a readable digest.
# * ``apply()`` runs ``SetSysctl`` by writing /proc/sys, ``Add/RemoveAddress``
#   with ``ip address``, ``ReplaceNftTable`` by feeding ``action.script`` to
#   ``nft -f -`` (one atomic transaction), ``DeleteNftTable`` with ``nft delete
#   table inet <table>``; in that order, stopping at the first failure with
#   ``ApplyError``.


def make_applier(settings: NodeagentSettings) -> Applier:
    """The applier these settings ask for."""
    if settings.dry_run:
        return DryRunApplier()
    raise ApplierUnavailable(
        "nodeagent.dry_run is false, but the Linux applier is not available yet "
        "(issue 6); set dry_run: true"
    )
