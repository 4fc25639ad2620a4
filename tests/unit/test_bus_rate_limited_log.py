"""The consumer's per-subject rate limit on lines about refused messages."""

from __future__ import annotations

from vipwire.bus._consumer import _RateLimitedLog


def test_one_line_per_subject_per_interval_with_the_count_held_back() -> None:
    """The first refusal of a subject is told; repeats within the interval are held back
    and counted into the next line; other subjects are told on their own."""
    limit = _RateLimitedLog(60.0)
    assert limit.due("a", 0.0) == 0
    assert limit.due("a", 1.0) is None
    assert limit.due("a", 59.0) is None
    assert limit.due("b", 2.0) == 0
    assert limit.due("a", 60.0) == 2
    assert limit.due("a", 61.0) is None
