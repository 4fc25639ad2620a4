"""How long the node agent waits before it tries a failed apply or report again (pure)."""

from __future__ import annotations


def backoff_s(attempt: int) -> float:
    """Seconds to wait after failed ``attempt`` (1, 2, ...): 0.25 s, doubling, at most 30 s."""
    return float(min(0.25 * 2 ** max(attempt - 1, 0), 30.0))
