"""Small helpers for talking to a Kubernetes API server with kubernetes_asyncio.

Build a client from a kubeconfig (path + context) or the in-cluster service
account, call API methods and get plain JSON back, read watch streams as
event dicts, and elect a leader on a Lease. Errors come as one family:
:class:`KubeError`.
"""

from vipwire.kube._api import MERGE_PATCH, ApiCall, list_all, request_json, watch_events
from vipwire.kube._client import (
    context_namespace,
    in_cluster_namespace,
    kubeconfig_namespace,
    new_api_client,
    own_namespace,
    pod_namespace,
)
from vipwire.kube._errors import KubeApiError, KubeConfigError, KubeError, KubeUnavailable
from vipwire.kube._leader import LeaderElector, LeaseRecord, lease_spec, may_acquire, micro_time
from vipwire.kube._metrics import instrument, request_histogram, request_labels

__all__ = [
    "MERGE_PATCH",
    "ApiCall",
    "KubeApiError",
    "KubeConfigError",
    "KubeError",
    "KubeUnavailable",
    "LeaderElector",
    "LeaseRecord",
    "context_namespace",
    "in_cluster_namespace",
    "instrument",
    "kubeconfig_namespace",
    "lease_spec",
    "list_all",
    "may_acquire",
    "micro_time",
    "new_api_client",
    "own_namespace",
    "pod_namespace",
    "request_histogram",
    "request_json",
    "request_labels",
    "watch_events",
]
