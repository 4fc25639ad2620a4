"""An in-process Kubernetes API server emulator for tests and the all-in-one demo.

It serves what vipwire uses (core v1 services, nodes, namespaces, events;
discovery.k8s.io/v1 endpointslices; events.k8s.io/v1 events;
coordination.k8s.io/v1 leases) with the documented API semantics that
controllers depend on: one resourceVersion counter per cluster, list+watch
from a resourceVersion, bookmarks, 410 Expired for compacted history,
optimistic concurrency (409 Conflict), status subresources, finalizers and
graceful deletion, and Status error bodies. ``kubernetes_asyncio`` talks to
it unchanged through the kubeconfig from :meth:`KubeEmulator.write_kubeconfig`.

So does ``kubectl``: ``get`` receives Tables with kube-apiserver's columns
(:mod:`._tables`), ``describe`` and ``events`` find Events by ``involvedObject.*``
in the core/v1 view of the events.k8s.io/v1 Events vipwire writes (:mod:`._views`,
field selectors per kind in :mod:`._selectors`), and ``apply`` validates against
hand-written OpenAPI v3 documents with strict field validation (:mod:`._openapi`).

Deliberately left out: authentication beyond one static bearer token, RBAC
(beyond injected denials), admission, server-side apply, dry run, protobuf/YAML
output, OpenAPI v2, strategic merge patch for lists other than a few well-known
ones (replaced instead), and any
controller behaviour except namespace cleanup (no endpoints controller, no
garbage collector for ownerReferences).
"""

from vipwire.kubeemu._emulator import KubeEmulator, write_kubeconfig
from vipwire.kubeemu._errors import ApiError
from vipwire.kubeemu._http import AuditEntry, Denial
from vipwire.kubeemu._store import Change
from vipwire.kubeemu._watch import WatchBrokenError, WatchSession

__all__ = [
    "ApiError",
    "AuditEntry",
    "Change",
    "Denial",
    "KubeEmulator",
    "WatchBrokenError",
    "WatchSession",
    "write_kubeconfig",
]
