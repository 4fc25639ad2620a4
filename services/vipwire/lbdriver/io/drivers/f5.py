"""F5 BIG-IP as an L2 DSR (nPath) appliance, over iControl REST.

One virtual server of ours is three BIG-IP objects of the same name in the
cluster's partition: a monitor (http, https or tcp, from the Service's
appliance profile, sent to each member's node address on the health port; none
for a profile without health check), a pool whose members are
``<node address>:<service port>``, and a virtual server on ``<VIP>:<port>``
with address and port translation disabled, no SNAT and a fastL4 profile with
loose initiation and loose close (the appliance only ever sees the inbound
half of a connection). The owner tag is the virtual's description; a member's
node name is its description. The profile's other fields map as the README's
profile table says (:func:`profile_pool_fields`, :func:`profile_virtual_fields`).
Source ranges and affinity add objects of the same name (see the section at
the end).

Pool members are sent with the cluster's partition and an explicit route
domain (``<address>%<id>``: the ``route_domain`` setting, else the partition's
default), so BIG-IP makes each member's node object in that partition; the
nodes no member uses any more are deleted after each batch that can drop one
(BIG-IP keeps them). ``defaultsFrom`` is sent on create only.

Every batch of operations is one iControl REST transaction, so a batch that
BIG-IP refuses changes nothing. With ``sync_group`` set, each committed batch
is followed by a config-sync to that device group.

One module (over 500 lines) on purpose: the requests, the transaction and the
translation to and from BIG-IP objects all follow one vendor document, and
are read (and checked against it and the emulator) together.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import msgspec

from vipwire.contracts import Member
from vipwire.lbdriver.core.virtual_servers import (
    CreateVirtualServer,
    DeleteVirtualServer,
    L4Protocol,
    Monitor,
    Operation,
    UpdateMembers,
    UpdateVirtualServer,
    VirtualServer,
)
from vipwire.lbdriver.io.drivers._rest import (
    HttpResponse,
    RequestClass,
    RestDriver,
    VendorError,
    all_or_first_error,
)
from vipwire.lbdriver.io.drivers.base import (
    ApplianceAuthError,
    ApplianceError,
    ApplianceRejected,
    ApplianceUnavailable,
)
from vipwire.lbdriver.io.drivers.credentials import CredentialSource, scrub
from vipwire.lbdriver.settings import ApplianceSettings, ApplianceTimeouts

log = logging.getLogger("vipwire.lbdriver.f5")

#: The fastL4 profile every virtual of ours uses, created in each partition; a
#: profile with an idle timeout uses ``<this>-idle<seconds>`` instead.
FASTL4_PROFILE: Final = "vipwire-fastl4-dsr"

#: BIG-IP's fastL4 ``idleTimeout`` default, seconds (the plain profile keeps it).
FASTL4_IDLE_S: Final = 300
_VIRTUAL: Final = "/mgmt/tm/ltm/virtual"
_POOL: Final = "/mgmt/tm/ltm/pool"
_MONITOR: Final = "/mgmt/tm/ltm/monitor/http"
#: One monitor collection per kind of health check (ltm monitor http/https/tcp).
_MONITORS: Final = {
    "http": _MONITOR,
    "https": "/mgmt/tm/ltm/monitor/https",
    "tcp": "/mgmt/tm/ltm/monitor/tcp",
}
#: Our load-balancing methods as BIG-IP's pool ``loadBalancingMode``.
LB_MODES: Final = {"round-robin": "round-robin", "least-connections": "least-connections-member"}
_LB_METHODS: Final = {v: k for k, v in LB_MODES.items()}
#: When every member is down: the pool's ``serviceDownAction`` (same words).
_DOWN_ACTIONS: Final = ("none", "reset", "drop")
_IDLE: Final = re.compile(re.escape(FASTL4_PROFILE) + r"-idle(\d+)$")
_MONITOR_SUFFIX: Final = "-mon-"
#: A pool without a health check.
_NO_MONITOR: Final = Monitor(port=0, path="", kind="none", interval_s=0, timeout_s=0)
_PROFILE: Final = "/mgmt/tm/ltm/profile/fastl4"
_NODE: Final = "/mgmt/tm/ltm/node"
_PERSIST: Final = "/mgmt/tm/ltm/persistence/source-addr"
_ADDRESS_LIST: Final = "/mgmt/tm/net/address-list"
_TMC: Final = "/mgmt/tm/ltm/traffic-matching-criteria"
_PARTITION: Final = "/mgmt/tm/auth/partition"
_TRANSACTION: Final = "/mgmt/tm/transaction"
_LOGIN: Final = "/mgmt/shared/authn/login"
_TOKENS: Final = "/mgmt/shared/authz/tokens"

# A listed virtual of ours that is not what we program (translation or SNAT
# switched on, a pool or monitor gone or replaced): reported with this monitor,
# which nothing desires, so the diff rewrites the whole object.
_DRIFTED: Final = Monitor(port=0, path="")
_PATHS = re.compile(r"/[^\s{}]+")
# Re-login this long before BIG-IP's token timeout rather than wait for the 401.
_TOKEN_MARGIN_S: Final = 60.0


def destination(partition: str, address: str, port: int) -> str:
    """BIG-IP's destination syntax: ``/p/192.0.2.1:80``, ``/p/2001:db8::1.80``."""
    separator = "." if ":" in address else ":"
    return f"/{partition}/{address}{separator}{port}"


def member_name(address: str, port: int) -> str:
    separator = "." if ":" in address else ":"
    return f"{address}{separator}{port}"


