"""`vipwire bench --scenario churn`, small: real services, the sim appliance, real counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vipwire.bench import SCENARIOS, ChurnOptions, churn, parse_params
from vipwire.bench.churn import most_in_window, rollout
from vipwire.cli.bench import bench


async def test_churn_coalesces_rollouts_and_reports_the_documented_keys() -> None:
    """5 Services x 4 endpoints rolled out at once: fewer appliance writes than endpoint
    events, never two writes of one Service in one window, and the JSON keys are there."""
    result = await churn(ChurnOptions(services=5, endpoints=4, parallel=5, step_ms=5))
    data = result.data
    assert data["endpoint_events"] == data["naive_writes"] == 20
    assert 5 <= data["appliance_writes"] < data["naive_writes"]
    assert data["writes_per_service_per_window"] == 1
    assert data["converge_after_last_event_ms"] > 0
    assert "appliance writes" in result.table()


def test_rollout_changes_the_members_at_every_step() -> None:
    """Each step moves one pod to the node the step before freed (the spare node first)."""
    steps = rollout(3)
    assert steps == [[1, 2, 3], [0, 2, 3], [0, 1, 3]]
    assert all(a != b for a, b in zip([[0, 1, 2], *steps], steps, strict=False))


def test_most_in_window_counts_a_half_open_interval() -> None:
    """Writes exactly one window apart are in different windows."""
    assert most_in_window([0.0, 1.0, 2.0], 1.0) == 1
    assert most_in_window([0.0, 0.5, 0.9, 2.0], 1.0) == 3
    assert most_in_window([], 1.0) == 0


async def test_the_command_checks_parameters_and_writes_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--set pairs are parsed; a bad pair, a bad value or an unknown scenario is a usage
    error (exit 2); a run prints the table and writes the JSON document."""
    assert parse_params(["services=3", "step_ms = 2"]) == {"services": "3", "step_ms": "2"}
    assert "churn" in SCENARIOS
    assert await bench("nope", [], None) == 2
    assert "unknown scenario 'nope'" in capsys.readouterr().err
    assert await bench("churn", ["services"], None) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert await bench("churn", ["services=0"], None) == 2
    assert "services must be" in capsys.readouterr().err
    out = tmp_path / "churn.json"
    assert await bench("churn", ["services=2", "endpoints=2"], str(out)) == 0
    assert "naive writes" in capsys.readouterr().out
    document = json.loads(out.read_text())
    assert {"appliance_writes", "naive_writes", "writes_per_service_per_window"} <= set(document)
