"""An F5 BIG-IP iControl REST emulator: the subset an L4 provisioning client uses.

Served: token login (``/mgmt/shared/authn/login``, ``X-F5-Auth-Token``, token
expiry, token deletion), partitions (``/mgmt/tm/auth/partition``), LTM
virtual servers, pools with members (a member's ``session``/``state``: one
``user-disabled`` takes no new connections, see :func:`member_takes_new_connections`),
HTTP, HTTPS and TCP monitors, fastL4 profiles, source-address persistence
profiles, address lists, traffic-matching criteria and nodes (create,
read, patch, put, delete; collections with ``$filter=partition eq <p>`` and
``expandSubcollections``), transactions (``/mgmt/tm/transaction``: commands
sent with ``X-F5-REST-Coordination-Id`` are queued and applied all or nothing
on ``PATCH {"state": "VALIDATING"}``), and ``config-sync to-group`` via
``/mgmt/tm/cm``, and route domains (``/mgmt/tm/net/route-domain``, read only).
Error bodies have BIG-IP's shape
(``{"code", "message", "errorStack", "apiError"}``; authentication errors
``{"code", "message", "referer", "restOperationId", "kind"}``); message texts
follow BIG-IP's where known and are the emulator's own otherwise.

It enforces what a client can get wrong: names unique per kind and partition,
references that must resolve (pool → monitor, virtual → pool and profiles),
objects in use that cannot be deleted, one virtual per destination and
protocol, and the fields an appliance profile sets (see :func:`_check_profile_fields`:
pool ``loadBalancingMode`` and ``serviceDownAction``, virtual
``connectionLimit``, fastL4 ``idleTimeout``, monitor ``interval`` below
``timeout``). It also models what broke clients on real BIG-IPs (issue 18),
each with its source beside the code: node objects that pool members create
and that stay until deleted (:func:`_member_node`), route domains
(``<address>%<id>``; :func:`_route_domain`), nodes unique per address and
route domain across partitions, ``defaultsFrom`` refused in a monitor PATCH
(:func:`_item`) and slow transaction commits (``commit_delay_s``). It is not
BIG-IP: no other object kinds, no traffic, no iRules, no field validation
beyond what is listed here.

One module over 500 lines on purpose: one vendor's API, so that every
modelled behaviour sits beside the others it interacts with (transactions
over every object kind, references between kinds).
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import itertools
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote_plus

from aiohttp import web

from vipwire.applianceemu._server import EmulatorServer, json_response, read_json

Obj = dict[str, Any]

_VERSION: Final = "17.1.0"
_ROUTE_DOMAINS: Final = "/mgmt/tm/net/route-domain"
_PATHS = re.compile(r"/[^\s{}]+")


@dataclass(frozen=True)
class _Kind:
    key: str
    collection: str
    kind: str
    label: str  # as BIG-IP names the kind in its messages


_KINDS: Final = (
    _Kind("virtual", "/mgmt/tm/ltm/virtual", "tm:ltm:virtual:virtualstate", "Virtual Server"),
    _Kind("pool", "/mgmt/tm/ltm/pool", "tm:ltm:pool:poolstate", "Pool"),
    _Kind("monitor", "/mgmt/tm/ltm/monitor/http", "tm:ltm:monitor:http:httpstate", "Monitor"),
    _Kind(
        "monitor_https", "/mgmt/tm/ltm/monitor/https", "tm:ltm:monitor:https:httpsstate", "Monitor"
    ),
    _Kind("monitor_tcp", "/mgmt/tm/ltm/monitor/tcp", "tm:ltm:monitor:tcp:tcpstate", "Monitor"),
    _Kind("node", "/mgmt/tm/ltm/node", "tm:ltm:node:nodestate", "Node"),
    _Kind(
        "fastl4",
        "/mgmt/tm/ltm/profile/fastl4",
        "tm:ltm:profile:fastl4:fastl4state",
        "Profile",
    ),
    _Kind(
        "persist",
        "/mgmt/tm/ltm/persistence/source-addr",
        "tm:ltm:persistence:source-addr:source-addrstate",
        "Persistence Profile",
    ),
    _Kind(
        "addresslist",
        "/mgmt/tm/net/address-list",
        "tm:net:address-list:address-liststate",
        "Address List",
    ),
    _Kind(
        "tmc",
        "/mgmt/tm/ltm/traffic-matching-criteria",
        "tm:ltm:traffic-matching-criteria:traffic-matching-criteriastate",
        "Traffic Matching Criteria",
    ),
)
_BY_COLLECTION: Final = {k.collection: k for k in _KINDS}
_BY_KEY: Final = {k.key: k for k in _KINDS}
# Profiles and monitors every BIG-IP has in /Common.
_BUILTIN: Final = {
    "fastl4": {"/Common/fastL4"},
    "monitor": {"/Common/http", "/Common/https", "/Common/tcp", "/Common/gateway_icmp"},
    "persist": {"/Common/source_addr"},
}
_MONITOR_KINDS: Final = ("monitor", "monitor_https", "monitor_tcp")
# Pool loadBalancingMode values (the ``lb_method`` choices of F5's bigip_pool module:
# https://docs.ansible.com/ansible/latest/modules/bigip_pool_module.html).
_LB_MODES: Final = frozenset(
    [
        "dynamic-ratio-member",
        "dynamic-ratio-node",
        "fastest-app-response",
        "fastest-node",
        "least-connections-member",
        "least-connections-node",
        "least-sessions",
        "observed-member",
        "observed-node",
        "predictive-member",
        "predictive-node",
        "ratio-least-connections-member",
        "ratio-least-connections-node",
        "ratio-member",
        "ratio-node",
        "ratio-session",
        "round-robin",
        "weighted-least-connections-member",
        "weighted-least-connections-node",
    ]
)
# Pool serviceDownAction (bigip_pool ``service_down_action``: none, reset, drop, reselect).
_DOWN_ACTIONS: Final = frozenset(("none", "reset", "drop", "reselect"))


class F5Error(Exception):
    """An iControl REST error answer."""

    def __init__(self, code: int, message: str, api_error: int = 3) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.api_error = api_error

    def body(self) -> Obj:
        return {
            "code": self.code,
            "message": self.message,
            "errorStack": [],
            "apiError": self.api_error,
        }


@dataclass
class _State:
    partitions: dict[str, Obj] = field(default_factory=dict)
    objects: dict[str, dict[str, Obj]] = field(default_factory=lambda: {k.key: {} for k in _KINDS})
    #: Route domain ids that exist (``net route-domain``); 0 always does.
    route_domains: set[int] = field(default_factory=lambda: {0})


@dataclass
class _Transaction:
    trans_id: int
    commands: list[tuple[str, str, str, Any]] = field(default_factory=list)
    state: str = "STARTED"
    failure: str = ""
    started: float = field(default_factory=time.monotonic)

    def body(self) -> Obj:
        return {
            "transId": self.trans_id,
            "state": self.state,
            "timeoutSeconds": 120,
            "asyncExecution": False,
            "validateOnly": False,
            "executionTimeout": 300,
            "executionTime": 0,
            "failureReason": self.failure,
            "kind": "tm:transactionstate",
            "selfLink": f"https://localhost/mgmt/tm/transaction/{self.trans_id}?ver={_VERSION}",
        }


class F5Emulator(EmulatorServer):
    """One BIG-IP's management API, with counters, inspection helpers and planting."""

    def __init__(
        self,
        *,
        username: str = "admin",
        password: str = "admin",
        token_timeout: int = 1200,
        device_groups: tuple[str, ...] = ("vipwire-failover",),
        route_domains: tuple[int, ...] = (0,),
    ) -> None:
        super().__init__("f5emu")
        self._username = username
        self._password = password
        #: Seconds a new token lives (BIG-IP's default is 1200).
        self.token_timeout = token_timeout
        self.device_groups = set(device_groups)
        self._tokens: dict[str, float] = {}
        self._state = _State(
            partitions={"Common": _partition("Common")}, route_domains={0, *route_domains}
        )
        #: Seconds a transaction commit and a config-sync take: BIG-IP validates and
        #: applies the whole configuration on commit, which on a large one takes far
        #: longer than a single write (the transaction's own ``executionTimeout`` is
        #: 300 s: iControl REST User Guide, "Transactions"; terraform-provider-bigip's
        #: go-bigip allows 60 s per call).
        self.commit_delay_s = 0.0
        self._transactions: dict[int, _Transaction] = {}
        self._ids = itertools.count(int(time.time() * 1_000_000))
        self._op_ids = itertools.count(1000)
        #: Configuration changes applied (a committed transaction counts its commands).
        self.writes = 0
        #: Transactions committed successfully.
        self.commits = 0
        #: Successful logins.
        self.logins = 0
        #: Refused logins.
        self.failed_logins = 0
        #: Device groups synced to, in order.
        self.syncs: list[str] = []
        self._init_preflight_knobs()

    # --- test controls -------------------------------------------------------------

    def set_credentials(self, username: str, password: str) -> None:
        self._username, self._password = username, password

    def expire_tokens(self) -> None:
        """Every token issued so far is expired from now on (requests with it get 401)."""
        for token in self._tokens:
            self._tokens[token] = 0.0

    @property
    def live_tokens(self) -> int:
        now = time.monotonic()
        return sum(1 for expires in self._tokens.values() if expires > now)

    def plant(self, kind: str, partition: str, body: Obj) -> None:
        """Create an object directly, as another tool would (no write counted)."""
        if partition not in self._state.partitions:
            self._state.partitions[partition] = _partition(partition)
        _create(self._state, _BY_KEY[kind], {**body, "partition": partition})

    def plant_partition(self, name: str, default_route_domain: int = 0) -> None:
        """A partition an operator made, with its default route domain."""
        self._state.partitions[name] = {
            **_partition(name),
            "defaultRouteDomain": default_route_domain,
        }

    def nodes(self) -> dict[str, str]:
        """Every node object: full path -> address (``<ip>`` or ``<ip>%<route domain>``)."""
        return {full: str(o["address"]) for full, o in self._state.objects["node"].items()}

    def remove(self, kind: str, partition: str, name: str) -> None:
        """Delete an object directly, as an operator would (no reference checks)."""
        self._state.objects[kind].pop(f"/{partition}/{name}", None)

    def get(self, kind: str, partition: str, name: str) -> Obj | None:
        obj = self._state.objects[kind].get(f"/{partition}/{name}")
        return copy.deepcopy(obj) if obj is not None else None

    def names(self, kind: str, partition: str) -> list[str]:
        return sorted(
            o["name"] for o in self._state.objects[kind].values() if o["partition"] == partition
        )

    @property
    def partitions(self) -> list[str]:
        return sorted(self._state.partitions)

    # --- HTTP ----------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        self._preflight_routes(app)  # before the catch-all: aiohttp matches in order
        app.router.add_route("*", "/mgmt/{tail:.*}", self._handle)

    def _fault_body(self, status: int) -> Any:
        if status == 503:
            return F5Error(
                503, "Service Unavailable: iControl REST is busy (injected)", 32768
            ).body()
        return F5Error(status, f"injected fault {status}").body()

    def _is_session(self, request: web.Request) -> bool:
        path = request.path.rstrip("/")
        return path == "/mgmt/shared/authn/login" or path.startswith("/mgmt/shared/authz/tokens/")

    def _user_of(self, request: web.Request) -> str | None:
        expires = self._tokens.get(request.headers.get("X-F5-Auth-Token", ""))
        return self._username if expires is not None and expires > time.monotonic() else None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        try:
            body = await read_json(request)
        except ValueError:
            return json_response(
                F5Error(400, "Found invalid JSON body in the request.").body(), 400
            )
        if path == "/mgmt/shared/authn/login" and request.method == "POST":
            return self._login(request, body)
        denied = self._check_token(request)
        if denied is not None:
            return denied
        if path.startswith("/mgmt/shared/authz/tokens/") and request.method == "DELETE":
            self._tokens.pop(path.rsplit("/", 1)[-1], None)
            return json_response({})
        try:
            if path == "/mgmt/tm/transaction" or path.startswith("/mgmt/tm/transaction/"):
                if "X-F5-REST-Coordination-Id" in request.headers:
                    raise F5Error(
                        400,
                        f"Transaction {request.headers['X-F5-REST-Coordination-Id']} operation "
                        f"{request.method} {path} is not allowed to be added to transaction.",
                    )
                if request.method == "PATCH" and self.commit_delay_s:
                    await asyncio.sleep(self.commit_delay_s)
                return json_response(self._transaction(request.method, path, body))
            trans = request.headers.get("X-F5-REST-Coordination-Id")
            if trans is not None:
                return json_response(
                    self._queue(trans, request.method, path, request.query_string, body)
                )
            if path == "/mgmt/tm/cm" and self.commit_delay_s:
                await asyncio.sleep(self.commit_delay_s)  # a config-sync: as slow as a commit
            result = _execute(
                self._state, request.method, path, request.query_string, body, emu=self
            )
            if request.method != "GET" and path != "/mgmt/tm/cm":
                self.writes += 1
            return json_response(result)
        except F5Error as err:
            return json_response(err.body(), err.code)

    def _login(self, request: web.Request, body: Any) -> web.Response:
        ok = (
            isinstance(body, dict)
            and body.get("username") == self._username
            and body.get("password") == self._password
            and body.get("loginProviderName", "tmos") == "tmos"
        )
        if not ok:
            self.failed_logins += 1
            return json_response(self._auth_error(request, "Authentication failed."), 401)
        token = secrets.token_hex(13).upper()
        self._tokens[token] = time.monotonic() + self.token_timeout
        self.logins += 1
        return json_response(
            {
                "username": self._username,
                "loginReference": {
                    "link": "https://localhost/mgmt/cm/system/authn/providers/tmos/1f44a60e-11a7-3c51-a49f-82983026b41b/login"
                },
                "loginProviderName": "tmos",
                "token": {
                    "token": token,
                    "name": token,
                    "userName": self._username,
                    "authProviderName": "tmos",
                    "timeout": self.token_timeout,
                    "startTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                    "kind": "shared:authz:tokens:authtokenitemstate",
                    "selfLink": f"https://localhost/mgmt/shared/authz/tokens/{token}",
                },
                "generation": 0,
                "lastUpdateMicros": 0,
            }
        )

    def _check_token(self, request: web.Request) -> web.Response | None:
        token = request.headers.get("X-F5-Auth-Token")
        if not token:
            message = (
                "Authorization failed: no user authentication header or token detected. "
                f"Uri:http://localhost:8100{request.path} Referrer:{request.remote} "
                f"Sender:{request.remote}"
            )
            return json_response(self._auth_error(request, message), 401)
        expires = self._tokens.get(token)
        if expires is None:
            return json_response(self._auth_error(request, "X-F5-Auth-Token does not exist."), 401)
        if expires <= time.monotonic():
            return json_response(self._auth_error(request, "X-F5-Auth-Token has expired."), 401)
        return None

    def _auth_error(self, request: web.Request, message: str) -> Obj:
        return {
            "code": 401,
            "message": message,
            "referer": request.remote or "127.0.0.1",
            "restOperationId": next(self._op_ids),
            "kind": ":resterrorresponse",
        }

    # --- what `vipwire lb check` reads: release, the user's rights, route domains -------
    # (the route domains are the emulator's own, ``route_domains=`` at construction)

    def _init_preflight_knobs(self) -> None:
        #: The release ``GET /mgmt/tm/sys/version`` reports (an old one for tests).
        self.version = _VERSION
        #: The login user's ``partitionAccess``: partition (or ``all-partitions``) → role.
        #: Roles as F5 names them (admin, resource-admin, manager, operator, guest, ...).
        #: Only reported: the emulator does not refuse writes by role.
        self.user_roles: dict[str, str] = {"all-partitions": "admin"}

    def _preflight_routes(self, app: web.Application) -> None:
        # Shapes as in F5's iControl REST reference and f5-ansible's modules:
        # bigip_device_info.py (GET /mgmt/tm/sys/version, nestedStats entries),
        # bigip_user.py (GET /mgmt/tm/auth/user/<name>, partitionAccess list of
        # {name, role}) and bigip_routing_domain.py (GET /mgmt/tm/net/route-domain,
        # items with name, partition, id).
        app.router.add_get("/mgmt/tm/sys/version", self._sys_version)
        app.router.add_get("/mgmt/tm/auth/user/{name}", self._auth_user)
        app.router.add_get("/mgmt/tm/net/route-domain", self._route_domain)
        app.router.add_get("/mgmt/tm/net/route-domain/{name}", self._route_domain)
        # The built-in parents every BIG-IP has in /Common, readable like any object.
        app.router.add_get("/mgmt/tm/ltm/profile/fastl4/~Common~fastL4", self._builtin)
        for kind in ("http", "https", "tcp"):
            app.router.add_get(f"/mgmt/tm/ltm/monitor/{kind}/~Common~{kind}", self._builtin)

    async def _builtin(self, request: web.Request) -> web.Response:
        denied = self._check_token(request)
        if denied is not None:
            return denied
        name = request.path.rsplit("~", 1)[-1]
        return json_response({"name": name, "partition": "Common", "fullPath": f"/Common/{name}"})

    async def _sys_version(self, request: web.Request) -> web.Response:
        denied = self._check_token(request)
        if denied is not None:
            return denied
        entries = {
            "Build": {"description": "0.0.6"},
            "Edition": {"description": "Final"},
            "Product": {"description": "BIG-IP"},
            "Title": {"description": "Main Package"},
            "Version": {"description": self.version},
        }
        return json_response(
            {
                "kind": "tm:sys:version:versionstats",
                "selfLink": f"https://localhost/mgmt/tm/sys/version?ver={self.version}",
                "entries": {
                    "https://localhost/mgmt/tm/sys/version/0": {"nestedStats": {"entries": entries}}
                },
            }
        )

    async def _auth_user(self, request: web.Request) -> web.Response:
        denied = self._check_token(request)
        if denied is not None:
            return denied
        name = request.match_info["name"]
        if name != self._username:
            return json_response(
                F5Error(404, f"01020036:3: The requested user ({name}) was not found.").body(), 404
            )
        access = [{"name": p, "role": r} for p, r in sorted(self.user_roles.items())]
        return json_response(
            {
                "kind": "tm:auth:user:userstate",
                "name": name,
                "fullPath": name,
                "partitionAccess": access,
                "shell": "none",
            }
        )

    async def _route_domain(self, request: web.Request) -> web.Response:
        denied = self._check_token(request)
        if denied is not None:
            return denied

        def body(ident: int) -> Obj:
            return {
                "kind": "tm:net:route-domain:route-domainstate",
                "name": str(ident),
                "partition": "Common",
                "fullPath": f"/Common/{ident}",
                "id": ident,
                "strict": "enabled",
            }

        name = request.match_info.get("name")
        if name is None:
            return json_response(
                {
                    "kind": "tm:net:route-domain:route-domaincollectionstate",
                    "items": [body(i) for i in sorted(self._state.route_domains)],
                }
            )
        wanted = name.replace("~", "/").rsplit("/", 1)[-1]
        if not wanted.isdigit() or int(wanted) not in self._state.route_domains:
            return json_response(
                F5Error(
                    404, f"01020036:3: The requested route domain ({name}) was not found."
                ).body(),
                404,
            )
        return json_response(body(int(wanted)))

    # --- transactions ----------------------------------------------------------------

    def _transaction(self, method: str, path: str, body: Any) -> Obj:
        if path == "/mgmt/tm/transaction":
            if method == "POST":
                created = _Transaction(next(self._ids))
                self._transactions[created.trans_id] = created
                return created.body()
            if method == "GET":
                return {
                    "kind": "tm:transactioncollectionstate",
                    "items": [t.body() for t in self._transactions.values()],
                }
            raise F5Error(405, f"{method} is not supported on {path}")
        parts = path.split("/")  # ["", "mgmt", "tm", "transaction", id, ("commands")]
        trans = self._transactions.get(int(parts[4])) if parts[4].isdigit() else None
        if trans is None:
            raise F5Error(404, f"Transaction with ID {parts[4]} not found", 1)
        if len(parts) == 6 and parts[5] == "commands" and method == "GET":
            return {
                "kind": "tm:transaction:commandsstate",
                "items": [
                    {
                        "method": m,
                        "uri": f"https://localhost{p}",
                        "evalOrder": i + 1,
                        "commandId": i + 1,
                    }
                    for i, (m, p, _, _) in enumerate(trans.commands)
                ],
            }
        if len(parts) != 5:
            raise F5Error(404, f"URI path {path} not registered.")
        if method == "GET":
            return trans.body()
        if method == "DELETE":
            del self._transactions[trans.trans_id]
            return {}
        if method == "PATCH" and isinstance(body, dict) and body.get("state") == "VALIDATING":
            return self._commit(trans)
        raise F5Error(400, "Only state VALIDATING may be set on a transaction.")

    def _queue(self, trans_id: str, method: str, path: str, query: str, body: Any) -> Obj:
        trans = self._transactions.get(int(trans_id)) if trans_id.isdigit() else None
        if trans is None:
            raise F5Error(400, f"Transaction {trans_id} not found.", 1)
        if trans.state != "STARTED":
            raise F5Error(400, f"Transaction {trans_id} is {trans.state}, not STARTED.", 1)
        if method == "GET":
            raise F5Error(
                400,
                f"Transaction {trans_id} operation GET {path} is not allowed to be added "
                "to transaction.",
            )
        trans.commands.append((method, path, query, copy.deepcopy(body)))
        # BIG-IP echoes the queued request body.
        echoed = dict(body) if isinstance(body, dict) else {}
        return {**echoed, "selfLink": f"https://localhost{path}?ver={_VERSION}"}

    def _commit(self, trans: _Transaction) -> Obj:
        if trans.state != "STARTED":
            raise F5Error(400, f"Transaction {trans.trans_id} is {trans.state}.", 1)
        trial = copy.deepcopy(self._state)
        try:
            for method, path, query, body in trans.commands:
                _execute(trial, method, path, query, body, emu=self)
        except F5Error as err:
            trans.state, trans.failure = "FAILED", err.message
            raise F5Error(400, f"transaction failed:{err.message}", 2) from err
        self._state = trial
        self.writes += len(trans.commands)
        self.commits += 1
        trans.state = "COMPLETED"
        return trans.body()


