"""``apply``: the node agent's Linux applier putting VIPs x ports on one node (root).

A fresh network namespace is the node for every run; each run times the
agent's whole reconcile (read the node, plan, apply) from empty to all VIPs
in standalone mode, then a reconcile with nothing to do, then removing
everything. The table shows medians; ``--json`` has every run.

Parameters: ``vips`` (default 1000), ``ports`` per VIP (3), ``runs`` (3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import msgspec

from vipwire.bench._result import BenchResult, convert_params
from vipwire.lab import LabError
from vipwire.lab.bench import bench_apply


class ApplyOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    vips: Annotated[int, msgspec.Meta(ge=1, le=50_000)] = 1000
    ports: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    runs: Annotated[int, msgspec.Meta(ge=1, le=50)] = 3


async def run_apply(params: Mapping[str, str]) -> BenchResult:
    options = convert_params(params, ApplyOptions)
    try:
        data = await bench_apply(vips=options.vips, ports=options.ports, runs=options.runs)
    except LabError as exc:
        raise ValueError(str(exc)) from exc
    rows = (
        ("node", "one network namespace, standalone mode (addresses + nftables)"),
        ("VIPs x ports", f"{data['vips']} x {data['ports']} ({data['rules']} DNAT rules)"),
        ("apply from empty (median)", f"{data['apply_s_median']:.3f} s"),
        ("reconcile, nothing to do (median)", f"{data['noop_s_median']:.3f} s"),
        ("remove everything (median)", f"{data['remove_s_median']:.3f} s"),
        ("runs", str(data["runs"])),
    )
    return BenchResult(scenario="apply", rows=rows, data=data)
