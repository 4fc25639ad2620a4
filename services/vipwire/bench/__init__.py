"""Benchmarks: named scenarios run through the real services (``vipwire bench``).

Each scenario is one module of this package with an entry point
``async run(params) -> BenchResult`` (``params``: the ``--set key=value``
pairs, converted to the scenario's own options); :data:`SCENARIOS` names
them. A scenario builds what it measures from :class:`vipwire.allinone.Stack`,
so it measures the services as they run, not a model of them.
"""

from vipwire.bench._result import BenchResult, Scenario, parse_params
from vipwire.bench.apply import run_apply
from vipwire.bench.burst import run_burst
from vipwire.bench.chaos import run_chaos
from vipwire.bench.churn import ChurnOptions, churn, run_churn
from vipwire.bench.floor import run_floor
from vipwire.bench.ipam import run_ipam
from vipwire.bench.latency import run_latency
from vipwire.bench.restart import run_restart
from vipwire.bench.scale import run_scale

#: Scenario name → entry point.
SCENARIOS: dict[str, Scenario] = {
    "churn": run_churn,
    "apply": run_apply,
    "floor": run_floor,
    "latency": run_latency,
    "burst": run_burst,
    "restart": run_restart,
    "ipam": run_ipam,
    "chaos": run_chaos,
    "scale": run_scale,
}

__all__ = [
    "SCENARIOS",
    "BenchResult",
    "ChurnOptions",
    "Scenario",
    "churn",
    "parse_params",
    "run_churn",
]
