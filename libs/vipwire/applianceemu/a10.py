"""An A10 ACOS aXAPI v3 emulator: the subset an L4 provisioning client uses.

Served: signature authentication (``POST /axapi/v3/auth``, ``Authorization:
A10 <signature>``, session expiry, ``/axapi/v3/logoff``), partitions
(``/axapi/v3/partition``, ``/axapi/v3/partition-available-id/oper``) and the
per-session ``active-partition``, ``slb server`` (with ``port-list`` and the
``port`` sub-resource), ``slb service-group`` (``member-list``, ``member``
sub-resource; a member's ``member-state``: ``disable`` takes no new connections,
see :func:`member_takes_new_connections`), ``health monitor`` (methods http,
https, tcp), ``slb template tcp`` and ``udp`` (``idle-timeout``), ``slb
virtual-server`` (``port-list`` and the ``port`` sub-resource), ``ip access-list``
and ``ipv6 access-list``, ``slb template persist source-ip`` and ``write memory``.
Objects live in the session's active partition. POST to a collection creates, POST to
an object updates (fields merged, lists merged by key), PUT replaces, DELETE
removes. Failures have ACOS's shape ``{"response": {"status": "fail", "err":
{"code", "from", "msg"}}}``; authentication failures
``{"authorizationschema": {"code", "error", ...}}``. Error codes are those
public ACOS clients map (acos-client ``acos_client/v30/responses.py``: not
found 1023460352, exists 67240011 and 67371011, in use 33619969, partition id
taken 754974733, session invalid 419495936 / 1207960052 / 1208025092, config
manager not ready 1023463424 / 1208025095, JSON format error 1023508480); the
emulator's own codes and texts are marked as such.

Modelled because they broke a driver written from the documentation alone
(issue 18; each has its source beside it): ``active-partition`` to a missing
partition answers 204 and switches nowhere; ACOS's default health checks
(ping on the server, an L4 handshake on each server port) mark a member down
unless ``health-check-disable`` is set on the server and on its port; expired
sessions answered three ways (401, a ``response.err`` code, or a 2xx with an
``authorizationschema`` body); busy answers; ACOS 4.1.0's ``write memory``
that refuses its JSON body; a slow ``write memory``; ``user-tag`` refused
before ACOS 4.1; health monitor names of at most 29 characters.

It enforces what a client can get wrong: names unique per kind and
partition, one server per address, one virtual server per VIP, references
that must resolve (member → server and server port, service group → health
monitor, virtual port → service group), objects in use that cannot be
deleted, and the fields an appliance profile sets, in ACOS's ranges (see
:func:`_check_profile_fields`). It is not ACOS: no other templates (but
persist source-ip), no L7, no HA, no traffic.

One module over 500 lines on purpose: one vendor's API, so that every
modelled behaviour sits beside the others it interacts with (the session's
active partition over every object kind, references between kinds).
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote

from aiohttp import web

from vipwire.applianceemu._server import EmulatorServer, json_response, read_json

Obj = dict[str, Any]

NOT_FOUND: Final = 1023460352
# acos-client acos_client/v30/responses.py maps 67240011 and 67371011 to Exists and
# 33619969 to InUse (an earlier emulator had 67240011 as "in use": wrong).
EXISTS: Final = 67240011
IN_USE: Final = 33619969
#: acos-client v30/responses.py: PartitionIdExists (the id was taken meanwhile); its
#: v30/partition.py ``create`` retries with the next available id.
PARTITION_ID_TAKEN: Final = 754974733
#: acos-client v30/responses.py: InvalidSessionID, as ``response.err`` codes.
SESSION_INVALID_CODES: Final = (419495936, 1207960052, 1208025092)
#: acos-client v30/responses.py: ConfigManagerNotReady (1023463424, 1208025095);
#: 1023464192 "System is not ready yet." (from CM) is seen while ACOS boots.
BUSY_CODES: Final = (1023463424, 1208025095, 1023464192, 1023464193)
#: acos-client v30/responses.py: AxapiJsonFormatError.
JSON_FORMAT_ERROR: Final = 1023508480
INVALID: Final = 1023410180  # the emulator's own code for a refused value
#: Longest health monitor name ACOS takes (issue 18: a 30-character name is refused).
MONITOR_NAME_MAX: Final = 29

_OK: Final = {"response": {"status": "OK"}}
_VPORT_PROTOCOLS: Final = {"tcp", "udp", "others"}


class A10Error(Exception):
    def __init__(self, http: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.http = http
        self.code = code
        self.msg = msg

    def body(self) -> Obj:
        return {
            "response": {
                "status": "fail",
                "err": {"code": self.code, "from": "CM", "msg": self.msg},
            }
        }


def _missing(what: str) -> A10Error:
    return A10Error(404, NOT_FOUND, f"Object specified does not exist (object: {what})")


def _exists(what: str) -> A10Error:
    # The emulator's own wording: a client must go by the code, not the text.
    return A10Error(400, EXISTS, f"Duplicate object name (object: {what})")


def _invalid(msg: str) -> A10Error:
    return A10Error(400, INVALID, msg)


@dataclass
class _Partition:
    name: str
    ident: int
    servers: dict[str, Obj] = field(default_factory=dict)
    service_groups: dict[str, Obj] = field(default_factory=dict)
    monitors: dict[str, Obj] = field(default_factory=dict)
    virtual_servers: dict[str, Obj] = field(default_factory=dict)
    acls: dict[str, Obj] = field(default_factory=dict)  # ip access-list
    acls6: dict[str, Obj] = field(default_factory=dict)  # ipv6 access-list
    persist_templates: dict[str, Obj] = field(default_factory=dict)  # persist source-ip
    tcp_templates: dict[str, Obj] = field(default_factory=dict)
    udp_templates: dict[str, Obj] = field(default_factory=dict)

    def body(self) -> Obj:
        return {"partition-name": self.name, "id": self.ident, "application-type": "adc"}


@dataclass
class _Session:
    user: str
    expires: float
    partition: str = "shared"


class A10Emulator(EmulatorServer):
    """One ACOS device's aXAPI. Counters and inspection helpers are for tests."""

    def __init__(
        self,
        *,
        username: str = "admin",
        password: str = "a10",
        session_timeout: float = 600.0,
        partitions: tuple[str, ...] = (),
        version: str = "4.1.4-GR1-P5 build 81",
    ) -> None:
        super().__init__("a10emu")
        self._username = username
        self._password = password
        #: Seconds a session lives (ACOS's admin idle timeout).
        self.session_timeout = session_timeout
        self._sessions: dict[str, _Session] = {}
        self._partitions: dict[str, _Partition] = {"shared": _Partition("shared", 0)}
        for name in partitions:
            self.add_partition(name)
        #: ACOS release (``GET /axapi/v3/version/oper``'s ``sw-version``): below 4.1
        #: ``user-tag`` is refused; 4.1.0 refuses ``write memory``'s JSON body.
        self.version = version
        #: Seconds ``write memory`` takes (a large configuration takes minutes:
        #: acos-client gives it 300 s: the driver sends it as a commit, timeouts.commit_s).
        self.save_delay = 0.0
        #: How a request on an expired session is answered: ``"401"`` (HTTP 401 and
        #: an authorizationschema body), ``"err"`` (HTTP 400, ``response.err`` code
        #: ``session_invalid_code``) or ``"schema-200"`` (HTTP 200 carrying the
        #: authorizationschema body). All three are what acos-client
        #: v30/axapi_http.py and v30/responses.py turn into InvalidSessionID.
        self.invalid_session_answer = "401"
        self.session_invalid_code = SESSION_INVALID_CODES[0]
        #: Pending busy answers: (remaining, code, path part or None).
        self._busy: list[list[Any]] = []
        #: A partition created by another client between our id lookup and our
        #: create (set by :meth:`race_partition_create`).
        self._racer: str | None = None
        #: Configuration changes applied.
        self.writes = 0
        #: ``write memory`` requests, with the partition they were made in.
        self.memory_writes: list[str] = []
        #: Successful logins.
        self.logins = 0
        #: Refused logins.
        self.failed_logins = 0
        #: Sessions ended by logoff.
        self.logoffs = 0
        self._init_preflight_knobs()

    # --- test controls -------------------------------------------------------------

    def add_partition(self, name: str, *, vlans: tuple[int, ...] = ()) -> None:
        """Create a partition as an operator would, with these VLANs (its network: only
        listed, for ``vipwire lb check``; an L3V partition has none until added)."""
        self._partition(name, create=True)
        if vlans:
            self.vlans[name] = list(vlans)

    def remove_partition(self, name: str) -> None:
        """Delete a partition and everything in it, as an operator would."""
        if name != "shared":
            self._partitions.pop(name, None)

    def race_partition_create(self, racer: str = "racer") -> None:
        """The next partition create finds its id just taken by ``racer`` (754974733)."""
        self._racer = racer

    def busy_next(self, count: int = 1, code: int = BUSY_CODES[0], path: str | None = None) -> None:
        """The next ``count`` requests (whose path holds ``path``) answer busy ``code``."""
        self._busy.append([count, code, path])

    def member_states(self, partition: str, group: str) -> dict[tuple[str, int], str]:
        """Each member's oper state, ``UP`` or ``DOWN`` (see :func:`_member_state`)."""
        part = self._partitions.get(partition)
        sg = part.service_groups.get(group) if part is not None else None
        if part is None or sg is None:
            return {}
        return {
            (str(m.get("name")), int(m.get("port", 0))): _member_state(part, m)
            for m in sg.get("member-list", [])
        }

    def set_credentials(self, username: str, password: str) -> None:
        self._username, self._password = username, password

    def expire_sessions(self) -> None:
        """Every signature issued so far is invalid from now on (requests get 401)."""
        for session in self._sessions.values():
            session.expires = 0.0

    @property
    def live_sessions(self) -> int:
        now = time.monotonic()
        return sum(1 for s in self._sessions.values() if s.expires > now)

    @property
    def partitions(self) -> list[str]:
        return sorted(self._partitions)

    def objects(self, partition: str, kind: str) -> dict[str, Obj]:
        """A copy of one kind (``server``, ``service-group``, ``monitor``, ``virtual-server``)."""
        part = self._partitions.get(partition)
        if part is None:
            return {}
        return copy.deepcopy(_store(part, kind))

    def plant(self, partition: str, kind: str, body: Obj) -> None:
        """Create an object directly, as another tool would (no write counted)."""
        part = self._partition(partition, create=True)
        _store(part, kind)[str(body["name"])] = copy.deepcopy(body)

    def remove(self, partition: str, kind: str, name: str) -> None:
        """Delete an object directly, as an operator would (no reference checks)."""
        part = self._partitions.get(partition)
        if part is not None:
            _store(part, kind).pop(name, None)

    def _partition(self, name: str, *, create: bool = False) -> _Partition:
        part = self._partitions.get(name)
        if part is None:
            if not create:
                raise _missing("partition")
            ident = max(p.ident for p in self._partitions.values()) + 1
            part = self._partitions[name] = _Partition(name, ident)
        return part

    # --- what `vipwire lb check` reads: release, the admin's privilege, VLANs -------

    def _init_preflight_knobs(self) -> None:
        #: The admin's ``privilege-global`` (``write`` or ``read``; only reported: the
        #: emulator does not refuse writes by privilege).
        self.privilege = "write"
        #: The admin's ``privilege-list``: partition → ``partition-write`` etc.
        self.partition_privileges: dict[str, str] = {}
        #: VLAN ids per partition (``network vlan`` inside it): an L3V partition has
        #: none until an operator adds them, so the emulator starts with none.
        self.vlans: dict[str, list[int]] = {}

    def _preflight_routes(self, app: web.Application) -> None:
        # Shapes as A10 documents them and its clients read them (the release,
        # /axapi/v3/version/oper, is served by _dispatch): an admin
        # carries privilege-global read|write and a privilege-list of
        # {partition-name, privilege-partition} (a10networks/a10-acos-axapi, the
        # a10_admin module); VLANs are /axapi/v3/network/vlan in the active partition
        # with vlan-num and ve (a10networks/acos-client, acos_client/v30/vlan.py).
        app.router.add_get("/axapi/v3/admin/{user}", self._admin)
        app.router.add_get("/axapi/v3/network/vlan", self._vlans)

    def _preflight_session(self, request: web.Request) -> _Session | web.Response:
        session = self._session(request)
        if session is None:
            return json_response(_auth_schema(401, "Invalid admin session."), 401)
        return session

    async def _admin(self, request: web.Request) -> web.Response:
        session = self._preflight_session(request)
        if isinstance(session, web.Response):
            return session
        user = request.match_info["user"]
        if user != session.user:
            return json_response(_missing("admin").body(), 404)
        privileges = [
            {"partition-name": p, "privilege-partition": v}
            for p, v in sorted(self.partition_privileges.items())
        ]
        admin: Obj = {"user": user, "privilege-global": self.privilege, "action": "enable"}
        if privileges:
            admin["privilege-list"] = privileges
        return json_response({"admin": admin})

    async def _vlans(self, request: web.Request) -> web.Response:
        session = self._preflight_session(request)
        if isinstance(session, web.Response):
            return session
        vlans = self.vlans.get(session.partition, [])
        return json_response({"vlan-list": [{"vlan-num": v, "ve": v} for v in vlans]})

    # --- HTTP ----------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        self._preflight_routes(app)  # before the catch-all: aiohttp matches in order
        app.router.add_route("*", "/axapi/v3/{tail:.*}", self._handle)

    def _fault_body(self, status: int) -> Any:
        # The emulator's own wording: ACOS answers overload with a fail body like this one.
        msg = "System is busy, please try again later (injected)" if status == 503 else "injected"
        return {"response": {"status": "fail", "err": {"code": status, "from": "HTTP", "msg": msg}}}

    def _is_session(self, request: web.Request) -> bool:
        return request.path.rstrip("/") in ("/axapi/v3/auth", "/axapi/v3/logoff")

    def _user_of(self, request: web.Request) -> str | None:
        session = self._sessions.get(_signature(request) or "")
        return session.user if session is not None else None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = "/" + "/".join(unquote(p) for p in request.path.strip("/").split("/")[2:])
        method = request.method
        try:
            body = await read_json(request)
        except ValueError:
            return json_response(_invalid("JSON format error").body(), 400)
        if path == "/auth" and method == "POST":
            return self._auth(body)
        session = self._session(request)
        if session is None:
            return self._invalid_session()
        for busy in self._busy:
            if busy[2] is None or busy[2] in path:
                busy[0] -= 1
                if busy[0] <= 0:
                    self._busy.remove(busy)
                # acos-client maps these by code whatever the HTTP status; the
                # emulator answers 400 so that only the code says "busy".
                return json_response(
                    A10Error(400, busy[1], "System is not ready yet. (emulated)").body(), 400
                )
        try:
            if path == "/logoff" and method == "POST":
                self._sessions.pop(_signature(request) or "", None)
                self.logoffs += 1
                return json_response(_OK)
            if path.rstrip("/") == "/write/memory" and method == "POST":
                return await self._write_memory(session, body)
            if _version(self.version) < (4, 1) and _has_user_tag(body):
                # aXAPI v3 on ACOS 4.0: user-tag is not in the schema (added in 4.1).
                raise _invalid("Unrecognized field: user-tag (emulated ACOS < 4.1)")
            result, write = self._dispatch(session, method, path, body)
        except A10Error as err:
            return json_response(err.body(), err.http)
        if result is _NO_CONTENT:
            return web.Response(status=204)
        if write:
            self.writes += 1
        return json_response(result)

    def _invalid_session(self) -> web.Response:
        match self.invalid_session_answer:
            case "err":
                code = self.session_invalid_code
                return json_response(A10Error(400, code, "Invalid session ID").body(), 400)
            case "schema-200":
                # acos-client v30/axapi_http.py checks for an authorizationschema body
                # whatever the HTTP status: ACOS sends it with 2xx too.
                return json_response(_auth_schema(401, "Invalid admin session."), 200)
            case _:
                return json_response(_auth_schema(401, "Invalid admin session."), 401)

    async def _write_memory(self, session: _Session, body: Any) -> web.Response:
        # acos-client v30/action.py ``write_memory``: ACOS 4.1.0 answers a JSON body
        # with AxapiJsonFormatError ("Workaround regression in 4.1.0"); an empty body
        # saves.
        if self.version.startswith("4.1.0") and body is not None:
            err = A10Error(400, JSON_FORMAT_ERROR, "JSON format error (emulated 4.1.0)")
            return json_response(err.body(), 400)
        if self.save_delay > 0:
            await asyncio.sleep(self.save_delay)
        self.memory_writes.append(session.partition)
        return json_response(_OK)

    def _auth(self, body: Any) -> web.Response:
        creds = body.get("credentials") if isinstance(body, dict) else None
        if (
            not isinstance(creds, dict)
            or creds.get("username") != self._username
            or creds.get("password") != self._password
        ):
            self.failed_logins += 1
            return json_response(_auth_schema(403, "Incorrect user name or password"), 403)
        signature = secrets.token_hex(16)
        self._sessions[signature] = _Session(
            self._username, time.monotonic() + self.session_timeout
        )
        self.logins += 1
        return json_response(
            {
                "authresponse": {
                    "signature": signature,
                    "description": (
                        "the signature should be set in Authorization header for following request."
                    ),
                }
            }
        )

    def _session(self, request: web.Request) -> _Session | None:
        signature = _signature(request)
        session = self._sessions.get(signature or "")
        if session is None or session.expires <= time.monotonic():
            return None
        # ACOS sessions expire after being idle.
        session.expires = time.monotonic() + self.session_timeout
        return session

    def _dispatch(self, session: _Session, method: str, path: str, body: Any) -> tuple[Obj, bool]:
        parts = [p for p in path.split("/") if p]
        if parts == ["version", "oper"] and method == "GET":
            # acos-client v30/system.py reads the device's release; aXAPI v3
            # ``/version/oper`` carries it as ``sw-version`` (a10sdk-python,
            # a10sdk/core/version/version_oper.py).
            oper = {"hw-platform": "vThunder", "sw-version": self.version, "serial-number": "emu"}
            return {"version": {"oper": oper}}, False
        if parts[:1] == ["active-partition"]:
            if method == "POST" and len(parts) == 2:
                if parts[1] != "shared" and parts[1] not in self._partitions:
                    # Issue 18: ACOS answers 204 and stays where it was, so neither
                    # acos-client v30/partition.py (exists() reads partition-all)
                    # nor terraform-provider-thunder (re-reads active-partition)
                    # trust this answer.
                    return _NO_CONTENT, False
                session.partition = parts[1]
                return _OK, False
            if method == "GET" and len(parts) == 1:
                return {"active-partition": {"partition-name": session.partition}}, False
        if parts == ["partition-available-id", "oper"] and method == "GET":
            used = {p.ident for p in self._partitions.values()}
            start = next(i for i in range(1, 1024) if i not in used)
            return {
                "partition-available-id": {"oper": {"range-list": [{"start": start, "end": 1023}]}}
            }, False
        if parts[:1] == ["partition"]:
            return self._partition_request(session, method, parts, body)
        part = self._partition(session.partition)
        if parts[:2] == ["slb", "server"]:
            return _Servers(part).handle(method, parts[2:], body)
        if parts[:2] == ["slb", "service-group"]:
            return _ServiceGroups(part).handle(method, parts[2:], body)
        if parts[:2] == ["health", "monitor"]:
            return _Monitors(part).handle(method, parts[2:], body)
        if parts[:2] == ["slb", "virtual-server"]:
            return _VirtualServers(part).handle(method, parts[2:], body)
        if parts[:2] == ["ip", "access-list"]:
            return _Acls(part).handle(method, parts[2:], body)
        if parts[:2] == ["ipv6", "access-list"]:
            return _Acls6(part).handle(method, parts[2:], body)
        if parts[:4] == ["slb", "template", "persist", "source-ip"]:
            return _PersistSourceIp(part).handle(method, parts[4:], body)
        if parts[:3] == ["slb", "template", "tcp"]:
            return _TcpTemplates(part).handle(method, parts[3:], body)
        if parts[:3] == ["slb", "template", "udp"]:
            return _UdpTemplates(part).handle(method, parts[3:], body)
        raise A10Error(404, NOT_FOUND, f"URI not supported by the emulator: {method} {path}")

    def _partition_request(
        self, session: _Session, method: str, parts: list[str], body: Any
    ) -> tuple[Obj, bool]:
        if session.partition != "shared":
            raise _invalid("Partitions can only be managed from the shared partition")
        if len(parts) == 1:
            if method == "GET":
                return {
                    "partition-list": [
                        p.body() for n, p in sorted(self._partitions.items()) if n != "shared"
                    ]
                }, False
            if method == "POST":
                given = body.get("partition") if isinstance(body, dict) else None
                if not isinstance(given, dict):
                    raise _invalid("partition object expected")
                name = str(given.get("partition-name") or "")
                ident = given.get("id")
                if not 1 <= len(name) <= 14:
                    raise _invalid("partition-name must be 1-14 characters")
                if name in self._partitions:
                    raise _exists("partition")
                if not isinstance(ident, int) or not 1 <= ident <= 1023:
                    raise _invalid("partition id must be 1-1023")
                if self._racer is not None:
                    racer, self._racer = self._racer, None
                    self._partitions[racer] = _Partition(racer, ident)
                if any(p.ident == ident for p in self._partitions.values()):
                    # acos-client v30/responses.py: PartitionIdExists.
                    raise A10Error(400, PARTITION_ID_TAKEN, f"Partition id {ident} exists")
                self._partitions[name] = _Partition(name, ident)
                return {"partition": self._partitions[name].body()}, True
        elif len(parts) == 2 and parts[1] != "shared":
            # What the Ansible collection and a10-octavia check before using one.
            part = self._partition(parts[1])
            if method == "GET":
                return {"partition": part.body()}, False
        raise _invalid(f"{method} on partition is not supported by the emulator")


