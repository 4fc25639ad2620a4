"""``vipwire config``: check a config file, or print the reference of every setting.

The reference is made from the settings classes themselves (their ``#:``
comments and defaults), so the README's copy can be checked against the code.
It lists fields only: a setting's old name (``__renamed__``) is accepted by
``check`` with a warning but never shown.
"""

from __future__ import annotations

import argparse
import re
import sys
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import msgspec

# Section name → settings class, as the config file spells them.
SECTION_NAMES = (
    "bus",
    "http",
    "telemetry",
    "watcher",
    "ipam",
    "lbdriver",
    "nodeagent",
    "dashboard",
    "profiles",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser("config", help="check a config file or print the settings reference")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    check = verbs.add_parser("check", help="validate FILE; exit 2 with the offending field if bad")
    check.add_argument("file", metavar="FILE", help="the YAML configuration file to check")
    ref = verbs.add_parser("reference", help="print every setting with its default, as Markdown")
    ref.add_argument(
        "--update",
        metavar="FILE",
        help="rewrite the part of FILE between the reference markers instead of printing",
    )
    return parser


def execute(args: argparse.Namespace) -> int:
    if args.verb == "reference":
        if args.update:
            return update_file(args.update)
        sys.stdout.write(reference())
        return 0
    return check(args.file)


START, END = "<!-- reference:start -->\n", "<!-- reference:end -->"


def update_file(path: str) -> int:
    from vipwire.cli.exits import UsageError

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"--update {path}: cannot read it: {exc.strerror}") from None
    if START not in text or END not in text:
        print(f"{path}: no reference markers ({START.strip()} … {END})", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    Path(path).write_text(head + START + reference() + END + tail)
    return 0


def sections() -> dict[str, type[msgspec.Struct]]:
    from vipwire.bus import BusSettings
    from vipwire.dashboard import DashboardSettings
    from vipwire.ipam import IpamSettings
    from vipwire.lbdriver import LbdriverSettings
    from vipwire.lbdriver.core.profiles import ProfileSettings
    from vipwire.nodeagent import NodeagentSettings
    from vipwire.runtime import HttpSettings, TelemetrySettings
    from vipwire.watcher import WatcherSettings

    return {
        "bus": BusSettings,
        "http": HttpSettings,
        "telemetry": TelemetrySettings,
        "watcher": WatcherSettings,
        "ipam": IpamSettings,
        "lbdriver": LbdriverSettings,
        "nodeagent": NodeagentSettings,
        "dashboard": DashboardSettings,
        # Top level, shared by ipam and the lbdriver: appliance profiles by name.
        "profiles.<name>": ProfileSettings,
    }


def check(path: str) -> int:
    from vipwire.runtime import load_common, read_config, section

    def warn(note: str) -> None:
        print(f"warning: {note}", file=sys.stderr)

    data = read_config(path)  # ConfigError → exit 2 in main
    load_common(data, source=path, warn=warn)
    known = sections()
    unknown = sorted(set(data) - {n.split(".", 1)[0] for n in known})
    if unknown:
        print(f"{path}: unknown section(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    for name in ("watcher", "ipam", "lbdriver", "nodeagent", "dashboard"):
        if name in data:
            section(data, name, known[name], source=path, warn=warn)
    _check_profiles(data, path)
    present = [n for n in (k.split(".", 1)[0] for k in known) if n in data]
    print(f"{path}: ok ({', '.join(present) or 'defaults only'})")
    return 0


def _check_profiles(data: dict[str, Any], path: str) -> None:
    """The profiles section, and every pool's default profile against it."""
    from vipwire.ipam.settings import IpamSettings, check_pool_profiles, profile_names
    from vipwire.lbdriver.io.profiles import load_profiles
    from vipwire.runtime import section

    load_profiles(data, source=path)
    if "ipam" in data:
        pools = section(data, "ipam", IpamSettings, source=path).pools
        check_pool_profiles(pools, profile_names(data, source=path))


_FIELD = re.compile(r"^\s+(\w+)\s*:")


def field_docs(cls: type) -> dict[str, str]:
    """The ``#:`` comment above each field of a settings class."""
    import inspect

    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = _FIELD.match(line)
        if match and pending:
            docs[match.group(1)] = " ".join(pending)
        if stripped:
            pending = []
    return docs


def _type_name(tp: Any) -> str:
    text = str(tp) if not isinstance(tp, type) else tp.__name__
    text = re.sub(r"\b(typing|builtins|vipwire(\.\w+)*)\.", "", text)
    return re.sub(r"Annotated\[(.*?), msgspec.Meta\(.*?\)\]", r"\1", text)


def _default(field: msgspec.structs.FieldInfo) -> str:
    import msgspec

    if field.required:
        return "required"
    value = field.default
    if value is msgspec.NODEFAULT and field.default_factory is not msgspec.NODEFAULT:
        value = field.default_factory()
    if isinstance(value, msgspec.Struct):
        return f"see {type(value).__name__}"
    if isinstance(value, tuple) and value and isinstance(value[0], msgspec.Struct):
        return "(see below)"
    return f"`{msgspec.json.encode(value).decode()}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _struct_types(tp: Any) -> list[type[msgspec.Struct]]:
    import msgspec

    found: list[type[msgspec.Struct]] = []
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return [tp]
    for arg in typing.get_args(tp):
        found += _struct_types(arg)
    return found


def _table(title: str, cls: type[msgspec.Struct], seen: set[type]) -> list[str]:
    import msgspec

    seen.add(cls)
    docs = field_docs(cls)
    out = [f"#### `{title}`", "", "| setting | type | default | meaning |", "|---|---|---|---|"]
    nested: list[tuple[str, type[msgspec.Struct]]] = []
    for field in msgspec.structs.fields(cls):
        meaning = _cell(docs.get(field.name, ""))
        kind = _cell(_type_name(field.type))
        out.append(f"| `{field.encode_name}` | `{kind}` | {_default(field)} | {meaning} |")
        # A struct field is a group of settings (bus.tls); anything else holding one is a list.
        single = isinstance(field.type, type) and issubclass(field.type, msgspec.Struct)
        sub_title = f"{title}.{field.encode_name}" + ("" if single else "[]")
        nested += [(sub_title, t) for t in _struct_types(field.type)]
    out.append("")
    for sub_title, sub in nested:
        if sub not in seen:
            out += _table(sub_title, sub, seen)
    return out


def reference() -> str:
    lines: list[str] = []
    seen: set[type] = set()
    for name, cls in sections().items():
        lines += _table(name, cls, seen)
    return "\n".join(lines)
