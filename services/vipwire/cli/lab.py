"""``vipwire lab``: the packet lab (root): real namespaces, real packets through vipwire.

``lab dsr`` builds a client, a Linux appliance, three nodes with standalone
node agents and pods, runs the whole pipeline on them, sends HTTP through a
VIP and prints a JSON report; ``lab bench-apply`` times the node agent's
Linux applier; ``lab clean`` removes what crashed runs left behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser("lab", help="packet lab in network namespaces (root)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    dsr = verbs.add_parser(
        "dsr",
        help="client → Linux appliance → nodes → pods over a VIP, with direct replies; "
        "prints a JSON report, exits 1 unless every request succeeded through DSR",
    )
    dsr.add_argument("--requests", type=int, default=200, help="HTTP requests (default 200)")
    dsr.add_argument(
        "--concurrency", type=int, default=8, help="requests in flight at once (default 8)"
    )
    bench = verbs.add_parser(
        "bench-apply", help="time the Linux applier on one node (median of several runs)"
    )
    bench.add_argument("--vips", type=int, default=1000, help="VIPs (default 1000)")
    bench.add_argument("--ports", type=int, default=3, help="ports per VIP (default 3)")
    bench.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    verbs.add_parser("clean", help="delete namespaces left behind by lab runs that crashed")
    for p in (dsr, bench):
        p.add_argument("-v", "--verbose", action="store_true", help="log the services' INFO lines")
    return parser


def execute(args: argparse.Namespace) -> int:
    import asyncio

    from vipwire.lab import LabError, missing_requirements

    problems = missing_requirements()
    if problems:
        print(f"vipwire lab: {'; '.join(problems)}", file=sys.stderr)
        return 2
    from vipwire.telemetry import configure_logging

    configure_logging("INFO" if getattr(args, "verbose", False) else "WARNING")
    try:
        return asyncio.run(_verb(args))
    except LabError as exc:
        print(f"vipwire lab: {exc}", file=sys.stderr)
        return 1


async def _verb(args: argparse.Namespace) -> int:
    if args.verb == "dsr":
        from vipwire.lab import run_dsr

        report = await run_dsr(requests=args.requests, concurrency=args.concurrency)
        _print(report)
        return 0 if dsr_passed(report) else 1
    if args.verb == "bench-apply":
        from vipwire.lab.bench import bench_apply

        _print(await bench_apply(vips=args.vips, ports=args.ports, runs=args.runs))
        return 0
    from vipwire.lab.netbuild import sweep_stale

    removed = await sweep_stale()
    logging.getLogger("vipwire.lab").warning("removed %d stale namespaces", len(removed))
    _print({"removed": removed})
    return 0


def dsr_passed(report: dict[str, Any]) -> bool:
    """Every request answered, by more than one pod, and no reply seen via the appliance;
    UDP answered, SCTP too unless skipped, the allowed client in and the other one out,
    one client on one node under ClientIP affinity, and a drained node kept its
    established connection and took no new one."""
    return (
        report["ok"] == report["requests"] > 0
        and len(report["pods_seen"]) > 1
        and report["replies_via_appliance"] == 0
        and report["client_frames_from_appliance_mac"] == 0
        and report["forwarded_packets"] > 0
        and _access_passed(report)
        and report.get("drain_kept_connection") is not False
        and report.get("drain_new_connections_elsewhere") is not False
    )


def _access_passed(report: dict[str, Any]) -> bool:
    ranges = report.get("source_ranges", {})
    return (
        report.get("udp_ok") is True
        and report.get("sctp_ok") is not False
        and ranges.get("allowed_ok") is True
        and ranges.get("denied_blocked") is True
        and report.get("affinity_same_node_ratio") == 1.0
    )


def _print(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, indent=2))