# --- configuration semantics -------------------------------------------------------------


def _partition(name: str, description: str = "") -> Obj:
    obj = {
        "kind": "tm:auth:partition:partitionstate",
        "name": name,
        "fullPath": name,
        "generation": 1,
        "selfLink": f"https://localhost/mgmt/tm/auth/partition/{name}?ver={_VERSION}",
        "defaultRouteDomain": 0,
    }
    if description:
        obj["description"] = description
    return obj


def _execute(
    state: _State, method: str, path: str, query: str, body: Any, *, emu: F5Emulator
) -> Obj:
    """One configuration request against ``state`` (live, or a transaction's trial copy)."""
    if path == "/mgmt/tm/cm" and method == "POST":
        return _config_sync(body, emu)
    if path == "/mgmt/tm/auth/partition" or path.startswith("/mgmt/tm/auth/partition/"):
        return _partition_request(state, method, path, body)
    if path == _ROUTE_DOMAINS or path.startswith(_ROUTE_DOMAINS + "/"):
        return _route_domain_request(state, method, path)
    for kind in _KINDS:
        if path == kind.collection:
            if method == "GET":
                return _list(state, kind, query)
            if method == "POST":
                if not isinstance(body, dict):
                    raise F5Error(400, "A JSON object body is required.")
                return _create(state, kind, body)
            raise F5Error(405, f"{method} is not supported on a collection.")
        if path.startswith(kind.collection + "/"):
            full = _full_path(path[len(kind.collection) + 1 :])
            return _item(state, kind, method, full, body, query=query)
    raise F5Error(404, f"URI path {path} not registered.  Please try again with a valid URI.", 1)


