"""``vipwire lb status``: the appliances as the running lbdriver sees them;
``vipwire lb check``: a read-only preflight of the configured appliances.

The lbdriver answers a request on ``vipwire-ctl.lbdriver.status.<caller>`` (core
NATS, outside the stream; the caller is the identity of the credentials file the
connection uses, ``anonymous`` without one); this command asks and
prints a table, or the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import TYPE_CHECKING

from vipwire.cli import connection, exits
from vipwire.cli.args import seconds

if TYPE_CHECKING:
    from vipwire.bus import BusSettings
    from vipwire.contracts import LbdriverStatus
    from vipwire.lbdriver.core.preflight import Check


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser("lb", help="inspect the running lbdriver and its appliances")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    status = verbs.add_parser(
        "status",
        help="appliances: health (healthy, probing, failing), virtual servers, last write, "
        "last error",
        epilog=connection.PRECEDENCE,
    )
    connection.add_arguments(status)
    status.add_argument("--json", action="store_true", help="print the lbdriver's answer as JSON")
    status.add_argument(
        "--timeout",
        type=seconds,
        default=3.0,
        metavar="SECONDS",
        help="seconds to wait for an answer (default 3)",
    )
    check = verbs.add_parser(
        "check",
        help="preflight (read-only): login, release, rights, partition, profiles, objects",
    )
    check.add_argument("--config", required=True, metavar="FILE", help="YAML configuration file")
    check.add_argument(
        "--appliance", metavar="NAME", help="check this appliance only (default: every one)"
    )
    check.add_argument(
        "--cluster",
        action="append",
        default=[],
        metavar="NAME",
        help="cluster whose partition to check (repeatable; default: the partitions mapped "
        "in the appliance's partitions setting)",
    )
    check.add_argument("--json", action="store_true", help="print the checks as JSON")
    check.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        default=None,
        help="seconds per login or read (default: the appliance's timeouts setting)",
    )
    return parser


def execute(args: argparse.Namespace) -> int:
    import asyncio

    if args.verb == "check":
        return asyncio.run(
            check_command(
                args.config,
                appliance=args.appliance,
                clusters=args.cluster,
                as_json=args.json,
                timeout=args.timeout,
            )
        )
    settings = connection.settings_from(args)
    return asyncio.run(
        status_command(
            settings, as_json=args.json, timeout=args.timeout, caller=connection.caller_of(settings)
        )
    )


class StatusUnavailable(Exception):
    """No lbdriver answered (or the answer was unreadable)."""


class NatsUnreachable(StatusUnavailable):
    """NATS itself could not be reached, or refused our settings (``code``)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


async def fetch_status(
    where: str | BusSettings, *, timeout: float = 3.0, caller: str = "anonymous"
) -> LbdriverStatus:
    """Ask the lbdriver behind ``where`` (a URL, or bus settings) for its status. Raises
    :class:`StatusUnavailable`."""
    import msgspec
    import nats.errors

    from vipwire.bus import BusSettings
    from vipwire.contracts import LBDRIVER_STATUS, LbdriverStatus

    subject = LBDRIVER_STATUS.subject(caller)

    settings = BusSettings(servers=(where,)) if isinstance(where, str) else where
    shown = connection.where(settings)
    try:
        nc = await connection.connect(settings, timeout=timeout)
    except connection.ConnectionProblem as exc:
        raise NatsUnreachable(str(exc), exc.code) from None
    try:
        reply = await nc.request(subject, b"", timeout=timeout)
    except nats.errors.NoRespondersError as exc:
        raise StatusUnavailable(f"no lbdriver is running behind {shown}") from exc
    except (nats.errors.Error, TimeoutError) as exc:
        raise StatusUnavailable(f"no answer from an lbdriver behind {shown}: {exc!r}") from exc
    finally:
        await nc.close()
    try:
        return msgspec.json.decode(reply.data, type=LbdriverStatus)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StatusUnavailable(f"unreadable answer on {subject}: {exc}") from exc


async def status_command(
    where: str | BusSettings, *, as_json: bool, timeout: float, caller: str = "anonymous"
) -> int:
    try:
        status = await fetch_status(where, timeout=timeout, caller=caller)
    except StatusUnavailable as exc:
        print(f"vipwire lb status: {exc}", file=sys.stderr)
        return exc.code if isinstance(exc, NatsUnreachable) else exits.FAILED
    if as_json:
        import msgspec

        sys.stdout.write(msgspec.json.format(msgspec.json.encode(status), indent=2).decode() + "\n")
    else:
        sys.stdout.write(render(status))
    return 0


