"""Every message on the bus, as frozen msgspec Structs.

Each subject family carries one tagged union; the tag (``kind``) says which
variant a payload is, and ``v`` is the schema version of the family. Messages
are level-triggered snapshots: a consumer that sees only the last message per
subject knows everything it needs.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

SCHEMA_VERSION = 1


class _Message(msgspec.Struct, frozen=True, tag_field="kind", kw_only=True):
    v: int = SCHEMA_VERSION


# --- shared value types -------------------------------------------------------


class ServicePort(msgspec.Struct, frozen=True, kw_only=True):
    """One port of a Service, as the appliance and the nodes must serve it."""

    port: int
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    name: str = ""
    target_port: int | str | None = None
    node_port: int | None = None


class EndpointPort(msgspec.Struct, frozen=True, kw_only=True):
    port: int
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    name: str = ""


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    """One endpoint (a pod) of a Service on one node."""

    addresses: tuple[str, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    ports: tuple[EndpointPort, ...] = ()


class NodeEndpoints(msgspec.Struct, frozen=True, kw_only=True):
    node: str
    endpoints: tuple[Endpoint, ...]

    @property
    def has_ready(self) -> bool:
        return any(ep.ready for ep in self.endpoints)

    @property
    def has_serving(self) -> bool:
        """A ready endpoint, or one terminating that still serves (EndpointSlice
        ``serving``): its node keeps taking the Service's traffic until it stops."""
        return any(ep.ready or (ep.terminating and ep.serving) for ep in self.endpoints)


# --- vipwire.<cluster>.service.<ns>.<name> ------------------------------------


class ServiceSnapshot(_Message, frozen=True, tag="service"):
    """A LoadBalancer Service of our class, as it is now.

    ``deleting`` is set while the Service is going away (deletionTimestamp, or
    its type or class changed away from us): its VIP must be withdrawn and
    released, after which the watcher removes the finalizer.

    ``status_vips``: the addresses ``status.loadBalancer.ingress`` holds now. The
    cluster is the source of truth when the bus store is lost: ipam gives a
    Service that holds no claim these addresses first (when they are free and
    in a pool it may use) and passes over them for every other Service.
    """

    cluster: str
    namespace: str
    name: str
    uid: str
    resource_version: str
    ports: tuple[ServicePort, ...] = ()
    ip_families: tuple[Literal["IPv4", "IPv6"], ...] = ("IPv4",)
    ip_family_policy: Literal["SingleStack", "PreferDualStack", "RequireDualStack"] = "SingleStack"
    external_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    health_check_node_port: int | None = None
    pool: str | None = None
    requested_ips: tuple[str, ...] = ()
    sharing_key: str | None = None
    labels: dict[str, str] = {}
    deleting: bool = False
    status_vips: tuple[str, ...] = ()
    #: ``spec.loadBalancerSourceRanges`` (or the beta annotation), normalised CIDRs in a
    #: stable order; empty: every source may connect.
    source_ranges: tuple[str, ...] = ()
    #: ``sessionAffinity: ClientIP``: how long a client sticks to one node; None: no affinity.
    affinity_timeout_s: int | None = None
    #: The appliance profile the Service picks (annotation ``vipwire.io/profile``);
    #: None: its pool's default. ipam refuses a name that is not configured.
    profile: str | None = None
    #: ``vipwire.io/share-with-namespaces``: the other namespaces of the cluster whose
    #: Services may share this one's VIP (``("*",)``: any); sharing across namespaces
    #: needs both Services to name each other's namespace.
    share_namespaces: tuple[str, ...] = ()


class ServiceRejected(_Message, frozen=True, tag="service-rejected"):
    """A Service of ours the watcher refuses as it is (InvalidService): the reason, for
    the dashboard, the live table and replay.

    Not an end: the Service still exists. ``in_force`` is the last snapshot the
    watcher published for this incarnation (it keeps its VIPs and configuration
    as that snapshot asked), so a reader of the last message per subject still
    knows what is served; None: it was never valid, nothing was ever asked.
    ``trace_id``: the trace of the change that was rejected (its Event's).
    """

    cluster: str
    namespace: str
    name: str
    uid: str
    resource_version: str
    reason: str
    message: str
    trace_id: str | None = None
    in_force: ServiceSnapshot | None = None


class ServiceGone(_Message, frozen=True, tag="service-gone"):
    """The Service no longer exists in the API (or is no longer ours at all)."""

    cluster: str
    namespace: str
    name: str
    uid: str


ServiceMessage = ServiceSnapshot | ServiceGone | ServiceRejected


# --- vipwire.<cluster>.endpoints.<ns>.<name> ----------------------------------


