"""From what a node has to what it should have: the fewest actions (pure: no I/O).

Ownership is part of the data: an address the agent did not put there
(``owned=False``: the node's own ``127.0.0.1``, an operator's test address) is
never removed, even when it is not wanted; an owned one that is no longer
wanted is. The applier decides how ownership is marked on the real node.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from vipwire.nodeagent.core.desired import (
    Desired,
    NftRuleset,
    NodeState,
    Sysctl,
    host_address,
    render_nft,
    vip_order,
)


class InterfaceAddress(msgspec.Struct, frozen=True, kw_only=True):
    """An address on an interface, as found on the node."""

    interface: str
    address: str
    prefix: int
    #: Put there by this agent (and so its to remove).
    owned: bool = False


class AppliedState(msgspec.Struct, frozen=True, kw_only=True):
    """What the node has now, as far as the agent manages it."""

    #: Addresses on the interfaces the agent looks at, owned or not.
    addresses: tuple[InterfaceAddress, ...] = ()
    #: Current values of the sysctls the agent sets; a missing key is set unconditionally.
    sysctls: tuple[Sysctl, ...] = ()
    #: Digest of the agent's nftables table (see ``NftRuleset.digest``); None: no table.
    #: A table whose digest cannot be read counts as different and is replaced.
    nft_digest: str | None = None


# --- actions ------------------------------------------------------------------


class AddAddress(msgspec.Struct, frozen=True, kw_only=True, tag="add-address"):
    interface: str
    address: str
    prefix: int


class RemoveAddress(msgspec.Struct, frozen=True, kw_only=True, tag="remove-address"):
    interface: str
    address: str
    prefix: int


class SetSysctl(msgspec.Struct, frozen=True, kw_only=True, tag="set-sysctl"):
    key: str
    value: str


class ReplaceNftTable(msgspec.Struct, frozen=True, kw_only=True, tag="replace-nft-table"):
    """Replace the agent's table with this ruleset, atomically (see ``render_nft``)."""

    ruleset: NftRuleset

    @property
    def script(self) -> str:
        return render_nft(self.ruleset)


class DeleteNftTable(msgspec.Struct, frozen=True, kw_only=True, tag="delete-nft-table"):
    table: str


Action = AddAddress | RemoveAddress | SetSysctl | ReplaceNftTable | DeleteNftTable


def plan(current: AppliedState, desired: NodeState, *, keep: bool = False) -> tuple[Action, ...]:
    """The actions that take ``current`` to ``desired``, in the order they must run.

    ``keep``: remove no address (what some Service needs is unknown: a message
    that cannot be read may be the only one naming an address found here).

    ARP sysctls come first so that no VIP is ever on the node while the node
    would still answer ARP for it; the rules come before the addresses so that
    a new VIP is steered from its first packet; removals come last.
    """
    actions: list[Action] = []
    have_sysctls = {s.key: s.value for s in current.sysctls}
    actions.extend(
        SetSysctl(key=s.key, value=s.value)
        for s in desired.sysctls
        if have_sysctls.get(s.key) != s.value
    )
    if desired.nft is None:
        if current.nft_digest is not None:
            actions.append(DeleteNftTable(table=desired.nft_table))
    elif current.nft_digest != desired.nft.digest:
        actions.append(ReplaceNftTable(ruleset=desired.nft))
    have = {(a.interface, a.address, a.prefix) for a in current.addresses}
    want = {(desired.interface, a.address, a.prefix) for a in desired.addresses}
    actions.extend(
        AddAddress(interface=desired.interface, address=a.address, prefix=a.prefix)
        for a in desired.addresses
        if (desired.interface, a.address, a.prefix) not in have
    )
    actions.extend(
        RemoveAddress(interface=a.interface, address=a.address, prefix=a.prefix)
        for a in sorted(current.addresses, key=address_order)
        if a.owned and not keep and (a.interface, a.address, a.prefix) not in want
    )
    return tuple(actions)


class Known(msgspec.Struct, kw_only=True):
    """What the agent believes its node holds: read in full at the last full plan, then
    kept up to date with every apply that succeeded, so that a change needs no read."""

    #: (interface, address, prefix) of every address found or added → owned by the agent.
    addresses: dict[tuple[str, str, int], bool] = msgspec.field(default_factory=dict)
    #: Digest of the agent's nftables table (see ``AppliedState.nft_digest``).
    nft_digest: str | None = None


