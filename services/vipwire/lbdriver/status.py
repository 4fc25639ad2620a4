"""What the lbdriver says about its appliances when asked (``vipwire lb status``).

Served by request/reply on core NATS, on a subject outside the ``VIPWIRE``
stream (which captures ``vipwire.>``): the answer is a moment's view, not
history, and must never be replayed.
"""

from __future__ import annotations

from typing import Final

import msgspec

from vipwire.lbdriver.core.resilience import BreakerState

#: Where an LbdriverService answers status requests (empty request body).
STATUS_SUBJECT: Final = "vipwire-ctl.lbdriver.status"


class ApplianceStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One appliance as the lbdriver sees it. Never carries credentials."""

    name: str
    driver: str
    group: str
    #: Management endpoint (f5, a10), if any.
    address: str | None = None
    #: Whether it is the one its group writes to (else a standby).
    active: bool
    #: Circuit breaker state: closed (healthy), open (failing fast), half-open (probing).
    health: BreakerState
    #: Consecutive failed calls while closed.
    failures: int = 0
    #: Seconds until an open breaker probes again.
    retry_in_s: float | None = None
    #: Our virtual servers on it, as last listed or written (partitions listed so far).
    virtual_servers: int = 0
    #: Services whose objects it holds.
    services: int = 0
    #: Successful write requests since start.
    writes: int = 0
    #: Unix time of the last successful write (None: none since start).
    last_write_at: float | None = None
    #: The last failure, as reported in LbFailed (None: none since start).
    last_error: str | None = None
    #: Unix time of that failure.
    last_error_at: float | None = None


class LbdriverStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The answer on :data:`STATUS_SUBJECT`."""

    #: Which lbdriver process answered (random per start).
    instance: str
    #: Unix time the answer was made (times above are relative to this clock).
    now: float
    ready: bool
    #: Services with assigned or releasing VIPs.
    services: int
    #: Services waiting for a reconcile (coalescing or backing off).
    pending: int
    #: Services whose last reconcile failed.
    failing: int
    #: Objects repaired or removed by drift passes since start.
    drift_repairs: int
    appliances: tuple[ApplianceStatus, ...]


def encode_status(status: LbdriverStatus) -> bytes:
    return msgspec.json.encode(status)


def decode_status(data: bytes) -> LbdriverStatus:
    """Raises ``msgspec.ValidationError`` / ``DecodeError`` on a malformed answer."""
    return msgspec.json.decode(data, type=LbdriverStatus)


def redact_address(address: str | None) -> str | None:
    """A management address fit to show: any ``user:password@`` part removed."""
    if address is None or "@" not in address:
        return address
    scheme, sep, rest = address.rpartition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[1]}"
