"""A10 ACOS (Thunder, vThunder) as an L2 DSR appliance, over aXAPI v3.

Each cluster has its own ACOS partition and its own API session, whose
``active-partition`` is set once at login (it is session state, so sharing a
session between partitions would race). In a partition:

- ``slb server <prefix>-node-<address>`` per node address, its ``user-tag``
  the node name, with a port entry for each service port used;
- per virtual server of ours (same name): an ``slb service-group`` whose
  members are those servers on the service port, and a ``health monitor``
  (http, https or tcp from the Service's appliance profile; ``override-port``:
  the health port; none when the profile has no health check) named from a
  hash of it, as monitor names are limited to 31 characters;
- per idle timeout a profile sets: ``slb template tcp`` and ``udp``
  ``<prefix>-idle<seconds>``, bound to the virtual ports that use it;
- ``slb virtual-server <prefix>-vip-<VIP>`` per VIP (ACOS allows one per
  address), its ``user-tag`` the owner, with one virtual port per virtual
  server of ours: ``no-dest-nat`` (DSR), bound to the service group and named
  like it; with source ranges or affinity, an access list and a persist
  template bound to it (see the section at the end).

aXAPI has no transactions: a batch is applied request by request, serialised
per partition, creates treat "already exists" and deletes "does not exist"
as done, so a batch cut short is finished by the next reconcile. After each
batch ``write memory`` saves the partition (unless switched off); servers of
ours that no service group uses any more are removed.

One module (over 500 lines) on purpose: sessions, partitions, the request
order that stands in for transactions and the translation to and from ACOS
objects all follow one vendor document, and are read (and checked against it
and the emulator) together.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NoReturn

import msgspec

from vipwire.contracts import Member
from vipwire.lbdriver.core.profiles import MonitorKind
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

log = logging.getLogger("vipwire.lbdriver.a10")

_API: Final = "/axapi/v3"
_SHARED: Final = "shared"
# Codes public ACOS clients map (acos-client acos_client/v30/responses.py); messages
# are checked too, as codes vary by release.
_NOT_FOUND_CODES: Final = frozenset({1023460352, 1023410176, 1023410181, 1023475722, 1207959957})
_EXISTS_CODES: Final = frozenset(
    {67240011, 67371011, 654311495, 754974732, 1023410183, 1023451144, 1023451145}
    | {1023459337, 1023459339, 1023459340, 1405}
)
#: The session is no longer valid (answered as ``response.err``, often not with 401).
_SESSION_INVALID_CODES: Final = frozenset({419495936, 1207960052, 1208025092})
#: The configuration manager is busy or not ready (booting, saving): try again later.
_BUSY_CODES: Final = frozenset({1023463424, 1208025095, 1023464192, 1023464193, 4294967295})
#: The partition id asked for was taken meanwhile (another creator): take the next one.
_PARTITION_ID_TAKEN: Final = 754974733
#: ``write memory`` refusing its JSON body (ACOS 4.1.0): send it again without one.
_JSON_FORMAT_CODES: Final = frozenset({1023508480, 1023524874})
#: ``user-tag`` (our owner and node names) is in aXAPI v3 from ACOS 4.1.
_MIN_VERSION: Final = (4, 1)
#: Where a cluster's objects live: a partition the operator made (``existing``), one
#: vipwire makes (``create``), or the shared partition (``shared``).
PartitionMode = Literal["existing", "create", "shared"]
# The listed form of a virtual port of ours that is not what we program (DSR off,
# service group or monitor gone): a monitor nothing desires, so the diff rewrites it.
_DRIFTED: Final = Monitor(port=0, path="")
# Our protocol → (virtual port protocol, service-group and server port protocol).
# ACOS virtual ports know no SCTP; "others" balances any non-TCP/UDP IP protocol.
_PROTOCOLS: Final[dict[str, tuple[str, str]]] = {
    "TCP": ("tcp", "tcp"),
    "UDP": ("udp", "udp"),
    "SCTP": ("others", "tcp"),
}
_FROM_VPORT: Final[dict[str, L4Protocol]] = {"tcp": "TCP", "udp": "UDP", "others": "SCTP"}
#: ACOS's largest (and default) virtual port ``conn-limit``: no limit of ours.
CONN_LIMIT_NONE: Final = 64_000_000
#: ACOS allows 1-10 retries and a per-probe timeout of 1-12 s.
_MAX_RETRY: Final = 10
_MAX_PROBE_TIMEOUT: Final = 12
_IDLE: Final = re.compile(r"-idle(\d+)$")
_TIMEOUT_TAG: Final = re.compile(r"^vipwire timeout_s=(\d+)$")
_DEF_SELECTION: Final = "def-selection-if-pref-failed"
_NO_DEF_SELECTION: Final = "def-selection-if-pref-failed-disable"
#: A service group without a health check.
_NO_MONITOR: Final = Monitor(port=0, path="", kind="none", interval_s=0, timeout_s=0)


class _NoPartition(Exception):
    """The cluster's partition does not exist (yet)."""


def _safe(address: str) -> str:
    return address.replace(":", "_")


def server_name(prefix: str, address: str) -> str:
    return f"{prefix}-node-{_safe(address)}"


def vip_name(prefix: str, address: str) -> str:
    return f"{prefix}-vip-{_safe(address)}"


def monitor_name(prefix: str, name: str) -> str:
    """At most 29 characters: ACOS refuses longer health monitor names."""
    return f"{prefix[:13]}-hm-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def _prefix_of(name: str) -> str:
    # Our names are "<prefix>-…" and the prefix holds no '-'.
    return name.split("-", 1)[0]


def _err(body: Any) -> tuple[int | None, str]:
    if isinstance(body, dict):
        schema = body.get("authorizationschema")
        if isinstance(schema, dict):
            return _int(schema.get("code")), str(schema.get("error", ""))
        response = body.get("response")
        if isinstance(response, dict):
            err = response.get("err")
            if isinstance(err, dict):
                return _int(err.get("code")), str(err.get("msg", ""))
    return None, str(body)[:500]


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _failed(resp: HttpResponse) -> bool:
    if not 200 <= resp.status < 300:
        return True
    body = resp.body
    if isinstance(body, dict) and "authorizationschema" in body:
        return True  # ACOS answers an invalid session with this body, at times with 2xx
    response = body.get("response") if isinstance(body, dict) else None
    return isinstance(response, dict) and str(response.get("status", "")).lower() == "fail"


