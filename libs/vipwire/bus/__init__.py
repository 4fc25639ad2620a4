"""The event backbone: NATS JetStream with verdict-driven consumers.

``Bus`` connects (reconnecting forever, with backoff), declares the stream and KV buckets,
publishes contract messages with de-duplication ids and trace context, and runs
pull consumers that keep per-subject order with bounded concurrency.
"""

from vipwire.bus._bus import Bus, Listening, connect
from vipwire.bus._client import connect_client
from vipwire.bus._consumer import (
    ConsumerSpec,
    Delivery,
    Handler,
    OnUnreadable,
    PullConsumer,
    Unreadable,
)
from vipwire.bus._errors import (
    BusConflict,
    BusError,
    NoResponders,
    NotFound,
    StoreFull,
    TooLarge,
    WrongLastSequence,
)
from vipwire.bus._group import ConsumerGroup
from vipwire.bus._history import kv_keys, kv_purge_markers, last_per_subject, reader_name
from vipwire.bus._identity import caller_token, identity_of_file
from vipwire.bus._kv import KvBucket, KvEntry, KvWatch
from vipwire.bus._link import Backoff, connected_gauge
from vipwire.bus._login import Login, credentials_options
from vipwire.bus._reading import StoredMessage
from vipwire.bus._requests import Responder, Serving, fence
from vipwire.bus._settings import BusSettings, TlsSettings
from vipwire.bus._tls import TlsError, certificate_problem, tls_options
from vipwire.bus._urls import redacted, redacted_all, scrubbed
from vipwire.bus._verdict import DONE, Done, Reject, Retry, Verdict

__all__ = [
    "DONE",
    "Backoff",
    "Bus",
    "BusConflict",
    "BusError",
    "BusSettings",
    "ConsumerGroup",
    "ConsumerSpec",
    "Delivery",
    "Done",
    "Handler",
    "KvBucket",
    "KvEntry",
    "KvWatch",
    "Listening",
    "Login",
    "NoResponders",
    "NotFound",
    "OnUnreadable",
    "PullConsumer",
    "Reject",
    "Responder",
    "Retry",
    "Serving",
    "StoreFull",
    "StoredMessage",
    "TlsError",
    "TlsSettings",
    "TooLarge",
    "Unreadable",
    "Verdict",
    "WrongLastSequence",
    "caller_token",
    "certificate_problem",
    "connect",
    "connect_client",
    "connected_gauge",
    "credentials_options",
    "fence",
    "identity_of_file",
    "kv_keys",
    "kv_purge_markers",
    "last_per_subject",
    "reader_name",
    "redacted",
    "redacted_all",
    "scrubbed",
    "tls_options",
]
