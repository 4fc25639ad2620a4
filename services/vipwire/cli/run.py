"""``vipwire run SERVICE --config FILE``: one service, in production shape."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vipwire.runtime import Runtime

log = logging.getLogger("vipwire.cli")

SERVICES = ("watcher", "ipam", "lbdriver", "nodeagent", "dashboard")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser("run", help="run one service until SIGTERM")
    parser.add_argument(
        "service", choices=SERVICES, metavar="SERVICE", help=f"one of {', '.join(SERVICES)}"
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="YAML configuration file")
    return parser


def execute(args: argparse.Namespace) -> int:
    import asyncio

    from vipwire.bus import TlsError

    try:
        return asyncio.run(run_service(args.service, args.config))
    except TlsError as exc:
        # Not transient: retrying cannot help, the configuration must change. One
        # line that says what to check, not a traceback; exit 2 (a configuration error).
        print(f"vipwire run {args.service}: {exc}", file=sys.stderr)
        return 2


def build_service(name: str, data: dict[str, Any], runtime: Runtime, source: str) -> Any:
    """The service object for ``name`` with its section of the config decoded."""
    from vipwire.runtime import section

    if name == "watcher":
        from vipwire.watcher import WatcherService, WatcherSettings

        return WatcherService(section(data, name, WatcherSettings, source=source), runtime)
    if name == "ipam":
        from vipwire.ipam import IpamService, IpamSettings
        from vipwire.ipam.settings import profile_names

        settings = section(data, name, IpamSettings, source=source)
        return IpamService(
            settings, runtime, config_path=source, profiles=profile_names(data, source=source)
        )
    if name == "lbdriver":
        from vipwire.lbdriver import LbdriverService, LbdriverSettings
        from vipwire.lbdriver.io.profiles import load_profiles

        return LbdriverService(
            section(data, name, LbdriverSettings, source=source),
            runtime,
            profiles=load_profiles(data, source=source),
        )
    if name == "nodeagent":
        from vipwire.nodeagent import NodeagentService, NodeagentSettings

        return NodeagentService(section(data, name, NodeagentSettings, source=source), runtime)
    if name == "dashboard":
        from vipwire.dashboard import DashboardService, DashboardSettings

        return DashboardService(section(data, name, DashboardSettings, source=source), runtime)
    raise ValueError(f"unknown service {name!r}")


def instance_of(name: str, data: dict[str, Any], source: str) -> str | None:
    """What tells this process apart from others of its kind, for its spans
    (``service.instance.id``) and its NATS connection's name: a node agent's node."""
    if name != "nodeagent":
        return None
    from vipwire.nodeagent import NodeagentSettings
    from vipwire.runtime import ConfigError, section

    try:
        return section(data, name, NodeagentSettings, source=source).for_this_node().node
    except (ConfigError, ValueError):
        return None  # build_service reports it, with the field named


async def run_service(name: str, config_path: str) -> int:
    from vipwire.runtime import (
        Runtime,
        load_common_and_configure_logging,
        read_config,
        run_until_signalled,
    )

    data = read_config(config_path)
    common = load_common_and_configure_logging(data, source=config_path)
    runtime = Runtime(name, common, instance=instance_of(name, data, config_path))
    # Validate the service's section before touching the network: a typo
    # should fail fast with the field named, not after a NATS connect.
    service = build_service(name, data, runtime, config_path)
    await run_until_signalled(runtime, service)
    return 0