def _missing(resp: HttpResponse) -> bool:
    code, msg = _err(resp.body)
    return resp.status == 404 or code in _NOT_FOUND_CODES or "does not exist" in msg.lower()


def _exists(resp: HttpResponse) -> bool:
    code, msg = _err(resp.body)
    return code in _EXISTS_CODES or "already exist" in msg.lower()


def _auth_failure(resp: HttpResponse) -> bool:
    return (
        resp.status in (401, 403)
        or (isinstance(resp.body, dict) and "authorizationschema" in resp.body)
        or _err(resp.body)[0] in _SESSION_INVALID_CODES
    )


def _session_invalid(resp: HttpResponse) -> bool:
    """The session has expired or was ended: log in again (not a refused login)."""
    code, _ = _err(resp.body)
    schema = isinstance(resp.body, dict) and "authorizationschema" in resp.body
    return resp.status == 401 or (schema and code == 401) or code in _SESSION_INVALID_CODES


def _busy(resp: HttpResponse) -> bool:
    return _err(resp.body)[0] in _BUSY_CODES


def parse_version(text: str) -> tuple[int, int] | None:
    """``4.1.4-GR1-P5, build 81`` -> (4, 1); None when it is not a release number."""
    match = re.match(r"\s*(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass(slots=True)
class _Server:
    address: str
    node: str
    ports: set[tuple[int, str]]


@dataclass(slots=True)
class _Vip:
    name: str
    owner: str
    ports: set[tuple[int, str]]


@dataclass(slots=True)
class _View:
    """One partition as last read, kept current by our own writes."""

    servers: dict[str, VirtualServer] = field(default_factory=dict)
    vips: dict[str, _Vip] = field(default_factory=dict)  # by VIP address
    vports: dict[str, tuple[str, int, str]] = field(
        default_factory=dict
    )  # ours → (vs, port, proto)
    a10_servers: dict[str, _Server] = field(default_factory=dict)
    groups: dict[str, set[tuple[str, int]]] = field(default_factory=dict)  # members by group
    # Members disabled (member-state not enable) by group: draining, see _member_entry.
    disabled: dict[str, set[tuple[str, int]]] = field(default_factory=dict)
    monitors: set[str] = field(default_factory=set)
    #: Access lists of each family (their source ranges) and persist templates (their
    #: requested timeout in seconds), by name.
    acls: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    acls6: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    persists: dict[str, int | None] = field(default_factory=dict)
    #: ``tcp/<name>`` and ``udp/<name>`` templates known to exist (created by us).
    templates: set[str] = field(default_factory=set)
    #: Servers with ACOS's default health checks on (on the server or a port).
    checks_on: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Session:
    signature: str | None = None
    active: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class A10Driver(RestDriver):
    """An A10 Thunder (or the floating management address of a VRRP-A pair) for L2 DSR."""

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
        write_memory: bool = True,
        partition_mode: PartitionMode = "existing",
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
        self.write_memory = write_memory
        self.partition_mode: PartitionMode = partition_mode
        self._version_checked = False
        self._sessions: dict[str, _Session] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._views: dict[str, _View] = {}
        self._unsaved: set[str] = set()

    @classmethod
    def from_settings(cls, settings: ApplianceSettings) -> A10Driver:
        return cls(
            **cls.common_arguments(settings),
            write_memory=settings.write_memory,
            partition_mode=settings.partition_mode,
        )

    def partition_of(self, cluster: str) -> str:
        if self.partition_mode == "shared":
            return _SHARED
        return super().partition_of(cluster)

    # --- the driver interface ----------------------------------------------------

    async def list_virtual_servers(self, partition: str) -> dict[str, VirtualServer]:
        part = self.partition_of(partition)
        # Not in the middle of a batch: the view we keep must be a consistent one.
        async with self._lock(part):
            view = await self._read(part)
        return dict(view.servers)

    async def apply(self, partition: str, ops: Sequence[Operation]) -> None:
        if not ops:
            return
        part = self.partition_of(partition)
        # No transactions: one batch at a time per partition keeps shared servers sane.
        async with self._lock(part):
            try:
                await self._session(part, create=True)
                view = self._views.get(part)
                if view is None:
                    view = await self._read(part)
                for op in ops:
                    await self._apply(part, view, op)
                if any(isinstance(op, UpdateMembers | DeleteVirtualServer) for op in ops):
                    await self._collect_servers(part, view, {_prefix_of(_name(op)) for op in ops})
            except BaseException:
                self._views.pop(part, None)  # partly applied: read afresh next time
                raise
            self._unsaved.add(part)
            await self._save(part)

    async def close(self) -> None:
        for part, session in list(self._sessions.items()):
            if session.signature is not None:
                with contextlib.suppress(ApplianceError):
                    await self._http.send(
                        "POST",
                        f"{_API}/logoff",
                        headers={"Authorization": f"A10 {session.signature}"},
                    )
                log.debug("%s: logged off (partition %s)", self.name, part)
        self._sessions.clear()
        await self._http.close()

    def _lock(self, part: str) -> asyncio.Lock:
        lock = self._locks.get(part)
        if lock is None:
            lock = self._locks[part] = asyncio.Lock()
        return lock

    # --- reading -------------------------------------------------------------------

    async def _read(self, part: str) -> _View:
        if part in self._unsaved:
            await self._save(part)
        try:
            await self._session(part, create=False)
        except _NoPartition:
            view = self._views[part] = _View()
            return view
        vss, sgs, srvs, mons, acls, acls6, persists = await all_or_first_error(
            self._collection(part, "/slb/virtual-server", "virtual-server-list"),
            self._collection(part, "/slb/service-group", "service-group-list"),
            self._collection(part, "/slb/server", "server-list"),
            self._collection(part, "/health/monitor", "monitor-list"),
            self._collection(part, _ACL, "access-list-list"),
            self._collection(part, _ACL6, "access-list-list"),
            self._collection(part, _PERSIST, "source-ip-list"),
        )
        view = _translate(vss, sgs, srvs, mons, _access_view(acls, acls6, persists))
        self._views[part] = view
        return view

    async def _collection(self, part: str, path: str, key: str) -> list[dict[str, Any]]:
        resp = await self._call(part, "GET", path)
        if _failed(resp):
            if _missing(resp):
                return []  # ACOS answers a read of an empty collection as "does not exist"
            self._raise(resp, f"GET {path}")
        items = resp.body.get(key, []) if isinstance(resp.body, dict) else []
        return [i for i in items if isinstance(i, dict)]

    # --- writing -------------------------------------------------------------------

    async def _apply(self, part: str, view: _View, op: Operation) -> None:
        match op:
            case CreateVirtualServer(server=s) | UpdateVirtualServer(server=s):
                await self._put_virtual_server(part, view, s)
            case UpdateMembers(name=name, members=members, draining=draining):
                await self._put_members(part, view, name, members, draining)
            case DeleteVirtualServer(name=name):
                await self._delete_virtual_server(part, view, name)

    async def _put_virtual_server(self, part: str, view: _View, s: VirtualServer) -> None:
        prefix = _prefix_of(s.name)
        vproto, proto = _PROTOCOLS[s.protocol]
        vip = view.vips.get(s.address)
        if vip is not None and vip.name != vip_name(prefix, s.address):
            # Its name may be another tenant's: the log has it, the Event does not.
            log.warning(
                "%s/%s: VIP %s of %s is held by virtual-server %r",
                self.name,
                part,
                s.address,
                s.name,
                vip.name,
            )
            raise ApplianceRejected(
                self.name,
                f"{part}: VIP {s.address} is held by another virtual-server on the appliance "
                "(its name is in the lbdriver log)",
            )
        for member in (*s.members, *s.draining):
            await self._ensure_server(part, view, prefix, member, port=s.port, proto=proto)
        monitor = monitor_name(prefix, s.name)
        if s.monitor.kind != "none":
            await self._upsert(
                part,
                "/health/monitor",
                monitor,
                {"monitor": monitor_body(monitor, s.monitor)},
                exists=monitor in view.monitors,
            )
            view.monitors.add(monitor)
        await self._ensure_idle_template(part, view, prefix, s)
        members = {(server_name(prefix, m.address), s.port) for m in s.members}
        disabled = {(server_name(prefix, m.address), s.port) for m in s.draining} - members
        group = {
            "service-group": {
                "name": s.name,
                "protocol": proto,
                **service_group_fields(monitor, s),
                "member-list": [
                    _member_entry(n, p, disabled=(n, p) in disabled)
                    for n, p in sorted(members | disabled)
                ],
            }
        }
        await self._upsert(part, "/slb/service-group", s.name, group, exists=s.name in view.groups)
        view.groups[s.name] = members | disabled
        view.disabled[s.name] = disabled
        if s.monitor.kind == "none" and monitor in view.monitors:
            # The profile dropped its health check: the group no longer uses the monitor.
            await self._delete(part, f"/health/monitor/{monitor}")
            view.monitors.discard(monitor)
        vport = {
            "port-number": s.port,
            "protocol": vproto,
            "name": s.name,
            "service-group": s.name,
            # DSR: the packet reaches the node addressed to the VIP and port it was sent to.
            "no-dest-nat": 1,
            **await _put_access(self, part, view, s),
            **virtual_port_fields(prefix, s),
        }
        if vip is None:
            vs_name = vip_name(prefix, s.address)
            family = "ipv6-address" if ":" in s.address else "ip-address"
            body = {
                "virtual-server": {
                    "name": vs_name,
                    family: s.address,
                    "user-tag": s.owner,
                    "port-list": [vport],
                }
            }
            resp = await self._call(part, "POST", "/slb/virtual-server", body)
            if _failed(resp) and _exists(resp):
                vip = _Vip(vs_name, "", set())  # left by a cut-short batch: add the port below
            elif _failed(resp):
                self._raise(resp, f"create virtual-server {vs_name}")
            else:
                view.vips[s.address] = _Vip(vs_name, s.owner, {(s.port, vproto)})
        if vip is not None:
            base = f"/slb/virtual-server/{vip.name}/port"
            # PUT replaces the port: an access list or template it no longer names goes.
            if (s.port, vproto) in vip.ports:
                await self._check(part, "PUT", f"{base}/{s.port}+{vproto}", {"port": vport})
            else:
                resp = await self._call(part, "POST", base, {"port": vport})
                if _failed(resp) and _exists(resp):
                    await self._check(part, "PUT", f"{base}/{s.port}+{vproto}", {"port": vport})
                elif _failed(resp):
                    self._raise(resp, f"add port {s.port}/{vproto} to {vip.name}")
            if vip.owner != s.owner:
                await self._check(
                    part,
                    "POST",
                    f"/slb/virtual-server/{vip.name}",
                    {"virtual-server": {"name": vip.name, "user-tag": s.owner}},
                )
            vip.owner = s.owner
            vip.ports.add((s.port, vproto))
            view.vips[s.address] = vip
        view.vports[s.name] = (view.vips[s.address].name, s.port, vproto)
        view.servers[s.name] = s
        await _drop_access(self, part, view, s.name, keep=s)

    async def _put_members(
        self,
        part: str,
        view: _View,
        name: str,
        members: tuple[Member, ...],
        draining: tuple[Member, ...] = (),
    ) -> None:
        where = view.vports.get(name)
        current = view.servers.get(name)
        if where is None or current is None:
            raise ApplianceRejected(self.name, f"{part}: no virtual port {name!r} to update")
        prefix = _prefix_of(name)
        _, port, vproto = where
        proto = "udp" if vproto == "udp" else "tcp"
        for member in (*members, *draining):
            await self._ensure_server(part, view, prefix, member, port=port, proto=proto)
        enabled = {(server_name(prefix, m.address), port) for m in members}
        disabled = {(server_name(prefix, m.address), port) for m in draining} - enabled
        want = enabled | disabled
        have = view.groups.get(name, set())
        was_disabled = view.disabled.get(name, set())
        base = f"/slb/service-group/{name}/member"
        for server, p in sorted(want - have):
            entry = _member_entry(server, p, disabled=(server, p) in disabled)
            resp = await self._call(part, "POST", base, {"member": entry})
            if _failed(resp) and not _exists(resp):
                self._raise(resp, f"add member {server}:{p} to {name}")
        await self._set_member_states(part, name, (want & have), disabled, was_disabled)
        for server, p in sorted(have - want):
            resp = await self._call(part, "DELETE", f"{base}/{server}+{p}")
            if _failed(resp) and not _missing(resp):
                self._raise(resp, f"remove member {server}:{p} from {name}")
        view.groups[name] = want
        view.disabled[name] = disabled
        view.servers[name] = msgspec.structs.replace(
            current,
            members=tuple(sorted(set(members))),
            draining=tuple(sorted(set(draining) - set(members))),
        )

    async def _set_member_states(
        self,
        part: str,
        name: str,
        kept: set[tuple[str, int]],
        disabled: set[tuple[str, int]],
        was_disabled: set[tuple[str, int]],
    ) -> None:
        """Graceful drain: disable the members that start draining, enable those that
        came back (one member update each; the others are left alone)."""
        base = f"/slb/service-group/{name}/member"
        for server, p in sorted(kept):
            now_disabled = (server, p) in disabled
            if now_disabled == ((server, p) in was_disabled):
                continue
            entry = _member_entry(server, p, disabled=now_disabled)
            resp = await self._call(part, "POST", f"{base}/{server}+{p}", {"member": entry})
            if _failed(resp):
                self._raise(resp, f"set member {server}:{p} of {name} {entry['member-state']}")

    async def _delete_virtual_server(self, part: str, view: _View, name: str) -> None:
        where = view.vports.pop(name, None)
        if where is not None:
            vs_name, port, vproto = where
            await self._delete(part, f"/slb/virtual-server/{vs_name}/port/{port}+{vproto}")
            vip = next((v for v in view.vips.values() if v.name == vs_name), None)
            if vip is not None:
                vip.ports.discard((port, vproto))
                if not vip.ports:
                    await self._delete(part, f"/slb/virtual-server/{vs_name}")
                    view.vips = {a: v for a, v in view.vips.items() if v is not vip}
        await self._delete(part, f"/slb/service-group/{name}")
        view.groups.pop(name, None)
        view.disabled.pop(name, None)
        monitor = monitor_name(_prefix_of(name), name)
        await self._delete(part, f"/health/monitor/{monitor}")
        view.monitors.discard(monitor)
        view.servers.pop(name, None)
        await _drop_access(self, part, view, name, keep=None)

    async def _ensure_idle_template(
        self, part: str, view: _View, prefix: str, s: VirtualServer
    ) -> None:
        """Create the TCP or UDP template carrying the profile's idle timeout, once."""
        if s.idle_timeout_s is None:
            return
        kind = _template_kind(s.protocol)
        name = idle_template_name(prefix, s.idle_timeout_s)
        if f"{kind}/{name}" in view.templates:
            return
        body = {kind: {"name": name, "idle-timeout": s.idle_timeout_s}}
        resp = await self._call(part, "POST", f"/slb/template/{kind}", body)
        if _failed(resp) and not _exists(resp):
            self._raise(resp, f"create template {kind} {name}")
        view.templates.add(f"{kind}/{name}")

    async def _ensure_server(
        self, part: str, view: _View, prefix: str, member: Member, *, port: int, proto: str
    ) -> None:
        name = server_name(prefix, member.address)
        known = view.a10_servers.get(name)
        # ACOS pings every server and opens an L4 connection to node:port on every
        # server port by default; a node in DSR answers the latter for nothing, so
        # the member would go down. The service group's monitor is the check.
        entry = {"port-number": port, "protocol": proto, _HC_OFF: 1}
        if known is None:
            family = "server-ipv6-addr" if ":" in member.address else "host"
            body = {
                "server": {
                    "name": name,
                    family: member.address,
                    "user-tag": member.node,
                    _HC_OFF: 1,
                    "port-list": [entry],
                }
            }
            resp = await self._call(part, "POST", "/slb/server", body)
            if not _failed(resp):
                view.a10_servers[name] = _Server(member.address, member.node, {(port, proto)})
                return
            if not _exists(resp):
                self._raise(resp, f"create server {name}")
            known = view.a10_servers[name] = _Server(member.address, "", set())
        if (port, proto) not in known.ports:
            resp = await self._call(part, "POST", f"/slb/server/{name}/port", {"port": entry})
            if _failed(resp) and not _exists(resp):
                self._raise(resp, f"add port {port}/{proto} to server {name}")
            known.ports.add((port, proto))
        if name in view.checks_on:
            # Made before health checks were switched off (or by hand): switch them off.
            ports = [{"port-number": n, "protocol": p, _HC_OFF: 1} for n, p in sorted(known.ports)]
            await self._check(
                part,
                "POST",
                f"/slb/server/{name}",
                {"server": {"name": name, _HC_OFF: 1, "port-list": ports}},
            )
            view.checks_on.discard(name)
        if known.node != member.node:
            await self._check(
                part,
                "POST",
                f"/slb/server/{name}",
                {"server": {"name": name, "user-tag": member.node}},
            )
            known.node = member.node

    async def _collect_servers(self, part: str, view: _View, prefixes: set[str]) -> None:
        """Remove servers of ours that no service group uses any more."""
        used = {server for members in view.groups.values() for server, _ in members}
        for name in sorted(view.a10_servers):
            ours = any(name.startswith(f"{p}-node-") for p in prefixes)
            if not ours or name in used:
                continue
            resp = await self._call(part, "DELETE", f"/slb/server/{name}")
            if _failed(resp) and not _missing(resp):
                # In use by something we do not know of: leave it, it is not garbage.
                log.info("%s: keeping server %s: %s", self.name, name, _err(resp.body)[1])
                continue
            del view.a10_servers[name]

    async def _upsert(
        self, part: str, collection: str, name: str, body: dict[str, Any], *, exists: bool
    ) -> None:
        if not exists:
            resp = await self._call(part, "POST", collection, body)
            if not _failed(resp):
                return
            if not _exists(resp):
                self._raise(resp, f"create {collection}/{name}")
        # PUT replaces the whole object (a service group's member list included).
        await self._check(part, "PUT", f"{collection}/{name}", body)

    async def _delete(self, part: str, path: str) -> None:
        resp = await self._call(part, "DELETE", path)
        if _failed(resp) and not _missing(resp):
            self._raise(resp, f"DELETE {path}")

    async def _check(self, part: str, method: str, path: str, body: Any = None) -> None:
        resp = await self._call(part, method, path, body)
        if _failed(resp):
            self._raise(resp, f"{method} {path}")

    async def _save(self, part: str) -> None:
        if not self.write_memory:
            self._unsaved.discard(part)
            return
        body: dict[str, Any] = (
            # a10-octavia saves shared after creating a partition: write memory shared.
            {"memory": {"partition": "shared"}}
            if part == _SHARED
            else {"memory": {"partition": "specified", "specified-partition": part}}
        )
        # A large configuration takes minutes to save: a commit (timeouts.commit_s).
        resp = await self._call(part, "POST", "/write/memory", body, kind="commit")
        if _failed(resp) and _err(resp.body)[0] in _JSON_FORMAT_CODES:
            # ACOS 4.1.0 refuses the body it documents (acos-client's "regression in
            # 4.1.0" workaround): without a body it saves the session's partition.
            resp = await self._call(part, "POST", "/write/memory", kind="commit")
        if _failed(resp):
            # Running, not saved: a reboot would lose it. Saved before the next call.
            self._raise(resp, f"write memory in {part}")
        self._unsaved.discard(part)

    # --- sessions and requests -----------------------------------------------------

    async def _session(self, part: str, *, create: bool) -> str:
        session = self._sessions.setdefault(part, _Session())
        if session.signature is not None and (session.active or part == _SHARED):
            return session.signature
        async with session.lock:
            if session.signature is None:
                session.signature = await self._login()
                session.active = False
            if part != _SHARED and not session.active:
                # ACOS answers active-partition to a missing partition with 204 and
                # stays in the one it was in: look the partition up first, and read
                # back where the session is after switching.
                signature = session.signature
                # A new session starts in the shared partition, where partitions are read.
                resp = await self._send(signature, "GET", f"/partition/{part}")
                if _failed(resp) and _missing(resp) and not _auth_failure(resp):
                    await self._partition_missing(part, create=create)
                    resp = await self._send(signature, "GET", f"/partition/{part}")
                if _failed(resp) and not _missing(resp) and not _session_invalid(resp):
                    # A partition admin may not read partitions in shared: the read-back
                    # below still tells whether the switch happened.
                    log.debug("%s: cannot read partition %s: %s", self.name, part, _err(resp.body))
                    resp = HttpResponse(200, None)
                if not _failed(resp):
                    resp = await self._send(signature, "POST", f"/active-partition/{part}")
                if not _failed(resp):
                    resp = await self._send(signature, "GET", "/active-partition")
                if _failed(resp):
                    if _auth_failure(resp):
                        session.signature = None
                    self._raise(resp, f"activate partition {part}")
                active = resp.body.get("active-partition") if isinstance(resp.body, dict) else None
                now = active.get("partition-name") if isinstance(active, dict) else None
                if now != part:
                    raise ApplianceRejected(
                        self.name,
                        f"activate partition {part}: the session is in partition {now!r} "
                        "after switching; check the partition and the user's access to it",
                    )
                session.active = True
            return session.signature

    async def _partition_missing(self, part: str, *, create: bool) -> None:
        """Make the missing partition when partition_mode is ``create``; else
        _NoPartition (reading: nothing is there) or a rejection saying what to do."""
        if not create:
            raise _NoPartition(part)
        if self.partition_mode != "create":
            raise ApplianceRejected(
                self.name,
                f"partition {part!r} does not exist: create it on the appliance with its "
                "network (VLAN, interface and address for the VIPs to reach the nodes), or "
                "set partition_mode: create (or shared) for this appliance",
            )
        await self._create_partition(part)

    async def _create_partition(self, part: str) -> None:
        if not 1 <= len(part) <= 14:
            raise ApplianceRejected(
                self.name,
                f"partition name {part!r} has more than 14 characters; map the cluster to a "
                "shorter one with partitions: or partition_template:",
            )
        for _attempt in range(5):
            resp = await self._call(_SHARED, "GET", "/partition-available-id/oper")
            if _failed(resp):
                self._raise(resp, "GET partition-available-id")
            try:
                ranges = resp.body["partition-available-id"]["oper"]["range-list"]
                ident = int(ranges[0]["start"])
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise ApplianceRejected(self.name, "no free partition id") from exc
            body = {"partition": {"partition-name": part, "id": ident}}
            resp = await self._call(_SHARED, "POST", "/partition", body)
            if not (_failed(resp) and _err(resp.body)[0] == _PARTITION_ID_TAKEN):
                break
            # Another client took the id between our lookup and our create.
            log.info("%s: partition id %d was just taken; taking the next", self.name, ident)
        if _failed(resp) and not _exists(resp):
            self._raise(resp, f"create partition {part}")
        log.warning(
            "%s: created partition %s (id %d); it is an L3V partition with no network of "
            "its own: add its VLAN, interface and address on the appliance, or the VIPs "
            "cannot reach the nodes",
            self.name,
            part,
            ident,
        )
        # The partition's definition lives in the shared partition: save that too.
        self._unsaved.add(_SHARED)
        await self._save(_SHARED)

    async def _login(self) -> str:
        attempts = self._login_attempts
        async with self._login_lock:
            if self._login_attempts != attempts and self._login_error is not None:
                # A login we waited for was just refused: do not try the same secret again
                # (repeated failures lock accounts); report the same refusal.
                error = self._login_error
                raise type(error)(self.name, error.message) from error.__cause__
            self._login_attempts += 1
            try:
                signature = await self._new_signature()
            except ApplianceError as exc:
                self._login_error = exc
                raise
            self._login_error = None
            if not self._version_checked:
                await self._check_version(signature)
            return signature

    async def _check_version(self, signature: str) -> None:
        """Refuse an ACOS release without ``user-tag`` with a clear message, once."""
        resp = await self._send(signature, "GET", "/version/oper")
        text = ""
        if not _failed(resp) and isinstance(resp.body, dict):
            oper = resp.body.get("version", {}).get("oper", {})
            text = str(oper.get("sw-version", "")) if isinstance(oper, dict) else ""
        version = parse_version(text)
        if version is None:
            log.warning("%s: could not read the ACOS version (%s)", self.name, _err(resp.body)[1])
        elif version < _MIN_VERSION:
            # Not left open: ACOS limits sessions, and every retry logs in again.
            with contextlib.suppress(ApplianceError):
                await self._send(signature, "POST", "/logoff")
            raise ApplianceRejected(
                self.name,
                f"ACOS {text.split(',')[0]} is too old: vipwire needs ACOS 4.1 or later "
                "(it keeps owners and node names in user-tag); upgrade the appliance",
            )
        self._version_checked = True

    async def _new_signature(self) -> str:
        creds = self._credentials.load()
        resp = await self._http.send(
            "POST",
            f"{_API}/auth",
            json={"credentials": {"username": creds.username, "password": creds.password}},
            kind="login",
        )
        if _failed(resp) or not isinstance(resp.body, dict) or "authresponse" not in resp.body:
            code, msg = _err(resp.body)
            cause = VendorError(resp.status, msg, resp.body)
            if resp.status == 429 or resp.status >= 500:
                raise ApplianceUnavailable(
                    self.name, f"login: HTTP {resp.status}: {msg}"
                ) from cause
            log.warning(
                "%s: login as %r refused: HTTP %d: %s (code %s)",
                self.name,
                creds.username,
                resp.status,
                msg,
                code,
            )
            raise ApplianceAuthError(
                self.name, self._credentials.refused(f"HTTP {resp.status}: {msg} (code {code})")
            ) from cause
        return str(resp.body["authresponse"]["signature"])

    async def _call(
        self,
        part: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        kind: RequestClass | None = None,
    ) -> HttpResponse:
        """One request in the partition's session; if the session is found invalid
        (401, a session code, an authorizationschema body), log in again once."""
        resp: HttpResponse | None = None
        for _attempt in range(2):
            signature = await self._session(part, create=True)
            resp = await self._send(signature, method, path, body, kind=kind)
            if not _session_invalid(resp):
                return resp
            session = self._sessions[part]
            if session.signature == signature:
                session.signature, session.active = None, False
        assert resp is not None
        return resp

    async def _send(
        self,
        signature: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        kind: RequestClass | None = None,
    ) -> HttpResponse:
        return await self._http.send(
            method, _API + path, json=body, headers={"Authorization": f"A10 {signature}"}, kind=kind
        )

    def _raise(self, resp: HttpResponse, what: str) -> NoReturn:
        code, msg = _err(resp.body)
        cause = VendorError(resp.status, msg, resp.body)
        said = scrub(msg, self._credentials.username)
        text = f"{what}: HTTP {resp.status}: {said}" + (f" (code {code})" if code else "")
        if _auth_failure(resp):
            raise ApplianceAuthError(self.name, text) from cause
        if resp.status == 429 or resp.status >= 500 or _busy(resp):
            raise ApplianceUnavailable(self.name, text) from cause
        raise ApplianceRejected(self.name, text) from cause


def _name(op: Operation) -> str:
    match op:
        case CreateVirtualServer(server=s) | UpdateVirtualServer(server=s):
            return s.name
        case UpdateMembers(name=name) | DeleteVirtualServer(name=name):
            return name


# --- the appliance profile, in ACOS objects (pure; see the README's table) ----------


def monitor_body(name: str, monitor: Monitor) -> dict[str, Any]:
    """The ``health monitor`` of a profile's http, https or tcp health check.

    ACOS marks a server down after ``retry`` failed probes, one per
    ``interval``, each waiting at most ``timeout`` (1-12 s): the profile's
    ``timeout_s`` becomes ``(timeout_s - 1) // interval_s`` retries (1-10; the
    built-in 5 s / 16 s gives ACOS's own 3), and is kept exact in the
    ``user-tag`` so that it reads back as written.
    """
    method: dict[str, Any]
    match monitor.kind:
        case "https":
            method = {
                "https": {
                    "https": 1,
                    "web-port": monitor.port,
                    "https-expect": 1,
                    "https-response-code": "200",
                    "https-url": 1,
                    "url-type": monitor.method,
                    "url-path": monitor.path,
                }
            }
        case "tcp":
            method = {"tcp": {"method-tcp": 1, "tcp-port": monitor.port}}
        case _:
            method = {
                "http": {
                    "http": 1,
                    "http-port": monitor.port,
                    "http-expect": 1,
                    "http-response-code": "200",
                    "http-url": 1,
                    "url-type": monitor.method,
                    "url-path": monitor.path,
                }
            }
    return {
        "name": name,
        "retry": max(1, min(_MAX_RETRY, (monitor.timeout_s - 1) // monitor.interval_s)),
        "interval": monitor.interval_s,
        "timeout": min(monitor.interval_s, _MAX_PROBE_TIMEOUT),
        # Probe the node's health port, not the member (service) port.
        "override-port": monitor.port,
        "method": method,
        "user-tag": f"vipwire timeout_s={monitor.timeout_s}",
    }


def service_group_fields(monitor: str, s: VirtualServer) -> dict[str, Any]:
    """The service group's health check and method (``lb-method``, or ``lc-method``
    for least connections, as ACOS keeps them apart)."""
    fields: dict[str, Any] = (
        {"health-check-disable": 1} if s.monitor.kind == "none" else {"health-check": monitor}
    )
    if s.lb_method == "least-connections":
        fields["lc-method"] = "least-connection"
    else:
        fields["lb-method"] = "round-robin"
    return fields


def virtual_port_fields(prefix: str, s: VirtualServer) -> dict[str, Any]:
    """The virtual port's connection limit, all-down action and idle-timeout template.

    Every field is always sent (ACOS's default where the profile sets nothing),
    since an update of a port merges into what it holds.
    """
    kind = _template_kind(s.protocol)
    return {
        "conn-limit": s.connection_limit or CONN_LIMIT_NONE,
        "reset-on-server-selection-fail": 1 if s.all_members_down == "reset" else 0,
        "def-selection-if-pref-failed": (
            _NO_DEF_SELECTION if s.all_members_down == "drop" else _DEF_SELECTION
        ),
        f"template-{kind}": (
            "default" if s.idle_timeout_s is None else idle_template_name(prefix, s.idle_timeout_s)
        ),
    }


def idle_template_name(prefix: str, idle_timeout_s: int) -> str:
    return f"{prefix}-idle{idle_timeout_s}"


def _template_kind(protocol: str) -> str:
    """UDP ports take a UDP template; TCP and SCTP (ACOS ``others``) a TCP one."""
    return "udp" if protocol == "UDP" else "tcp"


# --- reading back --------------------------------------------------------------------


def _translate(
    vss: list[dict[str, Any]],
    sgs: list[dict[str, Any]],
    srvs: list[dict[str, Any]],
    mons: list[dict[str, Any]],
    access: _View | None = None,
) -> _View:
    view = _View()
    if access is not None:
        view.acls, view.acls6, view.persists = access.acls, access.acls6, access.persists
    for srv in srvs:
        address = srv.get("host") or srv.get("server-ipv6-addr")
        name = str(srv.get("name", ""))
        if not name or not address:
            continue
        if srv.get(_HC_OFF) != 1 or any(
            p.get(_HC_OFF) != 1 for p in srv.get("port-list", []) if isinstance(p, dict)
        ):
            view.checks_on.add(name)
        ports = {
            (int(p["port-number"]), str(p.get("protocol")))
            for p in srv.get("port-list", [])
            if isinstance(p, dict) and isinstance(p.get("port-number"), int)
        }
        view.a10_servers[name] = _Server(str(address), str(srv.get("user-tag") or name), ports)
    groups = {str(g.get("name")): g for g in sgs}
    for name, g in groups.items():
        entries = [m for m in g.get("member-list", []) if isinstance(m, dict)]
        view.groups[name] = {(str(m.get("name")), int(m.get("port", 0))) for m in entries}
        view.disabled[name] = {
            (str(m.get("name")), int(m.get("port", 0)))
            for m in entries
            if m.get("member-state", "enable") != "enable"
        }
    monitors = {str(m.get("name")): m for m in mons}
    view.monitors = set(monitors)
    for vs in vss:
        address = vs.get("ip-address") or vs.get("ipv6-address")
        vs_name = str(vs.get("name", ""))
        if not address or not vs_name:
            continue
        owner = str(vs.get("user-tag") or "")
        vip = view.vips[str(address)] = _Vip(vs_name, owner, set())
        for vport in vs.get("port-list", []):
            if not isinstance(vport, dict) or not isinstance(vport.get("port-number"), int):
                continue
            port, vproto = int(vport["port-number"]), str(vport.get("protocol"))
            vip.ports.add((port, vproto))
            protocol = _FROM_VPORT.get(vproto)
            if protocol is None:
                continue  # an L7 port: not something we make
            name = str(vport.get("name") or f"{vs_name}-{port}-{vproto}")
            group = groups.get(str(vport.get("service-group")))
            server = _virtual_server(
                name,
                owner,
                str(address),
                port,
                protocol,
                vport=vport,
                group=group,
                view=view,
                monitors=monitors,
            )
            view.servers[name] = _read_access(server, vport, view)
            view.vports[name] = (vs_name, port, vproto)
    return view


def _virtual_server(
    name: str,
    owner: str,
    address: str,
    port: int,
    protocol: L4Protocol,
    *,
    vport: dict[str, Any],
    group: dict[str, Any] | None,
    view: _View,
    monitors: dict[str, dict[str, Any]],
) -> VirtualServer:
    drifted = vport.get("no-dest-nat") != 1 or group is None
    members: list[Member] = []
    draining: list[Member] = []
    monitor = _DRIFTED
    lb_method: Any = "round-robin"
    if group is not None:
        disabled = view.disabled.get(str(group.get("name")), set())
        if group.get("lc-method") == "least-connection":
            lb_method = "least-connections"
        elif group.get("lc-method") or group.get("lb-method", "round-robin") != "round-robin":
            drifted = True  # a method we never set: set ours again
        for server_ref, member_port in view.groups.get(str(group.get("name")), set()):
            server = view.a10_servers.get(server_ref)
            # ACOS's default checks on (a server of an older vipwire) take members down.
            drifted = drifted or server_ref in view.checks_on
            if server is None or member_port != port:
                drifted = True
                continue
            member = Member(node=server.node, address=server.address)
            (draining if (server_ref, member_port) in disabled else members).append(member)
        if group.get("health-check-disable") == 1 and not group.get("health-check"):
            monitor = _NO_MONITOR
        else:
            monitor = _monitor(monitors.get(str(group.get("health-check"))))
    limit = vport.get("conn-limit")
    down: Any = "none"
    if vport.get("reset-on-server-selection-fail") == 1:
        down = "reset"
    elif vport.get("def-selection-if-pref-failed") == _NO_DEF_SELECTION:
        down = "drop"
    template = vport.get(f"template-{_template_kind(protocol)}")
    idle = _IDLE.search(str(template)) if template else None
    return VirtualServer(
        name=name,
        owner=owner,
        address=address,
        port=port,
        protocol=protocol,
        members=tuple(sorted(set(members))),
        monitor=_DRIFTED if drifted else monitor,
        idle_timeout_s=int(idle.group(1)) if idle else None,
        connection_limit=(
            limit if isinstance(limit, int) and 0 < limit < CONN_LIMIT_NONE else None
        ),
        lb_method=lb_method,
        all_members_down=down,
        draining=tuple(sorted(set(draining) - set(members))),
    )


def _member_entry(server: str, port: int, *, disabled: bool) -> dict[str, Any]:
    """A service-group member; a draining one ``member-state: disable`` (no new
    connections, established ones continue; aXAPI v3 ``slb service-group member``)."""
    return {"name": server, "port": port, "member-state": "disable" if disabled else "enable"}


def _monitor(m: dict[str, Any] | None) -> Monitor:
    if m is None:
        return _DRIFTED
    method = m.get("method")
    if not isinstance(method, dict):
        return _DRIFTED
    interval, retry = m.get("interval", 5), m.get("retry", 3)
    if not isinstance(interval, int) or not isinstance(retry, int):
        return _DRIFTED
    tag = _TIMEOUT_TAG.match(str(m.get("user-tag") or ""))
    # Without our tag (written before profiles existed): what the retries come to.
    timeout = int(tag.group(1)) if tag else retry * interval + 1
    if isinstance(method.get("tcp"), dict):
        port = m.get("override-port") or method["tcp"].get("tcp-port")
        if not isinstance(port, int):
            return _DRIFTED
        return Monitor(port=port, path="", kind="tcp", interval_s=interval, timeout_s=timeout)
    kind: MonitorKind = "https" if isinstance(method.get("https"), dict) else "http"
    probe = method.get(kind)
    if not isinstance(probe, dict) or probe.get("url-type", "GET") != "GET":
        return _DRIFTED
    port = m.get("override-port") or probe.get("http-port" if kind == "http" else "web-port")
    path = probe.get("url-path")
    if not isinstance(port, int) or not isinstance(path, str):
        return _DRIFTED
    return Monitor(port=port, path=path, kind=kind, interval_s=interval, timeout_s=timeout)


# --- source ranges and affinity ------------------------------------------------------
#
# aXAPI v3: a virtual port's sources are restricted by an access list bound to it
# (IPv4: ``ip access-list``, the port's ``acl-list`` [``acl-name``]; IPv6: ``ipv6
# access-list``, the port's ``ipv6-acl-list`` [``ipv6-acl-name``]) with one ``permit``
# rule per range and the implicit deny after them. Affinity is an ``slb template
# persist source-ip`` (``timeout`` in minutes, so seconds are rounded up to whole
# minutes; its ``user-tag`` keeps the seconds asked for) named by the port's
# ``template-persist-source-ip``. One list and one template per virtual port, named
# from a hash of its name like the health monitors.

_HC_OFF: Final = "health-check-disable"
_ACL: Final = "/ip/access-list"
_ACL6: Final = "/ipv6/access-list"
_PERSIST: Final = "/slb/template/persist/source-ip"
#: ACOS's longest persist timeout, in minutes.
_MAX_PERSIST_MINUTES: Final = 4321


def acl_name(prefix: str, name: str) -> str:
    return f"{prefix[:14]}-acl-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def persist_name(prefix: str, name: str) -> str:
    return f"{prefix[:14]}-ps-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def _minutes(seconds: int) -> int:
    return min(max(1, -(-seconds // 60)), _MAX_PERSIST_MINUTES)


def _acl_rules(ranges: tuple[str, ...], v6: bool) -> list[dict[str, Any]]:
    rules = []
    for seq, text in enumerate(ranges, start=1):
        network = ipaddress.ip_network(text, strict=False)
        rule: dict[str, Any] = {"seq-num": seq * 10, "action": "permit", "dst-any": 1}
        if v6:
            rule.update({"ipv6": 1, "src-subnet": str(network)})
        else:
            rule.update(
                {
                    "ip": 1,
                    "src-subnet": str(network.network_address),
                    "src-mask": str(network.hostmask),  # a wildcard mask
                }
            )
        rules.append(rule)
    return rules


async def _put_access(
    driver: A10Driver, part: str, view: _View, s: VirtualServer
) -> dict[str, Any]:
    """Write the port's access list and template; the port fields that bind them."""
    prefix = _prefix_of(s.name)
    fields: dict[str, Any] = {}
    if s.source_ranges:
        v6 = ":" in s.address
        acl = acl_name(prefix, s.name)
        known = view.acls6 if v6 else view.acls
        rules = {"access-list": {"name": acl, "rules": _acl_rules(s.source_ranges, v6)}}
        await driver._upsert(part, _ACL6 if v6 else _ACL, acl, rules, exists=acl in known)
        known[acl] = tuple(sorted(s.source_ranges))
        if v6:
            fields["ipv6-acl-list"] = [{"ipv6-acl-name": acl}]
        else:
            fields["acl-list"] = [{"acl-name": acl}]
    if s.affinity_timeout_s is not None:
        template = persist_name(prefix, s.name)
        body: dict[str, Any] = {
            "source-ip": {
                "name": template,
                "timeout": _minutes(s.affinity_timeout_s),
                "user-tag": str(s.affinity_timeout_s),
            }
        }
        exists = template in view.persists
        await driver._upsert(part, _PERSIST, template, body, exists=exists)
        view.persists[template] = s.affinity_timeout_s
        fields["template-persist-source-ip"] = template
    return fields


async def _drop_access(
    driver: A10Driver, part: str, view: _View, name: str, *, keep: VirtualServer | None
) -> None:
    """Delete the port's access list or template once no port names it any more."""
    prefix = _prefix_of(name)
    acl, template = acl_name(prefix, name), persist_name(prefix, name)
    v6 = keep is not None and ":" in keep.address
    for known, path, wanted in (
        (view.acls, _ACL, keep is not None and keep.source_ranges and not v6),
        (view.acls6, _ACL6, keep is not None and keep.source_ranges and v6),
    ):
        if acl in known and not wanted:
            await driver._delete(part, f"{path}/{acl}")
            known.pop(acl, None)
    if template in view.persists and (keep is None or keep.affinity_timeout_s is None):
        await driver._delete(part, f"{_PERSIST}/{template}")
        view.persists.pop(template, None)


def _acl_ranges(acl: dict[str, Any]) -> tuple[str, ...] | None:
    """The ranges an access list of ours permits; None when it is not one we write."""
    ranges = []
    for rule in acl.get("rules", []):
        if not isinstance(rule, dict) or rule.get("action") != "permit":
            return None
        try:
            if "src-host" in rule:
                ranges.append(str(ipaddress.ip_network(str(rule["src-host"]))))
            elif rule.get("ipv6") == 1:
                ranges.append(str(ipaddress.IPv6Network(str(rule.get("src-subnet")))))
            else:
                wildcard = int(ipaddress.IPv4Address(str(rule.get("src-mask"))))
                prefix = 32 - wildcard.bit_length()
                network = f"{rule.get('src-subnet')}/{prefix}"
                ranges.append(str(ipaddress.IPv4Network(network, strict=False)))
        except ValueError:
            return None
    return tuple(sorted(ranges))


def _access_view(
    acls: list[dict[str, Any]], acls6: list[dict[str, Any]], persists: list[dict[str, Any]]
) -> _View:
    view = _View()
    view.acls = {str(a.get("name")): _acl_ranges(a) for a in acls}
    view.acls6 = {str(a.get("name")): _acl_ranges(a) for a in acls6}
    for t in persists:
        minutes, tag = t.get("timeout", 5), str(t.get("user-tag") or "")
        seconds = int(tag) if tag.isdigit() and _minutes(int(tag)) == minutes else None
        if seconds is None and isinstance(minutes, int):
            seconds = minutes * 60
        view.persists[str(t.get("name"))] = seconds
    return view


def _read_access(server: VirtualServer, vport: dict[str, Any], view: _View) -> VirtualServer:
    """The server with the source ranges and affinity its virtual port has on ACOS."""
    drifted = False
    ranges: tuple[str, ...] = ()
    bound = [(view.acls, a.get("acl-name")) for a in vport.get("acl-list", [])] + [
        (view.acls6, a.get("ipv6-acl-name")) for a in vport.get("ipv6-acl-list", [])
    ]
    if len(bound) > 1:
        drifted = True
    for known, acl in bound[:1]:
        listed = known.get(str(acl))
        if listed is None:
            drifted = True
        else:
            ranges = listed
    timeout = None
    template = vport.get("template-persist-source-ip")
    if template:
        timeout = view.persists.get(str(template))
        drifted = drifted or timeout is None
    return msgspec.structs.replace(
        server,
        source_ranges=ranges,
        affinity_timeout_s=timeout,
        monitor=_DRIFTED if drifted else server.monitor,
    )