def known(state: AppliedState) -> Known:
    """The belief that starts from a full read (or from its simulation after a full plan)."""
    return Known(
        addresses={(a.interface, a.address, a.prefix): a.owned for a in state.addresses},
        nft_digest=state.nft_digest,
    )


def plan_delta(
    have: Known,
    desired: Desired,
    changed: Iterable[str],
    *,
    interface: str,
    nft: NftRuleset | None = None,
) -> tuple[Action, ...]:
    """The actions for the VIPs in ``changed`` (canonical text) only: O(changed), not O(VIPs).

    Same order and ownership rules as :func:`plan`; ``nft`` (``standalone``
    mode) is the whole wanted table, replaced if its digest differs. Sysctls and
    owned addresses on other interfaces are left to the next full :func:`plan`.
    """
    actions: list[Action] = []
    if nft is not None and have.nft_digest != nft.digest:
        actions.append(ReplaceNftTable(ruleset=nft))
    adds: list[str] = []
    removes: list[tuple[int, str, int]] = []
    for vip in set(changed):
        a = host_address(vip)
        ident = (interface, a.address, a.prefix)
        if vip in desired.refs:
            if ident not in have.addresses:
                adds.append(vip)
        elif have.addresses.get(ident):
            removes.append((6 if ":" in vip else 4, a.address, a.prefix))
    for vip in sorted(adds, key=vip_order):
        a = host_address(vip)
        actions.append(AddAddress(interface=interface, address=a.address, prefix=a.prefix))
    actions.extend(
        RemoveAddress(interface=interface, address=address, prefix=prefix)
        for _, address, prefix in sorted(removes)
    )
    return tuple(actions)


def note_applied(have: Known, actions: Sequence[Action]) -> None:
    """Update the belief with actions that succeeded (as :func:`simulate` would)."""
    for action in actions:
        match action:
            case AddAddress(interface=ifname, address=address, prefix=prefix):
                have.addresses[(ifname, address, prefix)] = True
            case RemoveAddress(interface=ifname, address=address, prefix=prefix):
                have.addresses.pop((ifname, address, prefix), None)
            case ReplaceNftTable(ruleset=ruleset):
                have.nft_digest = ruleset.digest
            case DeleteNftTable():
                have.nft_digest = None
            case SetSysctl():
                pass


def simulate(current: AppliedState, actions: Iterable[Action]) -> AppliedState:
    """The state after ``actions`` succeed; what a dry run believes the node has."""
    addresses = list(current.addresses)
    sysctls = {s.key: s.value for s in current.sysctls}
    digest = current.nft_digest
    for action in actions:
        match action:
            case AddAddress(interface=ifname, address=address, prefix=prefix):
                addresses.append(
                    InterfaceAddress(interface=ifname, address=address, prefix=prefix, owned=True)
                )
            case RemoveAddress(interface=ifname, address=address, prefix=prefix):
                addresses = [
                    a
                    for a in addresses
                    if (a.interface, a.address, a.prefix) != (ifname, address, prefix)
                ]
            case SetSysctl(key=key, value=value):
                sysctls[key] = value
            case ReplaceNftTable(ruleset=ruleset):
                digest = ruleset.digest
            case DeleteNftTable():
                digest = None
    return AppliedState(
        addresses=tuple(sorted(addresses, key=address_order)),
        sysctls=tuple(Sysctl(key=k, value=v) for k, v in sorted(sysctls.items())),
        nft_digest=digest,
    )


def describe(action: Action) -> str:
    """One line for logs and dry-run reports."""
    match action:
        case AddAddress(interface=ifname, address=address, prefix=prefix):
            return f"add address {address}/{prefix} on {ifname}"
        case RemoveAddress(interface=ifname, address=address, prefix=prefix):
            return f"remove address {address}/{prefix} from {ifname}"
        case SetSysctl(key=key, value=value):
            return f"set sysctl {key}={value}"
        case ReplaceNftTable(ruleset=ruleset):
            return (
                f"replace nftables table inet {ruleset.table} "
                f"({len(ruleset.rules)} rules, digest {ruleset.digest})"
            )
        case DeleteNftTable(table=table):
            return f"delete nftables table inet {table}"


def address_order(a: InterfaceAddress) -> tuple[str, int, str, int]:
    """How addresses are sorted in an ``AppliedState``."""
    return (a.interface, 6 if ":" in a.address else 4, a.address, a.prefix)
