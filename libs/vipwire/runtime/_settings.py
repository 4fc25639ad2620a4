from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import msgspec.yaml

from vipwire.bus import BusSettings

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration file that cannot be used; the message says where and why."""


class HttpSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The health and metrics endpoint every service serves."""

    #: Address to listen on.
    host: str = "127.0.0.1"
    #: Port for /healthz, /readyz and /metrics (0: any free port).
    port: int = 0


class TelemetrySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: OTLP/HTTP collector base URL; default: $OTEL_EXPORTER_OTLP_ENDPOINT, else no export.
    otlp_endpoint: str | None = None
    #: Log level name.
    log_level: str = "INFO"


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


def section(data: dict[str, Any], name: str, kind: type[T], *, source: str = "config") -> T:
    """Decode one section into its typed settings, with an error that names the field."""
    try:
        return msgspec.convert(data.get(name) or {}, kind, strict=False)
    except msgspec.ValidationError as exc:
        where = str(exc).replace("$", name, 1)
        raise ConfigError(f"{source}: invalid {name!r} section: {where}") from exc


def load_common(data: dict[str, Any], *, source: str = "config") -> CommonSettings:
    return CommonSettings(
        bus=section(data, "bus", BusSettings, source=source),
        http=section(data, "http", HttpSettings, source=source),
        telemetry=section(data, "telemetry", TelemetrySettings, source=source),
    )
