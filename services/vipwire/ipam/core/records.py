"""The ``vipwire-ipam`` KV bucket's layout: keys and values, as plain data.

Layout (bucket ``vipwire-ipam``, history 1), version 2 (issue 4):

``addr.<token>``
    One key per held address (``192_0_2_10``, ``2001-db8--a``). Value: a
    :class:`~vipwire.ipam.core.claims.Claim` as JSON::

        {"cluster": "east", "namespace": "shop", "pool": "lab",
         "appliance_group": "g1", "sharing_key": "web",
         "sharers": [{"name": "dns-tcp", "uid": "…", "ports": ["53/TCP"],
                      "external_traffic_policy": "Local", "labels": {…}},
                     {"name": "dns-udp", "uid": "…", "ports": ["53/UDP"], …}]}

    (fields at their default are left out). Created with ``create`` (fails if
    the key exists), so two replicas can never both take an address; a Service
    joining or leaving a shared address, or changing its entry, rewrites the
    claim with ``update`` at the revision it read; the last sharer leaving
    deletes it at that revision. Version 1 values (``{cluster, namespace, name,
    uid, pool}``, one owner) are still read, as a claim with one sharer.
``svc.<cluster>.<namespace>.<name>``
    One key per Service holding addresses. Value: a :class:`ServiceRecord`
    (version 2 adds ``stale`` and ``reassign``; both optional). Updated and
    deleted with the revision it was read at.
``grp.<cluster>.<namespace>.<key token>`` (new in version 2)
    One key per sharing key in use. Value: a :class:`GroupRecord`, the
    addresses given to Services of that key. Written (CAS) after the claims of
    a *new* address of the group and before the record: of two replicas giving
    the key's first VIP at once, one loses this write, gives its address back
    and joins the other's. Readers refresh the claims it lists before choosing,
    so a replica whose watch lags still shares. Addresses whose claims are gone
    are dropped from it on the next write; the last one gone deletes it.

Rules that keep the two consistent across replicas and crashes: a Service is
added to a claim before any record of it names the address, and removed from
it only after its record stopped naming it (with the revision read before that
record write).
"""

from __future__ import annotations

import hashlib
import re

import msgspec

from vipwire.contracts import RecordView, ServiceRef
from vipwire.ipam.core.addresses import kv_token
from vipwire.ipam.core.claims import Claim, Sharer

ADDR_PREFIX = "addr."
SERVICE_PREFIX = "svc."
GROUP_PREFIX = "grp."


class ServiceRecord(RecordView, frozen=True, kw_only=True):
    """The JSON value of ``svc.<cluster>.<ns>.<name>``: what one Service holds.

    Its fields (uid, vips, pool, appliance group, state, stale, reassign) are
    the contract's (:class:`~vipwire.contracts.RecordView`): what ipam stores is
    what ``vipwire ipam show`` carries.
    """


class GroupRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON value of ``grp.<cluster>.<ns>.<token>``: the addresses of one sharing key."""

    #: The sharing key itself (the key token may be a hash of it).
    key: str
    addresses: tuple[str, ...] = ()


class RecordError(ValueError):
    """A value in the bucket that is not what its key says it is."""


class _ClaimV1(msgspec.Struct, frozen=True, kw_only=True):
    """The value of an ``addr.`` key before sharing (one owner)."""

    cluster: str
    namespace: str
    name: str
    uid: str
    pool: str


# Owned but unreadable: still taken, never handed out, named so an operator sees it.
UNREADABLE = Claim(cluster="?", namespace="?", pool="?", sharers=(Sharer(name="?", uid="?"),))

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_group_decoder = msgspec.json.Decoder(GroupRecord)
_claim_decoder = msgspec.json.Decoder(Claim)
_claim_v1_decoder = msgspec.json.Decoder(_ClaimV1)
_record_decoder = msgspec.json.Decoder(ServiceRecord)
_encoder = msgspec.json.Encoder()


def addr_key(address: str) -> str:
    return ADDR_PREFIX + kv_token(address)


def service_key(cluster: str, namespace: str, name: str) -> str:
    return f"{SERVICE_PREFIX}{cluster}.{namespace}.{name}"


def ref_of_key(key: str) -> ServiceRef | None:
    """The Service a ``svc.`` key is about; None for any other key."""
    parts = key.split(".")
    if len(parts) != 4 or parts[0] != "svc":
        return None
    return ServiceRef(parts[1], parts[2], parts[3])


def group_key(cluster: str, namespace: str, sharing_key: str) -> str:
    """A sharing key is free text (an annotation): spelled as is when it is a valid
    key token, else by a hash (prefixes keep the two spellings apart)."""
    if _PLAIN_KEY.match(sharing_key):
        token = f"k-{sharing_key}"
    else:
        token = "h-" + hashlib.sha256(sharing_key.encode()).hexdigest()[:32]
    return f"{GROUP_PREFIX}{cluster}.{namespace}.{token}"


def encode(value: Claim | ServiceRecord | GroupRecord) -> bytes:
    return _encoder.encode(value)


def decode_claim(key: str, raw: bytes | None) -> Claim:
    """A claim's value, either layout; :data:`UNREADABLE` (still taken) if it is neither."""
    try:
        return _claim_decoder.decode(raw or b"")
    except msgspec.DecodeError:
        pass
    try:
        old = _claim_v1_decoder.decode(raw or b"")
    except msgspec.DecodeError:
        return UNREADABLE
    return Claim(
        cluster=old.cluster,
        namespace=old.namespace,
        pool=old.pool,
        sharers=(Sharer(name=old.name, uid=old.uid),),
    )


def decode_record(key: str, raw: bytes | None) -> ServiceRecord:
    try:
        return _record_decoder.decode(raw or b"")
    except msgspec.DecodeError as exc:
        raise RecordError(f"record {key} in the KV is not a Service record: {exc}") from exc


def decode_group(raw: bytes | None) -> GroupRecord | None:
    """None: unreadable (it will be rewritten)."""
    try:
        return _group_decoder.decode(raw or b"")
    except msgspec.DecodeError:
        return None
