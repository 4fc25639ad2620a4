from __future__ import annotations

import msgspec


class BusSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a service reaches NATS JetStream."""

    #: NATS server URLs; a client fails over between them.
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    #: Seconds to wait for each connection attempt.
    connect_timeout: float = 2.0
    #: Seconds between reconnect attempts (the client retries forever).
    reconnect_wait: float = 0.5
    #: Seconds a request to the JetStream API (publish ack, KV op) may take.
    request_timeout: float = 5.0
    #: How long the VIPWIRE stream keeps history, for replay (seconds).
    stream_max_age: float = 7 * 24 * 3600.0
    #: Window in which JetStream drops a repeated ``Nats-Msg-Id`` (seconds).
    duplicate_window: float = 120.0
    #: Store the stream on disk (``file``) or in memory (``memory``).
    storage: str = "file"
    #: Stream and KV replicas (1 for a single server, 3 for a cluster).
    replicas: int = 1
    #: Optional file holding a user credentials (.creds) for the connection.
    credentials: str | None = None
