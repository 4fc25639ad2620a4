"""Following the node feed: which delta to apply, skip, or answer with a table read (pure).

Deltas arrive on core NATS, so one may be lost (a reconnect, a slow consumer): each
carries the feed sequence, one more than the previous. The agent knows the sequence
of what it holds (the table it read, then each delta applied); anything but the next
one is a gap, answered by reading the table again. A delta at or below what is held
is old news (buffered while the table was read).
"""

from __future__ import annotations

from typing import Literal

from vipwire.contracts import FeedDelta

Step = Literal["apply", "skip", "reread"]


def step(held: int | None, delta: FeedDelta) -> Step:
    """What to do with ``delta`` when the agent holds the table at ``held`` (None: none
    read yet: deltas wait for the table)."""
    if held is None:
        return "skip"
    if delta.reset:
        return "reread" if delta.seq > held else "skip"
    if delta.seq <= held:
        return "skip"
    if delta.seq == held + 1:
        return "apply"
    return "reread"
