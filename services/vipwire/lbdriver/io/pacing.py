"""Long passes over every Service, in slices that let the event loop run between them.

The lease is renewed by a task of this same loop: a pass that keeps the loop for
longer than the time between a renewal falling due and the lease running out
(``lease_ttl_s - lease_safety_margin_s - lease_renew_s``, 1.5 s by default) loses
the lease, and the new term's own pass over every Service then starves the next
renewal. A slice is bounded by time, not by a count: the cost of one item grows
with the machine's load.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

#: Seconds a pass runs before it lets the loop turn once.
SLICE_S: Final = 0.02


class Pacer:
    """Call :meth:`turn` between items; it yields once a slice's time is used up."""

    def __init__(self, slice_s: float = SLICE_S) -> None:
        self._slice_s = slice_s
        self._since = time.monotonic()
        #: Times it let the loop turn (for tests and logs).
        self.yields = 0

    async def turn(self) -> None:
        if time.monotonic() - self._since >= self._slice_s:
            await asyncio.sleep(0)
            self.yields += 1
            self._since = time.monotonic()
