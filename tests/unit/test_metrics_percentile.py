"""percentile: the nearest-rank percentile every report uses."""

from __future__ import annotations

import math

from vipwire.metrics import percentile


def test_nearest_rank() -> None:
    """p50 and p99 of 1..100 are 50 and 99; order of the input does not matter."""
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0


def test_one_value_is_every_percentile() -> None:
    """A single sample is its own p0, p50 and p100."""
    assert [percentile([7.5], q) for q in (0, 50, 100)] == [7.5, 7.5, 7.5]


def test_no_values_is_nan_not_zero() -> None:
    """No samples give NaN: a made-up 0 would read as a perfect latency."""
    assert math.isnan(percentile([], 50))
