from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar

import msgspec

_MIB = 1024 * 1024


class TlsSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """TLS to the NATS servers (``bus.tls``). The client speaks TLS when the server asks for
    it (its configuration has a ``tls {}`` block); nothing set here: the server's
    certificate is checked against the system's CAs. A server with ``verify: true`` also
    wants a client certificate (mTLS): set ``cert_file`` and ``key_file``."""

    #: PEM file of the CA (or CAs) that signed the servers' certificates; None: the
    #: system's CAs. A server certificate it does not vouch for stops the service at
    #: start (exit 2, one line naming this file), it is never retried.
    ca_file: str | None = None
    #: PEM file of this client's certificate, for a server that verifies clients
    #: (mTLS); give ``key_file`` with it.
    cert_file: str | None = None
    #: PEM file of the private key of ``cert_file`` (keep it mode 0600).
    key_file: str | None = None
    #: The name the server certificate must carry (SAN); None: the host of the URL
    #: being connected to (an IP address is checked against the certificate's IP SANs).
    server_name: str | None = None

    def enabled(self) -> bool:
        """Whether any TLS setting is given."""
        return any((self.ca_file, self.cert_file, self.key_file, self.server_name))


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
    #: How long the VIPWIRE stream keeps a message (seconds); 0: no age limit.
    #: Off by default: the stream holds the *state* of the fleet as the last message of
    #: each subject, and an age limit drops that last message too, so a Service left
    #: unchanged that long would read as absent after the next restart (its virtual
    #: server deleted as an orphan). History is bounded by
    #: ``stream_max_msgs_per_subject`` instead, and the whole by ``stream_max_bytes``.
    #: The subjects of deleted Services and Nodes are purged instead, a while after
    #: their end (ipam's ``ended_sweep_interval_s`` and ``ended_max_age_s``).
    stream_max_age_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # --- limits: bounded resources -------------------------------------------------
    #: Bytes the VIPWIRE stream may hold (0: no limit). When it is full, a publish is
    #: refused (JetStream's DiscardNew), never an old message dropped (DiscardOld could
    #: drop the last, still valid, message of a live subject); every component then
    #: reports not ready and ``vipwire_bus_store_full`` is 1. The server reserves it on
    #: creation, so its JetStream store (``max_file_store``, or ``max_memory_store`` with
    #: ``storage: memory``) must hold it plus ``kv_max_bytes`` per bucket. 1 GiB holds
    #: the full history (16 versions of its five subjects, about 1 KB each) of over ten
    #: thousand Services, and their last messages alone for over a hundred thousand;
    #: raise it for a larger fleet.
    stream_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 1024 * _MIB
    #: Largest message the stream stores (bytes; 0: only the server's ``max_payload``,
    #: 1 MiB by default, bounds it). A larger one is refused for good: its Service gets a
    #: ``TooLarge`` Warning Event. 1 MiB: the NATS default ``max_payload``, so the two
    #: limits agree.
    stream_max_msg_size: Annotated[int, msgspec.Meta(ge=0)] = 1 * _MIB
    #: Messages kept per subject (0: no limit); a subject's oldest go first, so its last
    #: message, the one in force, always stays. Bounds what a busy subject (a node's
    #: applied VIPs, a flapping Service) costs; replay sees this many versions of each.
    #: A full stream still takes a message that replaces one no smaller of a subject at
    #: this limit.
    stream_max_msgs_per_subject: Annotated[int, msgspec.Meta(ge=0)] = 16
    #: Bytes each KV bucket may hold (0: no limit). KV buckets refuse writes when full
    #: (never drop a key). 256 MiB holds the ipam claims of hundreds of thousands of
    #: Services.
    kv_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 256 * _MIB
    #: Largest value a KV bucket stores (bytes; 0: only ``max_payload`` bounds it).
    kv_max_value_size: Annotated[int, msgspec.Meta(ge=0)] = 1 * _MIB
    #: How often every component reads the stream's state (seconds), to report a full
    #: stream (not ready, ``vipwire_bus_store_full`` 1) even when it publishes nothing
    #: itself, and to see room come back (every 5 s at most while it is full). Each
    #: read is one JetStream API request per component: 30 s keeps a fleet of thousands
    #: of node agents below a few hundred a second.
    store_check_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    #: Window in which JetStream drops a repeated ``Nats-Msg-Id`` (seconds).
    duplicate_window_s: float = 120.0
    #: Store the stream on disk (``file``) or in memory (``memory``).
    storage: str = "file"
    #: Stream and KV replicas (1 for a single server, 3 for a cluster).
    replicas: int = 1
    #: This component's NATS credentials: the file ``vipwire nats config`` wrote for its
    #: identity (an NKey seed; its first line names the identity, which also gives the
    #: connection's inbox prefix ``_INBOX.<identity>``), or a NATS ``.creds`` file (JWT
    #: and seed). None: no authentication.
    credentials: str | None = None
    #: TLS to the servers: CA, client certificate and key (mTLS), server name.
    tls: TlsSettings = TlsSettings()