def _config_sync(body: Any, emu: F5Emulator) -> Obj:
    args = str(body.get("utilCmdArgs", "")) if isinstance(body, dict) else ""
    if (
        not isinstance(body, dict)
        or body.get("command") != "run"
        or not args.startswith("config-sync to-group ")
    ):
        raise F5Error(400, "Only 'run config-sync to-group <group>' is emulated.")
    group = args.removeprefix("config-sync to-group ").strip()
    if group not in emu.device_groups:
        raise F5Error(400, f"01071038:5: Device group ({group}) was not found.")
    emu.syncs.append(group)
    return {"kind": "tm:cm:runstate", "command": "run", "utilCmdArgs": args}


def _route_domain_request(state: _State, method: str, path: str) -> Obj:
    """``net route-domain``, read only: the ids that exist, each named by its id in
    /Common as BIG-IP names its default one (``/Common/0``; iControl REST
    ``/mgmt/tm/net/route-domain``, f5-ansible
    ansible_collections/f5networks/f5_modules/plugins/modules/bigip_routedomain.py)."""

    def render(rd: int) -> Obj:
        return {
            "kind": "tm:net:route-domain:route-domainstate",
            "name": str(rd),
            "partition": "Common",
            "fullPath": f"/Common/{rd}",
            "id": rd,
            "strict": "enabled",
        }

    if method != "GET":
        raise F5Error(405, f"{method} is not emulated on {_ROUTE_DOMAINS}.")
    token = path.removeprefix(_ROUTE_DOMAINS).strip("/")
    if not token:
        return {
            "kind": "tm:net:route-domain:route-domaincollectionstate",
            "items": [render(rd) for rd in sorted(state.route_domains)],
        }
    name = _full_path(token).rsplit("/", 1)[-1]
    if not name.isdigit() or int(name) not in state.route_domains:
        raise F5Error(
            404, f"01020036:3: The requested route domain (/Common/{name}) was not found."
        )
    return render(int(name))


