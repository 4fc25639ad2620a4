"""``vipwire``: run a service, the all-in-one stack, or an operator command.

Each command lives in its own module of this package with two functions:
``register(subparsers)`` adds its parser, ``execute(args) -> int`` runs it.
A module keeps its heavy imports inside ``execute`` so that ``vipwire --help``
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vipwire.runtime import ConfigError

#: Command modules, in the order ``--help`` lists them.
COMMANDS = (
    "run",
    "up",
    "config",
    "emulator",
    "lb",
    "bench",
    "lab",
    "ipam",
    "replay",
    "nats",
    "trace",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vipwire",
        description="Kubernetes type: LoadBalancer on premises, on appliances in L2 DSR mode.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"vipwire.cli.{name}")
        command = module.register(sub)
        command.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args._module.execute(args)
    except ConfigError as exc:
        print(f"vipwire: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
