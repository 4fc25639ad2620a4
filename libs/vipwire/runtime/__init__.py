"""The shell around each service: settings, bus, tracing, metrics, health, signals."""

from vipwire.metrics import Counter, Gauge, Histogram, Registry
from vipwire.runtime._runtime import Runtime, Service, run_until_signalled
from vipwire.runtime._settings import (
    CommonSettings,
    ConfigError,
    HttpSettings,
    TelemetrySettings,
    decode_settings,
    load_common,
    read_config,
    renamed,
    section,
)

__all__ = [
    "CommonSettings",
    "ConfigError",
    "Counter",
    "Gauge",
    "Histogram",
    "HttpSettings",
    "Registry",
    "Runtime",
    "Service",
    "TelemetrySettings",
    "decode_settings",
    "load_common",
    "read_config",
    "renamed",
    "run_until_signalled",
    "section",
]