def _ago(when: float | None, now: float) -> str:
    if when is None:
        return "-"
    stamp = datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%H:%M:%SZ")
    return f"{stamp} ({max(0.0, now - when):.0f}s ago)"


#: The circuit breaker's states in the words the dashboard uses too.
HEALTH_WORDS = {"closed": "healthy", "half-open": "probing", "open": "failing"}


def _health(health: str, failures: int, retry_in_s: float | None) -> str:
    word = HEALTH_WORDS.get(health, health)
    if health == "open" and retry_in_s is not None:
        return f"{word} (probe in {retry_in_s:.0f}s)"
    if health == "closed" and failures:
        return f"{word} ({failures} failed)"
    return word


def render(status: LbdriverStatus) -> str:
    """The status as a text table, one appliance per row."""
    role = f" {status.role}" if status.role else ""
    leader = f" (leader: {status.leader})" if status.role == "standby" and status.leader else ""
    head = (
        f"lbdriver {status.instance}{role}{leader}: {'ready' if status.ready else 'starting'}, "
        f"{status.services} service(s), {status.pending} pending, {status.failing} failing, "
        f"{status.drift_repairs} drift repair(s)\n"
    )
    columns = (
        "APPLIANCE",
        "GROUP",
        "DRIVER",
        "ROLE",
        "HEALTH",
        "VS",
        "SVC",
        "LAST WRITE",
        "LAST ERROR",
    )
    rows = [columns]
    for a in status.appliances:
        rows.append(
            (
                a.name,
                a.group,
                a.driver,
                "active" if a.active else "standby",
                _health(a.health, a.failures, a.retry_in_s),
                str(a.virtual_servers),
                str(a.services),
                _ago(a.last_write_at, status.now),
                "-"
                if a.last_error is None
                else f"{a.last_error} [{_ago(a.last_error_at, status.now)}]",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + "  "
        + row[-1]
        for row in rows
    ]
    return head + "\n".join(line.rstrip() for line in lines) + "\n"


async def check_command(
    config: str,
    *,
    appliance: str | None = None,
    clusters: list[str] | None = None,
    as_json: bool = False,
    timeout: float | None = None,
) -> int:
    """Read every (or one) configured appliance, print the checks; 1 if any failed."""
    import msgspec

    from vipwire.lbdriver import LbdriverSettings
    from vipwire.lbdriver.core.preflight import decide, failed
    from vipwire.lbdriver.io.preflight import partitions_to_check, read
    from vipwire.runtime import read_config, section

    data = read_config(config)  # ConfigError: exit 2 in main
    if "lbdriver" not in data:
        print(f"vipwire lb check: {config} has no lbdriver section", file=sys.stderr)
        return 2
    settings = section(data, "lbdriver", LbdriverSettings, source=config)
    chosen = [a for a in settings.appliances if appliance in (None, a.name)]
    if not chosen:
        names = ", ".join(a.name for a in settings.appliances)
        print(
            f"vipwire lb check: no appliance {appliance!r} in {config} (configured: {names})",
            file=sys.stderr,
        )
        return 2
    checks = []
    for a in chosen:
        readings = await read(
            a, partitions_to_check(a, clusters or []), prefix=settings.prefix, timeout_s=timeout
        )
        for reading in readings:
            checks.extend(decide(reading))
    if as_json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(checks), indent=2).decode() + "\n")
    else:
        sys.stdout.write(render_checks(checks))
    return 1 if failed(checks) else 0


def render_checks(checks: list[Check]) -> str:
    """The checks as a table; what to do follows each check that did not pass."""
    rows = [("APPLIANCE", "CHECK", "RESULT", "DETAIL")]
    rows += [(c.appliance, c.check, c.verdict.upper(), c.detail) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for row, check in zip(rows, [None, *checks], strict=True):
        lines.append(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[3]
        )
        if check is not None and check.action:
            lines.append(" " * (sum(widths) + 6) + f"-> {check.action}")
    counts = {v: sum(1 for c in checks if c.verdict == v) for v in ("passed", "warned", "failed")}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    return "\n".join(line.rstrip() for line in lines) + f"\n{summary}\n"
