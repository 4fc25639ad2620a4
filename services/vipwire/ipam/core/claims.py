"""Who holds an address: Service incarnations, their entries, claims and requests.

Plain values, no state: the allocator indexes them, the ledger stores them.
A claim (one address) has one or more *sharers*: Services of one cluster with
one sharing key, whose ports (port and protocol) are disjoint and whose
externalTrafficPolicy agrees; of one namespace, or of several when each names
the others' namespaces (``vipwire.io/share-with-namespaces``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, NamedTuple

import msgspec

from vipwire.contracts import ClaimView, ServicePort, ServiceSnapshot, SharerView, port_text
from vipwire.ipam.core.addresses import Family, parse_address

FamilyPolicy = Literal["SingleStack", "PreferDualStack", "RequireDualStack"]
TrafficPolicy = Literal["Cluster", "Local"]


class Owner(NamedTuple):
    """One incarnation of a Service: a re-created Service has a new uid."""

    cluster: str
    namespace: str
    name: str
    uid: str

    @property
    def service(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.name}"


class Sharer(SharerView, frozen=True, kw_only=True, omit_defaults=True):
    """One Service holding an address (alone, or sharing it).

    Its fields are the contract's (:class:`~vipwire.contracts.SharerView`): what
    ipam stores is what ``vipwire ipam show`` carries.
    """


class Claim(ClaimView, frozen=True, kw_only=True, omit_defaults=True):
    """Who holds one address: the JSON value of its ``addr.<ip>`` KV key.

    Its fields are the contract's (:class:`~vipwire.contracts.ClaimView`); ipam
    adds the questions it asks of a claim.
    """

    sharers: tuple[Sharer, ...]

    def namespace_of(self, sharer: Sharer) -> str:
        return sharer.namespace or self.namespace

    @property
    def owners(self) -> tuple[Owner, ...]:
        return tuple(Owner(self.cluster, self.namespace_of(s), s.name, s.uid) for s in self.sharers)

    @property
    def services(self) -> str:
        """``east/shop/web`` or ``east/shop/web, east/shop/dns`` (for messages)."""
        return ", ".join(o.service for o in self.owners)

    def sharer(self, owner: Owner) -> Sharer | None:
        if owner.cluster != self.cluster:
            return None
        for sharer in self.sharers:
            if (self.namespace_of(sharer), sharer.name, sharer.uid) == owner[1:]:
                return sharer
        return None

    def holds(self, owner: Owner) -> bool:
        return self.sharer(owner) is not None

    def others(self, owner: Owner) -> tuple[Sharer, ...]:
        """The sharers other than ``owner`` (any incarnation of its name counts as it)."""
        return tuple(s for s in self.sharers if (self.namespace_of(s), s.name) != owner[1:3])

    def entry(self, request: Request) -> Sharer:
        """The request's entry in this claim (its namespace named when not the claim's)."""
        sharer = request.sharer()
        if request.namespace == self.namespace:
            return sharer
        return msgspec.structs.replace(sharer, namespace=request.namespace)

    def with_sharer(self, sharer: Sharer) -> Claim:
        """The claim with ``sharer`` added (or its entry replaced)."""
        key = (self.namespace_of(sharer), sharer.name, sharer.uid)
        rest = [s for s in self.sharers if (self.namespace_of(s), s.name, s.uid) != key]
        rest.append(sharer)
        return msgspec.structs.replace(self, sharers=tuple(sorted(rest, key=_sharer_order)))

    def without(self, owner: Owner) -> Claim | None:
        """The claim once ``owner`` leaves; None when nobody is left (delete it)."""
        rest = tuple(s for s in self.sharers if (self.namespace_of(s), s.name, s.uid) != owner[1:])
        if not rest:
            return None
        return msgspec.structs.replace(self, sharers=rest)


def _sharer_order(sharer: Sharer) -> tuple[str, str, str]:
    return (sharer.namespace, sharer.name, sharer.uid)


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """What a Service asks for (the allocation-relevant part of its snapshot)."""

    cluster: str
    namespace: str
    name: str
    uid: str
    #: Pool named by the Service's annotation; None: any auto-assign pool.
    pool: str | None = None
    #: Exact addresses asked for; when set they are the VIPs (one per family).
    requested_ips: tuple[str, ...] = ()
    ip_families: tuple[Family, ...] = ("IPv4",)
    ip_family_policy: FamilyPolicy = "SingleStack"
    #: Services of one cluster and namespace with one key may share a VIP.
    sharing_key: str | None = None
    #: The other namespaces (``*``: any) whose Services with its key it may share with.
    share_namespaces: tuple[str, ...] = ()
    #: ``port/protocol`` of each Service port (``80/TCP``).
    ports: tuple[str, ...] = ()
    external_traffic_policy: TrafficPolicy = "Cluster"
    labels: dict[str, str] = {}
    #: The addresses the Service's status holds: given back first to a Service that
    #: holds nothing (see :mod:`~vipwire.ipam.core.status_vips`).
    status_vips: tuple[str, ...] = ()

    @property
    def owner(self) -> Owner:
        return Owner(self.cluster, self.namespace, self.name, self.uid)

    @property
    def service(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.name}"

    def sharer(self) -> Sharer:
        """This Service's entry in a claim."""
        if self.sharing_key is None:
            return Sharer(name=self.name, uid=self.uid, labels=dict(self.labels))
        return Sharer(
            name=self.name,
            uid=self.uid,
            ports=tuple(sorted(set(self.ports))),
            external_traffic_policy=self.external_traffic_policy,
            labels=dict(self.labels),
            share_namespaces=self.share_namespaces,
        )

    def claim(self, pool: str, appliance_group: str = "") -> Claim:
        """A new claim held by this Service alone."""
        return Claim(
            cluster=self.cluster,
            namespace=self.namespace,
            pool=pool,
            appliance_group=appliance_group,
            sharing_key=self.sharing_key,
            sharers=(self.sharer(),),
        )

    def families(self) -> tuple[Family, ...]:
        """The families wanted, primary first, as the policy asks."""
        primary: Family = self.ip_families[0] if self.ip_families else "IPv4"
        if self.ip_family_policy == "SingleStack":
            return (primary,)
        other: Family = "IPv6" if primary == "IPv4" else "IPv4"
        return (primary, other)


class ClaimUpdate(NamedTuple):
    """A claim of a Service's that must change because the Service did."""

    address: str
    before: Claim
    after: Claim


def address_order(address: str) -> tuple[str, int]:
    return parse_address(address)


def port_keys(ports: Iterable[ServicePort]) -> tuple[str, ...]:
    """``80/TCP``, …: what two Services sharing a VIP must not both use."""
    return tuple(sorted({port_text(p.port, p.protocol) for p in ports}))


def request_of(snapshot: ServiceSnapshot) -> Request:
    """The allocation-relevant part of a snapshot."""
    return Request(
        cluster=snapshot.cluster,
        namespace=snapshot.namespace,
        name=snapshot.name,
        uid=snapshot.uid,
        pool=snapshot.pool or None,
        requested_ips=snapshot.requested_ips,
        ip_families=snapshot.ip_families,
        ip_family_policy=snapshot.ip_family_policy,
        sharing_key=snapshot.sharing_key or None,
        share_namespaces=snapshot.share_namespaces,
        ports=port_keys(snapshot.ports),
        external_traffic_policy=snapshot.external_traffic_policy,
        labels=dict(snapshot.labels),
        status_vips=snapshot.status_vips,
    )