def parse_endpoint(text: str) -> tuple[str, int] | None:
    """``[/p/]addr[%rd]:port`` or ``[/p/]v6addr[%rd].port`` → (canonical address, port)."""
    tail = text.rsplit("/", 1)[-1]
    if tail.count(":") == 1:
        host, _, port = tail.partition(":")
    else:
        host, _, port = tail.rpartition(".")
    host = host.split("%", 1)[0]
    try:
        return ipaddress.ip_address(host).compressed, int(port)
    except ValueError:
        return None  # "any", a wildcard or a name: not something we program


@dataclass(slots=True)
class _Seen:
    """Which of virtual, pool and monitor exist under one name, and the virtual's port."""

    kinds: set[str]
    port: int | None


def _message(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("message") or body.get("failureReason") or body)
    return str(body)[:500] or "(empty body)"


def _ok(resp: HttpResponse) -> bool:
    return 200 <= resp.status < 300


class F5Driver(RestDriver):
    """An F5 BIG-IP (or an HA pair's management address) programmed for L2 DSR."""

    def __init__(
        self,
        name: str,
        address: str,
        credentials: CredentialSource,
        *,
        verify_tls: bool = True,
        ca_file: str | None = None,
        timeouts: ApplianceTimeouts | None = None,
        partition_template: str = "{cluster}",
        partitions: Mapping[str, str] | None = None,
        sync_group: str | None = None,
        route_domain: int | None = None,
    ) -> None:
        super().__init__(
            name,
            address,
            credentials,
            verify_tls=verify_tls,
            ca_file=ca_file,
            timeouts=timeouts,
            partition_template=partition_template,
            partitions=partitions,
        )
        self.sync_group = sync_group
        self.route_domain = route_domain
        # Per partition, the route domain of its members and nodes (the setting, else
        # the partition's default), known once the partition is.
        self._route_domains: dict[str, int] = {}
        # Per partition, the members of ours whose node is elsewhere (made by a release
        # before route domains, in /Common): address -> (node partition, address as
        # BIG-IP shows it). They keep that node; a new node there would clash with it.
        self._homes: dict[str, dict[str, tuple[str, str]]] = {}
        # Per partition, the idle-timeout fastL4 profiles known to exist.
        self._idle_profiles: dict[str, set[str]] = {}
        self._token: str | None = None
        self._token_renew_at = 0.0
        # Partitions known to exist with our fastL4 profile in them.
        self._ready: set[str] = set()
        # Per partition, what exists under each name, as of the last listing and our
        # own writes since: a create over a half-deleted object, or an update of one
        # whose pool vanished, then writes what is there.
        self._present: dict[str, dict[str, _Seen]] = {}
        self._sync_pending = False

    @classmethod
    def from_settings(cls, settings: ApplianceSettings) -> F5Driver:
        return cls(
            **cls.common_arguments(settings),
            sync_group=settings.sync_group,
            route_domain=settings.route_domain,
        )

    # --- the driver interface ----------------------------------------------------

    async def list_virtual_servers(self, partition: str) -> dict[str, VirtualServer]:
        part = self.partition_of(partition)
        await self._sync_if_pending()
        scope = f"$filter=partition+eq+{part}"
        await self._login()  # once, before the reads race to do it
        virtuals, pools, http, https, tcp, persists, lists, criteria = await all_or_first_error(
            self._collection(_VIRTUAL, f"{scope}&expandSubcollections=true"),
            self._collection(_POOL, f"{scope}&expandSubcollections=true"),
            self._collection(_MONITORS["http"], scope),
            self._collection(_MONITORS["https"], scope),
            self._collection(_MONITORS["tcp"], scope),
            self._collection(_PERSIST, scope),
            self._collection(_ADDRESS_LIST, scope),
            self._collection(_TMC, scope),
        )
        monitors = {"http": http, "https": https, "tcp": tcp}
        access = _Access.of(persists, lists, criteria)
        servers, present = _translate(virtuals, pools, monitors, access)
        self._present[part] = present
        self._homes[part] = _member_homes(part, pools)
        return servers

    async def apply(self, partition: str, ops: Sequence[Operation]) -> None:
        if not ops:
            return
        part = self.partition_of(partition)
        await self._sync_if_pending()
        await self._ensure_partition(part)
        await self._ensure_idle_profiles(part, ops)
        known = self._present.get(part)
        ports = await self._member_ports(part, ops, known)
        at = _Placement(part, self._route_domains[part], self._homes.get(part, {}))
        commands = [c for op in ops for c in self._commands(at, op, known, ports)]
        try:
            if len(commands) == 1:
                await self._write(*commands[0])
            else:
                await self._transaction(commands)
        except BaseException:
            # Whatever failed, our picture of the partition may be wrong now.
            self._present.pop(part, None)
            self._homes.pop(part, None)
            self._ready.discard(part)
            self._idle_profiles.pop(part, None)
            raise
        if known is not None:
            for op in ops:
                match op:
                    case CreateVirtualServer(server=s) | UpdateVirtualServer(server=s):
                        kinds = {"virtual", "pool"}
                        if s.monitor.kind != "none":
                            kinds.add(f"monitor:{s.monitor.kind}")
                        known[s.name] = _Seen(kinds | _access_kinds(s), s.port)
                    case DeleteVirtualServer(name=name):
                        known.pop(name, None)
        if any(not isinstance(op, CreateVirtualServer) for op in ops):
            await self._delete_unused_nodes(part)
        await self._sync()

    async def close(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            # BIG-IP caps live tokens per user; hand ours back rather than let it linger.
            with contextlib.suppress(ApplianceError):
                await self._http.send(
                    "DELETE", f"{_TOKENS}/{token}", headers={"X-F5-Auth-Token": token}
                )
        await self._http.close()

    # --- what to write -------------------------------------------------------------

    async def _member_ports(
        self, part: str, ops: Sequence[Operation], known: dict[str, _Seen] | None
    ) -> dict[str, int]:
        """The service port of each virtual whose members change (member names carry it)."""
        ports: dict[str, int] = {}
        for op in ops:
            if not isinstance(op, UpdateMembers):
                continue
            seen = known.get(op.name) if known is not None else None
            if seen is not None and seen.port is not None:
                ports[op.name] = seen.port
                continue
            # Not listed by us since a failure dropped our picture: ask for the virtual.
            path = _item(_VIRTUAL, part, op.name)
            resp = await self._call("GET", path)
            if not _ok(resp):
                self._raise(resp, f"GET {path}")
            endpoint = parse_endpoint(str(resp.body.get("destination", "")))
            if endpoint is None:
                raise ApplianceRejected(self.name, f"{path}: destination is not address:port")
            ports[op.name] = endpoint[1]
        return ports

    def _commands(
        self,
        at: _Placement,
        op: Operation,
        known: dict[str, _Seen] | None,
        ports: dict[str, int],
    ) -> list[tuple[str, str, dict[str, Any]]]:
        part = at.partition

        def has(name: str, kind: str, assume: bool) -> bool:
            if known is None:
                return assume
            seen = known.get(name)
            return seen is not None and kind in seen.kinds

        match op:
            case CreateVirtualServer(server=s) | UpdateVirtualServer(server=s):
                assume = isinstance(op, UpdateVirtualServer)
                kind = s.monitor.kind
                commands = []
                if kind != "none":
                    commands.append(
                        _upsert(
                            _MONITORS[kind],
                            part,
                            monitor_name(s.name, kind),
                            monitor_body(s),
                            has(s.name, f"monitor:{kind}", assume),
                        )
                    )
                commands += [
                    _upsert(_POOL, part, s.name, _pool_body(at, s), has(s.name, "pool", assume)),
                    *_access_before(part, s, has),
                    _upsert(
                        _VIRTUAL,
                        part,
                        s.name,
                        _access_body(part, s, _virtual_body(part, s)),
                        has(s.name, "virtual", assume),
                    ),
                    *_access_after(part, s, has),
                ]
                # A monitor of another kind (the profile changed) goes once the pool
                # no longer uses it, in the same transaction.
                commands += [
                    ("DELETE", _item(path, part, monitor_name(s.name, other)), {})
                    for other, path in _MONITORS.items()
                    if other != kind and has(s.name, f"monitor:{other}", False)
                ]
                return commands
            case UpdateMembers(name=name, members=members, draining=draining):
                body = {"members": _pool_members(at, members, draining, ports[name])}
                return [("PATCH", _item(_POOL, part, name), body)]
            case DeleteVirtualServer(name=name):
                empty: dict[str, Any] = {}
                return [
                    ("DELETE", _item(kind, part, item), empty)
                    for kind, item, what in (
                        (_VIRTUAL, name, "virtual"),
                        (_POOL, name, "pool"),
                        *(
                            (path, monitor_name(name, k), f"monitor:{k}")
                            for k, path in _MONITORS.items()
                        ),
                    )
                    if has(name, what, what == "monitor:http")
                ] + [
                    ("DELETE", _item(kind, part, name), empty)
                    for kind, what in _ACCESS_KINDS
                    if has(name, what, False)
                ]

    async def _ensure_idle_profiles(self, part: str, ops: Sequence[Operation]) -> None:
        """Create the fastL4 profiles (one per idle timeout) the operations refer to."""
        known = self._idle_profiles.setdefault(part, set())
        for op in ops:
            if not isinstance(op, CreateVirtualServer | UpdateVirtualServer):
                continue
            idle = op.server.idle_timeout_s
            name = fastl4_profile_name(idle)
            if idle is None or name in known:
                continue
            path = _item(_PROFILE, part, name)
            resp = await self._call("GET", path)
            if resp.status == 404:
                resp = await self._call("POST", _PROFILE, json=fastl4_body(part, idle))
                if not _ok(resp) and resp.status != 409:
                    self._raise(resp, f"create fastL4 profile {name} in {part}")
            elif not _ok(resp):
                self._raise(resp, f"GET {path}")
            else:
                await self._close_timeout(path, resp.body, idle)
            known.add(name)

    # --- requests ------------------------------------------------------------------

    async def _transaction(self, commands: list[tuple[str, str, dict[str, Any]]]) -> None:
        resp = await self._call("POST", _TRANSACTION, json={})
        if not _ok(resp):
            self._raise(resp, "open transaction")
        trans_id = str(resp.body["transId"])
        committed = False
        try:
            for method, path, body in commands:
                resp = await self._call(method, path, json=body or None, trans_id=trans_id)
                if not _ok(resp):
                    self._raise(resp, f"{method} {path} (queued in transaction {trans_id})")
            # The coordination header would queue the commit itself; it must not be sent.
            committed = True
            resp = await self._call(
                "PATCH", f"{_TRANSACTION}/{trans_id}", json={"state": "VALIDATING"}, kind="commit"
            )
            if not _ok(resp):
                self._raise(resp, f"commit transaction {trans_id}")
            state = resp.body.get("state") if isinstance(resp.body, dict) else None
            if state not in (None, "COMPLETED"):
                cause = VendorError(resp.status, _message(resp.body), resp.body)
                raise ApplianceRejected(
                    self.name, f"transaction {trans_id} ended {state}: {cause.message}"
                ) from cause
        except ApplianceError:
            if not committed:
                with contextlib.suppress(ApplianceError):
                    await self._call("DELETE", f"{_TRANSACTION}/{trans_id}")
            raise

    async def _write(self, method: str, path: str, body: dict[str, Any]) -> None:
        resp = await self._call(method, path, json=body or None)
        if not _ok(resp):
            self._raise(resp, f"{method} {path}")

    async def _collection(self, path: str, query: str) -> list[dict[str, Any]]:
        resp = await self._call("GET", path, query=query)
        if not _ok(resp):
            self._raise(resp, f"GET {path}")
        # BIG-IP leaves "items" out of an empty collection.
        items = resp.body.get("items", []) if isinstance(resp.body, dict) else []
        return [i for i in items if isinstance(i, dict)]

    async def _ensure_partition(self, part: str) -> None:
        if part in self._ready:
            return
        resp = await self._call("GET", f"{_PARTITION}/{part}")
        if resp.status == 404:
            resp = await self._call(
                "POST", _PARTITION, json={"name": part, "description": "vipwire: one cluster"}
            )
            if resp.status == 409:  # created meanwhile
                resp = await self._call("GET", f"{_PARTITION}/{part}")
            if not _ok(resp):
                self._raise(resp, f"create partition {part}")
        elif not _ok(resp):
            self._raise(resp, f"GET partition {part}")
        if self.route_domain is not None:
            self._route_domains[part] = self.route_domain
        else:
            default = resp.body.get("defaultRouteDomain", 0) if isinstance(resp.body, dict) else 0
            self._route_domains[part] = int(default) if str(default).isdigit() else 0
        profile = _item(_PROFILE, part, FASTL4_PROFILE)
        resp = await self._call("GET", profile)
        if resp.status == 404:
            resp = await self._call("POST", _PROFILE, json=fastl4_body(part, None))
            if not _ok(resp) and resp.status != 409:
                self._raise(resp, f"create fastL4 profile in {part}")
        elif not _ok(resp):
            self._raise(resp, f"GET {profile}")
        else:
            await self._close_timeout(profile, resp.body, FASTL4_IDLE_S)
        self._ready.add(part)

    async def _close_timeout(self, path: str, profile: Any, seconds: int) -> None:
        """Set the close timeout on a profile of ours an earlier release made without it."""
        if not isinstance(profile, dict) or profile.get("tcpCloseTimeout") in (None, seconds):
            return
        await self._write("PATCH", path, {"tcpCloseTimeout": seconds})
        log.info("%s: %s: tcpCloseTimeout set to %ds (nPath)", self.name, path, seconds)

    async def _delete_unused_nodes(self, part: str) -> None:
        """Delete the nodes of the partition that no pool member uses any more.

        BIG-IP makes a node for every new member address and keeps it after the member
        goes; F5's own clients delete it (f5-cccl; f5-ansible's bigip_pool_member).
        A node another pool still uses is refused with a 400 ("is referenced by a member
        of pool") and stays; a failure here leaves nodes for the next sweep, and never
        fails the batch, which is committed already.
        """
        scope = f"$filter=partition+eq+{part}"
        try:
            nodes, pools = await all_or_first_error(
                self._collection(_NODE, scope),
                self._collection(_POOL, f"{scope}&expandSubcollections=true"),
            )
            used = set()
            for pool in pools:
                reference = pool.get("membersReference")
                items = reference.get("items", []) if isinstance(reference, dict) else []
                used |= {(str(m.get("partition")), str(m.get("address"))) for m in items}
            for node in nodes:
                if (str(node.get("partition")), str(node.get("address"))) in used:
                    continue
                # A route domain's "%" must reach BIG-IP as "%25" in the path.
                path = _item(_NODE, part, str(node.get("name"))).replace("%", "%25")
                resp = await self._call("DELETE", path)
                if _ok(resp) or resp.status == 404:
                    log.info("%s: deleted unused node %s", self.name, node.get("fullPath"))
                elif resp.status != 400:
                    self._raise(resp, f"DELETE {path}")
        except ApplianceError as exc:
            log.warning(
                "%s: unused nodes in partition %s not deleted (tried again after the next "
                "change): %s",
                self.name,
                part,
                exc,
            )

    async def _sync(self) -> None:
        if self.sync_group is None:
            return
        self._sync_pending = True
        resp = await self._call(
            "POST",
            "/mgmt/tm/cm",
            json={"command": "run", "utilCmdArgs": f"config-sync to-group {self.sync_group}"},
            kind="commit",
        )
        if not _ok(resp):
            # The change is live here but not on the peers: try again before the next call.
            log.warning(
                "%s: config-sync to %s failed: HTTP %d", self.name, self.sync_group, resp.status
            )
            self._raise(resp, f"config-sync to-group {self.sync_group}")
        self._sync_pending = False

    async def _sync_if_pending(self) -> None:
        if self._sync_pending:
            await self._sync()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        query: str | None = None,
        trans_id: str | None = None,
        kind: RequestClass | None = None,
    ) -> HttpResponse:
        """One authenticated request; on 401 log in again once and repeat it."""
        resp: HttpResponse | None = None
        for _attempt in range(2):
            token = await self._login()
            headers = {"X-F5-Auth-Token": token}
            if trans_id is not None:
                headers["X-F5-REST-Coordination-Id"] = trans_id
            resp = await self._http.send(
                method, path, json=json, headers=headers, query=query, kind=kind
            )
            if resp.status != 401:
                return resp
            if self._token == token:
                self._token = None  # expired or revoked: the next attempt logs in afresh
        assert resp is not None
        return resp

    async def _login(self) -> str:
        token = self._token
        if token is not None and time.monotonic() < self._token_renew_at:
            return token
        attempts = self._login_attempts
        async with self._login_lock:
            if self._token is not None and time.monotonic() < self._token_renew_at:
                return self._token
            if self._login_attempts != attempts and self._login_error is not None:
                # A login we waited for was just refused: do not try the same secret again
                # (repeated failures lock accounts); report the same refusal.
                error = self._login_error
                raise type(error)(self.name, error.message) from error.__cause__
            self._login_attempts += 1
            try:
                token = await self._new_token()
            except ApplianceError as exc:
                self._login_error = exc
                raise
            self._login_error = None
            return token

    async def _new_token(self) -> str:
        """Log in (tmos provider) and keep the token until shortly before BIG-IP expires it."""
        creds = self._credentials.load()
        resp = await self._http.send(
            "POST",
            _LOGIN,
            json={
                "username": creds.username,
                "password": creds.password,
                "loginProviderName": "tmos",
            },
            kind="login",
        )
        if not _ok(resp):
            cause = VendorError(resp.status, _message(resp.body))
            if resp.status == 429 or resp.status >= 500:
                raise ApplianceUnavailable(
                    self.name, f"login: HTTP {resp.status}: {cause.message}"
                ) from cause
            log.warning(
                "%s: login as %r refused: HTTP %d: %s",
                self.name,
                creds.username,
                resp.status,
                cause.message,
            )
            raise ApplianceAuthError(
                self.name, self._credentials.refused(f"HTTP {resp.status}: {cause.message}")
            ) from cause
        try:
            token_info = resp.body["token"]
            token = str(token_info["token"])
            lifetime = float(token_info.get("timeout", 1200))
        except (KeyError, TypeError, ValueError) as exc:
            raise ApplianceUnavailable(self.name, "login: no token in the answer") from exc
        self._token = token
        self._token_renew_at = time.monotonic() + max(lifetime - _TOKEN_MARGIN_S, lifetime / 2)
        return token

    def _raise(self, resp: HttpResponse, what: str) -> NoReturn:
        cause = VendorError(resp.status, _message(resp.body), resp.body)
        said = scrub(cause.message, self._credentials.username)
        text = f"{what}: HTTP {resp.status}: {said}"
        if resp.status in (401, 403):
            raise ApplianceAuthError(self.name, text) from cause
        if resp.status == 429 or resp.status >= 500:
            raise ApplianceUnavailable(self.name, text) from cause
        raise ApplianceRejected(self.name, text) from cause


