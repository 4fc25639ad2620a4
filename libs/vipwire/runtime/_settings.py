"""Config files and the typed settings decoded from them.

A settings class may rename a setting for one release by declaring
``__renamed__: ClassVar[Mapping[str, str]] = {"old_name": "new_name_s"}``:
:func:`decode_settings` then accepts the old key as the new one and warns
(naming both, and that the old name goes in the next release), refuses a
section that gives both, and still rejects any other unknown key. The
generated reference (``vipwire config reference``) lists fields only, so it
shows only the new names.
"""

from __future__ import annotations

import logging
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import msgspec.yaml

from vipwire.bus import BusSettings

T = TypeVar("T")

log = logging.getLogger("vipwire.config")

Warn = Callable[[str], None]


class ConfigError(Exception):
    """A configuration file that cannot be used; the message says where and why."""


class HttpSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The health and metrics endpoint every service serves."""

    #: Address to listen on.
    host: str = "127.0.0.1"
    #: Port for /healthz, /readyz and /metrics (0: any free port).
    port: int = 0


class TelemetrySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: Where spans go: ``otlp`` (to ``otlp_endpoint``; none without one), ``file``
    #: (OTLP-JSON lines, one export batch per line, in ``file_dir``; read a trace with
    #: ``vipwire trace ID --store DIR``) or ``console`` (one line per span on stderr).
    exporter: Literal["otlp", "console", "file"] = "otlp"
    #: OTLP/HTTP collector base URL; default: $OTEL_EXPORTER_OTLP_ENDPOINT, else no export.
    otlp_endpoint: str | None = None
    #: ``exporter: file``: the directory of the span files (``spans-<host>-<pid>.jsonl``, one
    #: per process, appended to, never rotated: remove old ones). Required for ``file``
    #: (``vipwire up`` uses ``<state dir>/traces``).
    file_dir: str | None = None
    #: Log level name.
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.exporter == "file" and not self.file_dir:
            raise ValueError("exporter: file needs file_dir (the directory of the span files)")


class CommonSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The sections every service reads from a config file besides its own."""

    bus: BusSettings = BusSettings()
    http: HttpSettings = HttpSettings()
    telemetry: TelemetrySettings = TelemetrySettings()


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML (or JSON) config file into plain data."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from exc
    try:
        data = msgspec.yaml.decode(raw) if raw.strip() else {}
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of sections")
    return data


def section(
    data: dict[str, Any],
    name: str,
    kind: type[T],
    *,
    source: str = "config",
    warn: Warn | None = None,
) -> T:
    """Decode one section into its typed settings, with an error that names the field."""
    return decode_settings(data.get(name) or {}, kind, where=name, source=source, warn=warn)


def decode_settings(
    raw: Any,
    kind: type[T],
    *,
    where: str,
    source: str = "config",
    warn: Warn | None = None,
) -> T:
    """Decode plain data at ``where`` (``nodeagent``, ``lbdriver.appliances[0]``) into ``kind``.

    Old names declared in ``__renamed__`` (on ``kind`` or on any settings class
    nested in it) are accepted as their new ones; each is reported to ``warn``
    (default: a warning in the log).
    """
    notes: list[str] = []
    upgraded = _upgrade(raw, kind, where, source, notes)
    for note in notes:
        (warn or log.warning)(note)
    try:
        return msgspec.convert(upgraded, kind, strict=False)
    except msgspec.ValidationError as exc:
        place = str(exc).replace("$", where, 1)
        raise ConfigError(f"{source}: invalid {where!r} section: {place}") from exc


def renamed(kind: type) -> Mapping[str, str]:
    """The old → new setting names a settings class still accepts (checked against its fields)."""
    renames: Mapping[str, str] = getattr(kind, "__renamed__", None) or {}
    if renames:
        names = {f.encode_name for f in msgspec.structs.fields(kind)}
        for old, new in renames.items():
            if new not in names or old in names:
                raise TypeError(
                    f"{kind.__name__}.__renamed__: {old!r} → {new!r} must map a name that is "
                    "no longer a field to one that is"
                )
    return renames


def _upgrade(raw: Any, tp: Any, where: str, source: str, notes: list[str]) -> Any:
    """``raw`` with the old names of every settings class along ``tp`` replaced by new ones."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return _upgrade_struct(raw, tp, where, source, notes) if isinstance(raw, dict) else raw
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _upgrade(raw, args[0], where, source, notes)
    if origin in (typing.Union, types.UnionType):
        # Optional[Struct] and the like: only one Struct member exists in our settings.
        for arg in args:
            if arg is not type(None):
                raw = _upgrade(raw, arg, where, source, notes)
        return raw
    if isinstance(raw, list) and args:
        items = args[:1] * len(raw) if len(args) == 1 or args[-1] is Ellipsis else args
        return [
            _upgrade(item, item_tp, f"{where}[{i}]", source, notes)
            for i, (item, item_tp) in enumerate(zip(raw, items, strict=False))
        ]
    if isinstance(raw, dict) and len(args) == 2:
        return {k: _upgrade(v, args[1], f"{where}.{k}", source, notes) for k, v in raw.items()}
    return raw


def _upgrade_struct(
    raw: dict[str, Any], kind: type[msgspec.Struct], where: str, source: str, notes: list[str]
) -> dict[str, Any]:
    out = dict(raw)
    for old, new in renamed(kind).items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(
                f"{source}: {where}: both {old!r} and {new!r} are set; {old!r} is the old "
                f"name of {new!r}, keep only {new!r}"
            )
        out[new] = out.pop(old)
        notes.append(
            f"{source}: {where}.{old} is now called {where}.{new}; the old name is "
            "accepted for this release only and goes in the next one"
        )
    for field in msgspec.structs.fields(kind):
        if field.encode_name in out:
            value = out[field.encode_name]
            out[field.encode_name] = _upgrade(
                value, field.type, f"{where}.{field.encode_name}", source, notes
            )
    return out


def load_common(
    data: dict[str, Any], *, source: str = "config", warn: Warn | None = None
) -> CommonSettings:
    return CommonSettings(
        bus=section(data, "bus", BusSettings, source=source, warn=warn),
        http=section(data, "http", HttpSettings, source=source, warn=warn),
        telemetry=section(data, "telemetry", TelemetrySettings, source=source, warn=warn),
    )


def load_common_and_configure_logging(
    data: dict[str, Any], *, source: str = "config"
) -> CommonSettings:
    """The common sections, with logging configured at their ``telemetry.log_level``.

    The level is among the settings being decoded, so a renamed setting in
    these sections is held back and logged once logging is configured: as a log
    line like any other, not as a bare line on stderr.
    """
    # Imported here: it brings the OpenTelemetry SDK, which a command that only reads a
    # config file (``vipwire config check``) does not need.
    from vipwire.telemetry import configure_logging

    notes: list[str] = []
    common = load_common(data, source=source, warn=notes.append)
    configure_logging(common.telemetry.log_level)
    for note in notes:
        log.warning("%s", note)
    return common