class EndpointsSnapshot(_Message, frozen=True, tag="endpoints"):
    """Per node, the endpoints of one Service (all its EndpointSlices merged)."""

    cluster: str
    namespace: str
    name: str
    nodes: tuple[NodeEndpoints, ...] = ()

    @property
    def ready_nodes(self) -> frozenset[str]:
        return frozenset(n.node for n in self.nodes if n.has_ready)

    @property
    def serving_nodes(self) -> frozenset[str]:
        """Nodes with a ready endpoint or a terminating one still serving."""
        return frozenset(n.node for n in self.nodes if n.has_serving)


EndpointsMessage = EndpointsSnapshot


# --- vipwire.<cluster>.node.<node> --------------------------------------------


class NodeSnapshot(_Message, frozen=True, tag="node"):
    """A Node: its InternalIP addresses and whether it may carry traffic."""

    cluster: str
    node: str
    addresses: tuple[str, ...]
    eligible: bool = True
    ready: bool = True
    #: ``spec.unschedulable`` (``kubectl cordon``): drained from load balancers where
    #: the lbdriver's ``drain_on_cordon`` is on.
    cordoned: bool = False


class NodeGone(_Message, frozen=True, tag="node-gone"):
    cluster: str
    node: str


NodeMessage = NodeSnapshot | NodeGone


# --- vipwire.<cluster>.vip.<ns>.<name> ----------------------------------------


class VipAssigned(_Message, frozen=True, tag="vip-assigned"):
    """The Service owns these VIPs; the appliance should serve them on these ports.

    ipam republishes it whenever the Service snapshot changes, so it carries
    everything the lbdriver needs from the Service itself. ``notes``: on the
    assignment that gave the VIPs, why an address in the Service's status was
    not kept (a Warning Event each).
    """

    cluster: str
    namespace: str
    name: str
    uid: str
    vips: tuple[str, ...]
    pool: str
    appliance_group: str
    ports: tuple[ServicePort, ...]
    external_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    health_check_node_port: int | None = None
    notes: tuple[str, ...] = ()
    #: On the assignment that follows an operator's release (``vipwire ipam release``)
    #: only: the identity that asked (the caller token of its control request) and
    #: the VIPs it released. The watcher tells it once, in a Normal Event
    #: (``IPReleasedByOperator``). None on every other VipAssigned, republishes included.
    released_by: str | None = None
    released_vips: tuple[str, ...] = ()
    #: The Service's source ranges (normalised CIDRs); empty: open to every source.
    source_ranges: tuple[str, ...] = ()
    #: Source-address persistence for this long; None: no affinity.
    affinity_timeout_s: int | None = None
    #: The appliance profile to program, resolved by ipam (the Service's own, else
    #: its pool's default); None: the built-in profile.
    profile: str | None = None
    #: On the assignment that gave the VIPs only: the Service names a sharing key whose
    #: VIPs it could not share (and why), so it got a VIP of its own (a Warning Event,
    #: ``SharingRefused``).
    sharing_refused: str | None = None
    #: During a move to other VIPs (make-before-break): the old VIPs, which ``vips``
    #: still lists until the new ones are in status, on the appliance and on the nodes
    #: (the watcher writes the new ones into status only once every member node has
    #: them), and which then leave ``vips`` and the appliance. Empty: no move.
    moving_from: tuple[str, ...] = ()


class VipReleasing(_Message, frozen=True, tag="vip-releasing"):
    """The Service is going away: withdraw its VIPs; the claim is held until then."""

    cluster: str
    namespace: str
    name: str
    uid: str
    vips: tuple[str, ...]
    appliance_group: str


class VipReleased(_Message, frozen=True, tag="vip-released"):
    """The Service's claims are gone; nothing of it remains anywhere."""

    cluster: str
    namespace: str
    name: str
    uid: str
    vips: tuple[str, ...] = ()


class VipFailed(_Message, frozen=True, tag="vip-failed"):
    """No VIP could be assigned; ``reason`` is a CamelCase Event reason.

    ``retryable``: the Service waits (a release or a reload may help, and ipam
    tries again by itself); False: only a change of the Service can help (an
    unknown pool, a family no pool has). A Service refused for good that never
    held a VIP carries no finalizer (the watcher takes it off).
    """

    cluster: str
    namespace: str
    name: str
    uid: str
    reason: str
    message: str
    retryable: bool = True


VipMessage = VipAssigned | VipReleasing | VipReleased | VipFailed


# --- vipwire.<cluster>.lb.<ns>.<name> -----------------------------------------