# --- bodies --------------------------------------------------------------------------


def _item(collection: str, part: str, name: str) -> str:
    return f"{collection}/~{part}~{name}"


def _upsert(
    collection: str, part: str, name: str, body: dict[str, Any], exists: bool
) -> tuple[str, str, dict[str, Any]]:
    if exists:
        # ``defaultsFrom`` (the parent) is fixed when an object is created; BIG-IP
        # refuses to change it, so a PATCH never carries it.
        patch = {k: v for k, v in body.items() if k != "defaultsFrom"}
        return ("PATCH", _item(collection, part, name), patch)
    return ("POST", collection, {"name": name, "partition": part, **body})


@dataclass(frozen=True, slots=True)
class _Placement:
    """Where a partition's members and their nodes go."""

    partition: str
    route_domain: int
    #: Members whose node lives elsewhere already: address -> (partition, address text).
    homes: Mapping[str, tuple[str, str]]


def _member(at: _Placement, address: str, node: str, port: int) -> dict[str, Any]:
    """A pool member in the cluster's partition and route domain, as F5's clients send
    one (f5-cccl, f5-ansible's bigip_pool_member: ``partition`` and ``<address>%<rd>``):
    its node is ``/<part>/<address>%<rd>``, never one BIG-IP puts in ``/Common``. A
    member already on a node elsewhere (made by an earlier release) keeps that node."""
    part, text = at.homes.get(address, (at.partition, f"{address}%{at.route_domain}"))
    return {
        "name": member_name(text, port),
        "partition": part,
        "address": text,
        "description": node,
    }


