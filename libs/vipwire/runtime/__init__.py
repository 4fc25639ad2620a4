"""The shell around each service: settings, bus, tracing, metrics, health, signals."""

from vipwire.metrics import Counter, Gauge, Histogram, Registry
from vipwire.runtime._runtime import Runtime, Service, run_until_signalled
from vipwire.runtime._settings import (
    CommonSettings,
    ConfigError,
    HttpSettings,
    TelemetrySettings,
    load_common,
    read_config,
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
    "load_common",
    "read_config",
    "run_until_signalled",
    "section",
]
