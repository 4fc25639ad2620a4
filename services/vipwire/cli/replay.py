"""``vipwire replay``: read the event history back, rerun it, or move it between stores.

Reads the ``VIPWIRE`` stream of a live server (``--nats``) or of a stopped
stack's store (``--store``, opened on a copy), for all clusters, one cluster
or one Service, between two times or sequence numbers, and prints:

* a timeline (a table; ``--json``: one JSON object per message),
* ``--rerun``: the first recorded decision the pure cores would not have
  made (exit 1), or "no divergence" (exit 0),
* ``--export FILE``: the slice as JSON lines, which ``--import FILE``
  publishes into an empty stream (``--into URL`` or ``--store DIR``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from vipwire.cli import connection

if TYPE_CHECKING:
    from vipwire.ipam import PoolSettings
    from vipwire.replay import Bound, Record, RerunResult, Scope

#: Ranges at least this long (in sequence numbers) get a progress bar on a terminal.
PROGRESS_FROM = 2000


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "replay",
        help="the event history: a timeline, a rerun through the pure cores, export/import",
        description="Read the VIPWIRE stream back. Times are ISO 8601 (no zone: UTC); "
        "seq:N names a stream sequence number. Exit codes: 0 fine, 1 a divergence (--rerun) "
        "or no messages for the --service, 2 a usage error, 3 NATS unreachable.",
        epilog=connection.PRECEDENCE,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--nats",
        metavar="URL",
        help=f"read from a live NATS server (env {connection.ENV_URL}; default "
        f"{connection.DEFAULT_NATS})",
    )
    where.add_argument(
        "--store",
        metavar="DIR",
        type=Path,
        help="read a stopped stack's JetStream store (e.g. vipwire up --state-dir DIR), on a "
        "copy; with --import: the store to import into",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--cluster", metavar="NAME", help="only this cluster")
    scope.add_argument("--service", metavar="CLUSTER/NS/NAME", help="only this Service")
    parser.add_argument("--since", metavar="WHEN", help="from this time or seq:N (inclusive)")
    parser.add_argument("--until", metavar="WHEN", help="up to this time or seq:N (inclusive)")
    parser.add_argument("--json", action="store_true", help="JSON lines for tools")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--rerun",
        action="store_true",
        help="feed the recorded inputs through the pure cores of ipam, lbdriver and nodeagent "
        "and report the first decision that differs",
    )
    mode.add_argument("--export", metavar="FILE", help="write the slice as JSON lines (- stdout)")
    mode.add_argument(
        "--import",
        dest="import_file",
        metavar="FILE",
        help="publish an export into an empty stream (--into URL or --store DIR)",
    )
    parser.add_argument("--into", metavar="URL", help="--import: the NATS server to import into")
    connection.add_arguments(
        parser,
        nats_flag=False,
        config_help="the services' config file: its bus section says how to reach NATS "
        "(servers, credentials, tls); with --rerun, its ipam pools were in force (default: "
        "the all-in-one stack's pools, as in vipwire up)",
    )
    parser.add_argument(
        "--lag",
        type=float,
        metavar="SECONDS",
        help="--rerun: how long before its message a decision may have been taken "
        "(consumer lag, appliance write; default 0.5)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        metavar="SECONDS",
        help="--rerun: how long a service may take to act on a change before its silence "
        "counts as a divergence (coalescing, retries; default 5)",
    )
    parser.add_argument(
        "--ipam-replicas",
        type=int,
        default=1,
        metavar="N",
        help="--rerun: ipam replicas that ran; with more than one, exact addresses are not "
        "compared (default 1)",
    )
    return parser


def execute(args: argparse.Namespace) -> int:
    import asyncio

    from vipwire.cli import exits
    from vipwire.replay import BoundError, ExportFormatError, ReplayError, ReplayUnreachable

    try:
        return asyncio.run(_main(args))
    except BrokenPipeError:
        # The reader (head, less) went away: stop quietly, as other tools do.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ReplayUnreachable as exc:
        print(f"vipwire replay: {exc}", file=sys.stderr)
        return exits.UNREACHABLE
    except (ReplayError, BoundError, ExportFormatError, OSError) as exc:
        print(f"vipwire replay: {exc}", file=sys.stderr)
        return exits.USAGE


async def _main(args: argparse.Namespace) -> int:
    from vipwire.replay import Scope, parse_bound, parse_cluster, parse_service

    if args.import_file is not None:
        return await _import(args)
    if args.into is not None:
        raise _usage("--into goes with --import")
    scope = Scope()
    if args.cluster:
        scope = parse_cluster(args.cluster)
    elif args.service:
        scope = parse_service(args.service)
    since = parse_bound(args.since) if args.since else None
    until = parse_bound(args.until) if args.until else None
    if not args.rerun and (args.lag is not None or args.settle is not None):
        raise _usage("--lag and --settle go with --rerun")
    pools = _pools(args.config) if args.rerun else ()
    return await _read(args, scope, since, until, pools)


def _usage(text: str) -> Exception:
    from vipwire.replay import ReplayError

    return ReplayError(text)


def _pools(config: str | None) -> tuple[PoolSettings, ...]:
    if config is None:
        from vipwire.allinone.stack import StackSettings

        return StackSettings().pools
    from vipwire.ipam import IpamSettings
    from vipwire.runtime import read_config, section

    return section(read_config(config), "ipam", IpamSettings, source=config).pools


async def _read(
    args: argparse.Namespace,
    scope: Scope,
    since: Bound | None,
    until: Bound | None,
    pools: tuple[PoolSettings, ...],
) -> int:
    from vipwire.replay import (
        DEFAULT_LAG,
        DEFAULT_SETTLE,
        ReplayError,
        encode_line,
        json_row,
        open_source,
        read_records,
        render,
        rerun,
        row_of,
        stream_state,
        table_header,
        table_row,
    )

    source = {"store": args.store} if args.store else {"bus": connection.settings_from(args)}
    async with open_source(**source) as js:
        state = await stream_state(js)
        if state is None:
            raise ReplayError("there is no VIPWIRE stream there")
        # A bar between table rows on the same terminal would only get in the way.
        bar = args.rerun or args.export is not None or not sys.stdout.isatty()
        progress = _Progress(state.first_seq, state.last_seq, enabled=bar)
        if args.rerun:
            # A decision depends on everything before it: read it all, judge the slice.
            records = [
                r
                async for r in read_records(
                    js, state, subject_filter="vipwire.>", progress=progress.update
                )
            ]
            progress.done()
            result = rerun(
                records,
                pools,
                scope=scope,
                since=since,
                until=until,
                lag=DEFAULT_LAG if args.lag is None else args.lag,
                settle=DEFAULT_SETTLE if args.settle is None else args.settle,
                ipam_replicas=args.ipam_replicas,
            )
            if args.json:
                import msgspec

                sys.stdout.write(msgspec.json.encode(_result_json(result)).decode() + "\n")
            else:
                sys.stdout.write(render(result))
            return 1 if result.divergences else 0
        stream = read_records(
            js,
            state,
            subject_filter=scope.filter,
            since=since,
            until=until,
            progress=progress.update,
        )
        count = 0
        if args.export is not None:
            with _open_out(args.export) as out:
                async for record in stream:
                    out.write(encode_line(record) + b"\n")
                    count += 1
            progress.done()
            print(f"vipwire replay: exported {count} messages to {args.export}", file=sys.stderr)
            return 0
        if not args.json:
            print(table_header())
        async for record in stream:
            row = row_of(record)
            if args.json:
                sys.stdout.write(json_row(row, record).decode() + "\n")
            else:
                progress.clear()
                print(table_row(row))
            count += 1
        progress.done()
        if not count:
            print(f"vipwire replay: no messages for {scope.describe()} in range", file=sys.stderr)
            # As kubectl: a named Service not found fails; an empty listing does not.
            return 1 if args.service else 0
        return 0


def _result_json(result: RerunResult) -> dict[str, object]:
    return {
        "divergence": result.first,
        "more": max(0, len(result.divergences) - 1),
        "checked": result.checked,
        "complete": result.complete,
        "exact_addresses": result.exact_addresses,
        "notes": result.notes,
    }


@contextlib.contextmanager
def _open_out(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with open(path, "wb") as out:
        yield out


def _records_of(path: str) -> list[Record]:
    from vipwire.replay import read_lines

    if path == "-":
        return list(read_lines(sys.stdin.buffer))
    with open(path, "rb") as file:
        return list(read_lines(file))


async def _import(args: argparse.Namespace) -> int:
    from vipwire.replay import import_records, open_target

    if (args.into is None) == (args.store is None):
        raise _usage("--import needs exactly one of --into URL and --store DIR")
    if args.nats or args.rerun or args.cluster or args.service or args.since or args.until:
        raise _usage("--import takes the whole file: no --nats, scope or range")
    records = _records_of(args.import_file)
    if args.store:
        target: dict[str, object] = {"store": args.store}
        where = str(args.store)
    else:
        import msgspec

        bus = msgspec.structs.replace(connection.settings_from(args), servers=(args.into,))
        target = {"bus": bus}
        where = connection.where(bus)
    async with open_target(**target) as js:  # type: ignore[arg-type]
        count = await import_records(js, records)
    print(f"vipwire replay: imported {count} messages into {where}", file=sys.stderr)
    return 0


class _Progress:
    """A bar on stderr, by stream sequence, for long ranges on a terminal."""

    def __init__(self, first: int, last: int, *, enabled: bool = True) -> None:
        self.first = first
        self.span = max(1, last - first)
        self.shown = enabled and sys.stderr.isatty() and last - first >= PROGRESS_FROM
        self._drawn = 0.0
        self._visible = False

    def update(self, seq: int) -> None:
        if not self.shown:
            return
        now = time.monotonic()
        if now - self._drawn < 0.1:
            return
        self._drawn = now
        share = min(1.0, max(0.0, (seq - self.first) / self.span))
        bar = "#" * int(share * 30)
        sys.stderr.write(f"\rreplay [{bar:<30}] {share:4.0%} seq {seq}")
        sys.stderr.flush()
        self._visible = True

    def clear(self) -> None:
        if self._visible:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._visible = False
            self._drawn = 0.0

    def done(self) -> None:
        self.clear()
        self.shown = False
