"""The node agent's retry backoff (pure)."""

from __future__ import annotations

from vipwire.nodeagent.core.retry import backoff_s


def test_backoff_doubles_from_a_quarter_second_up_to_thirty() -> None:
    """The wait after failed attempt 1, 2, 3 ... is 0.25 s, 0.5 s, 1 s ... and never over 30 s."""
    assert [backoff_s(n) for n in (0, 1, 2, 3, 4)] == [0.25, 0.25, 0.5, 1.0, 2.0]
    assert backoff_s(8) == 30.0 and backoff_s(100) == 30.0
