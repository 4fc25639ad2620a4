"""Appliance drivers: one interface, one error family, one builder from settings."""

from __future__ import annotations

from vipwire.lbdriver.io.drivers.base import (
    ApplianceAuthError,
    ApplianceDriver,
    ApplianceError,
    ApplianceRejected,
    ApplianceUnavailable,
)
from vipwire.lbdriver.io.drivers.sim import SimAppliance
from vipwire.lbdriver.settings import ApplianceSettings


def build_driver(settings: ApplianceSettings) -> ApplianceDriver:
    """A driver for one configured appliance."""
    match settings.driver:
        case "sim":
            return SimAppliance(
                settings.name,
                api_latency_ms=settings.api_latency_ms,
                fail_rate=settings.fail_rate,
                seed=settings.seed,
            )
        case "f5":
            from vipwire.lbdriver.io.drivers.f5 import F5Driver

            return F5Driver.from_settings(settings)
        case "a10":
            from vipwire.lbdriver.io.drivers.a10 import A10Driver

            return A10Driver.from_settings(settings)
        case "linux":
            from vipwire.lbdriver.io.drivers.linux import LinuxAppliance

            return LinuxAppliance.from_settings(settings)
    raise ValueError(f"appliance {settings.name!r}: unknown driver {settings.driver!r}")


__all__ = [
    "ApplianceAuthError",
    "ApplianceDriver",
    "ApplianceError",
    "ApplianceRejected",
    "ApplianceUnavailable",
    "SimAppliance",
    "build_driver",
]
