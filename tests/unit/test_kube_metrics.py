"""The Kubernetes API latency histogram's labels, in RBAC's terms."""

from __future__ import annotations

import pytest

from vipwire.kube import request_labels

HOST = "https://10.0.0.1:6443"


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/apis/coordination.k8s.io/v1/namespaces/vs/leases/l", None, ("get", "leases")),
        ("PUT", "/apis/coordination.k8s.io/v1/namespaces/vs/leases/l", None, ("update", "leases")),
        ("POST", "/apis/coordination.k8s.io/v1/namespaces/vs/leases", None, ("create", "leases")),
        ("GET", "/api/v1/services", [("limit", 500)], ("list", "services")),
        ("GET", "/api/v1/services", [("watch", True)], ("watch", "services")),
        ("GET", "/api/v1/nodes", {"watch": "true"}, ("watch", "nodes")),
        ("PATCH", "/api/v1/namespaces/d/services/web/status", None, ("patch", "services/status")),
        ("DELETE", "/api/v1/namespaces/d/services", None, ("deletecollection", "services")),
        ("GET", "/version/", None, ("get", "-")),
    ],
)
def test_request_labels(method: str, path: str, query: object, expected: tuple[str, str]) -> None:
    """Every request the watcher sends is labelled with its RBAC verb and resource."""
    assert request_labels(method, HOST + path, query) == expected  # type: ignore[arg-type]
