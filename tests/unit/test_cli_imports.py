"""What each CLI command imports: ``--version``, ``--help`` and the operator commands must
not pay for a service's start-up (the OpenTelemetry SDK, the Kubernetes client, the
service runtime). A structural check on ``sys.modules``, not a wall-clock bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import vipwire.bus
import vipwire.runtime
import vipwire.telemetry

#: Brought in only by a service (or ``vipwire run``/``up``), never by a quick command.
SERVICE_ONLY = (
    "opentelemetry.sdk",
    "kubernetes_asyncio",
    "vipwire.runtime._runtime",
    "vipwire.bus._bus",
    "vipwire.telemetry._tracing",
)
#: Not even needed to print the help or the version.
NETWORK = ("nats", "aiohttp", "asyncio", "msgspec", "vipwire.contracts", "vipwire.runtime")

#: Runs each command in one fresh interpreter; after each, prints which of the watched
#: modules are loaded by then (so a failure names the command that brought one in).
PROBE = """
import json, sys
from vipwire.cli.main import main
watched = json.loads(sys.argv[1])
for argv in json.loads(sys.argv[2]):
    try:
        main(argv)
    except SystemExit:
        pass
    print(json.dumps([" ".join(argv), [m for m in watched if m in sys.modules]]))
"""

UNREACHABLE = "nats://127.0.0.1:1"  # refused at once: the command fails fast (exit 3)
CONFIG = str(Path(__file__).parents[2] / "deploy" / "config" / "vipwire.yaml")


def loaded_after(commands: list[list[str]], watched: tuple[str, ...]) -> dict[str, list[str]]:
    """For each command (run in turn in one subprocess), the watched modules loaded by then."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(watched), json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == len(commands), done.stdout + done.stderr
    return {command: modules for command, modules in map(json.loads, lines)}


def test_version_and_help_import_no_service_nor_network_module() -> None:
    """``vipwire --version``, ``--help`` and a command's ``--help`` load neither the
    service runtime nor the NATS client, asyncio or the contracts."""
    commands = [["--help"], ["ipam", "--help"], ["config", "check", "--help"], ["--version"]]
    loaded = loaded_after(commands, SERVICE_ONLY + NETWORK)
    assert loaded == {" ".join(c): [] for c in commands}


def test_config_commands_import_no_service_runtime_nor_nats() -> None:
    """``config check`` and ``config reference`` decode every service's settings
    without loading any service, the NATS client or the OpenTelemetry SDK."""
    commands = [["config", "check", CONFIG], ["config", "reference"]]
    loaded = loaded_after(commands, (*SERVICE_ONLY, "nats", "aiohttp", "opentelemetry"))
    assert loaded == {" ".join(c): [] for c in commands}


def test_operator_commands_import_no_service_runtime() -> None:
    """``ipam status|show|release``, ``lb status``, ``services``, ``replay`` and
    ``trace`` (on a NATS that refuses them) load the NATS client but never the
    OpenTelemetry SDK, the Kubernetes client or the service runtime."""
    commands = [
        ["ipam", "status", "--nats", UNREACHABLE],
        ["ipam", "show", "198.51.100.7", "--nats", UNREACHABLE],
        ["ipam", "release", "east/default/web", "--dry-run", "--nats", UNREACHABLE],
        ["lb", "status", "--nats", UNREACHABLE],
        ["services", "--nats", UNREACHABLE],
        ["replay", "--nats", UNREACHABLE],
        ["trace", "0123456789abcdef0123456789abcdef", "--store", "/nonexistent"],
    ]
    loaded = loaded_after(commands, (*SERVICE_ONLY, "nats"))
    assert loaded == {" ".join(c): ["nats"] for c in commands}


@pytest.mark.parametrize("package", [vipwire.bus, vipwire.runtime, vipwire.telemetry])
def test_every_exported_name_of_a_lazy_package_resolves(package: object) -> None:
    """Each name in ``__all__`` of a package that imports part of itself on first use
    resolves to the object its defining module holds."""
    for name in package.__all__:  # type: ignore[attr-defined]
        value = getattr(package, name)
        assert value is not None, name
    with pytest.raises(AttributeError, match="no_such_name"):
        package.no_such_name  # type: ignore[attr-defined]  # noqa: B018
