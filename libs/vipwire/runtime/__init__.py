"""The shell around each service: settings, bus, tracing, metrics, health, signals.

The settings half is imported at once; the runtime half (aiohttp, the
OpenTelemetry SDK, the bus) only when one of its names is first used, so that
an operator command reading a config file does not pay for a service's start-up.
"""

from typing import TYPE_CHECKING

from vipwire.metrics import Counter, Gauge, Histogram, Registry
from vipwire.runtime._settings import (
    CommonSettings,
    ConfigError,
    HttpSettings,
    TelemetrySettings,
    decode_settings,
    load_common,
    load_common_and_configure_logging,
    read_config,
    renamed,
    section,
)

if TYPE_CHECKING:
    from vipwire.runtime._runtime import Runtime, Service, run_until_signalled
else:

    def __getattr__(name: str) -> object:
        """Imports the runtime half on first use of one of its names."""
        if name in ("Runtime", "Service", "run_until_signalled"):
            from vipwire.runtime import _runtime

            value = getattr(_runtime, name)
            globals()[name] = value
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "load_common_and_configure_logging",
    "read_config",
    "renamed",
    "run_until_signalled",
    "section",
]
