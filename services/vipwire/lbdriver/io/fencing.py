"""The write fence: every appliance write asks it first, and carries its stamp.

The election installs a fence (``ApplianceClient(fence=...)``); the client sets
it as the current fence around each write, and the REST transport calls it
before every mutating request it sends (so a write made of several requests,
an F5 transaction say, stops at the first request past the deadline). The
fence raises :class:`NotLeader` when this replica may not write, else returns
the headers to send: ``X-Vipwire-Writer`` and ``X-Vipwire-Lease``. Real F5 and
A10 appliances ignore request headers they do not know; the emulators log
them (the write log).

The REST transport asks the fence twice per write: before the request (to stamp
it) and again once its connection is ready, right before the first byte is
written (:func:`fence_for`), so a pause while a connection opens sends nothing
late.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Final

WRITER_HEADER: Final = "X-Vipwire-Writer"
LEASE_HEADER: Final = "X-Vipwire-Lease"

#: Returns the headers to stamp a write with; raises NotLeader to refuse it.
Fence = Callable[[], Mapping[str, str]]

#: The fence of the write in progress (None: not inside a fenced write).
CURRENT_FENCE: ContextVar[Fence | None] = ContextVar("vipwire_lbdriver_fence", default=None)

MUTATING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class NotLeader(Exception):
    """A write refused unsent: this replica does not hold the lease, or its term ran out.

    Not an appliance failure: it opens no breaker and is reported to no Service.
    """


def fence_for(method: str) -> Fence | None:
    """The fence a request must pass: the current one for a mutating request, else None."""
    if method.upper() not in MUTATING:
        return None
    return CURRENT_FENCE.get()


def stamp(method: str) -> Mapping[str, str]:
    """The headers a request needs under the current fence (checked for a mutating one)."""
    fence = fence_for(method)
    if fence is None:
        return {}
    return fence()
