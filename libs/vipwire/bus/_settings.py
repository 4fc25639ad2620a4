from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import msgspec


class BusSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a service reaches NATS JetStream."""

    #: Old names still read, with a warning, for one release.
    __renamed__: ClassVar[Mapping[str, str]] = {
        "connect_timeout": "connect_timeout_s",
        "reconnect_wait": "reconnect_wait_s",
        "request_timeout": "request_timeout_s",
        "stream_max_age": "stream_max_age_s",
        "duplicate_window": "duplicate_window_s",
    }

    #: NATS server URLs; a client fails over between them.
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    #: Seconds to wait for each connection attempt.
    connect_timeout_s: float = 2.0
    #: Seconds before the first retry of a lost or refused connection; each failed
    #: attempt doubles it (with random jitter) up to ``reconnect_max_wait_s``. The
    #: client retries forever.
    reconnect_wait_s: float = 0.5
    #: The longest wait between two connection attempts (seconds).
    reconnect_max_wait_s: float = 5.0
    #: Seconds between the client's pings to its server. A server that answers
    #: none of two in a row is taken for dead and the client moves to another: a
    #: hung server (stopped, overloaded, cut off) is lost like a crashed one, in
    #: about three intervals rather than nats-py's default of minutes.
    ping_interval_s: float = 2.0
    #: Seconds a request to the JetStream API (publish ack, KV op) may take.
    request_timeout_s: float = 5.0
    #: How long the VIPWIRE stream keeps history, for replay (seconds).
    stream_max_age_s: float = 7 * 24 * 3600.0
    #: Window in which JetStream drops a repeated ``Nats-Msg-Id`` (seconds).
    duplicate_window_s: float = 120.0
    #: Store the stream on disk (``file``) or in memory (``memory``).
    storage: str = "file"
    #: Stream and KV replicas (1 for a single server, 3 for a cluster).
    replicas: int = 1
    #: Optional file holding a user credentials (.creds) for the connection.
    credentials: str | None = None
