"""A partition's virtual servers, indexed by owner: a pure, immutable value.

Every reconcile looks at one Service's objects; finding them by scanning the
partition made each reconcile (and each drift comparison) cost as much as the
partition (11% of the lbdriver's samples at 1,000 virtual servers per
partition). A :class:`Listing` keeps the owner index beside the objects and is
never changed: a write makes a new one (two C-level dict copies plus work per
operation), so whoever holds a listing across an ``await`` keeps the state it
read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Final

from vipwire.lbdriver.core.diff import apply_operations, canonical, owns
from vipwire.lbdriver.core.virtual_servers import Operation, VirtualServer, op_name

_NONE: Final[Mapping[str, VirtualServer]] = MappingProxyType({})


class Listing(Mapping[str, VirtualServer]):
    """Virtual servers by name (canonical), with each owner's objects at hand.

    ``owned`` counts the objects whose name carries ``prefix`` (ours).
    """

    __slots__ = ("_by_owner", "_prefix", "_servers", "owned")

    def __init__(self, servers: Mapping[str, VirtualServer], prefix: str) -> None:
        self._servers: dict[str, VirtualServer] = {n: canonical(s) for n, s in servers.items()}
        self._prefix = prefix
        by_owner: dict[str, dict[str, VirtualServer]] = {}
        for name, server in self._servers.items():
            by_owner.setdefault(server.owner, {})[name] = server
        self._by_owner = by_owner
        self.owned = sum(1 for name in self._servers if owns(name, prefix))

    # --- Mapping ---------------------------------------------------------------------

    def __getitem__(self, name: str) -> VirtualServer:
        return self._servers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._servers)

    def __len__(self) -> int:
        return len(self._servers)

    def __contains__(self, name: object) -> bool:
        return name in self._servers

    def get(self, name: str, default: VirtualServer | None = None) -> VirtualServer | None:  # type: ignore[override]
        return self._servers.get(name, default)

    # --- the index -------------------------------------------------------------------

    def of(self, owner: str) -> Mapping[str, VirtualServer]:
        """The objects tagged with ``owner``, by name (must not be modified)."""
        return self._by_owner.get(owner, _NONE)

    def owners(self) -> Iterable[str]:
        """Every owner tag present (the empty tag included, for untagged objects)."""
        return self._by_owner.keys()

    def after(self, ops: Sequence[Operation]) -> Listing:
        """The listing once ``ops`` are applied, as :func:`apply_operations` computes it
        (and raising :class:`~vipwire.lbdriver.core.diff.OperationConflict` as it does)."""
        servers = apply_operations(self._servers, ops)
        touched = dict.fromkeys(op_name(op) for op in ops)
        by_owner = dict(self._by_owner)
        copied: set[str] = set()
        owned = self.owned
        for name in touched:
            before = self._servers.get(name)
            now = servers.get(name)
            if before is now:
                continue
            ours = owns(name, self._prefix)
            if before is not None:
                del _own_copy(by_owner, copied, before.owner)[name]
                owned -= ours
            if now is not None:
                _own_copy(by_owner, copied, now.owner)[name] = now
                owned += ours
        for owner in copied:
            if not by_owner[owner]:
                del by_owner[owner]
        result = Listing.__new__(Listing)
        result._servers = servers
        result._prefix = self._prefix
        result._by_owner = by_owner
        result.owned = owned
        return result


def _own_copy(
    by_owner: dict[str, dict[str, VirtualServer]], copied: set[str], owner: str
) -> dict[str, VirtualServer]:
    """``by_owner[owner]`` as a dict this update may change (the old listing keeps its own)."""
    if owner not in copied:
        copied.add(owner)
        by_owner[owner] = dict(by_owner.get(owner, _NONE))
    return by_owner[owner]


def digest(servers: Iterable[VirtualServer]) -> int:
    """A fingerprint of a set of virtual servers: equal sets give equal digests.

    Lets a drift pass tell that a Service's objects are still exactly what was
    written without computing what it needs and diffing (most of a pass).
    """
    return hash(frozenset(servers))