def _partition_request(state: _State, method: str, path: str, body: Any) -> Obj:
    name = path.removeprefix("/mgmt/tm/auth/partition").strip("/")
    if not name:
        if method == "GET":
            return {
                "kind": "tm:auth:partition:partitioncollectionstate",
                "items": list(state.partitions.values()),
            }
        if method == "POST" and isinstance(body, dict) and body.get("name"):
            new = str(body["name"])
            if new in state.partitions:
                raise F5Error(409, f"01020066:3: The requested folder (/{new}) already exists.")
            state.partitions[new] = _partition(new, str(body.get("description", "")))
            return state.partitions[new]
        raise F5Error(400, "A partition needs a name.")
    if name not in state.partitions:
        raise F5Error(404, f"01020036:3: The requested folder (/{name}) was not found.")
    if method == "GET":
        return state.partitions[name]
    if method == "DELETE":
        if any(o["partition"] == name for objs in state.objects.values() for o in objs.values()):
            raise F5Error(400, f"01070829:3: Folder /{name} is not empty and cannot be deleted.")
        del state.partitions[name]
        return {}
    raise F5Error(405, f"{method} is not supported on a partition.")


def _full_path(token: str) -> str:
    """``~p~name`` → ``/p/name``; a bare name is in /Common.

    The request path is decoded once already (aiohttp): decoding again would turn a
    route domain's ``%20`` (node ``10.0.0.1%20``) into a space.
    """
    if token.startswith("~"):
        return token.replace("~", "/")
    return f"/Common/{token}"