_NO_CONTENT: Final[Obj] = {}


def _version(text: str) -> tuple[int, int]:
    major, _, rest = text.partition(".")
    minor = "".join(c for c in rest.partition(".")[0] if c.isdigit())
    try:
        return int(major), int(minor or 0)
    except ValueError:
        return (0, 0)


def _has_user_tag(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    return any(isinstance(v, dict) and "user-tag" in v for v in body.values())


def _member_state(part: _Partition, member: Obj) -> str:
    """ACOS's default health checks: a ping to the server and an L4 handshake to
    node-address:port on each server port, unless ``health-check-disable`` is set on
    the server and on the port (A10's DSR examples set both; a Kubernetes node in
    DSR answers neither for the VIP's port). The emulator has no traffic, so a
    default check never passes; a service group's own ``health-check`` monitor is
    taken as passing. A disabled member (``member-state``) or server is DOWN.
    """
    server = part.servers.get(str(member.get("name")))
    if server is None or member.get("member-state", "enable") != "enable":
        return "DOWN"
    if server.get("action", "enable") != "enable" or server.get("health-check-disable") != 1:
        return "DOWN"
    port = next(
        (p for p in server.get("port-list", []) if p.get("port-number") == member.get("port")),
        None,
    )
    if port is None or port.get("health-check-disable") != 1:
        return "DOWN"
    return "UP"


def _signature(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme == "A10" and value.strip() else None


def _auth_schema(code: int, error: str) -> Obj:
    return {
        "authorizationschema": {
            "code": code,
            "error": error,
            "auth_uri": "/axapi/v3/auth",
            "logoff_uri": "/axapi/v3/logoff",
            "username": "required",
            "password": "required",
        }
    }


def _store(part: _Partition, kind: str) -> dict[str, Obj]:
    stores = {
        "server": part.servers,
        "service-group": part.service_groups,
        "monitor": part.monitors,
        "virtual-server": part.virtual_servers,
        "access-list": part.acls,
        "ipv6-access-list": part.acls6,
        "source-ip": part.persist_templates,
        "tcp": part.tcp_templates,
        "udp": part.udp_templates,
    }
    if kind not in stores:
        raise KeyError(kind)
    return stores[kind]


#: ``slb service-group <g> member <server> <port>``'s ``member-state`` (aXAPI v3, as
#: A10's Thunder Terraform provider and aXAPI SDK document it): ``enable``; ``disable``
#: (the member takes no new connections; established ones continue until they end);
#: ``disable-with-health-check`` (the same, still health-checked).
MEMBER_STATES: Final = ("enable", "disable", "disable-with-health-check")


def member_takes_new_connections(member: Obj) -> bool:
    """Whether ACOS would pick this service-group member for a new connection."""
    return bool(member.get("member-state", "enable") == "enable")


def _merge_list(old: list[Obj], new: list[Obj], key: tuple[str, ...]) -> list[Obj]:
    """aXAPI update semantics for a list: entries with a known key are updated, others added."""
    out = {tuple(e.get(k) for k in key): copy.deepcopy(e) for e in old}
    for entry in new:
        k = tuple(entry.get(k) for k in key)
        out[k] = {**out.get(k, {}), **copy.deepcopy(entry)}
    return list(out.values())


def _address(text: Any, what: str) -> str:
    try:
        return ipaddress.ip_address(str(text)).compressed
    except ValueError as exc:
        raise _invalid(f"Invalid IP address for {what}: {text!r}") from exc


class _Kind:
    """A configuration object kind in one partition: collection, object, sub-resources."""

    kind = ""
    list_key = ""
    #: Where its objects are kept, when not under ``kind`` (two kinds share a body key).
    store = ""

    def __init__(self, part: _Partition) -> None:
        self.part = part
        self.objects = _store(part, self.store or self.kind)

    def handle(self, method: str, rest: list[str], body: Any) -> tuple[Obj, bool]:
        if not rest:
            if method == "GET":
                if not self.objects:
                    # ACOS answers a read of an empty collection as a missing object.
                    raise _missing(self.kind)
                return {
                    self.list_key: [copy.deepcopy(o) for _, o in sorted(self.objects.items())]
                }, False
            if method == "POST":
                obj = self._body(body)
                name = str(obj.get("name") or "")
                if not name:
                    raise _invalid(f"{self.kind} name is required")
                if name in self.objects:
                    raise _exists(self.kind)
                self.objects[name] = self.validate(obj, None)
                return {self.kind: copy.deepcopy(self.objects[name])}, True
            raise _invalid(f"{method} on a {self.kind} collection is not supported")
        name = rest[0]
        current = self.objects.get(name)
        if current is None:
            raise _missing(self.kind)
        if len(rest) > 1:
            return self.sub(method, name, current, rest[1:], body)
        if method == "GET":
            return {self.kind: copy.deepcopy(current)}, False
        if method == "DELETE":
            self.check_unused(name)
            del self.objects[name]
            return _OK, True
        if method in ("POST", "PUT"):
            given = {**self._body(body), "name": name}
            merged = self.merge(current, given) if method == "POST" else given
            self.objects[name] = self.validate(merged, current)
            return {self.kind: copy.deepcopy(self.objects[name])}, True
        raise _invalid(f"{method} on a {self.kind} is not supported")

    def _body(self, body: Any) -> Obj:
        obj = body.get(self.kind) if isinstance(body, dict) else None
        if not isinstance(obj, dict):
            raise _invalid(f'"{self.kind}" object expected')
        return copy.deepcopy(obj)

    def merge(self, current: Obj, given: Obj) -> Obj:
        return {**copy.deepcopy(current), **given}

    def validate(self, obj: Obj, current: Obj | None) -> Obj:
        return obj

    def check_unused(self, name: str) -> None:
        pass

    def sub(self, method: str, name: str, obj: Obj, rest: list[str], body: Any) -> tuple[Obj, bool]:
        raise _invalid(f"{'/'.join(rest)} of {self.kind} is not supported by the emulator")


class _Ported(_Kind):
    """A kind with an address and a ``port-list`` (servers, virtual servers).

    The ports are keyed by number and protocol, both in list merges and in the
    ``port`` sub-resource (``…/port/<number>+<protocol>``).
    """

    #: The IPv4 and IPv6 address fields; exactly one holds the object's address.
    address_fields: tuple[str, str] = ("", "")
    #: How errors name the object's kind ("server", "virtual server").
    noun = ""

    def merge(self, current: Obj, given: Obj) -> Obj:
        merged = {**copy.deepcopy(current), **given}
        if "port-list" in given:
            merged["port-list"] = _merge_list(
                current.get("port-list", []), given["port-list"], ("port-number", "protocol")
            )
        return merged

    def address_of(self, obj: Obj) -> str | None:
        v4, v6 = self.address_fields
        return obj.get(v4) or obj.get(v6)

    def validate(self, obj: Obj, current: Obj | None) -> Obj:
        for name in self.address_fields:
            if name in obj:
                obj[name] = _address(obj[name], name)
        address = self.address_of(obj)
        if not address:
            raise _invalid(f"{' or '.join(self.address_fields)} is required")
        if current is not None and address != self.address_of(current):
            raise _invalid(f"The {self.noun} address cannot be modified")
        for other in self.objects.values():
            if other["name"] != obj["name"] and self.address_of(other) == address:
                raise _invalid(f"{self.noun} address {address} is used by {other['name']}")
        seen = set()
        for port in obj.setdefault("port-list", []):
            self.check_port(port)
            key = (port["port-number"], port["protocol"])
            if key in seen:
                raise _exists("port")
            seen.add(key)
        return obj

    def check_port(self, port: Obj) -> None:
        raise NotImplementedError

    def check_port_unused(self, name: str, number: str) -> None:
        pass

    def sub(self, method: str, name: str, obj: Obj, rest: list[str], body: Any) -> tuple[Obj, bool]:
        if rest[0] != "port":
            return super().sub(method, name, obj, rest, body)
        ports = obj.setdefault("port-list", [])
        if len(rest) == 1 and method == "POST":
            port = body.get("port") if isinstance(body, dict) else None
            if not isinstance(port, dict):
                raise _invalid('"port" object expected')
            self.check_port(port)
            key = (port["port-number"], port["protocol"])
            if any((p["port-number"], p["protocol"]) == key for p in ports):
                raise _exists("port")
            ports.append(copy.deepcopy(port))
            return {"port": port}, True
        if len(rest) == 2:
            number, _, protocol = rest[1].partition("+")
            match = [
                p for p in ports if str(p["port-number"]) == number and p["protocol"] == protocol
            ]
            if not match:
                raise _missing("port")
            if method == "GET":
                return {"port": copy.deepcopy(match[0])}, False
            if method == "DELETE":
                self.check_port_unused(name, number)
                ports.remove(match[0])
                return _OK, True
            if method in ("POST", "PUT"):
                given = body.get("port") if isinstance(body, dict) else None
                if not isinstance(given, dict):
                    raise _invalid('"port" object expected')
                updated = {**match[0], **given} if method == "POST" else copy.deepcopy(given)
                # The key of a port is its identity: a body cannot move it.
                updated["port-number"] = match[0]["port-number"]
                updated["protocol"] = match[0]["protocol"]
                self.check_port(updated)
                ports[ports.index(match[0])] = updated
                return {"port": copy.deepcopy(updated)}, True
        return super().sub(method, name, obj, rest, body)


class _Servers(_Ported):
    kind = "server"
    list_key = "server-list"
    address_fields = ("host", "server-ipv6-addr")
    noun = "server"

    def validate(self, obj: Obj, current: Obj | None) -> Obj:
        obj = super().validate(obj, current)
        obj.setdefault("action", "enable")
        return obj

    def check_port(self, port: Obj) -> None:
        _check_port(port, {"tcp", "udp"})

    def check_unused(self, name: str) -> None:
        for group in self.part.service_groups.values():
            if any(m.get("name") == name for m in group.get("member-list", [])):
                raise A10Error(
                    400,
                    IN_USE,
                    f"Object is in use (server {name} by service-group {group['name']})",
                )

    def check_port_unused(self, name: str, number: str) -> None:
        for group in self.part.service_groups.values():
            for m in group.get("member-list", []):
                if m.get("name") == name and str(m.get("port")) == number:
                    raise A10Error(
                        400, IN_USE, f"Object is in use (port {number} of server {name})"
                    )


class _ServiceGroups(_Kind):
    kind = "service-group"
    list_key = "service-group-list"

    def validate(self, obj: Obj, current: Obj | None) -> Obj:
        _check_service_group_profile(obj)
        protocol = obj.setdefault("protocol", "tcp")
        if protocol not in ("tcp", "udp"):
            raise _invalid(f"Invalid service-group protocol {protocol!r}")
        if current is not None and current.get("protocol") != protocol:
            raise _invalid("The service-group protocol cannot be modified")
        check = obj.get("health-check")
        if check is not None:
            if len(str(check)) > 31:
                raise _invalid("health-check name is longer than 31 characters")
            if check not in self.part.monitors:
                raise _missing("health monitor")
        seen = set()
        for member in obj.setdefault("member-list", []):
            key = (member.get("name"), member.get("port"))
            if key in seen:
                raise _exists("member")
            seen.add(key)
            self._check_member(member, protocol)
        return obj

    def _check_member(self, member: Obj, protocol: str) -> None:
        server = self.part.servers.get(str(member.get("name")))
        if server is None:
            raise _missing("server")
        if not any(
            p["port-number"] == member.get("port") and p["protocol"] == protocol
            for p in server.get("port-list", [])
        ):
            raise _missing("port")
        member.setdefault("member-state", "enable")
        if member["member-state"] not in MEMBER_STATES:
            raise _invalid(
                f"Invalid member-state {member['member-state']!r} "
                f"(one of {', '.join(MEMBER_STATES)})"
            )

    def check_unused(self, name: str) -> None:
        for vs in self.part.virtual_servers.values():
            if any(p.get("service-group") == name for p in vs.get("port-list", [])):
                raise A10Error(
                    400, IN_USE, f"Object is in use (service-group {name} by {vs['name']})"
                )

    def sub(self, method: str, name: str, obj: Obj, rest: list[str], body: Any) -> tuple[Obj, bool]:
        if rest == ["oper"] and method == "GET":
            # aXAPI v3 ``slb service-group <name> oper``: each member's state after
            # ACOS's health checks (see _member_state).
            members = [
                {"name": m.get("name"), "port": m.get("port"), "oper": {"state": state}}
                for m in obj.get("member-list", [])
                for state in [_member_state(self.part, m)]
            ]
            up = sum(1 for m in members if m["oper"]["state"] == "UP")
            summary = "All Up" if members and up == len(members) else "All Down"
            if 0 < up < len(members):
                summary = "Functional Partially Up"
            return {
                "service-group": {"name": name, "oper": {"state": summary}, "member-list": members}
            }, False
        if rest[0] != "member":
            return super().sub(method, name, obj, rest, body)
        members = obj.setdefault("member-list", [])
        if len(rest) == 1 and method == "POST":
            member = body.get("member") if isinstance(body, dict) else None
            if not isinstance(member, dict):
                raise _invalid('"member" object expected')
            if any(
                (m.get("name"), m.get("port")) == (member.get("name"), member.get("port"))
                for m in members
            ):
                raise _exists("member")
            member = copy.deepcopy(member)
            self._check_member(member, obj["protocol"])
            members.append(member)
            return {"member": member}, True
        if len(rest) == 2:
            server, _, port = rest[1].partition("+")
            match = [m for m in members if m.get("name") == server and str(m.get("port")) == port]
            if not match:
                raise _missing("member")
            if method == "GET":
                return {"member": copy.deepcopy(match[0])}, False
            if method == "DELETE":
                members.remove(match[0])
                return _OK, True
            if method in ("POST", "PUT"):
                # Update one member in place (its member-state: graceful disable).
                given = body.get("member") if isinstance(body, dict) else None
                if not isinstance(given, dict):
                    raise _invalid('"member" object expected')
                keep = {"name": match[0]["name"], "port": match[0]["port"]}
                member = {**(match[0] if method == "POST" else {}), **given, **keep}
                self._check_member(member, obj["protocol"])
                members[members.index(match[0])] = member
                return {"member": copy.deepcopy(member)}, True
        return super().sub(method, name, obj, rest, body)


class _Monitors(_Kind):
    kind = "monitor"
    list_key = "monitor-list"

    def validate(self, obj: Obj, current: Obj | None) -> Obj:
        if len(obj["name"]) > MONITOR_NAME_MAX:
            raise _invalid(f"monitor name is longer than {MONITOR_NAME_MAX} characters")
        method = obj.get("method")
        if method is not None and not isinstance(method, dict):
            raise _invalid("method must be an object")
        obj.setdefault("retry", 3)
        obj.setdefault("interval", 5)
        obj.setdefault("timeout", 5)
        _check_monitor_profile(obj)
        return obj

    def check_unused(self, name: str) -> None:
        for group in self.part.service_groups.values():
            if group.get("health-check") == name:
                raise A10Error(400, IN_USE, f"Object is in use (monitor {name} by {group['name']})")


class _VirtualServers(_Ported):
    kind = "virtual-server"
    list_key = "virtual-server-list"
    address_fields = ("ip-address", "ipv6-address")
    noun = "virtual server"

    def check_port(self, port: Obj) -> None:
        _check_port(port, _VPORT_PROTOCOLS)
        group = port.get("service-group")
        if group is not None:
            sg = self.part.service_groups.get(group)
            if sg is None:
                raise _missing("service-group")
            wanted = "udp" if port["protocol"] == "udp" else "tcp"
            if port["protocol"] != "others" and sg.get("protocol") != wanted:
                raise _invalid(
                    f"service-group {group} protocol does not match virtual port protocol"
                )
        _check_port_access(self.part, port)
        _check_port_profile(self.part, port)


class _Templates(_Kind):
    """``slb template tcp|udp``: here only their ``idle-timeout`` (acos-client's
    v30 ``slb/template/l4.py``: default 120 seconds)."""

    def validate(self, obj: Obj, current: Obj | None) -> Obj:
        if len(obj["name"]) > 127:
            raise _invalid("template name is longer than 127 characters")
        idle = obj.setdefault("idle-timeout", 120)
        if not _int_in(idle, 1, 2097151):
            raise _invalid(f"Invalid idle-timeout {idle!r} (1-2097151 seconds)")
        return obj

    def check_unused(self, name: str) -> None:
        for vs in self.part.virtual_servers.values():
            for port in vs.get("port-list", []):
                if port.get(f"template-{self.kind}") == name:
                    raise A10Error(
                        400, IN_USE, f"Object is in use (template {name} by {vs['name']})"
                    )


class _TcpTemplates(_Templates):
    kind = "tcp"
    list_key = "tcp-list"


class _UdpTemplates(_Templates):
    kind = "udp"
    list_key = "udp-list"


# What an appliance profile sets, in the ranges ACOS documents. Sources: acos-client
# (github.com/a10networks/acos-client) v30 ``slb/hm.py`` (monitor methods http,
# https, tcp and their fields), ``slb/service_group.py`` (``lb-method`` values, and
# ``lc-method`` for the least-connection family; ``health-check-disable`` never
# together with ``health-check``); A10's TemplateVirtualPort CRD (``conn-limit``
# 1-64000000, default 64000000); the aXAPI service-group and virtual-port schemas
# (``reset-on-server-selection-fail``: send a reset to the client when no server
# can be selected; ``def-selection-if-pref-failed``).
_LB_METHODS: Final = frozenset(
    [
        "round-robin",
        "weighted-rr",
        "fastest-response",
        "least-request",
        "round-robin-strict",
        "src-ip-only-hash",
        "src-ip-hash",
        "dst-ip-only-hash",
        "dst-ip-hash",
    ]
)
_LC_METHODS: Final = frozenset(
    [
        "least-connection",
        "weighted-least-connection",
        "service-least-connection",
        "service-weighted-least-connection",
    ]
)
_DEF_SELECTION: Final = frozenset(
    ("def-selection-if-pref-failed", "def-selection-if-pref-failed-disable")
)


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_monitor_profile(obj: Obj) -> None:
    for name, low, high in (("retry", 1, 10), ("interval", 1, 180), ("timeout", 1, 12)):
        if not _int_in(obj.get(name), low, high):
            raise _invalid(f"Invalid {name} {obj.get(name)!r} ({low}-{high})")
    method = obj.get("method")
    if isinstance(method, dict):
        kinds = [k for k in method if k in ("http", "https", "tcp", "udp", "icmp")]
        if len(kinds) != 1 or len(method) != 1:
            raise _invalid("a health monitor has exactly one method")
    tag = obj.get("user-tag")
    if tag is not None and (not isinstance(tag, str) or len(tag) > 127):
        raise _invalid("user-tag must be a string of at most 127 characters")


def _check_service_group_profile(obj: Obj) -> None:
    if "lb-method" in obj and obj["lb-method"] not in _LB_METHODS:
        raise _invalid(f"Invalid lb-method {obj['lb-method']!r}")
    if "lc-method" in obj and obj["lc-method"] not in _LC_METHODS:
        raise _invalid(f"Invalid lc-method {obj['lc-method']!r}")
    if "lb-method" in obj and "lc-method" in obj:
        raise _invalid("lb-method and lc-method are mutually exclusive")
    disable = obj.get("health-check-disable", 0)
    if disable not in (0, 1):
        raise _invalid(f"Invalid health-check-disable {disable!r}")
    if disable == 1 and obj.get("health-check"):
        raise _invalid("health-check and health-check-disable are mutually exclusive")


def _check_port_profile(part: _Partition, port: Obj) -> None:
    if "conn-limit" in port and not _int_in(port["conn-limit"], 1, 64_000_000):
        raise _invalid(f"Invalid conn-limit {port['conn-limit']!r} (1-64000000)")
    if port.get("reset-on-server-selection-fail", 0) not in (0, 1):
        raise _invalid("reset-on-server-selection-fail is 0 or 1")
    if port.get("def-selection-if-pref-failed", _DEF_SELECTION_DEFAULT) not in _DEF_SELECTION:
        raise _invalid(
            f"Invalid def-selection-if-pref-failed {port['def-selection-if-pref-failed']!r}"
        )
    for kind, templates in (("tcp", part.tcp_templates), ("udp", part.udp_templates)):
        name = port.get(f"template-{kind}")
        if name is None:
            continue
        if (kind == "udp") != (port["protocol"] == "udp"):
            raise _invalid(f"template-{kind} does not apply to a {port['protocol']} port")
        if name != "default" and name not in templates:
            raise _missing(f"template {kind}")


_DEF_SELECTION_DEFAULT: Final = "def-selection-if-pref-failed"


def _check_port(port: Any, protocols: set[str]) -> None:
    if not isinstance(port, dict):
        raise _invalid("port entry must be an object")
    number = port.get("port-number")
    if not isinstance(number, int) or not 0 <= number <= 65534:
        raise _invalid(f"Invalid port-number {number!r}")
    if port.get("protocol") not in protocols:
        raise _invalid(f"Invalid protocol {port.get('protocol')!r}")


# --- access lists and source-IP persistence ------------------------------------------
#
# As aXAPI v3 names them: ``ip access-list`` (``/axapi/v3/ip/access-list``, body key
# ``access-list``, rules with ``seq-num``, ``action`` permit/deny, ``ip``, a source as
# ``src-any``, ``src-host`` or ``src-subnet`` + ``src-mask`` (a wildcard mask, as in
# ACOS's CLI ``permit ip 10.10.0.0 0.0.0.7 any``), ``dst-any``); ``ipv6 access-list``
# (``/axapi/v3/ipv6/access-list``, ``ipv6`` and ``src-subnet`` as a prefix); both bound
# to a virtual port (``acl-list``: ``acl-name``; ``ipv6-acl-list``: ``ipv6-acl-name``),
# where a packet no rule permits is dropped; ``slb template persist source-ip``
# (``timeout`` in minutes, 1 to 4321, default 5) named by a virtual port's
# ``template-persist-source-ip``. Modelled: rules must parse, a mask must be a wildcard
# mask, names at most 63 characters for lists and templates, every reference resolves,
# nothing referenced can be deleted. Not modelled: matching traffic, other rule fields,
# numbered ACLs, the persistence table.


def _wildcard_ok(mask: str) -> bool:
    try:
        inverted = int(ipaddress.IPv4Address(mask)) ^ 0xFFFFFFFF
    except ValueError:
        return False
    # A wildcard mask's inverse is a netmask: ones then zeros.
    return (inverted | (inverted - 1)) & 0xFFFFFFFF == 0xFFFFFFFF if inverted else True


class _Acls(_Kind):
    kind = "access-list"
    list_key = "access-list-list"

    def validate(self, obj: Obj, current: Obj | None) -> Obj:
        if len(obj["name"]) > 63:
            raise _invalid("access-list name is longer than 63 characters")
        seen = set()
        for rule in obj.setdefault("rules", []):
            if not isinstance(rule, dict) or not isinstance(rule.get("seq-num"), int):
                raise _invalid("access-list rule needs a seq-num")
            if rule["seq-num"] in seen:
                raise _exists("rule")
            seen.add(rule["seq-num"])
            if rule.get("action") not in ("permit", "deny"):
                raise _invalid(f"Invalid access-list action {rule.get('action')!r}")
            self.check_source(rule)
        return obj

    def check_source(self, rule: Obj) -> None:
        if rule.get("src-any") == 1:
            return
        if "src-host" in rule:
            rule["src-host"] = _address(rule["src-host"], "src-host")
            return
        subnet, mask = rule.get("src-subnet"), str(rule.get("src-mask", ""))
        rule["src-subnet"] = _address(subnet, "src-subnet")
        if not _wildcard_ok(mask):
            raise _invalid(f"Invalid wildcard mask {mask!r}")

    def check_unused(self, name: str) -> None:
        key, field_ = ("ipv6-acl-list", "ipv6-acl-name") if self.store else ("acl-list", "acl-name")
        for vs in self.part.virtual_servers.values():
            for port in vs.get("port-list", []):
                if any(a.get(field_) == name for a in port.get(key, [])):
                    raise A10Error(
                        400, IN_USE, f"Object is in use (access-list {name} by {vs['name']})"
                    )


class _Acls6(_Acls):
    store = "ipv6-access-list"

    def check_source(self, rule: Obj) -> None:
        if rule.get("src-any") == 1:
            return
        if "src-host" in rule:
            rule["src-host"] = _address(rule["src-host"], "src-host")
            return
        try:
            network = ipaddress.IPv6Network(str(rule.get("src-subnet")), strict=False)
        except ValueError as exc:
            raise _invalid(f"Invalid IPv6 src-subnet {rule.get('src-subnet')!r}") from exc
        rule["src-subnet"] = str(network)


class _PersistSourceIp(_Kind):
    kind = "source-ip"
    list_key = "source-ip-list"

    def validate(self, obj: Obj, current: Obj | None) -> Obj:
        if len(obj["name"]) > 63:
            raise _invalid("template name is longer than 63 characters")
        timeout = obj.setdefault("timeout", 5)
        if not isinstance(timeout, int) or not 1 <= timeout <= 4321:
            raise _invalid(f"Invalid persist timeout {timeout!r} (1-4321 minutes)")
        obj.setdefault("netmask", "255.255.255.255")
        obj.setdefault("netmask6", 128)
        return obj

    def check_unused(self, name: str) -> None:
        for vs in self.part.virtual_servers.values():
            for port in vs.get("port-list", []):
                if port.get("template-persist-source-ip") == name:
                    raise A10Error(
                        400, IN_USE, f"Object is in use (template {name} by {vs['name']})"
                    )


def _check_port_access(part: _Partition, port: Obj) -> None:
    """The access lists and persistence template a virtual port names must exist."""
    for entry in port.get("acl-list", []):
        if entry.get("acl-name") not in part.acls:
            raise _missing("access-list")
    for entry in port.get("ipv6-acl-list", []):
        if entry.get("ipv6-acl-name") not in part.acls6:
            raise _missing("ipv6 access-list")
    template = port.get("template-persist-source-ip")
    if template and template not in part.persist_templates:
        raise _missing("template persist source-ip")
