"""The ``lbdriver`` section of the config file."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal

import msgspec

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0)]

#: Drivers this build knows.
DriverKind = Literal["sim", "f5", "a10", "linux"]

# Appliance names end up in metric labels, log lines and LbProgrammed; keep them plain.
_APPLIANCE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
# Appliance partition names (F5 folders, A10 partitions), literal or templated.
_PARTITION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PARTITION_TEMPLATE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)?\{cluster\}[A-Za-z0-9._-]*$")
# The prefix marks what we own on a shared appliance; it starts every object name.
_PREFIX = re.compile(r"^[a-z0-9]([a-z0-9_]{0,30}[a-z0-9])?$")


class ApplianceTimeouts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """f5, a10: seconds one management request of each class may take before the
    appliance counts as unavailable. The defaults follow the vendors' own clients:
    terraform-provider-bigip's go-bigip allows 60 s per API call, acos-client 300 s
    for ``write memory``; BIG-IP transaction commits and config-syncs of large
    configurations take as long as a save."""

    #: Logging in (BIG-IP token, ACOS signature); remote authentication (LDAP,
    #: RADIUS, TACACS+) behind the appliance makes it slower than a read.
    login_s: Positive = 30.0
    #: A read (GET): listings of a partition's objects.
    read_s: Positive = 60.0
    #: A write (POST, PUT, PATCH, DELETE), and a request queued in a transaction.
    write_s: Positive = 60.0
    #: Committing or saving: F5 transaction commit and config-sync, A10 ``write memory``.
    commit_s: Positive = 300.0

    def call_s(self) -> float:
        """The longest one driver call (a listing, or a batch with its commit) may take:
        a login, a read, a write and two commits (a commit, then a sync or save), each
        at its longest. Each request is bounded by its own class; this only backstops."""
        return self.login_s + self.read_s + self.write_s + 2 * self.commit_s


class ApplianceSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One load-balancer appliance (or HA pair presenting one management endpoint)."""

    #: Unique name; reported in LbProgrammed and used as a metrics label.
    name: str
    #: Which driver talks to it: ``sim`` (in-process model), ``f5`` (BIG-IP iControl
    #: REST), ``a10`` (ACOS aXAPI v3) or ``linux`` (this host forwards, with nftables).
    driver: DriverKind = "sim"
    #: Appliance group that pools point at (VipAssigned.appliance_group). Several
    #: appliances in one group are an active/standby set: the first healthy one is
    #: written to and stays active until its circuit breaker opens; then the next
    #: healthy one takes every Service of the group (see release_standby).
    group: str = "default"
    #: sim, linux: seconds one appliance call may take before it counts as unavailable
    #: (f5 and a10 take ``timeouts`` instead: one per class of request).
    request_timeout_s: Positive = 10.0
    #: f5, a10: seconds each class of management request may take (login, read,
    #: write, commit or save); see ApplianceTimeouts.
    timeouts: ApplianceTimeouts = msgspec.field(default_factory=ApplianceTimeouts)
    #: Appliance API calls in flight at once (appliances throttle management APIs).
    max_concurrent_requests: Annotated[int, msgspec.Meta(ge=1)] = 8
    #: Appliance API calls started per second, on average (token bucket; 0: no limit).
    max_requests_per_s: NonNegative = 50.0
    #: Calls that may start at once after a quiet spell (the token bucket's size).
    request_burst: Annotated[int, msgspec.Meta(ge=1)] = 20
    #: sim: milliseconds every API call takes.
    api_latency_ms: NonNegative = 0.0
    #: sim: probability (0..1) that an API call fails as unavailable (fault injection).
    fail_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    #: sim: seed of the fault-injection RNG (None: a random seed).
    seed: int | None = None
    #: f5, a10: management endpoint, ``https://host[:port]`` or ``host[:port]`` (https).
    address: str | None = None
    #: f5, a10: API user name.
    username: str | None = None
    #: f5, a10: file holding the password (a mounted Secret), re-read at every login.
    #: A password is never written in this file: give password_file or password_env.
    password_file: str | None = None
    #: f5, a10: environment variable holding the password.
    password_env: str | None = None
    #: f5, a10: verify the appliance's TLS certificate (turn off for labs only).
    verify_tls: bool = True
    #: f5, a10: CA bundle (PEM) that signs the appliance's certificate (None: system CAs).
    ca_file: str | None = None
    #: f5, a10: the partition holding a cluster's objects; ``{cluster}`` is replaced.
    partition_template: str = "{cluster}"
    #: f5, a10: partition names by cluster, overriding partition_template (A10
    #: partition names have at most 14 characters).
    partitions: dict[str, str] = msgspec.field(default_factory=dict)
    #: f5: device group to config-sync to after every change (None: no sync).
    sync_group: str | None = None
    #: f5: the route domain (id) of the pool members and their nodes, sent as
    #: ``<address>%<id>`` with the cluster's partition, as F5's own clients send them
    #: (None: the partition's default route domain, read from the partition). The
    #: route domain must exist on the BIG-IP (``tmsh list net route-domain``).
    route_domain: Annotated[int, msgspec.Meta(ge=0, le=65534)] | None = None
    #: a10: save the running config (``write memory``) after every batch of changes.
    write_memory: bool = True
    #: a10: where a cluster's objects live. ``existing``: its partition (from
    #: partition_template / partitions), which the operator creates and gives a
    #: network (VLAN, interface, address); vipwire checks it exists and refuses to
    #: write otherwise. ``create``: vipwire creates a missing partition (and saves the
    #: shared partition), with a warning: a new partition is an L3V partition with no
    #: network, so its VIPs reach nothing until an operator adds one. ``shared``: the
    #: shared partition, for every cluster (the object prefix keeps them apart).
    partition_mode: Literal["existing", "create", "shared"] = "existing"
    #: linux: the interface on the nodes' L2 segment, where VIP traffic comes in and
    #: goes back out to the chosen node. Required for linux.
    interface: str | None = None
    #: linux: network namespace (as named by ``ip netns``) that is the appliance; None:
    #: this host's own.
    netns: str | None = None

    def __post_init__(self) -> None:
        if not _APPLIANCE_NAME.match(self.name):
            raise ValueError(
                f"appliance name {self.name!r} must be 1-63 letters, digits, '.', '_' or '-'"
            )
        if not self.group:
            raise ValueError(f"appliance {self.name!r}: group must not be empty")
        self._check_vendor_fields()

    def _check_vendor_fields(self) -> None:
        where = f"appliance {self.name!r}"
        if self.driver in ("f5", "a10"):
            if not self.address or any(c.isspace() for c in self.address):
                raise ValueError(f"{where}: driver {self.driver} needs an address")
            if not self.username:
                raise ValueError(f"{where}: driver {self.driver} needs a username")
            if (self.password_file is None) == (self.password_env is None):
                raise ValueError(
                    f"{where}: driver {self.driver} needs exactly one of password_file or "
                    "password_env (a password is never given inline)"
                )
        if self.ca_file is not None and not self.verify_tls:
            raise ValueError(f"{where}: ca_file has no use with verify_tls: false")
        # Partition names go into URLs and appliance configs: keep to what both vendors take.
        if not _PARTITION_TEMPLATE.fullmatch(self.partition_template):
            raise ValueError(
                f"{where}: partition_template must be {{cluster}} with letters, digits, "
                "'.', '_' or '-' around it"
            )
        bad = sorted(c for c, p in self.partitions.items() if not _PARTITION.fullmatch(p))
        if bad:
            raise ValueError(
                f"{where}: partitions for {', '.join(bad)} must be letters, digits, '.', '_' "
                "or '-', starting with a letter or digit"
            )
        if self.driver == "linux" and not (
            self.interface and re.fullmatch(r"[^/:\s]{1,15}", self.interface)
        ):
            raise ValueError(f"{where}: driver linux needs an interface (a device name)")
        if self.netns is not None and (
            self.driver != "linux" or not re.fullmatch(r"[^/\s]{1,255}", self.netns)
        ):
            raise ValueError(f"{where}: netns must be a namespace name, for driver linux only")
        if self.route_domain is not None and self.driver != "f5":
            raise ValueError(f"{where}: route_domain is an f5 setting (driver is {self.driver})")
        if self.sync_group is not None and self.driver != "f5":
            raise ValueError(f"{where}: sync_group is an f5 setting (driver is {self.driver})")


class LbdriverSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the lbdriver programs appliances. No default appliance: a config that
    forgets them must fail, not quietly program a simulator."""

    #: Old names of settings, still accepted (with a warning) for one release.
    __renamed__: ClassVar[Mapping[str, str]] = {"drift_interval_s": "verify_interval_s"}

    #: The appliances, at least one; order matters within a group (first healthy wins).
    appliances: tuple[ApplianceSettings, ...]
    #: Start of every object name we create; objects without it are never touched.
    prefix: str = "vipwire"
    #: Milliseconds between two writes of one Service at least: the node and endpoint
    #: events of a burst (a rolling update) are merged into one write per window
    #: (0: no coalescing). A Service's first write does not wait for it.
    coalesce_window_ms: NonNegative = 1000.0
    #: Milliseconds without a further event after which a burst is written without
    #: waiting for the rest of the window (capped at coalesce_window_ms).
    coalesce_quiet_ms: NonNegative = 100.0
    #: Seconds a member that leaves a virtual server (its node NotReady, excluded,
    #: cordoned, or without serving endpoints under Local) stays on the appliance
    #: disabled: no new connections, established ones continue; then it is removed.
    #: A member whose node is deleted is removed at once (0: no drain, removed at once).
    drain_timeout_s: NonNegative = 30.0
    #: A cordoned node (``kubectl cordon``, ``spec.unschedulable``) is drained from
    #: every virtual server like a NotReady one (off: it stays a member).
    drain_on_cordon: bool = True
    #: Milliseconds the node feed gathers changes before one delta per cluster goes out
    #: (``vipwire-feed.<cluster>.delta``, table in KV ``vipwire-feed``); the leader
    #: publishes it. Longer: fewer messages per node, later VIPs.
    feed_window_ms: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 250
    #: While changes keep coming (a burst: one within a window of the last delta) the
    #: window doubles per delta up to this, so a burst costs each node one delivery per
    #: this many milliseconds; after a quiet window it is ``feed_window_ms`` again. One
    #: window for every cluster the lbdriver serves. At most ``feed_window_ms``: fixed.
    feed_window_max_ms: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 2000
    #: Least seconds between two writes of a cluster's node feed table (KV
    #: ``vipwire-feed``) while changes flow: the deltas carry them meanwhile, and an
    #: agent that needs the table (a start, a gap) waits at most this for a current
    #: one. 0: written before every delta (more KV writes in a burst).
    feed_table_interval_s: NonNegative = 1.0
    #: Messages handled concurrently per consumer (one subject is always sequential).
    concurrency: Annotated[int, msgspec.Meta(ge=1)] = 16
    #: Seconds before the first retry of a failed appliance write; doubles per attempt.
    retry_initial_s: Positive = 0.2
    #: Upper bound of the retry delay in seconds.
    retry_max_s: Positive = 10.0
    #: Share (0..1) of each retry delay taken off at random, so that Services failing
    #: together do not retry in lockstep.
    retry_jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    #: Consecutive failed calls (unreachable, timed out, credentials refused) after
    #: which an appliance's circuit breaker opens: calls then fail fast, unsent.
    breaker_failures: Annotated[int, msgspec.Meta(ge=1)] = 3
    #: Seconds an open breaker waits before one probe call; the next appliance of the
    #: group is written meanwhile. Doubles after each failed probe.
    unhealthy_cooldown_s: NonNegative = 5.0
    #: Upper bound of that wait in seconds.
    unhealthy_max_cooldown_s: NonNegative = 120.0
    #: Seconds between verifications (drift passes): each lists every partition of an
    #: appliance, checks that what each Service was reported programmed with is still
    #: there (virtual servers, members) and re-programs what was changed or deleted
    #: out of band, reporting ApplianceDrift until it is repaired (0: only the pass at
    #: start-up).
    verify_interval_s: NonNegative = 30.0
    #: Seconds an appliance may go without a successful call before it is probed (a
    #: listing of one partition), so a failed active is noticed, and its group
    #: failed over, even when nothing changes; every second while calls fail (0: off).
    health_interval_s: NonNegative = 10.0
    #: After a failover, delete our objects from the appliance that was left once it
    #: answers again (independent appliances). Turn off for HA pairs whose standby
    #: holds the active's configuration by config-sync.
    release_standby: bool = True
    #: Name of the leader lease (key ``<name>.leader`` in the KV bucket
    #: ``vipwire-lbdriver-lease``): the replicas sharing it elect one writer. Give two
    #: lbdriver deployments that program different appliances different names.
    lease_name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "lbdriver"
    #: Seconds the leader's lease lasts without a renewal: a standby takes over this
    #: long after the last renewal it saw (by its own clock).
    lease_ttl_s: Positive = 3.0
    #: Seconds between the leader's renewals.
    lease_renew_s: Positive = 1.0
    #: Seconds before its lease could expire at which the leader stops starting writes
    #: (counted from when its last successful renewal was sent).
    lease_safety_margin_s: NonNegative = 0.5
    #: Seconds of wall-clock difference allowed between replicas and NATS: a lease older
    #: than ``lease_ttl_s`` plus this, by its write time, is taken without waiting.
    lease_clock_skew_s: NonNegative = 2.0
    #: Networks (CIDRs) the node addresses of the appliance's members must be in:
    #: a list for every cluster, or a map of cluster name to list (``"*"``: every
    #: cluster the map does not name; a cluster it does not name, with no ``*``, is
    #: not restricted). Empty: any address the cluster's watcher publishes. A node
    #: address outside is refused (never a member; logged, counted in
    #: ``vipwire_lbdriver_refused_node_addresses_total``); a Node left with no
    #: address keeps the one it had.
    node_networks: tuple[str, ...] | dict[str, tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        lists = (
            self.node_networks.items()
            if isinstance(self.node_networks, dict)
            else [("", self.node_networks)]
        )
        for cluster, texts in lists:
            where = f"node_networks.{cluster}" if cluster else "node_networks"
            for text in texts:
                try:
                    ipaddress.ip_network(text)
                except ValueError as exc:
                    raise ValueError(f"{where}: {text!r} is not a CIDR ({exc})") from None
        if not 0 < self.lease_renew_s < self.lease_ttl_s - self.lease_safety_margin_s:
            raise ValueError(
                "lease_renew_s must be shorter than lease_ttl_s minus lease_safety_margin_s "
                f"(renew {self.lease_renew_s}s, ttl {self.lease_ttl_s}s, margin "
                f"{self.lease_safety_margin_s}s): the lease would run out between renewals"
            )
        if not self.appliances:
            raise ValueError("at least one appliance must be configured")
        names = [a.name for a in self.appliances]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"appliance names must be unique; repeated: {', '.join(duplicates)}")
        if not _PREFIX.match(self.prefix):
            raise ValueError(
                f"prefix {self.prefix!r} must be 1-32 lowercase letters, digits or '_' "
                "('-' separates name parts)"
            )
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s must not be below retry_initial_s")
        if self.unhealthy_max_cooldown_s < self.unhealthy_cooldown_s:
            raise ValueError("unhealthy_max_cooldown_s must not be below unhealthy_cooldown_s")

    def appliance(self, name: str) -> ApplianceSettings:
        for appliance in self.appliances:
            if appliance.name == name:
                return appliance
        raise KeyError(name)

    def group(self, group: str) -> tuple[ApplianceSettings, ...]:
        """The appliances of one group, in configured (preference) order."""
        return tuple(a for a in self.appliances if a.group == group)
