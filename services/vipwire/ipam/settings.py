"""The ``ipam`` section of the config file: address pools and consumer tuning.

Example::

    ipam:
      pools:
        - name: public
          addresses: ["192.0.2.0/24", "2001:db8:0:1::/120"]
          appliance_group: edge
          avoid_buggy_ips: true
        - name: internal
          addresses: ["198.51.100.10-198.51.100.20"]
          clusters: [east]
          namespaces: [payments]
          service_selector: {tier: internal}
          priority: -1
          auto_assign: false
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Annotated, Any

import msgspec

from vipwire.contracts import SubjectError, validate_cluster
from vipwire.ipam.core.addresses import Block, parse_block
from vipwire.runtime import ConfigError

# Pool names travel in KV values, metric labels and VipAssigned; keep them plain.
_POOL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Kubernetes label keys (optional DNS-subdomain prefix) and values.
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class IpamConfigError(ConfigError, ValueError):
    """An ``ipam`` section that cannot be used.

    A :class:`~vipwire.runtime.ConfigError`; also a ValueError so that msgspec,
    when decoding a config file, reports it with the path of the offending field.
    """


class PoolSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One pool of VIPs, served by one appliance group."""

    #: Unique name (a DNS label); Services pick it with the pool annotation.
    name: str
    #: CIDRs (``192.0.2.0/24``), ranges (``198.51.100.10-198.51.100.20``) and single
    #: addresses, IPv4 and IPv6 mixed; at least one. Every address of a CIDR is used,
    #: network and broadcast included (VIPs live on a loopback, not on a subnet).
    addresses: tuple[str, ...]
    #: Appliance group that serves this pool's VIPs (see lbdriver ``appliances[].group``).
    appliance_group: str = "default"
    #: Clusters whose Services may take addresses from this pool; empty: every cluster.
    clusters: tuple[str, ...] = ()
    #: Namespaces whose Services may take addresses from this pool; empty: every namespace.
    namespaces: tuple[str, ...] = ()
    #: Labels (matchLabels) a Service must carry to take addresses from this pool;
    #: empty: every Service.
    service_selector: dict[str, str] = {}
    #: Preference among the pools a Service may use: lower first, equal ones in
    #: configuration order. A Service that already shares a VIP, or holds one, stays put.
    priority: int = 0
    #: Give addresses to Services that name no pool. False: only to Services that ask
    #: for this pool (annotation) or for one of its addresses.
    auto_assign: bool = True
    #: Never hand out IPv4 addresses ending in .0 or .255 (some clients and routers
    #: mistake them for network or broadcast addresses), nor IPv6 subnet-router anycast
    #: addresses (RFC 4291 2.6.1: the all-zeros host of each /64 and of the pool's own
    #: prefix, such as 2001:db8::, which routers answer themselves).
    avoid_buggy_ips: bool = False
    #: Addresses, ranges or CIDRs inside the pool that are never handed out
    #: (gateways, addresses in use elsewhere).
    avoid: tuple[str, ...] = ()
    #: The appliance profile (top-level ``profiles`` section) of this pool's Services
    #: that name none with ``vipwire.io/profile``; None: the built-in profile.
    profile: str | None = None

    def __post_init__(self) -> None:
        if not _POOL_NAME.match(self.name):
            raise IpamConfigError(f"pool name {self.name!r} must be a DNS label (RFC 1123)")
        if self.profile is not None and not _POOL_NAME.match(self.profile):
            raise IpamConfigError(
                f"pool {self.name!r}: profile {self.profile!r} must be a DNS label (RFC 1123)"
            )
        if not self.addresses:
            raise IpamConfigError(f"pool {self.name!r}: addresses must not be empty")
        if not self.appliance_group:
            raise IpamConfigError(f"pool {self.name!r}: appliance_group must not be empty")
        for cluster in self.clusters:
            try:
                validate_cluster(cluster)
            except SubjectError as exc:
                raise IpamConfigError(f"pool {self.name!r}: {exc}") from None
        for namespace in self.namespaces:
            if not _POOL_NAME.match(namespace):
                raise IpamConfigError(
                    f"pool {self.name!r}: namespace {namespace!r} is not a DNS label (RFC 1123)"
                )
        for key, value in self.service_selector.items():
            if not _label_key_ok(key):
                raise IpamConfigError(f"pool {self.name!r}: {key!r} is not a valid label key")
            if value and not _LABEL_NAME.match(value):
                raise IpamConfigError(
                    f"pool {self.name!r}: {value!r} is not a valid label value (for {key!r})"
                )
        blocks = self.blocks()
        _check_disjoint(
            [(b, self.name, text) for b, text in zip(blocks, self.addresses, strict=True)]
        )
        for text in self.avoid:
            hole = _parse(self.name, "avoid", text)
            if not any(_inside(hole, block) for block in blocks):
                raise IpamConfigError(
                    f"pool {self.name!r}: avoid entry {text!r} is not inside the pool's addresses"
                )

    def blocks(self) -> tuple[Block, ...]:
        """The pool's addresses as intervals, in configured order."""
        return tuple(_parse(self.name, "addresses", text) for text in self.addresses)

    def avoided(self) -> tuple[Block, ...]:
        return tuple(_parse(self.name, "avoid", text) for text in self.avoid)

    def allows(self, cluster: str) -> bool:
        return not self.clusters or cluster in self.clusters

    def refusal(self, cluster: str, namespace: str, labels: Mapping[str, str]) -> str | None:
        """Why this pool may not serve a Service (the rule, for its Event); None: it may."""
        if not self.allows(cluster):
            return f"pool {self.name!r} is only for clusters {', '.join(self.clusters)}"
        if self.namespaces and namespace not in self.namespaces:
            return f"pool {self.name!r} is only for namespaces {', '.join(self.namespaces)}"
        missing = {k: v for k, v in self.service_selector.items() if labels.get(k) != v}
        if missing:
            wanted = ", ".join(f"{k}={v}" for k, v in sorted(self.service_selector.items()))
            return f"pool {self.name!r} only serves Services labelled {wanted}"
        return None


class IpamSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How ipam hands out VIPs. No pools is valid but every Service then fails."""

    #: Address pools. A Service that names no pool gets an address from the
    #: auto_assign pool of lowest priority (then first configured) that allows it
    #: (cluster, namespace, labels) and has room.
    pools: tuple[PoolSettings, ...] = ()
    #: Names of the clusters this ipam serves. Empty: every cluster that publishes on
    #: the bus. Set (``vipwire up`` sets it to its clusters), a message from any other
    #: cluster is refused before any decision: never allocated, nothing published into
    #: that cluster's subjects, counted in ``vipwire_ipam_refused_total`` (reason
    #: ``unknown-cluster``) and logged once per cluster. Add a cluster here before its
    #: watcher starts; remove one only after its Services are gone (its releases are
    #: refused too). Also the clusters whose pools ipam publishes (``PoolsServed``).
    clusters: tuple[str, ...] = ()
    #: Messages handled concurrently (one Service's messages are always sequential).
    concurrency: Annotated[int, msgspec.Meta(ge=1)] = 16
    #: Messages each replica pulls ahead of handling. Small, so that replicas share a
    #: burst instead of the first one taking all of it.
    prefetch: Annotated[int, msgspec.Meta(ge=1)] = 32
    #: Compare-and-set conflicts (another replica got there first) one message may
    #: run into before it is retried later instead.
    conflict_retries: Annotated[int, msgspec.Meta(ge=1)] = 32
    #: Seconds before a message that could not be handled is redelivered.
    retry_delay_s: Annotated[float, msgspec.Meta(gt=0)] = 0.5
    #: Seconds between looks at the config file's modification time; a change
    #: reloads the pools (live VIPs never move: those outside their edited pool are
    #: kept and flagged stale). 0: reload only on ``vipwire ipam reload``.
    reload_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    #: Seconds between sweeps of the bucket's old delete markers: every released
    #: Service and address leaves one, and every start reads them all. 0: never.
    marker_sweep_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 3600.0
    #: Age in seconds past which a sweep drops a delete marker. Long: a replica cut
    #: off from the bus for longer would miss the deletes and keep believing the
    #: addresses taken (never given twice, but not given again until it restarts).
    marker_max_age_s: Annotated[float, msgspec.Meta(ge=0)] = 24 * 3600.0
    #: Seconds between sweeps of the stream's ended subjects: every subject of a
    #: Service whose last ``service`` message is ServiceGone (of a Node: NodeGone),
    #: which the stream would keep for good, since it has no age limit (an age limit
    #: would drop live Services' state too). 0: never (then only ``bus.stream_max_bytes``
    #: bounds them: alert on ``vipwire_bus_store_used_ratio``).
    ended_sweep_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 3600.0
    #: Age in seconds past which a sweep purges an ended Service's or Node's subjects,
    #: once every durable consumer has acknowledged its end. Replay (``vipwire
    #: replay``) sees a deleted Service's history for this long.
    ended_max_age_s: Annotated[float, msgspec.Meta(ge=0)] = 7 * 24 * 3600.0
    #: Seconds a Service that needs new addresses waits, at most, for this replica's
    #: index of status VIPs (the addresses every Service's status already holds,
    #: reserved for it) to read the stream up to the Service's own snapshot; then its
    #: addresses are chosen with what the index knows (logged). Only on a replica that
    #: started on an empty store (a first start or a lost store): new addresses pass
    #: over reserved ones, so no Service takes an address another one still holds in
    #: its status.
    status_wait_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    #: Seconds after a start on an empty store (no claim at all: the store was lost)
    #: during which a Service with nothing in its status waits for new VIPs while other
    #: Services hold VIPs in theirs: time for every cluster's watcher to publish its
    #: Services, so that no new Service takes an address a Service of a watcher that
    #: started later still holds. 0: no wait.
    restore_grace_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    #: A served Service whose ``vipwire.io/ips``, ``spec.loadBalancerIP`` or
    #: ``vipwire.io/pool`` changes moves to what it asks for, make-before-break: the
    #: new VIPs are claimed and programmed next to the old ones, and the old ones are
    #: withdrawn only once the new ones are in status, on the appliance and on every
    #: member node. false: it keeps its VIPs, and a MoveRefused Warning Event and
    #: condition say so (``vipwire ipam release`` then moves it, with an interruption).
    move_on_change: bool = True

    def __post_init__(self) -> None:
        for cluster in self.clusters:
            try:
                validate_cluster(cluster)
            except SubjectError as exc:
                raise IpamConfigError(f"clusters: {exc}") from None
        names = [p.name for p in self.pools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise IpamConfigError(f"pool names must be unique; repeated: {', '.join(duplicates)}")
        _check_disjoint(
            [
                (block, pool.name, text)
                for pool in self.pools
                for block, text in zip(pool.blocks(), pool.addresses, strict=True)
            ]
        )

    def serves(self, cluster: str) -> bool:
        """Whether ipam serves this cluster (``clusters`` empty: every cluster)."""
        return not self.clusters or cluster in self.clusters

    def pool(self, name: str) -> PoolSettings | None:
        for pool in self.pools:
            if pool.name == name:
                return pool
        return None


def profile_names(data: Mapping[str, Any], *, source: str = "config") -> tuple[str, ...]:
    """The names of the appliance profiles in a config file's top-level ``profiles``
    section (the lbdriver reads their definitions from the same section)."""
    raw = data.get("profiles") or {}
    if not isinstance(raw, dict):
        raise IpamConfigError(f"{source}: 'profiles' must map profile names to profiles")
    bad = sorted(str(n) for n in raw if not isinstance(n, str) or not _POOL_NAME.match(n))
    if bad:
        raise IpamConfigError(
            f"{source}: profiles: names {bad} must be DNS labels (lower-case letters, "
            "digits and '-')"
        )
    return tuple(sorted(raw))


def check_pool_profiles(pools: Iterable[PoolSettings], profiles: Collection[str]) -> None:
    """Every pool's default profile must be configured (raises IpamConfigError)."""
    for pool in pools:
        if pool.profile is not None and pool.profile not in profiles:
            listed = ", ".join(sorted(profiles)) or "none configured"
            raise IpamConfigError(
                f"pool {pool.name!r}: profile {pool.profile!r} is not in the top-level "
                f"profiles section (profiles: {listed})"
            )


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and not _LABEL_PREFIX.match(prefix):
        return False
    return bool(_LABEL_NAME.match(name))


def _parse(pool: str, field: str, text: str) -> Block:
    try:
        return parse_block(text)
    except ValueError as exc:
        raise IpamConfigError(f"pool {pool!r}: {field}: {exc}") from None


def _inside(inner: Block, outer: Block) -> bool:
    return inner.family == outer.family and outer.first <= inner.first <= inner.last <= outer.last


def _check_disjoint(blocks: list[tuple[Block, str, str]]) -> None:
    """An address in two pools (or twice in one) would have two appliance groups."""
    ordered = sorted(blocks, key=lambda item: (item[0].family, item[0].first))
    for (a, pool_a, text_a), (b, pool_b, text_b) in itertools.pairwise(ordered):
        if a.family == b.family and b.first <= a.last:
            where = f"pool {pool_a!r}" if pool_a == pool_b else f"pools {pool_a!r} and {pool_b!r}"
            raise IpamConfigError(f"{where} overlap: {text_a} and {text_b}")