def _list(state: _State, kind: _Kind, query: str) -> Obj:
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    where = unquote_plus(params.get("$filter", params.get("%24filter", "")))
    only = where.split(" eq ", 1)[1].strip() if where.startswith("partition eq ") else None
    expand = params.get("expandSubcollections") == "true"
    items = [
        _render(kind, o, expand)
        for o in state.objects[kind.key].values()
        if only is None or o["partition"] == only
    ]
    result: Obj = {
        "kind": kind.kind.replace("state", "collectionstate"),
        "selfLink": f"https://localhost{kind.collection}?ver={_VERSION}",
    }
    if items:  # BIG-IP leaves "items" out of an empty collection
        result["items"] = items
    return result


def _render(kind: _Kind, obj: Obj, expand: bool) -> Obj:
    out = {k: copy.deepcopy(v) for k, v in obj.items() if k not in ("members", "profiles")}
    link = f"https://localhost{kind.collection}/~{obj['partition']}~{obj['name']}"
    if kind.key == "pool":
        ref: Obj = {"link": f"{link}/members?ver={_VERSION}", "isSubcollection": True}
        if expand:
            # "node" is the emulator's own link from member to node object.
            ref["items"] = [
                {k: copy.deepcopy(v) for k, v in m.items() if k != "node"}
                for m in obj.get("members", [])
            ]
        out["membersReference"] = ref
    if kind.key == "virtual":
        ref = {"link": f"{link}/profiles?ver={_VERSION}", "isSubcollection": True}
        if expand:
            ref["items"] = [
                {
                    "kind": "tm:ltm:virtual:profiles:profilesstate",
                    "name": p.rsplit("/", 1)[-1],
                    "fullPath": p,
                    "context": "all",
                }
                for p in obj.get("profiles", [])
            ]
        out["profilesReference"] = ref
    return out


def _item(state: _State, kind: _Kind, method: str, full: str, body: Any, *, query: str) -> Obj:
    objects = state.objects[kind.key]
    obj = objects.get(full)
    if obj is None:
        raise F5Error(404, f"01020036:3: The requested {kind.label} ({full}) was not found.")
    if method == "GET":
        return _render(kind, obj, "expandSubcollections=true" in query)
    if method == "DELETE":
        _check_unused(state, kind, full)
        del objects[full]
        return {}
    if method in ("PATCH", "PUT"):
        if not isinstance(body, dict):
            raise F5Error(400, "A JSON object body is required.")
        if method == "PATCH" and kind.key in _MONITOR_KINDS and "defaultsFrom" in body:
            # A monitor's parent is fixed at creation: F5's own Ansible modules refuse to
            # change it ("The parent monitor cannot be changed": f5-ansible,
            # ansible_collections/f5networks/f5_modules/plugins/modules/bigip_monitor_http.py
            # and bigip_monitor_tcp.py) and send ``defaultsFrom`` on create only. The
            # emulator refuses it in any PATCH, so a client that sends it is caught here.
            raise F5Error(
                400,
                f"01070340:3: Monitor {full}: defaults-from (the parent monitor) cannot be "
                "modified; it is set when the monitor is created.",
            )
        base = obj if method == "PATCH" else _defaults(kind, obj["name"], obj["partition"])
        changes = {
            k: v for k, v in body.items() if k not in ("name", "partition", "fullPath", "kind")
        }
        updated = {**copy.deepcopy(base), **changes}
        updated = _normalise(state, kind, updated, replacing=full)
        updated["generation"] = int(obj.get("generation", 1)) + 1
        objects[full] = updated
        return _render(kind, updated, False)
    raise F5Error(405, f"{method} is not supported on {kind.label}.")


def _create(state: _State, kind: _Kind, body: Obj) -> Obj:
    name = str(body.get("name") or "")
    partition = str(body.get("partition") or "Common")
    if name.startswith("/"):
        partition, _, name = name.strip("/").partition("/")
    if not name:
        raise F5Error(400, f"The {kind.label} name is required.")
    if partition not in state.partitions:
        raise F5Error(400, f"01020036:3: The requested folder (/{partition}) was not found.")
    full = f"/{partition}/{name}"
    # Monitor names are unique across monitor types: a pool names a monitor by path only.
    same = _MONITOR_KINDS if kind.key in _MONITOR_KINDS else (kind.key,)
    if any(full in state.objects[k] for k in same) or full in _BUILTIN.get(kind.key, set()):
        raise F5Error(
            409,
            f"01020066:3: The requested {kind.label} ({full}) already exists in partition "
            f"{partition}.",
        )
    given = {k: v for k, v in body.items() if k not in ("name", "partition", "fullPath", "kind")}
    obj = _normalise(state, kind, {**_defaults(kind, name, partition), **given}, replacing=None)
    state.objects[kind.key][full] = obj
    return _render(kind, obj, False)


def _defaults(kind: _Kind, name: str, partition: str) -> Obj:
    obj: Obj = {
        "kind": kind.kind,
        "name": name,
        "partition": partition,
        "fullPath": f"/{partition}/{name}",
        "generation": 1,
        "selfLink": f"https://localhost{kind.collection}/~{partition}~{name}?ver={_VERSION}",
    }
    match kind.key:
        case "virtual":
            obj.update(
                ipProtocol="tcp",
                mask="255.255.255.255",
                source="0.0.0.0/0",
                translateAddress="enabled",
                translatePort="enabled",
                sourceAddressTranslation={"type": "none"},
                profiles=["/Common/fastL4"],
                connectionLimit=0,
            )
        case "pool":
            obj.update(
                loadBalancingMode="round-robin",
                serviceDownAction="none",
                minActiveMembers=0,
                monitor="",
                members=[],
            )
        case "monitor" | "monitor_https":
            obj.update(
                defaultsFrom="/Common/https" if kind.key == "monitor_https" else "/Common/http",
                destination="*:*",
                interval=5,
                timeout=16,
                send="GET /\\r\\n",
                recv="",
            )
        case "monitor_tcp":
            # BIG-IP's tcp monitor: 5 s / 16 s like http; empty send and receive strings
            # only check that the port accepts a connection (bigip_monitor_tcp).
            obj.update(
                defaultsFrom="/Common/tcp",
                destination="*:*",
                interval=5,
                timeout=16,
                send="",
                recv="",
            )
        case "fastl4":
            obj.update(
                defaultsFrom="/Common/fastL4",
                looseInitialization="disabled",
                looseClose="disabled",
                idleTimeout=300,
                # BIG-IP's default TCP close timeout (seconds); F5's nPath chapter
                # ("Configuring nPath Routing", BIG-IP LTM Implementations) advises the
                # idle timeout's value instead when half-closes are expected.
                tcpCloseTimeout=5,
            )
        case "persist":
            # /Common/source_addr's default entry timeout is 180 s.
            obj.update(defaultsFrom="/Common/source_addr", timeout="180", mask="none")
        case "addresslist":
            obj.update(addresses=[])
        case "node":
            obj.update(address="", monitor="default", session="user-enabled", state="unchecked")
        case "tmc":
            obj.update(
                protocol="tcp",
                sourceAddressInline="0.0.0.0",
                sourcePortInline=0,
                routeDomain="any",
            )
    return obj


