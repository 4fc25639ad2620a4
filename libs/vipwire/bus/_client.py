"""A plain NATS client for one-shot tools (the operator commands, replay): one
connection attempt with the bus settings' servers, credentials and TLS, no retry.

A failure is a :class:`BusError` (or :class:`TlsError`, whose message says which
file to check) worded for a person, with every URL redacted and any password the
URLs carry scrubbed from what nats-py said.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
from nats.aio.client import Client as NatsClient

from vipwire.bus._errors import BusError
from vipwire.bus._login import credentials_options
from vipwire.bus._settings import BusSettings
from vipwire.bus._tls import (
    TlsError,
    certificate_problem,
    server_verifies_clients,
    tls_options,
)
from vipwire.bus._urls import redacted_all, scrubbed


async def connect_client(settings: BusSettings, *, name: str, timeout: float) -> NatsClient:
    """A connected client, or :class:`BusError`/:class:`TlsError` (one attempt per server,
    ``timeout`` seconds in all)."""
    login = credentials_options(settings.credentials)
    tls = tls_options(settings.tls)
    where = redacted_all(settings.servers)
    failures: list[BaseException] = []

    async def quiet(exc: Exception) -> None:
        """nats-py reports every failed attempt here (with a traceback by default); the
        one error below says it all."""
        failures.append(exc)

    nc = NatsClient()
    try:
        async with asyncio.timeout(timeout):
            await nc.connect(
                servers=list(settings.servers),
                name=name,
                connect_timeout=timeout,  # type: ignore[arg-type]  # float seconds
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,  # type: ignore[arg-type]
                error_cb=quiet,
                **login.options,
                **tls,
            )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        verifies = server_verifies_clients(nc)
        with contextlib.suppress(Exception):
            # Bounded: after a failed TLS handshake the transport never says it closed.
            await asyncio.wait_for(nc.close(), 1.0)
        for cause in (exc, *failures):
            problem = certificate_problem(cause, settings.tls, server_verifies=verifies)
            if problem is not None:
                raise TlsError(f"cannot connect to NATS at {where}: {problem}") from None
        refused = [f for f in (*failures, exc) if "authorization violation" in str(f).lower()]
        if refused:
            raise BusError(
                f"cannot connect to NATS at {where}: the server refused our identity "
                "(Authorization Violation): check the user and password in the URL, or the "
                "credentials file (--creds, bus.credentials)"
            ) from None
        said = scrubbed(repr(failures[-1] if failures else exc), settings.servers)
        raise BusError(f"cannot connect to NATS at {where}: {said}") from None
    return nc
