"""How long the API server takes to answer: one histogram over every request of a client.

The histogram is ``vipwire_kube_request_seconds{verb, resource, code}`` (verb and
resource in RBAC's terms, ``code`` the HTTP status or ``error`` when none came
back). A watch is timed until its response headers arrive: how long the server
took to open it, not how long it stayed open.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from kubernetes_asyncio.client import ApiClient

from vipwire.metrics import Histogram, Registry

#: API server latency buckets (seconds): a healthy server answers in milliseconds;
#: a second or more is a server, or a network, in trouble.
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_VERB_OF_METHOD: Final = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def request_histogram(metrics: Registry) -> Histogram:
    return metrics.histogram(
        "kube_request_seconds",
        "Kubernetes API request latency (a watch: until it opened), by RBAC verb, "
        "resource and HTTP status code",
        ["verb", "resource", "code"],
        buckets=BUCKETS,
    )


def _watching(query: Iterable[tuple[str, Any]] | Mapping[str, Any] | None) -> bool:
    items = query.items() if isinstance(query, Mapping) else (query or ())
    return any(k == "watch" and str(v).lower() in ("true", "1") for k, v in items)


def request_labels(
    method: str, url: str, query: Iterable[tuple[str, Any]] | Mapping[str, Any] | None = None
) -> tuple[str, str]:
    """The RBAC verb and resource (``services/status``) of one API request.

    ``GET .../namespaces/ns/leases/x`` is ``get leases``; a GET of a collection is
    ``list``, or ``watch`` with ``watch=true``. Paths that name no resource
    (discovery, ``/version``) give ``resource="-"``.
    """
    method = method.upper()
    parts = [p for p in urlsplit(url).path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        rest = parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        rest = parts[3:]
    else:
        rest = []
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]  # namespaces/<ns>/<plural>/...
    if not rest:
        return (method.lower(), "-")
    plural, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2:3]
    resource = f"{plural}/{sub[0]}" if sub else plural
    if method == "GET":
        verb = "get" if name is not None else ("watch" if _watching(query) else "list")
    elif method == "DELETE" and name is None:
        verb = "deletecollection"
    else:
        verb = _VERB_OF_METHOD.get(method, method.lower())
    return verb, resource


def instrument(client: ApiClient, histogram: Histogram) -> None:
    """Time every request ``client`` sends (the generated API methods and our helpers
    alike) into ``histogram``; once per client."""
    rest = client.rest_client
    if getattr(rest, "_vipwire_timed", False):
        return
    send = rest.request

    async def timed(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        verb, resource = request_labels(method, url, kwargs.get("query_params"))
        started = time.perf_counter()
        code = "error"
        try:
            response = await send(method, url, *args, **kwargs)
            code = str(getattr(response, "status", "error"))
            return response
        except Exception as exc:
            status = getattr(exc, "status", None)  # ApiException with _preload_content
            if isinstance(status, int) and status:
                code = str(status)
            raise
        finally:
            histogram.observe(
                time.perf_counter() - started, verb=verb, resource=resource, code=code
            )

    # The generated methods call ``rest_client.request``: an instance attribute wins.
    setattr(rest, "request", timed)  # noqa: B010
    setattr(rest, "_vipwire_timed", True)  # noqa: B010