def _normalise(state: _State, kind: _Kind, obj: Obj, *, replacing: str | None) -> Obj:
    """Resolve references and fill derived fields, or refuse as BIG-IP would."""
    partition = obj["partition"]
    _check_profile_fields(kind, obj)
    if kind.key == "virtual":
        matched = _access_virtual(state, obj)  # by criteria: no destination of its own
        endpoint = None
        if not matched:
            dest = str(obj.get("destination") or "")
            if not dest:
                raise F5Error(400, "01070018:3: A virtual server requires a destination.")
            if not dest.startswith("/"):
                dest = f"/{partition}/{dest}"
            endpoint = _endpoint(dest)
            if endpoint is None:
                raise F5Error(400, f"01070018:3: Invalid destination {dest}.")
            obj["destination"] = dest
        pool = str(obj.get("pool") or "")
        if pool:
            pool = _absolute(pool, partition)
            if pool not in state.objects["pool"]:
                raise F5Error(400, f"01020036:3: The requested Pool ({pool}) was not found.")
            obj["pool"] = pool
        profiles = []
        for p in obj.get("profiles") or []:
            ref = _absolute(str(p.get("name") if isinstance(p, dict) else p), partition)
            if ref not in state.objects["fastl4"] and ref not in _BUILTIN["fastl4"]:
                raise F5Error(400, f"01020036:3: The requested profile ({ref}) was not found.")
            profiles.append(ref)
        obj["profiles"] = profiles
        if endpoint is not None:
            _check_source(obj, endpoint[0])
            for other in state.objects["virtual"].values():
                if other["fullPath"] in (replacing, obj["fullPath"]):
                    continue
                if _virtual_key(state, other) == _virtual_key(state, obj):
                    raise F5Error(
                        409,
                        f"01070333:3: Virtual Server {obj['fullPath']} illegally shares "
                        "destination address, source address, service port, ip-protocol, and "
                        f"route domain with Virtual Server {other['fullPath']}.",
                    )
    elif kind.key == "pool":
        monitor = str(obj.get("monitor") or "").strip()
        refs = [_absolute(m, partition) for m in _PATHS.findall(monitor)] if monitor else []
        for ref in refs:
            if ref not in _BUILTIN["monitor"] and not any(
                ref in state.objects[k] for k in _MONITOR_KINDS
            ):
                raise F5Error(400, f"01020036:3: The requested monitor ({ref}) was not found.")
        obj["monitor"] = " and ".join(refs) + (" " if refs else "")
        obj["members"] = [_member(state, m, obj["fullPath"]) for m in obj.get("members") or []]
    elif kind.key == "node":
        ip, rd = _route_domain(state, str(obj.get("address") or ""), partition)
        obj["address"] = _rd_text(state, ip, rd, partition)
        _check_node_address(state, obj["fullPath"], ip, rd)
    elif kind.key in ("persist", "addresslist", "tmc"):
        _normalise_access(state, kind, obj)
    if kind.key == "virtual":
        _resolve_persist(state, obj)
    return obj


def _check_profile_fields(kind: _Kind, obj: Obj) -> None:
    """The fields an appliance profile sets, refused as BIG-IP refuses them.

    Sources: F5's bigip_pool module (``lb_method``, ``service_down_action``),
    bigip_virtual_server (``connection_limit``, 0: none), bigip_profile_fastl4
    (``idle_timeout``: seconds, ``indefinite`` or ``immediate``) and
    bigip_monitor_http/https/tcp ("interval ... must be less than the timeout
    value"), all at https://docs.ansible.com/ansible/latest/modules/; the pool's
    REST field names as in the iControl REST ``ltm pool`` schema.
    """
    if kind.key == "pool":
        mode = obj.get("loadBalancingMode")
        if mode not in _LB_MODES:
            raise F5Error(
                400, f"01070734:3: Configuration error: invalid load balancing mode {mode!r}"
            )
        action = obj.get("serviceDownAction")
        if action not in _DOWN_ACTIONS:
            raise F5Error(
                400, f"Invalid serviceDownAction {action!r}; none, reset, drop or reselect"
            )
    elif kind.key == "virtual":
        limit = obj.get("connectionLimit")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise F5Error(
                400, f"Invalid connectionLimit {limit!r}: a number of connections, 0 for none"
            )
    elif kind.key == "fastl4":
        idle = obj.get("idleTimeout")
        if not (
            (isinstance(idle, int) and not isinstance(idle, bool) and idle >= 0)
            or idle in ("indefinite", "immediate")
        ):
            raise F5Error(400, f"Invalid idleTimeout {idle!r}: seconds, indefinite or immediate")
    elif kind.key in _MONITOR_KINDS:
        interval, timeout = obj.get("interval"), obj.get("timeout")
        if not isinstance(interval, int) or not isinstance(timeout, int) or interval >= timeout:
            raise F5Error(
                400,
                f"01071b19:3: Monitor {obj['fullPath']}: the interval ({interval}) must be less "
                f"than the timeout ({timeout}).",
            )


def _member(state: _State, given: Any, pool: str) -> Obj:
    """A pool member, and the node object it names (created when missing, kept after).

    The member's partition is the one it names (``/p/`` before its name, or its
    ``partition`` field), else ``Common``: a member sent without one gets a node in
    ``/Common`` whatever the pool's partition (f5-ansible's bigip_pool_member sends
    ``partition`` with every member, defaulting to Common:
    ansible_collections/f5networks/f5_modules/plugins/modules/bigip_pool_member.py
    ``create_on_device``; the cross-partition failures of F5Networks/f5-ansible
    #1800 and #1291 come from nodes in another partition than the pool).
    """
    if not isinstance(given, dict) or not given.get("name"):
        raise F5Error(400, "A pool member needs a name <address>:<port>.")
    text = str(given["name"])
    partition = str(given.get("partition") or "Common")
    if text.startswith("/"):
        partition = text.strip("/").split("/", 1)[0]
    tail = text.rsplit("/", 1)[-1]
    endpoint = _endpoint(tail)
    if endpoint is None:
        raise F5Error(
            400, f"01070587:3: The requested pool member ({tail}) is not a valid address:port."
        )
    if partition not in state.partitions:
        raise F5Error(400, f"01020036:3: The requested folder (/{partition}) was not found.")
    host = tail.rsplit(":" if tail.count(":") == 1 else ".", 1)[0]
    ip, rd = _route_domain(state, host, partition)
    address = _rd_text(state, ip, rd, partition)
    separator = "." if ":" in ip else ":"
    name = f"{address}{separator}{endpoint[1]}"
    node = _member_node(state, partition, address, ip, rd)
    member: Obj = {
        "kind": "tm:ltm:pool:members:membersstate",
        "name": name,
        "partition": partition,
        "fullPath": f"/{partition}/{name}",
        "address": address,
        "state": "unchecked",
        "session": "user-enabled",
        "node": node,
    }
    member.update(_member_admin(given, name))
    if given.get("description"):
        member["description"] = str(given["description"])
    return member


