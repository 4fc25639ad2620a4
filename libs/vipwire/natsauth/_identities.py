"""Who is on the bus and what each identity may do there: pure decisions.

One NATS account (the server's global one), one user per identity, each
authenticated by an NKey and held to allow-lists of subjects it may publish
and subscribe to. The server enforces them, JetStream's API included: a
consumer is created on ``$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>``
(its one filter inside the subject, checked by the server against the
consumer's configuration), so allowing that subject for some filters only
is what limits what an identity can read through JetStream.

Nothing here touches a file or a key: :mod:`vipwire.natsauth._files` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal

import msgspec

from vipwire.contracts import (
    CONTROL_VERBS,
    FEED_BUCKET,
    FEED_ROOT,
    IPAM_BUCKET,
    ROOT,
    STREAM,
    identity_of_credentials,
)
from vipwire.contracts._control import CONTROL_PREFIX, LBDRIVER_LEASE_BUCKET
from vipwire.contracts._subjects import SubjectError, node_token, validate_cluster

Role = Literal["ipam", "lbdriver", "dashboard", "watcher", "nodeagent", "operator", "reader"]

#: The control subjects' root (``vipwire-ctl.<service>.<verb>.<caller>``).
CONTROL_ROOT: Final = CONTROL_PREFIX
#: Control requests that only read (a reader and the dashboard may send these).
READ_ONLY: Final = tuple(v for v in CONTROL_VERBS if v.read_only)
#: ipam's durable consumers (one per filter); nobody else may touch them. ``ipam``
#: is the name of the one durable with two filters before identities existed.
IPAM_DURABLES: Final = ("ipam-service", "ipam-lb", "ipam-status", "ipam")

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_]{0,61}[a-z0-9])?$")

_API = "$JS.API"
_KV_STREAM_IPAM = f"KV_{IPAM_BUCKET}"
_KV_STREAM_LEASE = f"KV_{LBDRIVER_LEASE_BUCKET}"
_KV_STREAM_FEED = f"KV_{FEED_BUCKET}"


class IdentityError(ValueError):
    """A name given for an identity cannot be one."""


class Identity(msgspec.Struct, frozen=True, kw_only=True, order=True):
    """One user on the bus."""

    name: str
    role: Role
    cluster: str | None = None
    #: The node's name as Kubernetes has it (a node agent only).
    node: str | None = None

    def describe(self) -> str:
        """``role watcher, cluster east`` (how the credentials file's header says it)."""
        parts = [f"role {self.role}"]
        if self.cluster is not None:
            parts.append(f"cluster {self.cluster}")
        if self.node is not None:
            parts.append(f"node {self.node}")
        elif self.role == "nodeagent":
            parts.append("every node")
        return ", ".join(parts)


class Permissions(msgspec.Struct, frozen=True, kw_only=True):
    """What the server lets one identity do."""

    publish_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_allow: tuple[str, ...]
    subscribe_deny: tuple[str, ...] = ()
    #: May answer requests (publish once to the reply subject of a request it received).
    allow_responses: bool = False


def _checked_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise IdentityError(
            f"{kind} name {name!r} cannot name an identity: use lowercase letters, digits, "
            f"'-' and '_' (at most 63, starting and ending with a letter or digit)"
        )
    return name


def _checked_cluster(cluster: str) -> str:
    try:
        return validate_cluster(cluster)
    except SubjectError as exc:
        raise IdentityError(str(exc)) from exc


def watcher(cluster: str) -> Identity:
    return Identity(name=f"watcher-{_checked_cluster(cluster)}", role="watcher", cluster=cluster)


#: ``--nodes east=*``: one identity for every agent of the cluster (see :func:`nodeagent`).
EVERY_NODE: Final = "*"


def nodeagent(cluster: str, node: str) -> Identity:
    """The agent of ``node``; with :data:`EVERY_NODE`, the one identity of every agent
    of the cluster (``nodeagent-<cluster>``, publishing any node's ``applied``), for
    fleets that cannot hand each node a seed of its own."""
    if node == EVERY_NODE:
        return Identity(
            name=f"nodeagent-{_checked_cluster(cluster)}", role="nodeagent", cluster=cluster
        )
    try:
        token = node_token(node)
    except SubjectError as exc:
        raise IdentityError(str(exc)) from exc
    return Identity(
        name=f"nodeagent-{_checked_cluster(cluster)}-{token}",
        role="nodeagent",
        cluster=cluster,
        node=node,
    )


def operator(name: str) -> Identity:
    return Identity(name=f"operator-{_checked_name('operator', name)}", role="operator")


def reader(name: str) -> Identity:
    return Identity(name=f"reader-{_checked_name('reader', name)}", role="reader")


IPAM: Final = Identity(name="ipam", role="ipam")
LBDRIVER: Final = Identity(name="lbdriver", role="lbdriver")
DASHBOARD: Final = Identity(name="dashboard", role="dashboard")


def identities_for(
    clusters: Iterable[str],
    *,
    nodes: Mapping[str, Sequence[str]] | None = None,
    operators: Iterable[str] = (),
    readers: Iterable[str] = (),
) -> list[Identity]:
    """Every identity of a fleet: the shared services, a watcher per cluster, an agent
    per node named in ``nodes`` (cluster -> node names), operators and readers; sorted
    by name, each once."""
    found: dict[str, Identity] = {i.name: i for i in (IPAM, LBDRIVER, DASHBOARD)}
    named = set(clusters) | set((nodes or {}).keys())
    for cluster in named:
        found.setdefault(watcher(cluster).name, watcher(cluster))
    for cluster, members in (nodes or {}).items():
        for node in members:
            agent = nodeagent(cluster, node)
            found.setdefault(agent.name, agent)
    for name in operators:
        found.setdefault(operator(name).name, operator(name))
    for name in readers:
        found.setdefault(reader(name).name, reader(name))
    return sorted(found.values(), key=lambda i: i.name)


# --- permissions ---------------------------------------------------------------------


def _consume(*filters: str) -> list[str]:
    """Creating (named) consumers on VIPWIRE with one filter inside one of ``filters``,
    and using them (info, next, ack, delete, leader stepdown)."""
    return [
        *(f"{_API}.CONSUMER.CREATE.{STREAM}.*.{f}" for f in filters),
        f"{_API}.CONSUMER.INFO.{STREAM}.*",
        f"{_API}.CONSUMER.DELETE.{STREAM}.*",
        f"{_API}.CONSUMER.MSG.NEXT.{STREAM}.*",
        f"{_API}.CONSUMER.LEADER.STEPDOWN.{STREAM}.*",
        f"$JS.ACK.{STREAM}.>",
        # Flow control of push consumers (a read of every subject's last message).
        f"$JS.FC.{STREAM}.>",
    ]


def _bucket(stream: str, *, write: bool, declare: bool) -> list[str]:
    """Using a KV bucket (its stream ``KV_<bucket>``): read keys and watch (ordered
    consumers, which name no filter in the subject), and with ``write`` put and delete
    keys; with ``declare`` create it or bring it to our limits, and purge old markers."""
    bucket = stream.removeprefix("KV_")
    allowed = [
        f"{_API}.STREAM.INFO.{stream}",
        f"{_API}.STREAM.MSG.GET.{stream}",
        f"{_API}.DIRECT.GET.{stream}",
        f"{_API}.DIRECT.GET.{stream}.>",
        f"{_API}.CONSUMER.CREATE.{stream}",
        f"{_API}.CONSUMER.CREATE.{stream}.>",
        f"{_API}.CONSUMER.INFO.{stream}.*",
        f"{_API}.CONSUMER.DELETE.{stream}.*",
        f"{_API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]
    if write:
        allowed.append(f"$KV.{bucket}.>")
    if declare:
        allowed += [
            f"{_API}.STREAM.CREATE.{stream}",
            f"{_API}.STREAM.UPDATE.{stream}",
            f"{_API}.STREAM.PURGE.{stream}",
        ]
    return allowed


def _ipam_durables_denied() -> list[str]:
    """ipam's durable consumers, out of reach of everyone else (their info stays
    readable): creating or deleting them, pulling from them (which would take ipam's
    messages), asking their leader to step down, acknowledging for them."""
    denied: list[str] = []
    for name in IPAM_DURABLES:
        denied += [
            f"{_API}.CONSUMER.CREATE.{STREAM}.{name}",
            f"{_API}.CONSUMER.CREATE.{STREAM}.{name}.>",
            f"{_API}.CONSUMER.DURABLE.CREATE.{STREAM}.{name}",
            f"{_API}.CONSUMER.DELETE.{STREAM}.{name}",
            f"{_API}.CONSUMER.MSG.NEXT.{STREAM}.{name}",
            f"{_API}.CONSUMER.LEADER.STEPDOWN.{STREAM}.{name}",
            f"$JS.ACK.{STREAM}.{name}.>",
        ]
    return denied


def _reads_stream() -> list[str]:
    """Whole-stream reads of an operator: a message by sequence, the streams and their
    consumers listed (replay's ordered consumers are named: see ``_consume``). No
    unnamed consumer create: its name, in the request body, could squat the name of
    ipam's durable before ipam made it."""
    return [
        f"{_API}.INFO",
        f"{_API}.STREAM.NAMES",
        f"{_API}.STREAM.LIST",
        f"{_API}.STREAM.INFO.*",
        f"{_API}.CONSUMER.NAMES.*",
        f"{_API}.CONSUMER.LIST.*",
        f"{_API}.CONSUMER.INFO.*.*",
        f"{_API}.STREAM.MSG.GET.{STREAM}",
    ]


def permissions_for(identity: Identity) -> Permissions:
    """The allow-lists (and the denials carved out of them) of ``identity``."""
    inbox = f"_INBOX.{identity.name}.>"
    common = [
        f"{_API}.INFO",
        f"{_API}.STREAM.INFO.{STREAM}",
        # A stored message by sequence, or the last of a subject: every consumer reads
        # the newest valid message before one that does not decode. The request names
        # no subject the server could check (a read, never a write).
        f"{_API}.STREAM.MSG.GET.{STREAM}",
    ]
    deny = _ipam_durables_denied()
    c = identity.cluster
    role = identity.role
    if role == "watcher":
        publish = [
            *(f"{ROOT}.{c}.{family}.>" for family in ("service", "endpoints", "node", "status")),
            *common,
            *_consume(f"{ROOT}.{c}.>"),
        ]
        return Permissions(publish_allow=tuple(publish), publish_deny=tuple(deny),
                           subscribe_allow=(inbox,))  # fmt: skip
    if role == "nodeagent":
        assert c is not None
        node = "*" if identity.node is None else node_token(identity.node)
        publish = [
            f"{ROOT}.{c}.applied.{node}",
            *common,
            # feed: lb (agents of before the node feed) reads the stream's lb subjects.
            *_consume(*(f"{ROOT}.{c}.{family}.>" for family in ("lb", "endpoints", "pools"))),
            # The node feed's table: direct reads of its own cluster's keys only.
            f"{_API}.DIRECT.GET.{_KV_STREAM_FEED}.$KV.{FEED_BUCKET}.{c}.>",
        ]
        # The node feed's deltas and the pools, live, without a consumer per node.
        subscribe = (inbox, f"{FEED_ROOT}.{c}.delta", f"{ROOT}.{c}.pools.all")
        return Permissions(publish_allow=tuple(publish), publish_deny=tuple(deny),
                           subscribe_allow=subscribe)  # fmt: skip
    if role == "ipam":
        publish = [
            f"{ROOT}.*.vip.>",
            f"{ROOT}.*.pools.>",
            *common,
            # Steward of the stream: declares and updates it, purges ended subjects
            # (which reads every subject's last message and the durables' progress).
            f"{_API}.STREAM.CREATE.{STREAM}",
            f"{_API}.STREAM.UPDATE.{STREAM}",
            f"{_API}.STREAM.PURGE.{STREAM}",
            f"{_API}.CONSUMER.LIST.{STREAM}",
            f"{_API}.CONSUMER.NAMES.{STREAM}",
            *_consume(f"{ROOT}.>"),
            *_bucket(_KV_STREAM_IPAM, write=True, declare=True),
        ]
        return Permissions(
            publish_allow=tuple(publish),
            subscribe_allow=(inbox, f"{CONTROL_ROOT}.ipam.>"),
            allow_responses=True,
        )
    if role == "lbdriver":
        families = ("vip", "node", "endpoints", "applied", "lb")
        publish = [
            f"{ROOT}.*.lb.>",
            f"{FEED_ROOT}.*.delta",
            *common,
            *_consume(*(f"{ROOT}.*.{family}.>" for family in families)),
            *_bucket(_KV_STREAM_LEASE, write=True, declare=True),
            *_bucket(_KV_STREAM_FEED, write=True, declare=True),
        ]
        return Permissions(
            publish_allow=tuple(publish),
            publish_deny=tuple(deny),
            subscribe_allow=(inbox, f"{CONTROL_ROOT}.lbdriver.>"),
            allow_responses=True,
        )
    if role == "dashboard":
        publish = [
            *(verb.subject(identity.name) for verb in READ_ONLY),
            *common,
            *_consume(f"{ROOT}.>"),
        ]
        return Permissions(publish_allow=tuple(publish), publish_deny=tuple(deny),
                           subscribe_allow=(inbox,))  # fmt: skip
    if role in ("operator", "reader"):
        control = (
            [f"{CONTROL_ROOT}.*.*.{identity.name}"]
            if role == "operator"
            else [verb.subject(identity.name) for verb in READ_ONLY]
        )
        publish = [
            *control,
            *_reads_stream(),
            *_consume(f"{ROOT}.>"),
            *_bucket(_KV_STREAM_IPAM, write=False, declare=False),
        ]
        # Core subscriptions to the stream's subjects too: a live view of the bus.
        return Permissions(publish_allow=tuple(dict.fromkeys(publish)),
                           publish_deny=tuple(deny),
                           subscribe_allow=(inbox, f"{ROOT}.>"))  # fmt: skip
    raise IdentityError(f"unknown role {role!r}")


def may_declare_stream(identity_name: str | None) -> bool:
    """Whether an identity may create and update the VIPWIRE stream (None: no identity
    known, as with a JWT .creds file or no credentials: try, as before identities)."""
    return identity_name is None or identity_name == IPAM.name


# --- rendering -----------------------------------------------------------------------


def _quoted(items: Iterable[str]) -> str:
    return ", ".join(f'"{item}"' for item in items)


def render_config(users: Sequence[tuple[Identity, str]], *, tls_dir: str | None = None) -> str:
    """The nats-server configuration text: an ``authorization`` block with one user per
    (identity, public NKey), sorted by name, and with ``tls_dir`` a ``tls`` block naming
    ``server-cert.pem``, ``server-key.pem`` and ``ca.pem`` there (clients must present a
    certificate signed by that CA)."""
    lines = [
        "# vipwire NATS identities, generated by `vipwire nats config`.",
        "# Public keys and permissions only: no secret here. Re-run the generator to add",
        "# a cluster, node or operator, then `nats-server --signal reload`.",
        "authorization {",
        "  users = [",
    ]
    for identity, public_key in sorted(users, key=lambda u: u[0].name):
        p = permissions_for(identity)
        lines.append(f"    # {identity.name} ({identity.describe()})")
        lines.append(f"    {{ nkey: {public_key}, permissions: {{")
        publish = f"allow: [{_quoted(p.publish_allow)}]"
        if p.publish_deny:
            publish += f", deny: [{_quoted(p.publish_deny)}]"
        lines.append(f"      publish: {{ {publish} }}")
        subscribe = f"allow: [{_quoted(p.subscribe_allow)}]"
        if p.subscribe_deny:
            subscribe += f", deny: [{_quoted(p.subscribe_deny)}]"
        lines.append(f"      subscribe: {{ {subscribe} }}")
        if p.allow_responses:
            lines.append("      allow_responses: true")
        lines.append("    } }")
    lines += ["  ]", "}"]
    if tls_dir is not None:
        d = tls_dir.rstrip("/")
        lines += [
            "tls {",
            f'  cert_file: "{d}/server-cert.pem"',
            f'  key_file: "{d}/server-key.pem"',
            f'  ca_file: "{d}/ca.pem"',
            "  verify: true",
            "}",
        ]
    return "\n".join(lines) + "\n"


def credentials_text(identity: Identity, seed: str) -> str:
    """The credentials file of ``identity`` (our format: a header naming it, its seed)."""
    return (
        f"# vipwire NATS identity: {identity.name} ({identity.describe()})\n"
        "# generated by `vipwire nats config`; keep it secret: it is this identity's key\n"
        f"{seed}\n"
    )


def identity_in(text: str) -> str | None:
    """The identity name a credentials file's first line gives (None: not ours)."""
    return identity_of_credentials(text)


def seed_in(text: str) -> str | None:
    """The NKey user seed (``SU...``) of one of our credentials files; None: none there."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("SU"):
            return stripped
    return None
