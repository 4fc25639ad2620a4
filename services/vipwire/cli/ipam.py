"""``vipwire ipam status|show|reload|release``: the address space as ipam sees it.

Every verb is a request on ``vipwire-ctl.ipam.<verb>.<caller>`` (core NATS,
outside the stream; see :mod:`vipwire.contracts`), where the caller is the
identity named by the credentials file the connection uses (``--creds``,
``VIPWIRE_NATS_CREDS`` or ``--config``'s ``bus.credentials``), ``anonymous``
without one. ``show`` reads the KV bucket directly when no ipam
answers (or with ``--kv``); ``reload`` collects the answer of every replica.

Over 500 lines: one module per command family, as the other commands; its verbs (status,
show, release, reload) share the formatting and the exit-code mapping. A split per verb
is the next step if it grows.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
from typing import TYPE_CHECKING, Any

from vipwire.cli import connection, exits
from vipwire.cli.args import seconds

if TYPE_CHECKING:
    from nats.aio.client import Client

    from vipwire.contracts import IpamStatus, ReleaseReply, ReloadReply, ShowReply

#: Seconds ``reload`` keeps listening for more replicas after the last answer.
RELOAD_GRACE_S = 0.5


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser("ipam", help="inspect and steer the running ipam (pools, claims)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def common(verb: argparse.ArgumentParser, timeout: float) -> None:
        connection.add_arguments(verb)
        verb.epilog = connection.PRECEDENCE
        verb.add_argument("--json", action="store_true", help="print the answer as JSON")
        verb.add_argument(
            "--timeout",
            type=seconds,
            metavar="SECONDS",
            default=timeout,
            help=f"seconds to wait for an answer (default {timeout:g})",
        )

    common(verbs.add_parser("status", help="pools: size, used, free, stale, per cluster"), 3.0)
    show = verbs.add_parser("show", help="one address or one Service: claims, record, stale")
    show.add_argument(
        "target",
        metavar="ADDRESS|CLUSTER/NS/NAME",
        help="an address (198.51.100.7) or a Service (east/default/web)",
    )
    show.add_argument(
        "--kv", action="store_true", help="read the KV bucket directly instead of asking ipam"
    )
    common(show, 3.0)
    reload = verbs.add_parser(
        "reload", help="every ipam replica re-reads its config file's pools (no VIP moves)"
    )
    common(reload, 10.0)
    release = verbs.add_parser(
        "release",
        help="withdraw a Service's VIPs; it then gets new ones from the pools as they are",
    )
    release.add_argument(
        "service", metavar="CLUSTER/NS/NAME", help="the Service whose VIPs to withdraw"
    )
    release.add_argument(
        "--yes", "-y", action="store_true", help="do not ask for confirmation on a terminal"
    )
    release.add_argument(
        "--dry-run",
        action="store_true",
        help="say which VIPs would be withdrawn, change nothing",
    )
    common(release, 5.0)
    return parser


def execute(args: argparse.Namespace) -> int:
    import asyncio

    if args.verb == "show":
        check_target(args.target)
    elif args.verb == "release":
        check_service(args.service)
    return asyncio.run(run(args))


def check_service(text: str) -> None:
    """:class:`UsageError` unless ``text`` is CLUSTER/NS/NAME."""
    from vipwire.contracts import ServiceRef

    try:
        ServiceRef.parse(text)
    except ValueError:
        raise exits.UsageError(
            f"{text!r} is not a Service: give it as CLUSTER/NS/NAME (e.g. east/default/web)"
        ) from None


def check_target(text: str) -> None:
    """:class:`UsageError` unless ``text`` is an address or CLUSTER/NS/NAME."""
    from vipwire.ipam.core.addresses import canonical

    if "/" in text and text.count("/") != 1:
        check_service(text)
        return
    try:
        canonical(text)
    except ValueError:
        raise exits.UsageError(
            f"{text!r} is neither an address (e.g. 198.51.100.7) nor a Service as "
            "CLUSTER/NS/NAME (e.g. east/default/web)"
        ) from None


class IpamUnavailable(Exception):
    """No ipam answered, or its answer was unreadable."""


async def run(args: argparse.Namespace) -> int:
    """One verb, against the NATS server behind ``args.nats``; the exit code."""
    import msgspec

    verb: str = args.verb
    settings = connection.settings_from(args)
    caller = connection.caller_of(settings)
    try:
        nc = await connection.connect(settings, timeout=args.timeout)
    except connection.ConnectionProblem as exc:
        print(f"vipwire ipam {verb}: {exc}", file=sys.stderr)
        return exc.code
    try:
        answer: Any
        text: str
        failed = False
        if verb == "status":
            answer = await fetch_status(nc, timeout=args.timeout, caller=caller)
            text = render_status(answer)
        elif verb == "show":
            answer = await fetch_show(
                nc, args.target, timeout=args.timeout, kv=args.kv, caller=caller
            )
            text = render_show(answer, asked_kv=args.kv)
            failed = answer.error is not None or (
                answer.service is not None
                and answer.service.record is None
                and not answer.service.waiting
            )
        elif verb == "reload":
            answer = await fetch_reload(nc, timeout=args.timeout, caller=caller)
            text = render_reload(answer)
            failed = any(r.error is not None for r in answer)
        else:
            held = await fetch_show(nc, args.service, timeout=args.timeout, caller=caller)
            record = held.service.record if held.service is not None else None
            if record is None:
                answer = held
                text = f"{args.service}: {held.error or 'holds no addresses (unknown to ipam)'}\n"
                failed = True
            elif args.dry_run:
                answer = held
                text = (
                    f"{args.service}: would withdraw {', '.join(record.vips)} (pool "
                    f"{record.pool}); new VIPs from the current pools would follow "
                    "(dry run: nothing changed)\n"
                )
            elif not args.yes and sys.stdin.isatty() and not _confirm(args.service, record.vips):
                print("vipwire ipam release: not confirmed; nothing changed", file=sys.stderr)
                return exits.FAILED
            else:
                answer = await fetch_release(nc, args.service, timeout=args.timeout, caller=caller)
                text = render_release(answer)
                failed = answer.error is not None
    except IpamUnavailable as exc:
        print(f"vipwire ipam {verb}: {exc}", file=sys.stderr)
        return 1
    finally:
        await nc.close()
    if args.json:
        text = msgspec.json.format(msgspec.json.encode(answer), indent=2).decode() + "\n"
    sys.stdout.write(text)
    return 1 if failed else 0


def _confirm(service: str, vips: tuple[str, ...]) -> bool:
    """Ask on the terminal; True on y/yes."""
    # The question on stderr: stdout stays what the command answers.
    sys.stderr.write(
        f"Withdraw {', '.join(vips)} from {service}? Clients of these VIPs lose them; "
        "new VIPs follow. [y/N] "
    )
    sys.stderr.flush()
    said = sys.stdin.readline()
    return said.strip().lower() in ("y", "yes")


# --- asking ---------------------------------------------------------------------------


def caller_of_args(args: argparse.Namespace) -> str:
    """Who the requests say they come from: the identity of the credentials file the
    connection uses (``--creds``, ``VIPWIRE_NATS_CREDS`` or ``--config``'s
    ``bus.credentials``), ``anonymous`` without one. With permissions on, the NATS
    server refuses any other name for the connection."""
    return connection.caller_of(connection.settings_from(args))


async def _request(nc: Client, subject: str, payload: bytes, timeout: float) -> bytes:
    import nats.errors

    try:
        reply = await nc.request(subject, payload, timeout=timeout)
    except nats.errors.NoRespondersError as exc:
        raise IpamUnavailable("no ipam is running behind this NATS server") from exc
    except (nats.errors.Error, TimeoutError) as exc:
        raise IpamUnavailable(f"no answer on {subject}: {exc!r}") from exc
    return bytes(reply.data)


def _decode(data: bytes, kind: type[Any], subject: str) -> Any:
    import msgspec

    try:
        return msgspec.json.decode(data, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise IpamUnavailable(f"unreadable answer on {subject}: {exc}") from exc


async def fetch_status(
    nc: Client, *, timeout: float = 3.0, caller: str = "anonymous"
) -> IpamStatus:
    from vipwire.contracts import IPAM_STATUS, IpamStatus

    subject = IPAM_STATUS.subject(caller)
    data = await _request(nc, subject, b"", timeout)
    result: IpamStatus = _decode(data, IpamStatus, subject)
    return result


async def fetch_show(
    nc: Client, target: str, *, timeout: float = 3.0, kv: bool = False, caller: str = "anonymous"
) -> ShowReply:
    import msgspec

    from vipwire.contracts import IPAM_SHOW, ShowReply, ShowRequest

    subject = IPAM_SHOW.subject(caller)
    if not kv:
        try:
            data = await _request(
                nc, subject, msgspec.json.encode(ShowRequest(target=target)), timeout
            )
        except IpamUnavailable as exc:
            if "no ipam is running" not in str(exc):
                raise
        else:
            result: ShowReply = _decode(data, ShowReply, subject)
            return result
    return await show_from_kv(nc, target, timeout=timeout)


async def show_from_kv(nc: Client, target: str, *, timeout: float = 3.0) -> ShowReply:
    """``show`` without ipam: what the bucket holds (no pools, so no stale judgement)."""
    import nats.errors
    import nats.js.errors

    from vipwire.bus import KvBucket
    from vipwire.contracts import IPAM_BUCKET, AddressView, ServiceRef, ServiceView, ShowReply
    from vipwire.ipam.core.addresses import canonical
    from vipwire.ipam.core.records import service_key
    from vipwire.ipam.core.views import claim_view, record_view
    from vipwire.ipam.io.bucket import IpamStore, StoreError

    js = nc.jetstream(timeout=timeout)
    try:
        bucket = await js.key_value(IPAM_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        return ShowReply(instance="-", source="kv", error=f"no KV bucket {IPAM_BUCKET}")
    except (nats.errors.Error, TimeoutError) as exc:
        raise IpamUnavailable(f"cannot open KV bucket {IPAM_BUCKET}: {exc!r}") from exc
    store = IpamStore(KvBucket(bucket, js, IPAM_BUCKET))
    try:
        if "/" in target:
            try:
                ref = ServiceRef.parse(target)
            except ValueError as exc:
                return ShowReply(instance="-", source="kv", error=str(exc))
            view = ServiceView(service="/".join(ref))
            got = await store.get_record(service_key(*ref))
            if got is not None:
                record, revision = got
                claims = {}
                for vip in record.vips:
                    claim = await store.get_claim(vip)
                    claims[vip] = claim_view(claim[0]) if claim else None
                view = ServiceView(
                    service=view.service,
                    record=record_view(record),
                    revision=revision,
                    claims=claims,
                )
            return ShowReply(instance="-", source="kv", service=view)
        try:
            address = canonical(target)
        except ValueError as exc:
            return ShowReply(instance="-", source="kv", error=str(exc))
        found = await store.get_claim(address)
        return ShowReply(
            instance="-",
            source="kv",
            address=AddressView(
                address=address,
                claim=claim_view(found[0]) if found else None,
                revision=found[1] if found else None,
            ),
        )
    except StoreError as exc:
        raise IpamUnavailable(str(exc)) from exc


async def fetch_reload(
    nc: Client, *, timeout: float = 10.0, caller: str = "anonymous"
) -> list[ReloadReply]:
    """Ask every replica to reload; their answers, once they stop coming."""
    import asyncio

    import nats.errors
    from nats.aio.msg import Msg

    from vipwire.contracts import IPAM_RELOAD, ReloadReply

    subject = IPAM_RELOAD.subject(caller)

    answers: list[ReloadReply] = []
    errors: list[str] = []
    arrived = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        if msg.headers and msg.headers.get("Status") == "503":
            errors.append("no ipam is running behind this NATS server")
        else:
            try:
                answers.append(_decode(msg.data, ReloadReply, subject))
            except IpamUnavailable as exc:
                errors.append(str(exc))
        arrived.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(subject, b"", reply=inbox)
        await nc.flush()
        wait = timeout
        while True:
            try:
                async with asyncio.timeout(wait):
                    await arrived.wait()
            except TimeoutError:
                break
            arrived.clear()
            wait = RELOAD_GRACE_S
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    if not answers:
        raise IpamUnavailable(errors[0] if errors else f"no ipam answered within {timeout:g}s")
    return sorted(answers, key=lambda a: a.instance)


async def fetch_release(
    nc: Client, service: str, *, timeout: float = 5.0, caller: str = "anonymous"
) -> ReleaseReply:
    import msgspec

    from vipwire.contracts import IPAM_RELEASE, ReleaseReply, ReleaseRequest

    subject = IPAM_RELEASE.subject(caller)
    data = await _request(
        nc, subject, msgspec.json.encode(ReleaseRequest(service=service)), timeout
    )
    result: ReleaseReply = _decode(data, ReleaseReply, subject)
    return result


# --- telling --------------------------------------------------------------------------


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _clock(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render_status(status: IpamStatus) -> str:
    """Pools as a table (one row per pool and family), then the stale allocations."""
    state = "ready" if status.ready else "starting"
    head = (
        f"ipam {status.instance}: {state}, {status.claims} address(es) held by "
        f"{status.services} Service(s), {status.waiting} waiting, {status.stale_total} stale"
    )
    if status.config_path:
        head += f"; pools from {status.config_path}"
        if status.reloaded_at is not None:
            head += f" (reloaded {_clock(status.reloaded_at)})"
    rows: list[tuple[str, ...]] = [
        ("POOL", "FAMILY", "GROUP", "PRIO", "AUTO", "SIZE", "USED", "FREE", "STALE", "CLUSTERS")
    ]
    for pool in status.pools:
        clusters = (
            ", ".join(
                f"{c.cluster} {c.used}" + (f" ({c.stale} stale)" if c.stale else "")
                for c in pool.clusters
            )
            or "-"
        )
        if not pool.configured:
            clusters += "  [pool no longer configured]"
        rows.append(
            (
                pool.name,
                pool.family,
                pool.appliance_group or "-",
                str(pool.priority) if pool.configured else "-",
                ("yes" if pool.auto_assign else "no") if pool.configured else "-",
                str(pool.size),
                str(pool.used),
                str(pool.free),
                str(pool.stale),
                clusters,
            )
        )
    lines = [head, *(_table(rows) if len(rows) > 1 else ["(no pools)"])]
    if status.stale:
        lines.append("stale allocations (kept; `vipwire ipam release CLUSTER/NS/NAME` moves one):")
        for item in status.stale:
            lines.append(
                f"  {item.address}  {', '.join(item.services)}  [{item.pool}]: "
                + "; ".join(item.reasons)
            )
        if status.stale_total > len(status.stale):
            lines.append(f"  … and {status.stale_total - len(status.stale)} more")
    return "\n".join(lines) + "\n"


def render_show(reply: ShowReply, *, asked_kv: bool = False) -> str:
    lines: list[str] = []
    if reply.error is not None:
        return f"error: {reply.error}\n"
    if reply.source == "kv":
        lines.append(
            "(read from the KV bucket, as --kv asks: no pool judgement)"
            if asked_kv
            else "(read from the KV bucket: no ipam answered, so no pool judgement)"
        )
    if reply.address is not None:
        view = reply.address
        if reply.source == "ipam":
            where = (
                f"pool {view.pool}" + ("" if view.usable else " (avoided)")
                if view.pool
                else "in no pool"
            )
            lines.append(f"{view.address}: {where}")
        else:
            lines.append(view.address)
        claim = view.claim
        if claim is None:
            lines.append("  free (no claim)")
        else:
            lines.append(
                f"  claim revision {view.revision}: given from pool {claim.pool}"
                + (f" (appliance group {claim.appliance_group})" if claim.appliance_group else "")
                + (f", sharing key {claim.sharing_key!r}" if claim.sharing_key else "")
            )
            for sharer in claim.sharers:
                ports = f"  ports {', '.join(sharer.ports)}" if sharer.ports else ""
                where = f"{claim.cluster}/{sharer.namespace or claim.namespace}"
                lines.append(f"  held by {where}/{sharer.name} (uid {sharer.uid}){ports}")
        for reason in view.stale:
            lines.append(f"  stale: {reason}")
    if reply.service is not None:
        service = reply.service
        record = service.record
        if record is None:
            lines.append(f"{service.service}: holds no addresses")
        else:
            flag = " (operator release: new VIPs follow)" if record.reassign else ""
            lines.append(
                f"{service.service}: {record.state}{flag}, uid {record.uid}, "
                f"VIPs {', '.join(record.vips)} from pool {record.pool} "
                f"(appliance group {record.appliance_group}), record revision {service.revision}"
            )
            for vip, claim in service.claims.items():
                if claim is None:
                    lines.append(f"  {vip}  NO CLAIM (inconsistent; report it)")
                    continue
                others = [s.name for s in claim.sharers if s.uid != record.uid]
                shared = (
                    f"shared with {', '.join(others)} (key {claim.sharing_key!r})"
                    if others
                    else "not shared"
                )
                lines.append(f"  {vip}  {shared}")
            if record.stale:
                lines.append(f"  stale (recorded): {record.stale}")
            if record.move:
                lines.append(
                    f"  moving ({record.move}): from {', '.join(record.moving_from)} to "
                    f"{', '.join(v for v in record.vips if v not in record.moving_from)}"
                )
        for reason in service.stale:
            if record is None or reason not in (record.stale or ""):
                lines.append(f"  stale: {reason}")
        if service.waiting:
            lines.append(f"  waiting for an address: {service.waiting}")
    return "\n".join(lines) + "\n"


def render_reload(replies: list[ReloadReply]) -> str:
    lines = []
    for reply in replies:
        if reply.error is not None:
            lines.append(f"{reply.instance}: reload refused: {reply.error}")
            continue
        line = (
            f"{reply.instance}: reloaded {reply.config_path or '(no file)'}: pools "
            f"{', '.join(reply.pools) or '(none)'}; {reply.stale} stale allocation(s) kept, "
            f"{reply.flagged} record(s) re-flagged"
        )
        if reply.ignored:
            line += f"; restart to apply {', '.join(reply.ignored)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def render_release(reply: ReleaseReply) -> str:
    if reply.error is not None:
        return f"{reply.service}: {reply.error}\n"
    return (
        f"{reply.service}: withdrawing {', '.join(reply.vips)}; new VIPs from the current "
        "pools follow once the appliance is clean\n"
    )
