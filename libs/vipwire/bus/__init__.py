"""The event backbone: NATS JetStream with verdict-driven consumers.

``Bus`` connects (reconnecting forever, with backoff), declares the stream and KV buckets,
publishes contract messages with de-duplication ids and trace context, and runs
pull consumers that keep per-subject order with bounded concurrency.

The settings, the URL helpers and the verdicts are imported at once; the rest
(the NATS client, OpenTelemetry) on first use of one of its names, so that a
command that only reads settings starts quickly.
"""

from typing import TYPE_CHECKING

from vipwire.bus._settings import BusSettings, TlsSettings
from vipwire.bus._urls import redacted, redacted_all, scrubbed
from vipwire.bus._verdict import DONE, Done, Reject, Retry, Verdict

if TYPE_CHECKING:
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
        passes,
    )
    from vipwire.bus._group import ConsumerGroup
    from vipwire.bus._history import kv_keys, kv_purge_markers, last_per_subject, reader_name
    from vipwire.bus._identity import caller_token, identity_of_file
    from vipwire.bus._kv import KvBucket, KvEntry, KvWatch
    from vipwire.bus._link import Backoff, connected_gauge
    from vipwire.bus._login import Login, credentials_options
    from vipwire.bus._reading import StoredMessage
    from vipwire.bus._requests import Responder, Serving, fence
    from vipwire.bus._tls import TlsError, certificate_problem, tls_options
else:
    #: Where each name imported on first use lives.
    _LAZY = {
        "Bus": "_bus",
        "Listening": "_bus",
        "connect": "_bus",
        "connect_client": "_client",
        "ConsumerSpec": "_consumer",
        "Delivery": "_consumer",
        "Handler": "_consumer",
        "OnUnreadable": "_consumer",
        "PullConsumer": "_consumer",
        "Unreadable": "_consumer",
        "BusConflict": "_errors",
        "BusError": "_errors",
        "NoResponders": "_errors",
        "NotFound": "_errors",
        "StoreFull": "_errors",
        "TooLarge": "_errors",
        "WrongLastSequence": "_errors",
        "passes": "_errors",
        "ConsumerGroup": "_group",
        "kv_keys": "_history",
        "kv_purge_markers": "_history",
        "last_per_subject": "_history",
        "reader_name": "_history",
        "caller_token": "_identity",
        "identity_of_file": "_identity",
        "KvBucket": "_kv",
        "KvEntry": "_kv",
        "KvWatch": "_kv",
        "Backoff": "_link",
        "connected_gauge": "_link",
        "Login": "_login",
        "credentials_options": "_login",
        "StoredMessage": "_reading",
        "Responder": "_requests",
        "Serving": "_requests",
        "fence": "_requests",
        "TlsError": "_tls",
        "certificate_problem": "_tls",
        "tls_options": "_tls",
    }

    def __getattr__(name: str) -> object:
        """Imports the module that defines ``name`` on its first use."""
        where = _LAZY.get(name)
        if where == "_bus":
            from vipwire.bus import _bus as module
        elif where == "_client":
            from vipwire.bus import _client as module
        elif where == "_consumer":
            from vipwire.bus import _consumer as module
        elif where == "_errors":
            from vipwire.bus import _errors as module
        elif where == "_group":
            from vipwire.bus import _group as module
        elif where == "_history":
            from vipwire.bus import _history as module
        elif where == "_identity":
            from vipwire.bus import _identity as module
        elif where == "_kv":
            from vipwire.bus import _kv as module
        elif where == "_link":
            from vipwire.bus import _link as module
        elif where == "_login":
            from vipwire.bus import _login as module
        elif where == "_reading":
            from vipwire.bus import _reading as module
        elif where == "_requests":
            from vipwire.bus import _requests as module
        elif where == "_tls":
            from vipwire.bus import _tls as module
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(module, name)
        globals()[name] = value
        return value


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
    "passes",
    "reader_name",
    "redacted",
    "redacted_all",
    "scrubbed",
    "tls_options",
]