def _member_homes(part: str, pools: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """The members of the partition's pools whose node is in another partition."""
    homes: dict[str, tuple[str, str]] = {}
    for pool in pools:
        reference = pool.get("membersReference")
        items = reference.get("items", []) if isinstance(reference, dict) else []
        for item in items:
            home = str(item.get("partition") or part)
            at = parse_endpoint(str(item.get("name", "")))
            if home != part and at is not None and item.get("address"):
                homes[at[0]] = (home, str(item["address"]))
    return homes


def _pool_members(
    at: _Placement, members: Sequence[Member], draining: Sequence[Member], port: int
) -> list[dict[str, Any]]:
    """A pool's member list: enabled members, then draining ones disabled (graceful
    drain): ``session: user-disabled`` takes no new connections while established
    ones continue; ``state`` stays ``user-up`` (``user-down`` would be "forced
    offline", which also refuses persisted clients). Every member says its
    ``session``, so one that comes back is enabled again by the same PATCH."""
    enabled = [{**_member(at, m.address, m.node, port), "session": "user-enabled"} for m in members]
    disabled = [
        {**_member(at, m.address, m.node, port), "session": "user-disabled", "state": "user-up"}
        for m in draining
    ]
    return enabled + disabled


def _is_disabled(item: dict[str, Any]) -> bool:
    """A listed pool member that takes no new connections (disabled or forced offline)."""
    return item.get("session") == "user-disabled" or item.get("state") == "user-down"


def _pool_body(at: _Placement, s: VirtualServer) -> dict[str, Any]:
    return {
        **profile_pool_fields(at.partition, s),
        "members": _pool_members(at, s.members, s.draining, s.port),
        "description": s.owner,
    }


def _virtual_body(part: str, s: VirtualServer) -> dict[str, Any]:
    v6 = ":" in s.address
    return {
        "destination": destination(part, s.address, s.port),
        "mask": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" if v6 else "255.255.255.255",
        "ipProtocol": s.protocol.lower(),
        "pool": f"/{part}/{s.name}",
        # L2 DSR: the packet must reach the node with the VIP and port it was sent to.
        "translateAddress": "disabled",
        "translatePort": "disabled",
        "sourceAddressTranslation": {"type": "none"},
        "description": s.owner,
        **profile_virtual_fields(part, s),
    }


# --- the appliance profile, in BIG-IP's objects (pure; see the README's table) -------


def monitor_body(s: VirtualServer) -> dict[str, Any]:
    """The ``ltm monitor http|https|tcp`` of a virtual server (kind none has none)."""
    m = s.monitor
    body: dict[str, Any] = {
        "defaultsFrom": f"/Common/{m.kind}",
        # Without a destination BIG-IP would probe the member's own (service) port.
        "destination": f"*:{m.port}",
        "interval": m.interval_s,
        # BIG-IP marks a member down after this long without a successful probe.
        "timeout": m.timeout_s,
        "description": s.owner,
    }
    if m.kind in ("http", "https"):
        body["send"] = f"{m.method} {m.path} HTTP/1.0\\r\\n\\r\\n"
        body["recv"] = r"^HTTP/1\.[01] 200"
    return body


def profile_pool_fields(part: str, s: VirtualServer) -> dict[str, Any]:
    """The pool's monitor, ``loadBalancingMode`` and ``serviceDownAction``."""
    return {
        "monitor": (
            f"/{part}/{monitor_name(s.name, s.monitor.kind)}" if s.monitor.kind != "none" else ""
        ),
        "loadBalancingMode": LB_MODES[s.lb_method],
        "serviceDownAction": s.all_members_down,
    }


def profile_virtual_fields(part: str, s: VirtualServer) -> dict[str, Any]:
    """The virtual's fastL4 profile (carrying the idle timeout) and ``connectionLimit``."""
    return {
        "profiles": [{"name": f"/{part}/{fastl4_profile_name(s.idle_timeout_s)}"}],
        # 0: no limit.
        "connectionLimit": s.connection_limit or 0,
    }


def monitor_name(name: str, kind: str) -> str:
    """A virtual server's monitor: its own name for http (as before profiles), else
    ``<name>-mon-<kind>``, since BIG-IP monitor names are unique across monitor types."""
    return name if kind == "http" else f"{name}{_MONITOR_SUFFIX}{kind}"


def fastl4_profile_name(idle_timeout_s: int | None) -> str:
    return FASTL4_PROFILE if idle_timeout_s is None else f"{FASTL4_PROFILE}-idle{idle_timeout_s}"


def fastl4_body(part: str, idle_timeout_s: int | None) -> dict[str, Any]:
    """A fastL4 profile for L2 DSR; with ``idleTimeout`` when the profile sets one."""
    body: dict[str, Any] = {
        "name": fastl4_profile_name(idle_timeout_s),
        "partition": part,
        "defaultsFrom": "/Common/fastL4",
        # nPath: the appliance sees neither the SYN-ACK nor the server's FIN.
        "looseInitialization": "enabled",
        "looseClose": "enabled",
        "description": "vipwire: L2 DSR (nPath)",
    }
    if idle_timeout_s is not None:
        body["idleTimeout"] = idle_timeout_s
    # F5's nPath chapter ("Configuring nPath Routing", BIG-IP LTM Implementations):
    # with loose close, set the TCP close timeout to the idle timeout when half-closes
    # are expected (a client that sent its FIN while the server still sends); with
    # BIG-IP's 5 s the flow goes, and the client's next ACK is load-balanced afresh.
    body["tcpCloseTimeout"] = idle_timeout_s if idle_timeout_s is not None else FASTL4_IDLE_S
    return body


# --- reading back --------------------------------------------------------------------


def _translate(
    virtuals: list[dict[str, Any]],
    pools: list[dict[str, Any]],
    monitors: Mapping[str, list[dict[str, Any]]],
    access: _Access | None = None,
) -> tuple[dict[str, VirtualServer], dict[str, _Seen]]:
    """BIG-IP objects of one partition → our virtual servers, and what exists by name.

    ``monitors``: the monitors of each kind (http, https, tcp).
    """
    access = access or _Access.of([], [], [])
    present: dict[str, _Seen] = {}
    kinds: list[tuple[str, list[dict[str, Any]]]] = [("virtual", virtuals), ("pool", pools)]
    kinds += [(f"monitor:{k}", objects) for k, objects in monitors.items()]
    kinds += access.kinds()
    for kind, objects in kinds:
        other_monitor = kind.startswith("monitor:") and kind != "monitor:http"
        suffix = _MONITOR_SUFFIX + kind[8:] if other_monitor else ""
        for obj in objects:
            name = str(obj.get("name", ""))
            if suffix:
                if not name.endswith(suffix):
                    continue  # not a monitor of ours
                name = name.removesuffix(suffix)
            present.setdefault(name, _Seen(set(), None)).kinds.add(kind)
    pools_by_path = {str(p.get("fullPath")): p for p in pools}
    monitors_by_path = {
        str(m.get("fullPath")): (k, m) for k, objects in monitors.items() for m in objects
    }
    servers: dict[str, VirtualServer] = {}
    for v in virtuals:
        server = _virtual_server(access.destined(v), pools_by_path, monitors_by_path)
        if server is not None:
            server = access.read(v, server)
            servers[server.name] = server
            present[server.name].port = server.port
    return servers, present


def _virtual_server(
    v: dict[str, Any],
    pools: dict[str, dict[str, Any]],
    monitors: dict[str, tuple[str, dict[str, Any]]],
) -> VirtualServer | None:
    name = str(v.get("name", ""))
    endpoint = parse_endpoint(str(v.get("destination", "")))
    protocol = str(v.get("ipProtocol", "")).upper()
    if not name or endpoint is None or protocol not in ("TCP", "UDP", "SCTP"):
        return None  # not an L4 virtual we could have made; someone else's business
    address, port = endpoint
    l4: L4Protocol = protocol  # type: ignore[assignment]
    sat = v.get("sourceAddressTranslation")
    drifted = (
        v.get("translateAddress") != "disabled"
        or v.get("translatePort") != "disabled"
        or not isinstance(sat, dict)
        or sat.get("type", "none") != "none"
    )
    pool = pools.get(str(v.get("pool", "")).strip())
    members: list[Member] = []
    draining: list[Member] = []
    monitor = _DRIFTED
    lb_method: Any = "round-robin"
    down: Any = "none"
    if pool is None:
        drifted = True
    else:
        lb_method = _LB_METHODS.get(str(pool.get("loadBalancingMode", "round-robin")))
        down = str(pool.get("serviceDownAction", "none"))
        if lb_method is None or down not in _DOWN_ACTIONS:
            drifted = True  # a method or action we never set: set ours again
            lb_method, down = "round-robin", "none"
        reference = pool.get("membersReference")
        items = reference.get("items", []) if isinstance(reference, dict) else []
        for item in items:
            at = parse_endpoint(str(item.get("name", "")))
            if at is None:
                drifted = True
                continue
            if at[1] != port:
                drifted = True  # DSR delivers to the service port; anything else is broken
            member = Member(node=str(item.get("description") or at[0]), address=at[0])
            (draining if _is_disabled(item) else members).append(member)
        monitor = _monitor(str(pool.get("monitor", "")), monitors)
    limit = v.get("connectionLimit", 0)
    return VirtualServer(
        name=name,
        owner=str(v.get("description") or ""),
        address=address,
        port=port,
        protocol=l4,
        members=tuple(sorted(set(members))),
        monitor=_DRIFTED if drifted else monitor,
        idle_timeout_s=_idle_timeout(v),
        connection_limit=limit if isinstance(limit, int) and limit > 0 else None,
        lb_method=lb_method,
        all_members_down=down,
        draining=tuple(sorted(set(draining) - set(members))),
    )


def _idle_timeout(v: dict[str, Any]) -> int | None:
    """The idle timeout our fastL4 profile on the virtual carries (None: the plain one)."""
    reference = v.get("profilesReference")
    items = reference.get("items", []) if isinstance(reference, dict) else []
    for item in items:
        found = _IDLE.search(str(item.get("fullPath") or item.get("name") or ""))
        if found:
            return int(found.group(1))
    return None


def _monitor(reference: str, monitors: dict[str, tuple[str, dict[str, Any]]]) -> Monitor:
    if not reference.strip():
        return _NO_MONITOR
    paths = _PATHS.findall(reference)
    if len(paths) != 1 or paths[0] not in monitors:
        return _DRIFTED
    kind, m = monitors[paths[0]]
    _, _, port = str(m.get("destination", "")).rpartition(":")
    interval, timeout = m.get("interval"), m.get("timeout")
    if not port.isdigit() or not isinstance(interval, int) or not isinstance(timeout, int):
        return _DRIFTED
    path = ""
    if kind in ("http", "https"):
        words = str(m.get("send", "")).split()
        if len(words) < 2 or words[0] != "GET":
            return _DRIFTED
        path = words[1]
    return Monitor(
        port=int(port),
        path=path,
        kind=kind,  # type: ignore[arg-type]
        interval_s=interval,
        timeout_s=timeout,
    )


# --- source ranges and affinity ------------------------------------------------------
#
# Source ranges (iControl REST, ``ltm virtual``): one range is the virtual's own
# ``source`` (the client addresses it accepts; ``0.0.0.0/0`` or ``::/0`` accept all).
# Several are a ``net address-list`` named like the virtual server, referenced as the
# ``sourceAddressList`` of an ``ltm traffic-matching-criteria`` (BIG-IP 14.1+) that also
# carries the destination address, port and protocol; the virtual then names the
# criteria (``trafficMatchingCriteria``) instead of a destination of its own.
# Affinity: an ``ltm persistence source-addr`` profile (parent ``/Common/source_addr``,
# ``timeout`` in seconds) named like the virtual server, the virtual's default
# ``persist`` profile. Every object is written in the same transaction as the virtual.

# Deleted after the virtual that references them, criteria before its address list.
_ACCESS_KINDS: Final = ((_TMC, "tmc"), (_ADDRESS_LIST, "addresslist"), (_PERSIST, "persist"))
_OPEN_SOURCE: Final = {False: "0.0.0.0/0", True: "::/0"}

HasObject = Callable[[str, str, bool], bool]
Command = tuple[str, str, dict[str, Any]]


def _uses_list(s: VirtualServer) -> bool:
    return len(s.source_ranges) > 1


def _access_kinds(s: VirtualServer) -> set[str]:
    kinds = {"addresslist", "tmc"} if _uses_list(s) else set()
    return kinds | ({"persist"} if s.affinity_timeout_s is not None else set())


def _access_body(part: str, s: VirtualServer, body: dict[str, Any]) -> dict[str, Any]:
    """The virtual's body with its source restriction and persistence profile."""
    out = dict(body)
    if _uses_list(s):
        for key in ("destination", "mask", "source"):
            out.pop(key, None)
        out["trafficMatchingCriteria"] = f"/{part}/{s.name}"
    else:
        out["source"] = s.source_ranges[0] if s.source_ranges else _OPEN_SOURCE[":" in s.address]
        out["trafficMatchingCriteria"] = "none"
    timeout = s.affinity_timeout_s
    out["persist"] = [] if timeout is None else [{"name": f"/{part}/{s.name}", "tmDefault": "yes"}]
    return out


def _access_before(part: str, s: VirtualServer, has: HasObject) -> list[Command]:
    """Persistence profile, address list and criteria the virtual is about to reference."""
    commands = []
    if s.affinity_timeout_s is not None:
        persist = {
            "defaultsFrom": "/Common/source_addr",
            "timeout": str(s.affinity_timeout_s),
            "description": s.owner,
        }
        commands.append(_upsert(_PERSIST, part, s.name, persist, has(s.name, "persist", False)))
    if _uses_list(s):
        addresses = {"addresses": [{"name": r} for r in s.source_ranges], "description": s.owner}
        commands.append(
            _upsert(_ADDRESS_LIST, part, s.name, addresses, has(s.name, "addresslist", False))
        )
        criteria = {
            "destinationAddressInline": s.address,
            "destinationPortInline": str(s.port),
            "protocol": s.protocol.lower(),
            "sourceAddressList": f"/{part}/{s.name}",
            "description": s.owner,
        }
        commands.append(_upsert(_TMC, part, s.name, criteria, has(s.name, "tmc", False)))
    return commands


def _access_after(part: str, s: VirtualServer, has: HasObject) -> list[Command]:
    """The objects the virtual no longer references, deleted once it stopped."""
    wanted = _access_kinds(s)
    empty: dict[str, Any] = {}
    return [
        ("DELETE", _item(kind, part, s.name), empty)
        for kind, what in _ACCESS_KINDS
        if what not in wanted and has(s.name, what, False)
    ]


@dataclass(slots=True)
class _Access:
    """A partition's persistence profiles, address lists and criteria, by full path."""

    persists: dict[str, dict[str, Any]]
    lists: dict[str, dict[str, Any]]
    criteria: dict[str, dict[str, Any]]

    @classmethod
    def of(
        cls,
        persists: list[dict[str, Any]],
        lists: list[dict[str, Any]],
        criteria: list[dict[str, Any]],
    ) -> _Access:
        def by_path(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
            return {str(i.get("fullPath")): i for i in items}

        return cls(by_path(persists), by_path(lists), by_path(criteria))

    def kinds(self) -> tuple[tuple[str, list[dict[str, Any]]], ...]:
        return (
            ("persist", list(self.persists.values())),
            ("addresslist", list(self.lists.values())),
            ("tmc", list(self.criteria.values())),
        )

    def _criteria_of(self, v: dict[str, Any]) -> dict[str, Any] | None:
        ref = str(v.get("trafficMatchingCriteria") or "none").strip()
        return None if ref == "none" else self.criteria.get(ref, {})

    def destined(self, v: dict[str, Any]) -> dict[str, Any]:
        """A virtual that matches by criteria, with the criteria's destination as its own."""
        tmc = self._criteria_of(v)
        if tmc is None:
            return v
        address = str(tmc.get("destinationAddressInline", "")).split("%", 1)[0]
        port = str(tmc.get("destinationPortInline", ""))
        if not address or not port.isdigit():
            return v
        part = str(v.get("partition") or "Common")
        return {**v, "destination": destination(part, address, int(port))}

    def read(self, v: dict[str, Any], server: VirtualServer) -> VirtualServer:
        """The server with the source ranges and affinity the virtual has on BIG-IP."""
        drifted = False
        tmc = self._criteria_of(v)
        ranges: list[str] = []
        if tmc is not None:
            listed = self.lists.get(str(tmc.get("sourceAddressList", "")).strip())
            if listed is None:
                drifted = True
            for entry in (listed or {}).get("addresses", []):
                ranges.append(str(entry.get("name", "")) if isinstance(entry, dict) else "")
        else:
            ranges.append(str(v.get("source") or "0.0.0.0/0"))
        networks = []
        for text in ranges:
            try:
                network = ipaddress.ip_network(text.split("%", 1)[0], strict=False)
            except ValueError:
                drifted = True
                continue
            if network.prefixlen or tmc is not None:
                networks.append(str(network))
        timeout: int | None = None
        persist = v.get("persist") or []
        refs = [str(p.get("name", "")) for p in persist if isinstance(p, dict)]
        if refs:
            profile = self.persists.get(refs[0]) if len(refs) == 1 else None
            seconds = str((profile or {}).get("timeout", ""))
            if profile is None or not seconds.isdigit():
                drifted = True
            else:
                timeout = int(seconds)
        return msgspec.structs.replace(
            server,
            source_ranges=tuple(sorted(set(networks))),
            affinity_timeout_s=timeout,
            monitor=_DRIFTED if drifted else server.monitor,
        )
