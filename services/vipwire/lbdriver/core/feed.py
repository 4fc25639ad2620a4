"""The node feed of one cluster, as the lbdriver keeps it (pure).

Every ``lb`` message the lbdriver publishes (or reads back) is noted here; once per
coalescing window the shell takes the window's changes as one
:class:`~vipwire.contracts.FeedDelta` and writes the table
(:func:`~vipwire.contracts.chunk_table`) before publishing it, so a table read is
never behind a delta an agent has seen.
"""

from __future__ import annotations

from vipwire.contracts import (
    FeedDelta,
    FeedService,
    LbFailed,
    LbMessage,
    LbProgrammed,
    LbRemoved,
    feed_service,
)


class ClusterFeed:
    """One cluster's table, and what changed in it since the last delta."""

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        #: The table: every programmed Service, by ``ns/name``.
        self.services: dict[str, FeedService] = {}
        #: Sequence of the last delta taken (0: none yet).
        self.seq = 0
        self._put: dict[str, FeedService] = {}
        self._gone: set[str] = set()
        #: Services whose last word is a failure with no programmed VIPs known before:
        #: the node keeps what it served for them (see the old table).
        self.unknown: set[str] = set()
        #: No table published yet: one is owed, even an empty one (agents wait for it).
        self.fresh = True

    @property
    def pending(self) -> bool:
        return self.fresh or bool(self._put or self._gone)

    def note(self, message: LbMessage) -> bool:
        """Remember an ``lb`` message of the cluster; True if the table changed."""
        key = f"{message.namespace}/{message.name}"
        match message:
            case LbProgrammed():
                entry = feed_service(message)
                self.unknown.discard(key)
                if self.services.get(key) == entry:
                    return False
                self.services[key] = entry
                self._put[key] = entry
                self._gone.discard(key)
                return True
            case LbRemoved():
                self.unknown.discard(key)
                if self.services.pop(key, None) is None:
                    return False
                self._put.pop(key, None)
                self._gone.add(key)
                return True
        assert isinstance(message, LbFailed)
        # The appliance may still serve the old VIPs: the nodes keep them.
        if key not in self.services:
            self.unknown.add(key)
        return False

    def adopt(self, old: dict[str, FeedService]) -> None:
        """Take from a table written before (by another leader) the Services whose last
        word is a failure: what the nodes served for them stays."""
        for key in sorted(self.unknown):
            entry = old.get(key)
            if entry is not None:
                self.services[key] = entry
                self._put[key] = entry
        self.unknown.clear()

    def take(self, *, reset: bool = False) -> FeedDelta:
        """The window's changes as the next delta (``reset``: the table alone is to be
        trusted, the changes are not listed)."""
        self.seq += 1
        self.fresh = False
        put = () if reset else tuple(self._put[k] for k in sorted(self._put))
        gone = () if reset else tuple(sorted(self._gone))
        self._put, self._gone = {}, set()
        return FeedDelta(cluster=self.cluster, seq=self.seq, put=put, gone=gone, reset=reset)

    def table(self) -> list[FeedService]:
        return list(self.services.values())


def next_window_s(window_s: float, *, quiet_s: float, base_s: float, max_s: float) -> float:
    """How long the next delta gathers changes, woken ``quiet_s`` after the last delta.

    A change after a quiet spell (longer than the window) goes out after ``base_s``,
    as a single change should. One that follows the last delta within the window is
    part of a burst: the window doubles, up to ``max_s``, so a burst costs every node
    one delivery per ``max_s`` instead of one per ``base_s`` (every agent of the
    cluster receives every delta; the server sends and each agent applies and reports
    each one).
    """
    if quiet_s > window_s or max_s <= base_s:
        return base_s
    return min(window_s * 2, max_s)


def still_ours(*, written: int | None, found: int, sent: int | None, taken: int) -> bool:
    """Whether a replica elected again can carry on its feed without a reset.

    ``written``: the KV revision of the last head it wrote (None: it never published
    this cluster's feed); ``found``: the head's revision in KV now, read from the
    bucket's leader; ``sent``: the sequence of its last delta that went out; ``taken``:
    the sequence of its last delta taken. Any write of the head by another replica
    changes its revision, so an unchanged one means nobody published since; a delta
    taken but not sent (a failed window, a reset that did not go out) still needs the
    reset that makes every agent read the table.
    """
    return written is not None and found == written and sent == taken
