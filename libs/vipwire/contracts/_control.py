"""What ipam and the lbdriver answer to operators: control subjects and payloads.

Both answer request/reply on core NATS, on subjects outside the ``VIPWIRE``
stream (which captures ``vipwire.>``): an answer is a moment's view, never
history to replay. Requests and answers are JSON. Readers other than the CLI
(the dashboard) decode these same structs, so a payload only ever gains
fields; names and meanings of existing ones stay.

Every subject is ``vipwire-ctl.<service>.<verb>.<caller>``:

=============================  =======================  ====================================
``<service>.<verb>``           request                  answer
=============================  =======================  ====================================
``ipam.status``                empty                    :class:`IpamStatus` (one replica)
``ipam.show``                  :class:`ShowRequest`     :class:`ShowReply` (one replica)
``ipam.release``               :class:`ReleaseRequest`  :class:`ReleaseReply` (one replica)
``ipam.reload``                empty                    :class:`ReloadReply` (every replica)
``lbdriver.status``            empty                    :class:`LbdriverStatus`
=============================  =======================  ====================================

**Who asks.** ``<caller>`` is the identity name of the requester's NATS
credentials (the first line of a vipwire credentials file,
``# vipwire NATS identity: operator-alice ...``: :func:`identity_of_credentials`),
or :data:`ANONYMOUS` without one. It is not a field the caller fills in
freely: with permissions on, the NATS server lets an identity publish control
requests only on subjects ending in its own name (``operator-alice`` may
publish ``vipwire-ctl.*.*.operator-alice``, readers and the dashboard only the
read verbs with their own name), so the last token of the subject a request
arrived on is the identity the server authenticated for that connection.
Responders subscribe to :meth:`ControlVerb.pattern` (``...<verb>.*``) and read
the caller with :func:`caller_of`. Without permissions on the server (an
insecure bus) the token is only what the requester claims.
"""

from __future__ import annotations

import re
from typing import Final, Literal, NamedTuple

import msgspec

#: The first token of every control subject (outside the stream's ``vipwire.>``).
CONTROL_PREFIX: Final = "vipwire-ctl"
#: The caller token of a requester without an identity (no credentials file).
ANONYMOUS: Final = "anonymous"
#: What an identity name (and so a caller token) may be: a single subject token.
_IDENTITY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
#: The first line of a vipwire credentials file names its identity.
_IDENTITY_LINE = re.compile(r"^# vipwire NATS identity: (\S+)(?:\s.*)?$")


def valid_caller(token: str) -> bool:
    """Whether ``token`` is a name an identity (and a subject's last token) may have:
    letters, digits, ``-`` and ``_`` (no ``.``, ``*``, ``>`` or space)."""
    return bool(_IDENTITY.match(token))


class ControlVerb(NamedTuple):
    """One request a service answers; its subjects end with the caller's identity."""

    service: str
    verb: str
    #: Only reads (a reader identity and the dashboard may ask it).
    read_only: bool

    @property
    def base(self) -> str:
        """``vipwire-ctl.<service>.<verb>``: the subject without its caller token."""
        return f"{CONTROL_PREFIX}.{self.service}.{self.verb}"

    @property
    def pattern(self) -> str:
        """What responders subscribe to: the verb from any caller."""
        return f"{self.base}.*"

    def subject(self, caller: str) -> str:
        """The subject ``caller`` sends this request on; ValueError for a name that is
        not a single subject token."""
        if not valid_caller(caller):
            raise ValueError(
                f"caller {caller!r} is not an identity name (letters, digits, '-' and '_')"
            )
        return f"{self.base}.{caller}"


def caller_of(subject: str) -> str:
    """Who sent a request, told by the last token of the subject it arrived on
    (:data:`ANONYMOUS` if that is not an identity name)."""
    token = subject.rsplit(".", 1)[-1]
    return token if valid_caller(token) and subject.count(".") >= 3 else ANONYMOUS


def identity_of_credentials(text: str) -> str | None:
    """The identity named on the first line of a vipwire credentials file
    (``# vipwire NATS identity: watcher-east (role watcher, cluster east)``);
    None for any other file (a NATS ``.creds`` file, no such line, a bad name)."""
    first = text.split("\n", 1)[0].strip()
    found = _IDENTITY_LINE.match(first)
    if found is None or not valid_caller(found.group(1)):
        return None
    return found.group(1)


IPAM_STATUS: Final = ControlVerb("ipam", "status", read_only=True)
IPAM_SHOW: Final = ControlVerb("ipam", "show", read_only=True)
IPAM_RELEASE: Final = ControlVerb("ipam", "release", read_only=False)
IPAM_RELOAD: Final = ControlVerb("ipam", "reload", read_only=False)
#: Where an lbdriver answers status requests (empty request body).
LBDRIVER_STATUS: Final = ControlVerb("lbdriver", "status", read_only=True)
#: Every control request (the permissions generator grants them by ``read_only``).
CONTROL_VERBS: Final = (IPAM_STATUS, IPAM_SHOW, IPAM_RELEASE, IPAM_RELOAD, LBDRIVER_STATUS)
#: Queue group of the requests one replica answers (every replica sees the same KV).
IPAM_QUEUE: Final = "ipam"

