"""``vipwire up``: the all-in-one stack, with demo Services and a live table.

Over 500 lines: argument checks, the state file and the live view's loop of one command;
the table's pure layout is in ``vipwire.cli.live``, the state pointer in
``vipwire.cli.current``. Moving the argument checks out is the next step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import statistics
import sys
import time
from collections.abc import Container, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vipwire.cli import current, exits
from vipwire.cli.args import integer, seconds

if TYPE_CHECKING:
    import asyncio

    # Imported where used: ``vipwire`` imports every command module, and the stack
    # pulls in every service (tens of MB in each ``vipwire run`` process).
    from vipwire.allinone import Stack
    from vipwire.allinone.clock import StatusClock
    from vipwire.allinone.view import Row
    from vipwire.contracts import ServiceRef
    from vipwire.ipam import PoolSettings

log = logging.getLogger("vipwire.up")

DemoSpec = tuple[str, tuple[tuple[int, str], ...], Literal["Cluster", "Local"]]
DEMO: tuple[DemoSpec, ...] = (
    ("web", ((80, "TCP"), (443, "TCP")), "Cluster"),
    ("api", ((8080, "TCP"),), "Cluster"),
    ("dns", ((53, "UDP"), (53, "TCP")), "Cluster"),
    ("shop", ((443, "TCP"),), "Local"),
    ("metrics", ((9090, "TCP"),), "Cluster"),
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
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
    up.add_argument(
        "--nats-cluster",
        type=integer(1),
        default=1,
        metavar="N",
        help="run a local JetStream cluster of N nats-servers (3: R3 stream and KV, any one "
        "server may be killed) instead of one server (default 1)",
    )
    up.add_argument(
        "--clusters", type=integer(1), default=2, metavar="N", help="emulated clusters (default 2)"
    )
    up.add_argument(
        "--nodes", type=integer(1), default=3, metavar="N", help="nodes per cluster (default 3)"
    )
    up.add_argument(
        "--services",
        type=integer(0),
        default=5,
        metavar="N",
        help="demo Services per cluster (default 5)",
    )
    up.add_argument(
        "--timeout",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="--smoke: seconds to wait (default 60)",
    )
    up.add_argument(
        "--dashboard-port",
        type=integer(0),
        metavar="PORT",
        help="serve the dashboard on 127.0.0.1:PORT (default: a free port; --smoke: none)",
    )
    up.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    up.add_argument(
        "--tls",
        action="store_true",
        help="NATS over TLS with client certificates (mTLS), from a throwaway CA made with "
        "openssl in STATE_DIR/pki; writes STATE_DIR/vipwire-cli.yaml for the operator "
        "commands (--config)",
    )
    up.add_argument(
        "--insecure-bus",
        action="store_true",
        help="no identities on the bus: anyone reaching NATS may publish anything (a warning)",
    )
    up.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="serve this real cluster instead of emulated ones (its Services of class "
        "vipwire.io/dsr; VIPs from the demo pool, programmed on the simulated appliance)",
    )
    up.add_argument("--context", metavar="NAME", help="--kubeconfig: the context to use")
    up.add_argument(
        "--cluster",
        metavar="NAME",
        default="k8s",
        help="--kubeconfig: the cluster's name in vipwire (a DNS label; default k8s)",
    )
    up.add_argument(
        "--lease-namespace",
        metavar="NS",
        help="--kubeconfig: the namespace of the watcher's Lease (default: the kubeconfig "
        "context's namespace, else default); its RBAC must grant Leases there",
    )
    up.add_argument(
        "--demo",
        action="store_true",
        help="--kubeconfig: create the demo Services in that cluster (deleted again on exit)",
    )
    up.add_argument(
        "--trace-exporter",
        choices=("file", "console", "otlp"),
        default="file",
        help="where spans go: file (default: OTLP-JSON lines in STATE_DIR/traces, read with "
        "`vipwire trace ID --store STATE_DIR`), console (stderr) or otlp "
        "($OTEL_EXPORTER_OTLP_ENDPOINT)",
    )
    up.add_argument(
        "--jaeger-url",
        metavar="URL",
        type=_jaeger_url,
        help="the dashboard links trace ids to URL/trace/<id> (e.g. http://127.0.0.1:16686)",
    )
    return up


def _jaeger_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{text!r}: give an http:// or https:// URL")
    return text.rstrip("/")


def execute(args: argparse.Namespace) -> int:
    import asyncio

    if args.kubeconfig is not None:
        check_kubeconfig(args.kubeconfig, args.context)
    elif args.demo or args.context or args.lease_namespace:
        raise exits.UsageError("--demo, --context and --lease-namespace go with --kubeconfig FILE")
    elif args.clusters * args.services > 130_000:
        raise exits.UsageError(
            f"--clusters {args.clusters} x --services {args.services}: more demo Services "
            "than the demo pool holds (130,000)"
        )
    return asyncio.run(up(args))


def check_kubeconfig(path: str, context: str | None) -> None:
    """Refuse a kubeconfig that cannot work before anything starts: :class:`UsageError`
    naming the file, the context, and what to fix."""
    import yaml

    try:
        with open(path) as file:
            data = yaml.safe_load(file)
    except FileNotFoundError:
        raise exits.UsageError(f"--kubeconfig {path}: no such file") from None
    except OSError as exc:
        raise exits.UsageError(f"--kubeconfig {path}: cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise exits.UsageError(f"--kubeconfig {path}: not YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise exits.UsageError(f"--kubeconfig {path}: not a kubeconfig (no contexts)")
    names = [
        c.get("name") for c in data.get("contexts") or [] if isinstance(c, dict) and c.get("name")
    ]
    wanted = context or data.get("current-context")
    if not wanted:
        raise exits.UsageError(
            f"--kubeconfig {path}: no current-context; name one with --context "
            f"(contexts: {', '.join(map(str, names)) or 'none'})"
        )
    if wanted not in names:
        raise exits.UsageError(
            f"--kubeconfig {path}: no context {wanted!r} "
            f"(contexts: {', '.join(map(str, names)) or 'none'}); pick one with --context"
        )


#: The demo's VIPs: a /24 of documentation addresses while it is enough, else the /15
#: of benchmarking addresses (RFC 2544; 131,072 VIPs).
SMALL_POOL, LARGE_POOL = "198.51.100.0/24", "198.18.0.0/15"


def demo_pools(services: int) -> tuple[PoolSettings, ...]:
    """A pool with room for every demo Service (one VIP each)."""
    from vipwire.ipam import PoolSettings

    block = SMALL_POOL if services <= 250 else LARGE_POOL
    return (PoolSettings(name="default", addresses=(block,), appliance_group="dc1"),)


def demo_services(count: int) -> list[DemoSpec]:
    specs = list(DEMO[:count])
    specs += [(f"svc-{i + 1}", ((80, "TCP"),), "Cluster") for i in range(len(specs), count)]
    return specs


async def create_demo(stack: Stack, clock: StatusClock, per_cluster: int) -> None:
    from vipwire.contracts import ServiceRef

    for cluster in stack.clusters:
        for name, ports, policy in demo_services(per_cluster):
            clock.mark_created(ServiceRef(cluster, "default", name))
            await stack.create_service(
                cluster,
                name,
                ports=ports,
                external_traffic_policy=policy,
                endpoints_on=[0] if policy == "Local" else None,
            )


async def up(args: argparse.Namespace) -> int:
    """Run the stack until Ctrl-C (or SIGTERM), at any moment: then stop the services,
    then NATS (in a process group of its own, so the terminal's Ctrl-C spares it), and exit 0."""
    import asyncio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            print(f"vipwire up: {sig.name}: stopping the services, then NATS", file=sys.stderr)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await _up(args, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _up(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from vipwire.telemetry import configure_logging

    smoke: bool = args.smoke
    configure_logging("WARNING" if not smoke else "ERROR", stream=sys.stderr)
    dashboard_port: int | None = args.dashboard_port
    if dashboard_port is None and not smoke:
        dashboard_port = 0
    from vipwire.allinone import Stack, StackSettings
    from vipwire.allinone.clock import StatusClock
    from vipwire.kube import KubeApiError, KubeConfigError, KubeUnavailable

    real = getattr(args, "kubeconfig", None)
    settings = StackSettings(
        pools=demo_pools(args.services * (1 if real else args.clusters)),
        clusters=args.clusters,
        nodes=args.nodes,
        state_dir=args.state_dir,
        nats_servers=args.nats_cluster,
        dashboard_port=None if args.no_dashboard else dashboard_port,
        kubeconfigs={args.cluster: (real, args.context)} if real else {},
        tls=bool(getattr(args, "tls", False)),
        secure_bus=not getattr(args, "insecure_bus", False),
        lease_namespace=getattr(args, "lease_namespace", None),
        trace_exporter=getattr(args, "trace_exporter", "file"),
        jaeger_url=getattr(args, "jaeger_url", None),
    )
    demo = not real or args.demo
    stack = Stack(settings)
    print(f"vipwire up: JetStream store in {stack.state_dir / 'jetstream'}", file=sys.stderr)
    if stack.trace_dir is not None:
        print(
            f"vipwire up: spans in {stack.trace_dir}: "
            f"vipwire trace TRACE_ID --store {stack.state_dir}",
            file=sys.stderr,
        )
    if stack.operator_creds is None:
        print(
            "vipwire up: WARNING: --insecure-bus: NATS runs without authentication or "
            "permissions; anyone who reaches it can forge any message",
            file=sys.stderr,
        )
    else:
        print(f"vipwire up: operator creds: {stack.operator_creds}", file=sys.stderr)
    clocks: list[StatusClock] = []
    written: list[Path] = []

    async def run() -> int:
        try:
            await stack.start()
        except KubeConfigError as exc:
            print(f"vipwire up: --kubeconfig {real}: {exc}", file=sys.stderr)
            return exits.USAGE
        except KubeUnavailable as exc:
            print(f"vipwire up: cannot reach the API server of {real}: {exc}", file=sys.stderr)
            return exits.UNREACHABLE
        except Exception as exc:
            print(f"vipwire up: the stack did not start: {exc}", file=sys.stderr)
            return exits.FAILED
        cli_config = _write_cli_config(stack)
        written.append(stack.state_dir)
        _print_connection(stack, cli_config)
        if stack.dashboard_url is not None:
            print(f"vipwire up: dashboard on {stack.dashboard_url}", file=sys.stderr)
        for cluster in stack.emulators:
            # The emulated clusters answer kubectl as an API server does.
            kubeconfig = stack.state_dir / f"kubeconfig-{cluster}"
            print(
                f"vipwire up: cluster {cluster}: kubectl --kubeconfig {kubeconfig} get svc",
                file=sys.stderr,
            )
        # Both modes time create → status to the Service object in the API server.
        clock = StatusClock(stack.emulators, watched=stack.kube)
        clocks.append(clock)
        try:
            await stack.wait_ready(timeout=30)
        except PermissionError as exc:
            hint = "; grant it, or put the Lease elsewhere: --lease-namespace NS"
            print(f"vipwire up: {exc}{hint if 'leases' in str(exc) else ''}", file=sys.stderr)
            return exits.USAGE
        except TimeoutError:
            print(f"vipwire up: not ready after 30 s: {stack.readiness()}", file=sys.stderr)
            return exits.FAILED
        await clock.start()
        if demo:
            try:
                await create_demo(stack, clock, args.services)
            except KubeApiError as exc:
                if exc.status not in (401, 403):
                    raise
                print(
                    f"vipwire up: --demo needs create, get and delete on services (and "
                    f"create on endpointslices) in namespace default of {args.cluster}: "
                    f"{exc.message}",
                    file=sys.stderr,
                )
                return exits.USAGE
        if smoke:
            return await _smoke(stack, clock, args.timeout)
        return await _live(stack, stop, clock)

    from vipwire.aio import unless_set

    try:
        finished, code = await unless_set(stop, run())
        if not finished or code is None:
            # Stopped by a signal before the end: a smoke run has no verdict to give.
            code = 1 if smoke else 0
        return code
    finally:
        for clock in clocks:
            await clock.stop()
        if real and demo and clocks:
            await _remove_demo(stack, list(clocks[0].created))
        for state_dir in written:
            current.remove(state_dir)
        await stack.stop()
        if args.state_dir:
            print(f"vipwire up: state kept in {args.state_dir}", file=sys.stderr)
        if stop.is_set():
            print("vipwire up: stopped", file=sys.stderr)


async def _remove_demo(stack: Stack, keys: list[ServiceRef]) -> None:
    """Delete the demo Services made in a real cluster, while the stack still runs: our
    finalizer comes off only once their VIPs are released, which needs the stack."""
    import asyncio

    for cluster, namespace, name in keys:
        with contextlib.suppress(Exception):
            await stack.delete_service(cluster, name, namespace)
    deadline = time.monotonic() + 30.0
    for cluster, namespace, name in keys:
        while time.monotonic() < deadline:
            try:
                if not await stack.service_exists(cluster, name, namespace):
                    break
            except Exception:
                break
            await asyncio.sleep(0.2)
        else:
            print(
                f"vipwire up: {namespace}/{name} in {cluster} is still there; remove the "
                "finalizer service.kubernetes.io/load-balancer-cleanup by hand",
                file=sys.stderr,
            )


#: Row states of the bus view that a Service does not leave without a change to it:
#: ``--smoke`` stops at the first one instead of waiting out its timeout.
PERMANENT = ("failed", "rejected")


def permanent_failure(
    keys: Sequence[ServiceRef], rows: Mapping[ServiceRef, Row], converged: Container[ServiceRef]
) -> str | None:
    """The first of ``keys`` not converged and failed for good (naming the Service and
    the reason, and how many more), or None."""
    bad = [
        (k, rows[k])
        for k in keys
        if k in rows and k not in converged and rows[k].state in PERMANENT
    ]
    if not bad:
        return None
    key, row = bad[0]
    text = f"{'/'.join(key)} {row.state}: {row.detail or 'no reason given'}"
    return text + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")


async def _smoke(stack: Stack, clock: StatusClock, timeout: float) -> int:
    import asyncio

    from vipwire.allinone.view import BusView
    from vipwire.bus import connect_client
    from vipwire.metrics import percentile

    keys = list(clock.created)
    nc = await connect_client(stack.client_settings(), name="vipwire-up-smoke", timeout=5.0)
    view = BusView()
    failure: str | None = None
    try:
        await view.start(nc)
        waiting = asyncio.ensure_future(clock.wait_every(keys, timeout))
        try:
            while not waiting.done():
                await asyncio.wait({waiting}, timeout=0.1)
                failure = permanent_failure(keys, view.rows, clock.converged)
                if failure is not None:
                    break
        finally:
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
        ok = failure is None and waiting.result()
    finally:
        await view.stop()
        await nc.close()
    latencies = clock.latencies_ms()
    result: dict[str, Any] = {
        "services": len(keys),
        "converged": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 99), 2) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
    }
    if failure is not None:
        result["reason"] = f"failed for good: {failure}"
    elif not ok:
        missing = sorted("/".join(k) for k in keys if k not in clock.converged)
        result["reason"] = f"not converged within {timeout:g}s: {', '.join(missing)}"
    print(json.dumps(result), flush=True)
    return exits.OK if ok else exits.FAILED


def _write_cli_config(stack: Stack) -> str:
    """``STATE_DIR/vipwire-cli.yaml``: the stack's ``bus`` section (servers, TLS, the
    operator's credentials) for the operator commands (found without flags through
    :mod:`vipwire.cli.current`, or given as ``--config``), and an ``up`` section (this
    process, the dashboard, the emulated clusters' kubeconfigs)."""
    import os

    import msgspec

    settings = stack.client_settings()
    bus: dict[str, object] = {
        "servers": list(settings.servers),
        "tls": msgspec.to_builtins(settings.tls),
    }
    if stack.operator_creds is not None:
        bus["credentials"] = str(stack.operator_creds)
    kubeconfigs = {
        c: str(stack.state_dir / f"kubeconfig-{c}") for c in stack.clusters if c in stack.emulators
    }
    up_section: dict[str, object] = {
        "pid": os.getpid(),
        "dashboard": stack.dashboard_url,
        "kubeconfigs": kubeconfigs,
    }
    return str(current.write(stack.state_dir, {"bus": bus, "up": up_section}))


def _print_connection(stack: Stack, cli_config: str) -> None:
    """The header lines that say how to reach this stack from another shell."""
    from vipwire.bus import redacted_all

    settings = stack.client_settings()
    out = sys.stderr
    print(f"vipwire up: connection details in {cli_config}", file=out)
    print(
        "vipwire up: operator commands (vipwire ipam status, lb status, services) find this "
        "stack by themselves; elsewhere:",
        file=out,
    )
    print(f"export VIPWIRE_NATS_URL={redacted_all(settings.servers)}", file=out)
    if stack.operator_creds is not None:
        print(f"export VIPWIRE_NATS_CREDS={stack.operator_creds}", file=out)
    if stack.pki is not None:
        print(
            f"vipwire up: NATS over TLS with client certificates (throwaway CA in "
            f"{stack.pki.directory}); elsewhere use --config {cli_config}",
            file=out,
        )


#: How often the live table looks for a change (it writes only when there is one).
LOOK_EVERY_S = 0.2


def _terminal_size() -> tuple[int, int]:
    import shutil

    size = shutil.get_terminal_size((100, 40))
    return size.columns, size.lines


async def _live(stack: Stack, stop: asyncio.Event, clock: StatusClock) -> int:
    """The live table: on a terminal, one screen that fits it, redrawn only on a change;
    piped, one line per change."""
    import asyncio

    from vipwire.allinone.view import BusView
    from vipwire.bus import connect_client, redacted
    from vipwire.cli import live

    nc = await connect_client(stack.client_settings(), name="vipwire-up-view", timeout=5.0)
    view = BusView()
    tty = sys.stdout.isatty()
    colour = tty and not os.environ.get("NO_COLOR")
    dashboard = f"; dashboard {stack.dashboard_url}" if stack.dashboard_url else ""
    first = f"vipwire up — NATS {redacted(stack.nats.url)}{dashboard}"
    clusters = f"clusters {', '.join(stack.clusters)}"
    shown: dict[ServiceRef, live.Line] = {}
    last_content: object = None
    last_size = (0, 0)
    last_summary = ""
    updated = time.time()
    out = sys.stdout
    try:
        await view.start(nc)
        if tty:
            out.write("\x1b[2J")
        else:
            out.write(f"{first}; {clusters}; Ctrl-C stops\n")
            out.flush()
        while not stop.is_set():
            if refused := stack.refused():
                # A permission taken away while running: say so and stop, not spin.
                for name, reason in refused.items():
                    print(f"vipwire up: {name}: {reason}", file=sys.stderr)
                return exits.FAILED
            statuses = {
                r: stack.ingress_ips(r.cluster, r.name, r.namespace) for r in list(view.rows)
            }
            lines = live.lines_of(view, statuses)
            summary = live.summary(lines, clock.latencies_ms())
            content = (tuple(lines), summary)
            if tty:
                size = _terminal_size()
                dirty = size != last_size
                if content != last_content:
                    last_content, updated, dirty = content, time.time(), True
                if dirty:
                    last_size = size
                    stamp = time.strftime("%H:%M:%S", time.localtime(updated))
                    screen = live.frame(
                        lines,
                        header=[first, f"{clusters}; updated {stamp}; Ctrl-C stops"],
                        summary_line=summary,
                        width=size[0],
                        height=size[1],
                        colour=colour,
                    )
                    out.write("\x1b[H" + "\x1b[K\r\n".join(screen) + "\x1b[K\x1b[J")
                    out.flush()
            else:
                now = time.time()
                for line in live.changed(shown, lines):
                    out.write(live.row_line(line, now) + "\n")
                    shown[line.key] = line
                for key_gone in set(shown) - {line.key for line in lines}:
                    del shown[key_gone]
                    out.write(f"{live.row_line_gone(key_gone, now)}\n")
                if summary != last_summary:
                    last_summary = summary
                    out.write(f"{time.strftime('%H:%M:%S', time.gmtime(now))} {summary}\n")
                out.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LOOK_EVERY_S)
    finally:
        if tty:
            out.write("\r\n")
            out.flush()
        await view.stop()
        await nc.close()
    return exits.OK
