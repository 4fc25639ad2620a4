"""Reads and writes of the Kubernetes API, every write fenced on leadership and counted."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio.client import ApiClient, CoreV1Api, DiscoveryV1Api, EventsV1Api

from vipwire.kube import KubeApiError, own_namespace, request_json
from vipwire.metrics import Counter
from vipwire.watcher.core.translate import Obj
from vipwire.watcher.settings import WatcherSettings

log = logging.getLogger("vipwire.watcher")

#: Seconds before a refusal that lasts is logged again.
RETELL_S = 300.0


class Refusals:
    """The calls the API server refuses for want of a permission (403), by caller.

    Each refusal is logged as an ERROR naming the permission (verb, resource,
    namespace), at once and then at most every :data:`RETELL_S` while it lasts; it
    stays the watcher's readiness problem until that caller's call goes through:
    retrying cannot help until somebody grants it.
    """

    def __init__(self) -> None:
        self._missing: dict[str, str] = {}
        self._told: dict[str, float] = {}  # permission -> when last logged (monotonic)

    def refused(self, caller: str, exc: KubeApiError, tried: str) -> None:
        missing = exc.missing_permission(tried)
        now = time.monotonic()
        if now - self._told.get(missing, -RETELL_S) >= RETELL_S:
            self._told[missing] = now
            log.error(
                "forbidden: cannot %s (%s): grant it to the watcher's service account (the "
                "cluster overlay's RBAC grants exactly what the watcher calls); retrying "
                "meanwhile",
                missing,
                caller,
            )
        self._missing[caller] = missing

    def allowed(self, caller: str) -> None:
        self._missing.pop(caller, None)

    def first(self) -> str | None:
        """One missing permission (the first refused), or None."""
        return next(iter(self._missing.values()), None)


class NotLeader(Exception):
    """This replica does not hold the Lease (any more): it must not write."""


def refused(exc: KubeApiError) -> bool:
    """The server judged the request itself wrong: sending it again cannot succeed."""
    return exc.status in (400, 422)


class KubeWrites:
    """The API groups the watcher uses; ``check_leading`` raises :class:`NotLeader`."""

    def __init__(
        self,
        api: ApiClient,
        *,
        request_timeout_s: float,
        check_leading: Callable[[], None],
        writes: Counter,
    ) -> None:
        self.core = CoreV1Api(api)
        self.discovery = DiscoveryV1Api(api)
        self.events = EventsV1Api(api)
        self._timeout_s = request_timeout_s
        self._check_leading = check_leading
        self._writes = writes
        self.refusals = Refusals()

    async def write(self, kind: str, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One write to the API, fenced on leadership and counted."""
        self._check_leading()
        try:
            result = await request_json(call, *args, timeout=self._timeout_s, **kwargs)
        except KubeApiError as exc:
            outcome = "conflict" if exc.conflict else "error"
            self._writes.inc(kind=kind, outcome=outcome)
            if exc.forbidden:
                self.refusals.refused(f"{kind} write", exc, f"{_verb(call)} ({kind} write)")
            raise
        self._writes.inc(kind=kind, outcome="ok")
        self.refusals.allowed(f"{kind} write")
        return result

    async def read(self, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One read (not fenced: reading does no harm)."""
        try:
            result = await request_json(call, *args, timeout=self._timeout_s, **kwargs)
        except KubeApiError as exc:
            if exc.forbidden:
                self.refusals.refused("read", exc, _verb(call))
            raise
        self.refusals.allowed("read")
        return result

    async def read_service(self, name: str, namespace: str) -> Obj | None:
        """The Service as the API has it now; None when it is gone."""
        try:
            return await self.read(self.core.read_namespaced_service, name, namespace)
        except KubeApiError as exc:
            if exc.not_found:
                return None
            raise


def _verb(call: Any) -> str:
    """``patch_namespaced_service_status`` -> ``patch namespaced service status``."""
    return str(getattr(call, "__name__", "call")).replace("_", " ")


def lease_namespace(settings: WatcherSettings) -> str:
    """Where the Lease lives: ``lease_namespace``, else the kubeconfig context's
    namespace, else the pod's own, else ``default`` (with a warning: the RBAC of a real
    install grants Leases in its own namespace only)."""
    s = settings
    namespace, source = own_namespace(s.lease_namespace, s.kubeconfig, s.context)
    if namespace == "default" and not s.lease_namespace:
        log.warning(
            "cluster %s: Lease %s in namespace default: %s; set watcher.lease_namespace to "
            "the namespace whose Role grants Leases",
            s.cluster,
            s.lease,
            source,
        )
    else:
        log.info("cluster %s: Lease %s/%s (from %s)", s.cluster, namespace, s.lease, source)
    return namespace