#: A pool member's administrative fields, as iControl REST takes them (``ltm pool
#: members``): ``session`` ``user-enabled`` or ``user-disabled`` (disabled: no new
#: connections, except those matching a persistence record; established ones
#: continue), ``state`` ``user-up`` or ``user-down`` (forced offline: not even
#: persisted ones). BIG-IP answers with ``monitor-enabled`` and ``unchecked``/``up``
#: once a monitor has its say; the emulator keeps what was set, or those defaults.
#: Sources: F5's "Manual Chapter: Managing pool members" (enabled / disabled /
#: forced offline), the iControl REST reference for ``tm:ltm:pool:members:membersstate``
#: and vendor clients (F5-LTM PowerShell ``Disable-PoolMember``:
#: ``{"state": "user-up", "session": "user-disabled"}``).
_SESSIONS: Final = ("user-enabled", "user-disabled", "monitor-enabled")
_STATES: Final = ("user-up", "user-down", "unchecked", "up", "down")


def _member_admin(given: Obj, name: str) -> Obj:
    admin: Obj = {}
    for key, allowed in (("session", _SESSIONS), ("state", _STATES)):
        value = given.get(key)
        if value is None:
            continue
        if value not in allowed:
            raise F5Error(400, f'invalid property value "{key}":"{value}" for pool member {name}')
        admin[key] = "user-enabled" if value == "monitor-enabled" else value
    return admin


def member_takes_new_connections(member: Obj) -> bool:
    """Whether BIG-IP would pick this pool member for a new (non-persisted) connection:
    not session-disabled and not forced offline."""
    return member.get("session") != "user-disabled" and member.get("state") != "user-down"


def _route_domain(state: _State, host: str, partition: str) -> tuple[str, int]:
    """``<ip>[%<id>]`` → (the canonical ip, the route domain), or BIG-IP's refusal.

    Without ``%<id>`` an address is in its partition's default route domain
    (``auth partition`` ``defaultRouteDomain``); a route domain that does not exist
    is refused. Sources: iControl REST ``ltm node`` / ``ltm pool members`` address
    syntax ``<ip>%<route domain id>`` (F5Networks/f5-ansible
    ansible_collections/f5networks/f5_modules/plugins/modules/bigip_node.py and
    bigip_pool_member.py take addresses with ``%<id>``; F5Networks/f5-ansible #887
    and F5Networks/terraform-provider-bigip #661: members in a route domain).
    """
    ip_text, _, rd_text = host.partition("%")
    try:
        ip = ipaddress.ip_address(ip_text).compressed
    except ValueError:
        raise F5Error(400, f"01070587:3: The requested node address ({host}) is invalid.") from None
    if rd_text:
        if not rd_text.isdigit():
            raise F5Error(400, f"01070587:3: The requested node address ({host}) is invalid.")
        rd = int(rd_text)
    else:
        rd = int(state.partitions.get(partition, {}).get("defaultRouteDomain", 0))
    if rd not in state.route_domains:
        raise F5Error(400, f"01020036:3: The requested route domain (/Common/{rd}) was not found.")
    return ip, rd


def _rd_text(state: _State, ip: str, rd: int, partition: str) -> str:
    """As BIG-IP shows an address: with ``%<id>`` unless it is the partition's default."""
    default = int(state.partitions.get(partition, {}).get("defaultRouteDomain", 0))
    return ip if rd == default else f"{ip}%{rd}"


def _check_node_address(state: _State, full: str, ip: str, rd: int) -> None:
    """One node per address and route domain, across every partition.

    BIG-IP refuses a second node with an address another node (of another name, or
    in another partition) already has: "0107003a:3: Pool member node (/Common/...)
    and existing node (/Common/nd_...) cannot use the same IP Address (...)"
    (F5Networks/f5-ansible #823; the same refusal across partitions: #2293, #1800).
    """
    for other, node in state.objects["node"].items():
        if other == full:
            continue
        o_ip, _, o_rd = str(node["address"]).partition("%")
        o_rd_id = (
            int(o_rd)
            if o_rd
            else int(state.partitions.get(node["partition"], {}).get("defaultRouteDomain", 0))
        )
        if o_ip == ip and o_rd_id == rd:
            raise F5Error(
                400,
                f"0107003a:3: Pool member node ({full}) and existing node ({other}) cannot "
                f"use the same IP Address ({node['address']}).",
            )


def _member_node(state: _State, partition: str, address: str, ip: str, rd: int) -> str:
    """The node a member names: ``/<partition>/<address>``, made on first use and kept.

    BIG-IP creates a node object for every new pool member address and never deletes
    it when the member goes: clients delete unused nodes themselves (f5-ansible's
    bigip_pool_member ``remove_node_from_device``, plugins/modules/bigip_pool_member.py;
    "Deleting a pool leaves nodes created": F5Networks/f5-ansible #1925).
    """
    full = f"/{partition}/{address}"
    if full not in state.objects["node"]:
        _check_node_address(state, full, ip, rd)
        node = _defaults(_BY_KEY["node"], address, partition)
        node["address"] = address
        state.objects["node"][full] = node
    return full


def _check_unused(state: _State, kind: _Kind, full: str) -> None:
    _check_access_unused(state, kind, full)
    if kind.key == "node":
        # "01070110:3: Node address '/Common/x' is referenced by a member of pool
        # '/Common/p'." (F5Networks/f5-ansible #2125, F5Networks/terraform-provider-bigip
        # #568; f5-openstack-agent #473 ignores this 400 for nodes shared by members.)
        for p in state.objects["pool"].values():
            if any(m.get("node") == full for m in p.get("members", [])):
                raise F5Error(
                    400,
                    f"01070110:3: Node address '{full}' is referenced by a member of pool "
                    f"'{p['fullPath']}'.",
                )
    if kind.key == "pool":
        for v in state.objects["virtual"].values():
            if v.get("pool") == full:
                raise F5Error(
                    400,
                    f"01070265:3: The Pool ({full}) cannot be deleted because it is in use by a "
                    f"Virtual Server ({v['fullPath']}).",
                )
    if kind.key in _MONITOR_KINDS:
        for p in state.objects["pool"].values():
            if full in _PATHS.findall(str(p.get("monitor", ""))):
                raise F5Error(400, f"01070083:3: Monitor {full} is in use.")
    if kind.key == "fastl4":
        for v in state.objects["virtual"].values():
            if full in v.get("profiles", []):
                raise F5Error(
                    400, f"01070313:3: Profile {full} is in use by virtual server {v['fullPath']}."
                )


