"""``vipwire bench --scenario NAME [--set KEY=VALUE …] [--json FILE]``: run a benchmark.

Scenarios live in :mod:`vipwire.bench` (one module each); this command only
picks one, passes its parameters, prints its table and writes its JSON.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

#: The scenarios of :data:`vipwire.bench.SCENARIOS` (named here so that ``--help`` does not
#: import them all; a unit test keeps the two equal).
SCENARIO_NAMES = (
    "apply",
    "burst",
    "chaos",
    "churn",
    "floor",
    "ipam",
    "latency",
    "restart",
    "scale",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser("bench", help="run a benchmark scenario through the real services")
    parser.add_argument(
        "--scenario",
        required=True,
        metavar="NAME",
        help=f"the scenario to run: {', '.join(SCENARIO_NAMES)}",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="params",
        help="scenario parameter, repeatable (churn: services, endpoints, parallel, step_ms, "
        "timeout_s)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE")
    # Sweep axes (scale; services/nodes/clusters are also burst's): short for --set.
    for axis in ("services", "nodes", "clusters", "feed"):
        parser.add_argument(
            f"--{axis}", metavar="N[,N…]", help=f"same as --set {axis}=… (scale: a list)"
        )
    parser.add_argument(
        "--quick", action="store_true", help="scale: the quick preset (same as --set quick=true)"
    )
    return parser


def execute(args: argparse.Namespace) -> int:
    import asyncio

    from vipwire.telemetry import configure_logging

    configure_logging("WARNING", stream=sys.stderr)
    params = list(args.params)
    for axis in ("services", "nodes", "clusters", "feed"):
        if getattr(args, axis) is not None:
            params.append(f"{axis}={getattr(args, axis)}")
    if args.quick:
        params.append("quick=true")
    return asyncio.run(bench(args.scenario, params, args.json))


async def bench(name: str, pairs: Sequence[str], json_path: str | None) -> int:
    """Run scenario ``name``; print its table, write its JSON. The exit code."""
    import asyncio

    import msgspec

    from vipwire.bench import SCENARIOS, parse_params

    scenario = SCENARIOS.get(name)
    if scenario is None:
        known = ", ".join(sorted(SCENARIOS))
        print(f"vipwire bench: unknown scenario {name!r} (known: {known})", file=sys.stderr)
        return 2
    try:
        result = await scenario(parse_params(pairs))
    except ValueError as exc:
        print(f"vipwire bench: {name}: {exc}", file=sys.stderr)
        return 2
    except TimeoutError:
        print(f"vipwire bench: {name}: did not converge in time", file=sys.stderr)
        return 1
    sys.stdout.write(result.table())
    if json_path:
        document = msgspec.json.format(msgspec.json.encode(result.data), indent=2)
        await asyncio.to_thread(Path(json_path).write_bytes, document + b"\n")
    return 0
