"""What a handler says about a message; one place turns it into ack/nak/term."""

from __future__ import annotations

import msgspec


class Done(msgspec.Struct, frozen=True):
    """Handled (or nothing to do): acknowledge."""


class Retry(msgspec.Struct, frozen=True):
    """Not now: redeliver after ``delay`` seconds. ``reason`` is logged."""

    delay: float
    reason: str = ""


class Reject(msgspec.Struct, frozen=True):
    """This message can never be handled: terminate it, log it, count it."""

    reason: str


Verdict = Done | Retry | Reject

DONE = Done()
