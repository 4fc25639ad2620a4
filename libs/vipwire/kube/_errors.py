"""One exception family for everything that can go wrong talking to an API server."""

from __future__ import annotations

import re
from typing import Any, Final

#: How kube-apiserver's RBAC authorizer words a refusal (the tail of a 403's message).
_RBAC_REFUSAL: Final = re.compile(
    r'cannot (?P<verb>[a-z]+) resource "(?P<resource>[^"]+)"'
    r'(?: in API group "(?P<group>[^"]*)")?'
    r'(?: in the namespace "(?P<namespace>[^"]+)"| at the cluster scope)?'
)


class KubeError(Exception):
    """Talking to the Kubernetes API server failed."""


class KubeConfigError(KubeError):
    """No usable client configuration (kubeconfig or in-cluster service account)."""


class KubeUnavailable(KubeError):
    """The API server could not be reached, or a stream broke off: worth retrying."""


class KubeApiError(KubeError):
    """The API server answered with an error ``Status``."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}

    @classmethod
    def from_status(cls, status: dict[str, Any], fallback_code: int = 500) -> KubeApiError:
        """Build from a ``Status`` object (an error body, or a watch ``ERROR`` event)."""
        code = status.get("code")
        return cls(
            code if isinstance(code, int) else fallback_code,
            str(status.get("reason") or ""),
            str(status.get("message") or ""),
            body=status,
        )

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """A stale resourceVersion precondition (not ``AlreadyExists``, also a 409)."""
        return self.status == 409 and self.reason != "AlreadyExists"

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def gone(self) -> bool:
        """The resourceVersion asked for is too old (410 Expired/Gone): list again."""
        return self.status == 410

    @property
    def forbidden(self) -> bool:
        """403: the credentials may not do this (RBAC); retrying changes nothing until the
        permission is granted."""
        return self.status == 403

    def missing_permission(self, fallback: str = "") -> str:
        """What a 403 refused, in RBAC's terms: ``get leases (coordination.k8s.io) in
        namespace "default"``, from the API server's message; ``fallback`` (what the caller
        tried) when the message says nothing that can be read."""
        found = _RBAC_REFUSAL.search(self.message)
        if found is None:
            return fallback or self.message
        group = found["group"]
        what = f"{found['verb']} {found['resource']}" + (f" ({group})" if group else "")
        namespace = found["namespace"]
        return what + (f' in namespace "{namespace}"' if namespace else " cluster-wide")

    @property
    def transient(self) -> bool:
        """Worth retrying unchanged: throttling, timeouts, server-side trouble."""
        return self.status in (408, 429) or self.status >= 500
