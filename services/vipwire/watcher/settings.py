"""The ``watcher`` section of the config file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

import msgspec

from vipwire.contracts import validate_cluster


class WatcherSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the watcher reaches its cluster and what it serves there."""

    #: Old names of settings, still accepted (with a warning) for one release.
    __renamed__: ClassVar[Mapping[str, str]] = {
        "request_timeout": "request_timeout_s",
        "resync_interval": "resync_interval_s",
        "backoff_initial": "backoff_initial_s",
        "backoff_max": "backoff_max_s",
        "catch_up_timeout": "catch_up_timeout_s",
    }

    #: Name of the cluster this watcher serves: a DNS label, unique in the fleet (required).
    cluster: str
    #: Path of a kubeconfig file; None (default): the pod's in-cluster service account.
    kubeconfig: str | None = None
    #: Context of the kubeconfig to use; None (default): its current-context.
    context: str | None = None
    #: The ``spec.loadBalancerClass`` of the Services vipwire serves.
    load_balancer_class: str = "vipwire.io/dsr"
    #: Also serve ``type: LoadBalancer`` Services that name no ``loadBalancerClass`` (for
    #: clusters without a cloud provider, where nothing else would). Default false.
    serve_classless: bool = False
    #: Port protocols the appliances can serve; a Service with another gets a Warning
    #: Event and no VIP. Default: TCP, UDP and SCTP.
    protocols: tuple[Literal["TCP", "UDP", "SCTP"], ...] = ("TCP", "UDP", "SCTP")
    #: When to write the VIP into status: once programmed (``none``, default), or also
    #: once ``any`` / ``all`` of the member nodes' agents report it applied.
    status_gate: Literal["none", "any", "all"] = "none"
    #: Seconds a member node's agent may report the node without a Service's VIP
    #: before the Service's condition turns False (NodesMissingVip, with a Warning
    #: Event); it turns True again once every member reports it. Only nodes whose agent
    #: has reported at all are judged; keep it above the agents' ``report_interval_s``.
    #: 0: the node agents' reports are not read for this (a status gate still reads
    #: them). Default 30.
    node_vip_grace_s: float = 30.0
    #: Seconds one API request (not a watch) may take. Default 10.
    request_timeout_s: float = 10.0
    #: Seconds the API server keeps one watch open (``timeoutSeconds``) before we renew it.
    #: Default 300.
    watch_timeout_s: int = 300
    #: Seconds without a byte on a watch after which it is presumed dead. Default: 0,
    #: meaning ``watch_timeout_s`` + 30.
    watch_idle_timeout_s: float = 0.0
    #: Seconds between full re-lists that repair anything a watch may have missed;
    #: 0 disables them. Default 1800.
    resync_interval_s: float = 1800.0
    #: Objects per page of a list. Default 500.
    list_page_size: int = 500
    #: First delay (seconds) before reconnecting a failed list or watch; doubles on
    #: each failure in a row. Default 0.5.
    backoff_initial_s: float = 0.5
    #: Longest delay (seconds) between reconnects. Default 30.
    backoff_max_s: float = 30.0
    #: Longest delay (seconds) before a change the bus did not take (its stream between
    #: leaders, a NATS server gone) is published again. An election lasts seconds, and
    #: the retry is what brings the Service on, so it backs off to this, not to
    #: ``backoff_max_s``. Default 2.
    bus_backoff_max_s: float = 2.0
    #: Attempts of a write whose resourceVersion precondition keeps failing (409).
    #: Default 5.
    conflict_retries: int = 5
    #: Seconds to wait at start for the bus replay before watching anyway. Default 30.
    catch_up_timeout_s: float = 30.0
    #: ``reportingInstance`` of the Events we write; default: the host name.
    instance: str | None = None
    #: Objects of one kind reconciled at the same time (each object by one worker at a
    #: time). Default 8.
    workers: int = 8
    #: Run as one of several replicas: only the holder of a ``coordination.k8s.io/v1``
    #: Lease writes anything; the others stand by. Default true.
    leader_election: bool = True
    #: Name of the Lease; default: ``vipwire-watcher-<cluster>``.
    lease_name: str | None = None
    #: Namespace of the Lease; default: the kubeconfig context's namespace (with a
    #: kubeconfig), else the pod's own (its service account's), else ``default`` (logged).
    lease_namespace: str | None = None
    #: Seconds a standby waits after the leader's last renewal before taking over.
    #: Default 15.
    lease_duration_s: int = 15
    #: Seconds the leader keeps trying to renew before it steps down (and stops writing).
    #: Default 10.
    renew_deadline_s: float = 10.0
    #: Seconds between renewals, and between a standby's attempts. Default 2.
    retry_period_s: float = 2.0
    #: Give the Lease up on a clean stop, so that a standby takes over at once.
    #: Default true.
    lease_release_on_stop: bool = True

    def __post_init__(self) -> None:
        validate_cluster(self.cluster)
        if self.watch_timeout_s < 1:
            raise ValueError("watch_timeout_s must be at least 1")
        if self.backoff_initial_s <= 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_initial_s must be > 0 and <= backoff_max_s")
        if self.bus_backoff_max_s < self.backoff_initial_s:
            raise ValueError("bus_backoff_max_s must be >= backoff_initial_s")
        if self.conflict_retries < 1:
            raise ValueError("conflict_retries must be at least 1")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.node_vip_grace_s < 0:
            raise ValueError("node_vip_grace_s must not be negative (0: off)")
        if not self.protocols:
            raise ValueError("protocols must name at least one protocol")
        if not self.lease_duration_s > self.renew_deadline_s > self.retry_period_s * 1.2 > 0:
            raise ValueError(
                "leader election needs lease_duration_s > renew_deadline_s > "
                "1.2 x retry_period_s > 0"
            )

    @property
    def lease(self) -> str:
        """The Lease's name."""
        return self.lease_name or f"vipwire-watcher-{self.cluster}"

    @property
    def idle_timeout_s(self) -> float:
        """Seconds of silence after which a watch is presumed dead."""
        return self.watch_idle_timeout_s or self.watch_timeout_s + 30.0