BreakerState = Literal["closed", "open", "half-open"]


# --- ipam: status --------------------------------------------------------------------


class ClusterStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One cluster's part of a pool."""

    cluster: str
    #: Addresses of the pool held by the cluster's Services.
    used: int
    #: Of the cluster's allocations recorded against the pool, those it would not give now.
    stale: int


class PoolStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One pool's addresses of one family (a dual-stack pool has two entries)."""

    name: str
    family: Literal["IPv4", "IPv6"]
    appliance_group: str
    #: False: the pool is no longer configured but still has stale allocations.
    configured: bool = True
    auto_assign: bool = True
    priority: int = 0
    #: Addresses it can hand out (avoided ones excluded).
    size: int
    #: Of those, held by a Service now.
    used: int
    free: int
    #: Allocations given from this pool that the pool as configured now would not
    #: give (outside it, avoided, rule no longer met): kept, never moved.
    stale: int
    clusters: tuple[ClusterStatus, ...] = ()


class StaleAllocation(msgspec.Struct, frozen=True, kw_only=True):
    address: str
    pool: str
    #: ``cluster/namespace/name`` of each Service holding it.
    services: tuple[str, ...]
    reasons: tuple[str, ...]


class IpamStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The answer on :data:`IPAM_STATUS`."""

    #: Which ipam process answered (name and a random id per start).
    instance: str
    #: Unix time the answer was made.
    now: float
    ready: bool
    #: Config file pools are reloaded from (None: fixed at start).
    config_path: str | None = None
    #: Unix time of the last successful reload (None: none since start).
    reloaded_at: float | None = None
    #: Addresses held now, and Services holding them.
    claims: int
    services: int
    #: Services waiting for an address to be released.
    waiting: int
    pools: tuple[PoolStatus, ...]
    #: The stale allocations (at most 100; ``stale_total`` counts them all).
    stale: tuple[StaleAllocation, ...] = ()
    stale_total: int = 0


# --- ipam: show ----------------------------------------------------------------------
# ClaimView, SharerView and RecordView are ipam's KV values as a show answer
# carries them. ipam's Claim, Sharer and ServiceRecord subclass them (adding
# only behaviour), so the stored JSON and the answer cannot drift apart.


class SharerView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One Service holding an address (alone, or sharing it)."""

    name: str
    uid: str
    #: ``port/protocol`` of its ports; kept only for a claim with a sharing key.
    ports: tuple[str, ...] = ()
    external_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    #: The Service's labels when it last changed: a pool's selector is judged on them.
    labels: dict[str, str] = {}
    #: Its namespace when it is not the claim's (sharing across namespaces); "": the claim's.
    namespace: str = ""
    #: The other namespaces it accepts to share with (``vipwire.io/share-with-namespaces``).
    share_namespaces: tuple[str, ...] = ()


