"""`vipwire bench --scenario ipam`, tiny: three replicas race on a /24, nothing owned twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vipwire.bench import SCENARIOS
from vipwire.cli.bench import bench


async def test_a_small_race_has_no_duplicates_and_writes_the_documented_keys(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """600 allocations by 3 replicas in a /24 (so the pool fills and frees): 0 duplicates,
    the bucket empty at the end, the JSON carries allocations_per_s and duplicates, and
    the table says it drives the KV-claim layer, not the bus."""
    assert "ipam" in SCENARIOS
    out = tmp_path / "ipam.json"
    params = ["allocations=600", "cidr=198.19.0.0/24", "parallel=8", "fill=0.9"]
    assert await bench("ipam", params, str(out)) == 0
    data = json.loads(out.read_text())
    assert data["duplicates"] == 0 and data["allocations"] == 600
    assert data["allocations_per_s"] > 0 and data["left_in_bucket"] == 0
    assert data["mode"] == "kv-claim-layer"
    assert "KV-claim layer" in capsys.readouterr().out