def _absolute(ref: str, partition: str) -> str:
    ref = ref.strip()
    return ref if ref.startswith("/") else f"/{partition}/{ref}"


def _endpoint(text: str) -> tuple[str, int] | None:
    tail = text.rsplit("/", 1)[-1]
    host, _, port = tail.partition(":") if tail.count(":") == 1 else tail.rpartition(".")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).compressed, int(port)
    except ValueError:
        return None


# --- source restriction and persistence ----------------------------------------------
#
# As iControl REST documents them (ltm virtual ``source``, ``persist`` and
# ``trafficMatchingCriteria``; ltm persistence source-addr; net address-list; ltm
# traffic-matching-criteria, BIG-IP 14.1+). What is modelled: a virtual's ``source`` is
# a CIDR of the destination's family (BIG-IP refuses a mixed pair); ``source`` is part
# of a virtual's identity (two virtuals may share destination, port and protocol when
# their sources differ: "illegally shares destination address, source address, ...");
# a virtual that names criteria takes its destination, port, protocol and sources from
# them and keeps none of its own; ``persist`` names a persistence profile that exists;
# an address list holds CIDRs or addresses; criteria reference an address list that
# exists; nothing referenced can be deleted. Not modelled: route domains, port lists,
# persistence across virtuals, the persistence table itself (no traffic).


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text.split("%", 1)[0], strict=False)
    except ValueError:
        return None


def _check_source(obj: Obj, address: str) -> None:
    source = str(obj.get("source") or ("::/0" if ":" in address else "0.0.0.0/0"))
    network = _network(source)
    if network is None:
        raise F5Error(400, f"01070018:3: Invalid source address {source}.")
    if network.version != ipaddress.ip_address(address).version:
        raise F5Error(
            400,
            f"01070018:3: The source ({source}) and destination ({address}) addresses of "
            f"virtual server {obj['fullPath']} must be of the same IP family.",
        )
    obj["source"] = str(network)


def _access_virtual(state: _State, obj: Obj) -> bool:
    """Resolve a virtual's criteria; True when it matches by them (no own destination)."""
    ref = str(obj.get("trafficMatchingCriteria") or "none").strip()
    if ref == "none":
        obj.pop("trafficMatchingCriteria", None)
        return False
    ref = _absolute(ref, obj["partition"])
    if ref not in state.objects["tmc"]:
        raise F5Error(
            400, f"01020036:3: The requested Traffic Matching Criteria ({ref}) was not found."
        )
    obj["trafficMatchingCriteria"] = ref
    for key in ("destination", "mask", "source"):
        obj.pop(key, None)
    identity = _virtual_key(state, obj)
    for other in state.objects["virtual"].values():
        if other["fullPath"] != obj["fullPath"] and _virtual_key(state, other) == identity:
            raise F5Error(
                409,
                f"01070333:3: Virtual Server {obj['fullPath']} illegally shares destination "
                f"address, source address, service port, ip-protocol, and route domain with "
                f"Virtual Server {other['fullPath']}.",
            )
    return True


def _virtual_key(state: _State, obj: Obj) -> tuple[Any, ...]:
    """What no two virtuals may share: destination, port, protocol and sources."""
    ref = obj.get("trafficMatchingCriteria")
    if ref:
        tmc = state.objects["tmc"].get(str(ref), {})
        return (
            str(tmc.get("destinationAddressInline")),
            int(tmc.get("destinationPortInline") or 0),
            str(tmc.get("protocol")),
            ("list", str(tmc.get("sourceAddressList"))),
        )
    endpoint = _endpoint(str(obj.get("destination") or ""))
    return (*(endpoint or ("", 0)), str(obj.get("ipProtocol")), str(obj.get("source")))


def _resolve_persist(state: _State, obj: Obj) -> None:
    refs = []
    for given in obj.get("persist") or []:
        name = str(given.get("name") if isinstance(given, dict) else given)
        ref = _absolute(name, obj["partition"])
        if ref not in state.objects["persist"] and ref not in _BUILTIN["persist"]:
            raise F5Error(400, f"01020036:3: The requested profile ({ref}) was not found.")
        refs.append({"name": ref, "partition": ref.split("/")[1], "tmDefault": "yes"})
    obj["persist"] = refs


def _normalise_access(state: _State, kind: _Kind, obj: Obj) -> None:
    partition = obj["partition"]
    if kind.key == "persist":
        timeout = str(obj.get("timeout", ""))
        if not (timeout.isdigit() and 0 < int(timeout) <= 4294967295) and timeout != "indefinite":
            raise F5Error(400, f"01070734:3: Invalid persistence timeout {timeout!r}.")
    elif kind.key == "addresslist":
        entries = []
        for given in obj.get("addresses") or []:
            name = str(given.get("name") if isinstance(given, dict) else given)
            if _network(name) is None:
                raise F5Error(400, f"01070734:3: Invalid address {name!r} in address list.")
            entries.append({"name": name})
        if not entries:
            raise F5Error(400, "01070734:3: An address list needs at least one address.")
        obj["addresses"] = entries
    elif kind.key == "tmc":
        ref = _absolute(str(obj.get("sourceAddressList") or ""), partition)
        if ref not in state.objects["addresslist"]:
            raise F5Error(400, f"01020036:3: The requested Address List ({ref}) was not found.")
        obj["sourceAddressList"] = ref
        try:
            address = ipaddress.ip_address(str(obj.get("destinationAddressInline")))
        except ValueError as exc:
            raise F5Error(400, "01070734:3: Invalid destination address inline.") from exc
        obj["destinationAddressInline"] = address.compressed
        obj["protocol"] = str(obj.get("protocol") or "tcp")


def _check_access_unused(state: _State, kind: _Kind, full: str) -> None:
    users: list[str] = []
    if kind.key == "persist":
        users = [
            v["fullPath"]
            for v in state.objects["virtual"].values()
            if any(p.get("name") == full for p in v.get("persist", []))
        ]
    elif kind.key == "tmc":
        users = [
            v["fullPath"]
            for v in state.objects["virtual"].values()
            if v.get("trafficMatchingCriteria") == full
        ]
    elif kind.key == "addresslist":
        users = [
            t["fullPath"]
            for t in state.objects["tmc"].values()
            if t.get("sourceAddressList") == full
        ]
    if users:
        raise F5Error(400, f"01070083:3: {kind.label} {full} is in use by {users[0]}.")
