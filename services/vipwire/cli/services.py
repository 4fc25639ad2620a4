"""``vipwire services``: every Service the fleet knows, with its VIP, state and reason.

Read from the stream, as the dashboard does on start: the last message of every
``vipwire.>`` subject, in stream order, folded into one row per Service. Nothing
is consumed or changed.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from vipwire.cli import connection, exits
from vipwire.cli.args import seconds

if TYPE_CHECKING:
    from vipwire.allinone.view import BusView, Row

#: States that count as failed for ``--failed`` and the exit code's reader.
FAILED_STATES = ("failed", "appliance-failed", "rejected")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "services",
        help="every Service the fleet knows: VIP, state, reason",
        description="Every Service the fleet knows, with its VIP, state and reason, read from "
        "the stream's last messages as the dashboard does (nothing is consumed or changed).",
        epilog=connection.PRECEDENCE,
    )
    connection.add_arguments(parser)
    parser.add_argument("--cluster", metavar="NAME", help="only the Services of this cluster")
    parser.add_argument(
        "--failed",
        action="store_true",
        help=f"only the Services that failed ({', '.join(FAILED_STATES)})",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="seconds to read the stream (default 10)",
    )
    return parser


def execute(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(run(args))


async def read_view(args: argparse.Namespace) -> BusView:
    """The Services as the stream's last messages tell them. Raises ConnectionProblem, or
    OperationFailed when the stream cannot be read."""
    import nats.errors
    import nats.js.errors

    from vipwire.allinone.view import BusView
    from vipwire.bus import BusError
    from vipwire.bus._reading import last_messages
    from vipwire.contracts import STREAM

    settings = connection.settings_from(args)
    nc = await connection.connect(settings, timeout=min(args.timeout, 5.0))
    view = BusView()
    try:
        js = nc.jetstream(timeout=args.timeout)
        try:
            stored = await last_messages(js, STREAM, "vipwire.>", timeout_s=args.timeout)
        except nats.js.errors.NotFoundError:
            raise exits.OperationFailed(
                f"there is no {STREAM} stream behind {connection.where(settings)}"
            ) from None
        except (BusError, nats.errors.Error, TimeoutError) as exc:
            raise exits.OperationFailed(
                f"cannot read the {STREAM} stream behind {connection.where(settings)}: {exc!r}"
            ) from None
        for message in stored:
            view.apply(message.subject, message.data)
    finally:
        await nc.close()
    return view


async def run(args: argparse.Namespace) -> int:
    import msgspec

    try:
        view = await read_view(args)
    except connection.ConnectionProblem as exc:
        print(f"vipwire services: {exc}", file=sys.stderr)
        return exc.code
    rows = [
        r
        for _, r in sorted(view.rows.items())
        if (args.cluster in (None, r.cluster)) and (not args.failed or r.state in FAILED_STATES)
    ]
    if args.json:
        out = [
            {
                "cluster": r.cluster,
                "namespace": r.namespace,
                "name": r.name,
                "vips": list(r.vips),
                "state": r.state,
                "reason": r.detail or None,
                "appliance": r.appliance or None,
                "nodes_applied": view.nodes_applied(r)[0],
            }
            for r in rows
        ]
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(out), indent=2).decode() + "\n")
    else:
        sys.stdout.write(render(rows, view))
    return exits.OK


def render(rows: list[Row], view: BusView) -> str:
    """One line per Service; a summary line last."""
    table = [("CLUSTER", "NAMESPACE/NAME", "VIP", "STATE", "NODES", "REASON")]
    for r in rows:
        serving, reporting = view.nodes_applied(r)
        table.append(
            (
                r.cluster,
                f"{r.namespace}/{r.name}",
                ",".join(r.vips) or "-",
                r.state,
                f"{serving}/{reporting}",
                r.detail or "-",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    lines = [
        ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]).rstrip()
        for row in table
    ]
    failed = sum(1 for r in rows if r.state in FAILED_STATES)
    ready = sum(1 for r in rows if r.state == "programmed")
    lines.append(f"{len(rows)} Services, {ready} ready, {failed} failed")
    return "\n".join(lines) + "\n"
