"""The scale bench's pure parts: its parameters and the fitted growth exponents."""

from __future__ import annotations

import pytest

from vipwire.bench.scale import QUICK, exponents, fit_exponents, options_from


def test_exponents_are_recovered_from_a_power_law_grid() -> None:
    """y = 3 S^1.0 N^0.5 on a 2x3 grid gives exponent 1 for Services, 0.5 for nodes."""
    points = [(s, n, 3 * s * n**0.5) for s in (100, 1000) for n in (10, 50, 200)]
    fit = fit_exponents(points)
    assert fit["services"] == pytest.approx(1.0, abs=1e-3)
    assert fit["nodes"] == pytest.approx(0.5, abs=1e-3)
    assert fit["services_x_nodes"] is not None and 0.5 < fit["services_x_nodes"] < 1.0


def test_an_axis_that_does_not_vary_has_no_exponent() -> None:
    """With one Services value only the nodes exponent is fitted; one point fits nothing;
    points without a positive figure are left out."""
    fit = fit_exponents([(20, 3, 1.0), (20, 6, 4.0), (20, 12, 0.0)])
    assert fit["services"] is None
    assert fit["nodes"] == pytest.approx(2.0)
    assert fit_exponents([(20, 3, 1.0)]) == {
        "services": None,
        "nodes": None,
        "services_x_nodes": None,
    }


def test_exponents_are_fitted_per_feed_and_clusters() -> None:
    """Points of different feeds or cluster counts are not mixed in one fit."""
    base = {"services_per_cluster": 10, "applied_s": 1.0}
    points = [
        {**base, "feed": "lb", "clusters": 1, "nodes_per_cluster": n, "applied_s": n}
        for n in (2, 4)
    ] + [{**base, "feed": "table", "clusters": 1, "nodes_per_cluster": n} for n in (2, 4)]
    fits = {f["feed"]: f["fits"]["applied_s"]["nodes"] for f in exponents(points)}
    assert fits == {"lb": pytest.approx(1.0), "table": pytest.approx(0.0)}


def test_parameters_are_lists_and_quick_fills_what_is_not_given() -> None:
    """Comma-separated axes; ``quick`` takes its preset only for the axes not given; a
    bad value is a ValueError."""
    options = options_from({"services": "20, 40", "quick": "true"})
    assert options.services == (20, 40)
    assert options.nodes == QUICK["nodes"] and options.clusters == QUICK["clusters"]
    assert options_from({}).nodes == (10, 50, 200, 1000, 5000)
    with pytest.raises(ValueError):
        options_from({"nodes": "ten"})
    with pytest.raises(ValueError):
        options_from({"nodes": "2", "endpoints": "3"})
    with pytest.raises(ValueError, match="feed"):
        options_from({"feed": "lb,bogus"})