class Member(msgspec.Struct, frozen=True, kw_only=True, order=True):
    node: str
    address: str


class PortError(msgspec.Struct, frozen=True, kw_only=True):
    """A Service port the appliance refused on one VIP (its other ports are served):
    ``status.loadBalancer.ingress[].ports[].error`` says ``vipwire.io/<reason>``."""

    vip: str
    port: int
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    #: CamelCase, as in LbFailed (``ApplianceRejected``).
    reason: str = "ApplianceRejected"
    #: The appliance's answer, for the condition and the Event.
    error: str = ""


class LbProgrammed(_Message, frozen=True, tag="lb-programmed"):
    """The appliance serves these VIPs on these ports, to these member nodes."""

    cluster: str
    namespace: str
    name: str
    uid: str
    appliance: str
    vips: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    members: tuple[Member, ...]
    external_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    #: For standalone node agents: the sources allowed (empty: all) and the affinity.
    source_ranges: tuple[str, ...] = ()
    affinity_timeout_s: int | None = None
    #: Ports the appliance refused (the others are served), each with the appliance's text.
    port_errors: tuple[PortError, ...] = ()
    #: Members being drained: disabled on the appliance (no new connections, established
    #: ones continue) until ``drain_timeout_s`` has passed; not in ``members``.
    draining: tuple[Member, ...] = ()


#: ``LbFailed.reason`` when the lbdriver's verification found the appliance holding
#: something else than the Service's last report said (a virtual server deleted or
#: edited behind vipwire's back): reported before the repair, and kept while the
#: repair fails (the message then says why).
APPLIANCE_DRIFT: Final = "ApplianceDrift"


class LbFailed(_Message, frozen=True, tag="lb-failed"):
    """The appliance refused or could not be reached; ``removing`` on withdrawal.

    ``reason`` is the appliance's (``Unavailable``, ``Rejected``...) or
    :data:`APPLIANCE_DRIFT`.
    """

    cluster: str
    namespace: str
    name: str
    uid: str
    appliance: str
    reason: str
    message: str
    removing: bool = False


class LbRemoved(_Message, frozen=True, tag="lb-removed"):
    """Nothing of the Service is left on the appliance."""

    cluster: str
    namespace: str
    name: str
    uid: str
    appliance: str
    vips: tuple[str, ...] = ()


LbMessage = LbProgrammed | LbFailed | LbRemoved


# --- vipwire.<cluster>.applied.<node> -----------------------------------------


class NodeApplied(_Message, frozen=True, tag="node-applied"):
    """The VIP set a node serves now; ``generation`` grows with every apply.

    ``refused``: VIPs of programmed Services the node will not serve, as
    ``<ns>/<name> <vip>``: outside the pools ipam serves the cluster (its
    ``PoolsServed``) or the agent's ``vip_ranges``.
    """

    cluster: str
    node: str
    generation: int
    vips: tuple[str, ...]
    mode: Literal["kube-proxy", "standalone"] = "kube-proxy"
    dry_run: bool = False
    refused: tuple[str, ...] = ()


AppliedMessage = NodeApplied


# --- vipwire.<cluster>.status.<ns>.<name> -------------------------------------


class StatusWritten(_Message, frozen=True, tag="status-written"):
    """What the watcher wrote into the Service's status: the end of a change.

    Not needed by any service; it closes the timeline for operators (the
    dashboard's waterfall, replay) with the time the user could see the VIP.
    ``vips`` empty: the status was cleared.
    """

    cluster: str
    namespace: str
    name: str
    uid: str
    vips: tuple[str, ...]
    trace_id: str | None = None


StatusMessage = StatusWritten


# --- vipwire.<cluster>.pools.all ----------------------------------------------


class PoolsServed(_Message, frozen=True, tag="pools-served"):
    """The addresses ipam may give this cluster's Services: every pool that allows
    the cluster, as CIDRs (IPv4 and IPv6). Published by ipam at start and on every
    pool reload; the last message of the subject is in force. A node agent puts on
    ``lo`` only VIPs inside these (and inside its own ``vip_ranges`` when set).
    ``pools``: the names of those pools, for operators.
    """

    cluster: str
    ranges: tuple[str, ...]
    pools: tuple[str, ...] = ()


PoolsMessage = PoolsServed

Message = (
    ServiceSnapshot
    | ServiceGone
    | ServiceRejected
    | EndpointsSnapshot
    | NodeSnapshot
    | NodeGone
    | VipAssigned
    | VipReleasing
    | VipReleased
    | VipFailed
    | LbProgrammed
    | LbFailed
    | LbRemoved
    | NodeApplied
    | StatusWritten
    | PoolsServed
)
