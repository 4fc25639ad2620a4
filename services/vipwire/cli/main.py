"""``vipwire``: run a service, the all-in-one stack, or an operator command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from vipwire.runtime import ConfigError

SERVICES = ("watcher", "ipam", "lbdriver", "nodeagent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vipwire",
        description="Kubernetes type: LoadBalancer on premises, on appliances in L2 DSR mode.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run one service until SIGTERM")
    run.add_argument("service", choices=SERVICES)
    run.add_argument("--config", required=True, metavar="FILE", help="YAML configuration file")

    up = sub.add_parser("up", help="run the all-in-one stack (NATS, emulated clusters, services)")
    up.add_argument(
        "--smoke",
        action="store_true",
        help="wait for every demo Service to converge, print one JSON line, exit",
    )
    up.add_argument(
        "--state-dir",
        metavar="DIR",
        help="keep the JetStream store here (default: a temporary directory, named on start)",
    )
    up.add_argument("--clusters", type=int, default=2, help="emulated clusters (default 2)")
    up.add_argument("--nodes", type=int, default=3, help="nodes per cluster (default 3)")
    up.add_argument("--services", type=int, default=5, help="demo Services per cluster (default 5)")
    up.add_argument(
        "--timeout", type=float, default=60.0, help="--smoke: seconds to wait (default 60)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            from vipwire.cli.run import run_service

            return asyncio.run(run_service(args.service, args.config))
        if args.command == "up":
            from vipwire.cli.up import up

            return asyncio.run(up(args))
    except ConfigError as exc:
        print(f"vipwire: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
