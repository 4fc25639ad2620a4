"""The ``dashboard`` section of the config file.

Example::

    dashboard:
      host: 0.0.0.0
      port: 8080
      token_file: /etc/vipwire/dashboard-token
      jaeger_url: http://jaeger.example.internal:16686
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import msgspec

from vipwire.runtime import ConfigError


class DashboardConfigError(ConfigError, ValueError):
    """A ``dashboard`` section that cannot be used (ValueError so msgspec names the field)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost``, 127/8, ::1);
    every other name or address (``0.0.0.0``, ``""``, a host name) is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class DashboardSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The read-only operators' dashboard: where it listens and what it shows."""

    #: Address the web UI listens on. Any other than loopback needs ``token`` or
    #: ``token_file`` (the dashboard shows every cluster's Services), or
    #: ``allow_anonymous: true``.
    host: str = "127.0.0.1"
    #: Port of the web UI (0: any free port, logged on start). /healthz, /readyz and
    #: /metrics stay on the ``http`` section's port, as for every service.
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    #: Shared secret that every request must carry: ``Authorization: Bearer <token>``,
    #: or ``?token=<token>`` once in a browser (then kept in a cookie). None: no auth.
    token: str | None = None
    #: File holding the token (a mounted Secret; surrounding whitespace ignored).
    #: Takes the place of ``token``; set at most one of the two.
    token_file: str | None = None
    #: Serve a non-loopback ``host`` without a token (a warning at every start). Only
    #: behind something else that authenticates (an authenticating proxy).
    allow_anonymous: bool = False
    #: Base URL of the Jaeger UI (``http://localhost:16686``); a Service's page then links
    #: each change to ``{jaeger_url}/trace/{trace_id}``. None: no trace links.
    jaeger_url: str | None = None
    #: Minutes of history behind the convergence p50/p99 on the overview.
    history_minutes: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    #: Services kept in memory; Services beyond this are counted but not shown.
    max_services: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    #: Events kept per Service for its timeline.
    timeline_events: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50
    #: Seconds between polls of ipam's and lbdriver's status endpoints (pools, appliances).
    status_poll_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    #: Seconds a status request may take before the answer counts as unknown.
    status_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0

    def __post_init__(self) -> None:
        if self.token is not None and self.token_file is not None:
            raise DashboardConfigError("set token or token_file, not both")
        if self.token is not None and not self.token.strip():
            raise DashboardConfigError("token must not be empty")
        if self.jaeger_url is not None and not self.jaeger_url.startswith(("http://", "https://")):
            raise DashboardConfigError("jaeger_url must start with http:// or https://")
        if self.anonymous_outside and not self.allow_anonymous:
            raise DashboardConfigError(
                f"dashboard.host {self.host!r} is not a loopback address and no token is set: "
                "anyone who reaches it would read every cluster's Services. Set "
                "dashboard.token_file (or dashboard.token), or dashboard.allow_anonymous: true "
                "to serve it without one, or bind dashboard.host: 127.0.0.1"
            )

    @property
    def anonymous_outside(self) -> bool:
        """Whether the dashboard would serve beyond this machine without a token."""
        return self.token is None and self.token_file is None and not is_loopback(self.host)

    def load_token(self) -> str | None:
        """The token to require, read from ``token_file`` when that is set."""
        if self.token_file is None:
            return self.token
        try:
            token = Path(self.token_file).read_text().strip()
        except OSError as exc:
            raise DashboardConfigError(
                f"cannot read token_file {self.token_file}: {exc.strerror}"
            ) from exc
        if not token:
            raise DashboardConfigError(f"token_file {self.token_file} is empty")
        return token
