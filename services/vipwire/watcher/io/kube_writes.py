"""Reads and writes of the Kubernetes API, every write fenced on leadership and counted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes_asyncio.client import ApiClient, CoreV1Api, DiscoveryV1Api, EventsV1Api

from vipwire.kube import KubeApiError, request_json
from vipwire.metrics import Counter
from vipwire.watcher.core.translate import Obj


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

    async def write(self, kind: str, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One write to the API, fenced on leadership and counted."""
        self._check_leading()
        try:
            result = await request_json(call, *args, timeout=self._timeout_s, **kwargs)
        except KubeApiError as exc:
            outcome = "conflict" if exc.conflict else "error"
            self._writes.inc(kind=kind, outcome=outcome)
            raise
        self._writes.inc(kind=kind, outcome="ok")
        return result

    async def read(self, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One read (not fenced: reading does no harm)."""
        return await request_json(call, *args, timeout=self._timeout_s, **kwargs)

    async def read_service(self, name: str, namespace: str) -> Obj | None:
        """The Service as the API has it now; None when it is gone."""
        try:
            return await self.read(self.core.read_namespaced_service, name, namespace)
        except KubeApiError as exc:
            if exc.not_found:
                return None
            raise
