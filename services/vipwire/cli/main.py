"""``vipwire``: run a service, the all-in-one stack, or an operator command.

Each command lives in its own module of this package with two functions:
``register(subparsers)`` adds its parser, ``execute(args) -> int`` runs it.
A module keeps its heavy imports inside ``execute`` so that ``vipwire --help``
stays fast. Exit codes: see :mod:`vipwire.cli.exits`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from vipwire.cli import exits

#: Command modules, in the order ``--help`` lists them.
COMMANDS = (
    "run",
    "up",
    "services",
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

#: One example (or a few) for every command's ``--help``, by its ``prog``.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "vipwire": ("vipwire up", "vipwire ipam status", "vipwire services --failed"),
    "vipwire run": ("vipwire run ipam --config /etc/vipwire/vipwire.yaml",),
    "vipwire up": (
        "vipwire up",
        "vipwire up --clusters 3 --services 20 --state-dir /tmp/vw",
        "vipwire up --smoke --timeout 30",
    ),
    "vipwire services": ("vipwire services", "vipwire services --cluster east --failed --json"),
    "vipwire config": ("vipwire config check deploy/config/vipwire.yaml",),
    "vipwire config check": ("vipwire config check deploy/config/vipwire.yaml",),
    "vipwire config reference": ("vipwire config reference --update README.md",),
    "vipwire emulator": ("vipwire emulator --cluster east --port 6443 --nodes 3",),
    "vipwire lb": ("vipwire lb status",),
    "vipwire lb status": ("vipwire lb status", "vipwire lb status --json"),
    "vipwire lb check": ("vipwire lb check --config /etc/vipwire/vipwire.yaml --appliance f5-a",),
    "vipwire bench": ("vipwire bench --scenario churn --set services=100 --json churn.json",),
    "vipwire lab": ("sudo vipwire lab dsr",),
    "vipwire lab dsr": ("sudo vipwire lab dsr --requests 500",),
    "vipwire lab bench-apply": ("sudo vipwire lab bench-apply --vips 1000 --ports 3",),
    "vipwire lab clean": ("sudo vipwire lab clean",),
    "vipwire ipam": ("vipwire ipam status",),
    "vipwire ipam status": ("vipwire ipam status", "vipwire ipam status --json"),
    "vipwire ipam show": ("vipwire ipam show 198.51.100.7", "vipwire ipam show east/default/web"),
    "vipwire ipam reload": ("vipwire ipam reload",),
    "vipwire ipam release": (
        "vipwire ipam release east/default/web --dry-run",
        "vipwire ipam release east/default/web --yes",
    ),
    "vipwire replay": (
        "vipwire replay --service east/default/web",
        "vipwire replay --store /tmp/vw --since 2026-01-01T10:00 --rerun",
    ),
    "vipwire nats": ("vipwire nats config --cluster east --operator alice --out /etc/nats",),
    "vipwire nats config": (
        "vipwire nats config --cluster east --nodes east=n1,n2 --operator alice --out /etc/nats",
    ),
}

EXIT_CODES = (
    "Exit codes: 0 ok, 1 the operation failed, 2 usage or configuration error, "
    "3 could not reach NATS or the API server."
)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("vipwire")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


class VersionAction(argparse._VersionAction):
    """``--version``: looks the version up only when asked (``importlib.metadata`` is
    slow to import, and every other command would pay for it)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        self.version = f"vipwire {version()}"
        super().__call__(parser, namespace, values, option_string)


class HelpFormatter(argparse.HelpFormatter):
    """Wraps paragraphs as argparse does, but keeps indented lines (examples) as they are."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if (
                lines
                and all(line.startswith("  ") for line in lines[1:])
                and lines[0].endswith(":")
            ):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(out)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the command (exit 2)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.exit(exits.USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every sub-command parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for child in action.choices.values():
                if id(child) not in seen:
                    seen.add(id(child))
                    yield from parsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="vipwire",
        description="Kubernetes type: LoadBalancer on premises, on appliances in L2 DSR mode.",
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"vipwire.cli.{name}")
        command = module.register(sub)
        command.set_defaults(_module=module)
    for each in parsers(parser):
        examples = EXAMPLES.get(each.prog)
        if examples and "example" not in (each.epilog or "").lower():
            block = "Examples:\n" + "\n".join(f"  {e}" for e in examples)
            each.epilog = f"{each.epilog}\n\n{block}" if each.epilog else block
        each.epilog = f"{each.epilog}\n\n{EXIT_CODES}" if each.epilog else EXIT_CODES
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = "vipwire " + " ".join(
        str(v) for v in (args.command, getattr(args, "verb", None)) if v is not None
    )
    try:
        code: int = args._module.execute(args)
    except exits.CliError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # Imported only now: the settings module brings msgspec's YAML, which
        # ``--version``, ``--help`` and most operator commands never need.
        from vipwire.runtime import ConfigError

        if not isinstance(exc, ConfigError):
            raise
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        return exits.USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