class ClaimView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who holds one address: the value of its ``addr.<ip>`` KV key."""

    cluster: str
    namespace: str
    #: The pool it was given from, and that pool's appliance group at the time.
    pool: str
    appliance_group: str = ""
    #: None: the address is not shared, whatever the Service's ports.
    sharing_key: str | None = None
    #: Sorted by name; at least one.
    sharers: tuple[SharerView, ...]


class RecordView(msgspec.Struct, frozen=True, kw_only=True):
    """What one Service holds: the value of its ``svc.<cluster>.<ns>.<name>`` KV key."""

    uid: str
    vips: tuple[str, ...]
    pool: str
    appliance_group: str
    #: ``releasing``: the Service is going away; its claims are held until the
    #: appliance reports it clean (LbRemoved).
    state: Literal["active", "releasing"] = "active"
    #: Why the pools as configured now would not give these VIPs (kept anyway).
    stale: str | None = None
    #: Releasing because an operator asked (``vipwire ipam release``).
    reassign: bool = False
    #: The identity that asked for that release (the caller of its control request).
    released_by: str | None = None
    #: A move to other VIPs under way (make-before-break, see ipam's ``core.moves``):
    #: ``adding``: ``vips`` holds the old and the new ones, all served; ``withdrawing``:
    #: the new ones are in status, on the appliance and on the nodes, the old ones
    #: (``moving_from``) are being withdrawn; their claims go once the appliance
    #: no longer serves them.
    move: Literal["", "adding", "withdrawing"] = ""
    moving_from: tuple[str, ...] = ()


class ShowRequest(msgspec.Struct, frozen=True, kw_only=True):
    #: An address (``192.0.2.7``) or a Service (``cluster/namespace/name``).
    target: str


class AddressView(msgspec.Struct, frozen=True, kw_only=True):
    address: str
    #: The configured pool whose addresses contain it (None: none).
    pool: str | None = None
    #: Whether that pool may hand it out (not avoided).
    usable: bool = False
    claim: ClaimView | None = None
    revision: int | None = None
    stale: tuple[str, ...] = ()


class ServiceView(msgspec.Struct, frozen=True, kw_only=True):
    service: str
    record: RecordView | None = None
    revision: int | None = None
    #: Each VIP of the record with its claim (None: no claim, which is a fault).
    claims: dict[str, ClaimView | None] = {}
    stale: tuple[str, ...] = ()
    #: Waiting for an address, with the failure it was told (None: not waiting here).
    waiting: str | None = None


class ShowReply(msgspec.Struct, frozen=True, kw_only=True):
    instance: str
    #: ``kv``: read from the bucket directly, no ipam answered (pools unknown).
    source: Literal["ipam", "kv"] = "ipam"
    address: AddressView | None = None
    service: ServiceView | None = None
    error: str | None = None


# --- ipam: release and reload ----------------------------------------------------------


class ReleaseRequest(msgspec.Struct, frozen=True, kw_only=True):
    #: ``cluster/namespace/name``.
    service: str


class ReleaseReply(msgspec.Struct, frozen=True, kw_only=True):
    instance: str
    service: str
    #: The VIPs being withdrawn; the Service gets new ones once the appliance is clean.
    vips: tuple[str, ...] = ()
    error: str | None = None


class ReloadReply(msgspec.Struct, frozen=True, kw_only=True):
    instance: str
    config_path: str | None = None
    #: Pool names now configured.
    pools: tuple[str, ...] = ()
    #: Allocations the new pools would not give (kept), and records newly (un)flagged.
    stale: int = 0
    flagged: int = 0
    #: Settings other than the pools that changed: they take effect on restart only.
    ignored: tuple[str, ...] = ()
    error: str | None = None


# --- lbdriver: status ------------------------------------------------------------------


class ApplianceStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One appliance as the lbdriver sees it. Never carries credentials."""

    name: str
    driver: str
    group: str
    #: Management endpoint (f5, a10), if any.
    address: str | None = None
    #: Whether it is the one its group writes to (else a standby).
    active: bool
    #: Circuit breaker state: closed (healthy), open (failing fast), half-open (probing).
    health: BreakerState
    #: Consecutive failed calls while closed.
    failures: int = 0
    #: Seconds until an open breaker probes again.
    retry_in_s: float | None = None
    #: Our virtual servers on it, as last listed or written (partitions listed so far).
    virtual_servers: int = 0
    #: Services whose objects it holds.
    services: int = 0
    #: Successful write requests since start.
    writes: int = 0
    #: Unix time of the last successful write (None: none since start).
    last_write_at: float | None = None
    #: The last failure, as reported in LbFailed (None: none since start).
    last_error: str | None = None
    #: Unix time of that failure.
    last_error_at: float | None = None


class LbdriverStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The answer on :data:`LBDRIVER_STATUS`."""

    #: Which lbdriver process answered (random per start).
    instance: str
    #: Unix time the answer was made (times above are relative to this clock).
    now: float
    ready: bool
    #: Services with assigned or releasing VIPs.
    services: int
    #: Services waiting for a reconcile (coalescing or backing off).
    pending: int
    #: Services whose last reconcile failed.
    failing: int
    #: Objects repaired or removed by drift passes since start.
    drift_repairs: int
    appliances: tuple[ApplianceStatus, ...]
    #: "leader" (the one replica that writes to appliances), "standby" (consumes and
    #: keeps its state, writes nothing) or "" (an older lbdriver).
    role: str = ""
    #: Who holds the lease, as this replica last read it ("" : nobody).
    leader: str = ""


#: The KV bucket of the lbdriver's leader lease, and its key.
LBDRIVER_LEASE_BUCKET: Final = "vipwire-lbdriver-lease"


class LbdriverLease(msgspec.Struct, frozen=True, kw_only=True):
    """The value of the lbdriver's leader lease (one key per lbdriver deployment).

    Written only by compare-and-set on the key's revision: created by a replica
    that finds no lease, renewed by its holder, taken over by a standby that saw
    the same revision unchanged for ``ttl_s`` by its own clock, deleted by its
    holder on a graceful stop.
    """

    #: The replica holding it (also sent with every appliance write).
    holder: str
    #: Unix time of the holder's last renewal (for people and the age check;
    #: standbys time the lease by their own clock).
    renewed_at: float
    #: Seconds the lease lasts without a renewal.
    ttl_s: float
