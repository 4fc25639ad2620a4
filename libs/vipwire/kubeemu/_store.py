"""The object store of one emulated cluster: objects, resourceVersions, change history.

No I/O, no asyncio: every write is a synchronous call that either raises
:class:`ApiError` or commits exactly one change per object touched, and hands
each change to the subscribed listeners before it returns. That is what makes
"list at RV n, then watch from n" gap-free without locks.

Like etcd, one counter per cluster stamps every write; ``metadata.resourceVersion``
is its decimal string. Stored objects are never mutated after they are
committed (a write builds a new dict), so the history can share them.

One module over 500 lines on purpose: one object whose invariants (one
revision counter, the history, the listeners called before a write returns)
every method keeps; split, that invariant would be read across files.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import copy
import json
import random
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from vipwire.kubeemu import _resources as res
from vipwire.kubeemu import _strategy as strategy
from vipwire.kubeemu._errors import ApiError, FieldError
from vipwire.kubeemu._patch import apply_patch
from vipwire.kubeemu._resources import ResourceType
from vipwire.kubeemu._selectors import Filter

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace or "", name): etcd key order
ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]

PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
_GENERATED_SUFFIX = "bcdfghjklmnpqrstvwxz2456789"  # the real server's alphabet: no vowels


@dataclass(frozen=True, slots=True)
class Change:
    """One committed write, as a watch sees it."""

    type: ChangeType
    resource_version: int
    resource: ResourceType
    object: Obj  # the new state; for DELETED the last state, stamped with this RV
    previous: Obj | None  # the state before (None for ADDED)

    def for_filter(self, flt: Filter) -> tuple[ChangeType, Obj] | None:
        """The event a watcher with ``flt`` receives, if any.

        An object that starts or stops matching the selectors is ADDED to or
        DELETED from that watcher's view, as the API server's watch cache does.
        """
        now = flt.matches(self.object)
        if self.type != "MODIFIED":
            return (self.type, self.object) if now else None
        assert self.previous is not None
        before = flt.matches(self.previous)
        if now:
            return ("MODIFIED" if before else "ADDED", self.object)
        if before:
            return ("DELETED", _with_rv(self.previous, self.resource_version))
        return None


@dataclass(frozen=True, slots=True)
class ListResult:
    items: list[Obj]
    resource_version: int
    continue_token: str | None = None
    remaining: int | None = None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    object: Obj
    deferred: bool  # True: finalizers keep the object, it got a deletionTimestamp


def _with_rv(obj: Obj, rv: int) -> Obj:
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(rv)}}


def _drop_empty(meta: Obj) -> None:
    # Empty maps and lists are omitted on the wire (omitempty), so {} equals absent.
    for field in ("labels", "annotations", "finalizers", "ownerReferences"):
        if field in meta and not meta[field]:
            del meta[field]


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_resource_version(value: str | None, what: str = "resourceVersion") -> int | None:
    """``None`` when unset; 400 BadRequest when not a non-negative integer."""
    if value is None or value == "":
        return None
    try:
        rv = int(value)
    except ValueError:
        raise ApiError.bad_request(
            f"{what}: Invalid value: {value!r}: must be an integer"
        ) from None
    if rv < 0:
        raise ApiError.bad_request(f"{what}: Invalid value: {value!r}: must be non-negative")
    return rv


class Store:
    """Objects of every served resource, with per-resource bounded change history."""

    def __init__(
        self,
        *,
        history_limit: int = 1000,
        clock: Callable[[], datetime] | None = None,
        new_uid: Callable[[], str] | None = None,
        rng: random.Random | None = None,
        namespaces: Iterable[str] = ("default", "kube-system"),
    ) -> None:
        if history_limit < 1:
            raise ValueError("history_limit must be at least 1")
        self.history_limit = history_limit
        self._clock = clock or (lambda: datetime.now(UTC))
        self._new_uid = new_uid or (lambda: str(uuid.uuid4()))
        self._rng = rng or random.Random()
        self._rv = 0
        self._objects: dict[ResourceType, dict[Key, Obj]] = {rt: {} for rt in res.ALL}
        self._history: dict[ResourceType, deque[Change]] = {rt: deque() for rt in res.ALL}
        # Every change of a resource with a resourceVersion above its floor is retained.
        self._floor: dict[ResourceType, int] = dict.fromkeys(res.ALL, 0)
        self._listeners: list[Callable[[Change], None]] = []
        self._services = strategy.ServiceIndex()
        for name in namespaces:
            self.create(res.NAMESPACES, None, {"metadata": {"name": name}})

    # --- reading ---------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def now(self) -> str:
        """The store's clock as an RFC 3339 timestamp (seconds, UTC)."""
        return _timestamp(self._clock())

    def subscribe(self, listener: Callable[[Change], None]) -> Callable[[], None]:
        """Call ``listener`` with every change from now on; returns the unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        """The stored object itself: callers must not modify it."""
        obj = self._objects[rt].get(self._key(rt, namespace, name))
        if obj is None:
            raise ApiError.not_found(rt, name)
        return obj

    def list(
        self,
        rt: ResourceType,
        flt: Filter,
        *,
        limit: int | None = None,
        continue_token: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
    ) -> ListResult:
        """List, optionally in pages; a continued list reads the same snapshot."""
        rv = parse_resource_version(resource_version)
        start: Key | None = None
        snapshot_rv: int | None = None
        if continue_token:
            if rv is not None:
                raise ApiError.bad_request(
                    "specifying resource version is not allowed when using continue"
                )
            snapshot_rv, start = self._decode_continue(continue_token)
            if snapshot_rv < self._floor[rt]:
                raise ApiError.expired(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter."
                )
        elif rv is not None and rv > self._rv:
            raise ApiError(
                504,
                "Timeout",
                f"Too large resource version: {rv}, current: {self._rv}",
                {
                    "causes": [
                        {
                            "reason": "ResourceVersionTooLarge",
                            "message": "Too large resource version",
                        }
                    ],
                    "retryAfterSeconds": 1,
                },
            )
        elif resource_version_match == "Exact":
            if rv is None:
                raise ApiError.bad_request("resourceVersionMatch: Exact requires a resourceVersion")
            snapshot_rv = rv
            if rv < self._floor[rt]:
                raise ApiError.expired(f"too old resource version: {rv} ({self._floor[rt] + 1})")
        # Without Exact, "not older than rv" is served from the newest state, as the cache does.
        objects = self._snapshot(rt, snapshot_rv) if snapshot_rv is not None else self._objects[rt]
        list_rv = snapshot_rv if snapshot_rv is not None else self._rv
        keys = sorted(
            k for k, o in objects.items() if flt.matches(o) and (start is None or k > start)
        )
        if limit is not None and limit > 0 and len(keys) > limit:
            page = keys[:limit]
            token = self._encode_continue(list_rv, page[-1])
            return ListResult([objects[k] for k in page], list_rv, token, len(keys) - limit)
        return ListResult([objects[k] for k in keys], list_rv)

    def changes_since(self, rt: ResourceType, resource_version: int) -> builtins.list[Change]:
        """Every change of ``rt`` after ``resource_version``; 410 Expired if some are gone."""
        floor = self._floor[rt]
        if resource_version < floor:
            raise ApiError.expired(f"too old resource version: {resource_version} ({floor + 1})")
        return [c for c in self._history[rt] if c.resource_version > resource_version]

    def objects(self, rt: ResourceType) -> Iterator[Obj]:
        """Current objects of ``rt`` in key order."""
        items = self._objects[rt]
        return (items[k] for k in sorted(items))

    # --- writing ---------------------------------------------------------------

    def create(self, rt: ResourceType, namespace: str | None, body: Any) -> Obj:
        obj = self._decode_body(rt, body)
        meta = obj["metadata"]
        if rt.namespaced:
            namespace = self._check_namespace(rt, namespace or meta.get("namespace") or "", meta)
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and isinstance(meta.get("generateName"), str):
            meta["name"] = self._generate_name(rt, namespace, meta["generateName"])
        name = meta.get("name")
        if errors := strategy.name_errors(rt, name):
            raise ApiError.invalid(rt, str(name or ""), errors)
        key = self._key(rt, namespace, name)
        if key in self._objects[rt]:
            raise ApiError.already_exists(rt, name)
        if meta.get("resourceVersion"):
            raise ApiError(
                500, "InternalError", "resourceVersion should not be set on objects to be created"
            )
        for field in ("uid", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(field, None)
        meta.pop("managedFields", None)
        _drop_empty(meta)
        meta["uid"] = self._new_uid()
        meta["creationTimestamp"] = _timestamp(self._clock())
        meta["generation"] = 1
        if rt is res.SERVICES:
            obj["status"] = {}  # a Service's status is the controllers' to write
        strategy.prepare_create(rt, obj, self._services.taken(None))
        return self._commit(rt, "ADDED", key, obj, None)

    def update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
    ) -> Obj:
        """PUT: replace the object (or only its status, for ``subresource="status"``)."""
        old = self.get(rt, namespace, name)
        new = self._decode_body(rt, body)
        meta = new["metadata"]
        if meta.get("name", name) != name:
            raise ApiError.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({name})"
            )
        if rt.namespaced and meta.get("namespace", namespace) != namespace:
            raise ApiError.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        return self._write(rt, old, new, subresource)

    def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        patch_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
    ) -> Obj:
        old = self.get(rt, namespace, name)
        new = apply_patch(old, patch_type, patch)
        if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
            raise ApiError.bad_request("the patch leaves no object")
        if new["metadata"].get("name") != name or (
            rt.namespaced and new["metadata"].get("namespace") != namespace
        ):
            raise ApiError.bad_request("metadata.name and metadata.namespace cannot be patched")
        return self._write(rt, old, new, subresource)

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
    ) -> DeleteResult:
        """Delete now, or mark for deletion while finalizers remain."""
        old = self.get(rt, namespace, name)
        meta = old["metadata"]
        if uid is not None and uid != meta["uid"]:
            raise ApiError.conflict(
                rt,
                name,
                f"Precondition failed: UID in precondition: {uid}, "
                f"UID in object meta: {meta['uid']}",
            )
        if resource_version is not None and resource_version != meta["resourceVersion"]:
            raise ApiError.conflict(
                rt,
                name,
                f"Precondition failed: ResourceVersion in precondition: {resource_version}, "
                f"ResourceVersion in object meta: {meta['resourceVersion']}",
            )
        if rt is res.NAMESPACES:
            return self._delete_namespace(old)
        return self._delete_object(rt, old)

    def delete_collection(self, rt: ResourceType, flt: Filter) -> builtins.list[Obj]:
        return [
            self.delete(rt, o["metadata"].get("namespace"), o["metadata"]["name"]).object
            for o in self.list(rt, flt).items
        ]

    def compact(self) -> None:
        """Forget all history: a watch or continue from any older resourceVersion gets 410."""
        for rt in res.ALL:
            self._history[rt].clear()
            self._floor[rt] = self._rv

    # --- internals -------------------------------------------------------------

    def _key(self, rt: ResourceType, namespace: str | None, name: str) -> Key:
        return (namespace or "", name) if rt.namespaced else ("", name)

    def _decode_body(self, rt: ResourceType, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise ApiError.bad_request(f"the body of a {rt.kind} must be a JSON object")
        obj = copy.deepcopy(body)
        if (
            obj.get("kind", rt.kind) != rt.kind
            or obj.get("apiVersion", rt.api_version) != rt.api_version
        ):
            raise ApiError.bad_request(
                f"the body is a {obj.get('apiVersion')} {obj.get('kind')}, "
                f"not a {rt.api_version} {rt.kind}"
            )
        obj["kind"] = rt.kind
        obj["apiVersion"] = rt.api_version
        if not isinstance(obj.get("metadata"), dict):
            obj["metadata"] = {}
        return obj

    def _check_namespace(self, rt: ResourceType, namespace: str, meta: Obj) -> str:
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise ApiError.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        ns = self._objects[res.NAMESPACES].get(("", namespace))
        if ns is None:
            raise ApiError.not_found(res.NAMESPACES, namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError.forbidden(
                rt,
                str(meta.get("name") or meta.get("generateName") or ""),
                f"unable to create new content in namespace {namespace} because it is being "
                "terminated",
            )
        return namespace

    def _generate_name(self, rt: ResourceType, namespace: str | None, prefix: str) -> str:
        prefix = prefix[:58]
        for _ in range(100):
            name = prefix + "".join(self._rng.choice(_GENERATED_SUFFIX) for _ in range(5))
            if self._key(rt, namespace, name) not in self._objects[rt]:
                return name
        raise ApiError.already_exists(rt, prefix)

    def _write(self, rt: ResourceType, old: Obj, new: Obj, subresource: str | None) -> Obj:
        """The update path shared by PUT and PATCH."""
        name = old["metadata"]["name"]
        meta = new.setdefault("metadata", {})
        old_meta = old["metadata"]
        rv = meta.get("resourceVersion")
        if rv and rv != old_meta["resourceVersion"]:
            raise ApiError.stale(rt, name)
        if meta.get("uid") and meta["uid"] != old_meta["uid"]:
            raise ApiError.conflict(
                rt,
                name,
                f"Precondition failed: UID in precondition: {meta['uid']}, "
                f"UID in object meta: {old_meta['uid']}",
            )
        if subresource == "status":
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            strategy.prepare_status_update(rt, result)
        else:
            result = new
            result["kind"], result["apiVersion"] = rt.kind, rt.api_version
            if rt.has_status:
                # The main resource ignores status: only /status writes it.
                if "status" in old:
                    result["status"] = copy.deepcopy(old["status"])
                else:
                    result.pop("status", None)
            for field in (
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ):
                if field in old_meta:
                    meta[field] = old_meta[field]
                else:
                    meta.pop(field, None)
            meta.pop("managedFields", None)
            meta.pop("selfLink", None)
            _drop_empty(meta)
            if old_meta.get("deletionTimestamp"):
                before = old_meta.get("finalizers", [])
                added = [f for f in meta.get("finalizers") or [] if f not in before]
                if added:
                    quoted = ", ".join(f'"{f}"' for f in added)
                    raise ApiError.invalid(
                        rt,
                        name,
                        [
                            FieldError(
                                "metadata.finalizers",
                                "Forbidden",
                                f"no new finalizers can be added if the object is being deleted, "
                                f"found new finalizers []string{{{quoted}}}",
                            )
                        ],
                    )
            key = self._key(rt, old_meta.get("namespace"), name)
            strategy.prepare_update(rt, result, old, self._services.taken(old))
            if strategy.spec_changed(rt, result, old):
                meta["generation"] = old_meta.get("generation", 1) + 1
        if result == old:
            return old  # a no-op write changes nothing, not even the resourceVersion
        key = self._key(rt, old_meta.get("namespace"), name)
        if self._ready_to_remove(rt, result):
            removed = self._commit(rt, "DELETED", key, result, old)
            self._finish_namespace(rt, result)
            return removed
        return self._commit(rt, "MODIFIED", key, result, old)

    def _delete_object(self, rt: ResourceType, old: Obj) -> DeleteResult:
        meta = old["metadata"]
        key = self._key(rt, meta.get("namespace"), meta["name"])
        if meta.get("deletionTimestamp"):
            return DeleteResult(old, deferred=True)  # already being deleted
        marked = copy.deepcopy(old)
        marked["metadata"]["deletionTimestamp"] = _timestamp(self._clock())
        marked["metadata"]["deletionGracePeriodSeconds"] = 0
        if not self._ready_to_remove(rt, marked):
            return DeleteResult(self._commit(rt, "MODIFIED", key, marked, old), deferred=True)
        removed = self._commit(rt, "DELETED", key, old, old)
        self._finish_namespace(rt, removed)
        return DeleteResult(removed, deferred=False)

    def _delete_namespace(self, old: Obj) -> DeleteResult:
        """Mark the namespace Terminating, then do the namespace controller's job inline."""
        name = old["metadata"]["name"]
        if name in PROTECTED_NAMESPACES:
            raise ApiError.forbidden(res.NAMESPACES, name, "this namespace may not be deleted")
        if not old["metadata"].get("deletionTimestamp"):
            marked = copy.deepcopy(old)
            marked["metadata"]["deletionTimestamp"] = _timestamp(self._clock())
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            marked.setdefault("status", {})["phase"] = "Terminating"
            old = self._commit(res.NAMESPACES, "MODIFIED", ("", name), marked, old)
        for content_rt in res.ALL:
            if content_rt.namespaced:
                for obj in [o for k, o in self._objects[content_rt].items() if k[0] == name]:
                    self._delete_object(content_rt, obj)
        current = self._objects[res.NAMESPACES].get(("", name))
        if current is None:  # removed with its last object
            return DeleteResult(old, deferred=False)
        if self._ready_to_remove(res.NAMESPACES, current):
            return DeleteResult(
                self._commit(res.NAMESPACES, "DELETED", ("", name), current, current),
                deferred=False,
            )
        return DeleteResult(current, deferred=True)

    def _ready_to_remove(self, rt: ResourceType, obj: Obj) -> bool:
        meta = obj["metadata"]
        if not meta.get("deletionTimestamp") or meta.get("finalizers"):
            return False
        if rt is res.NAMESPACES:
            name = meta["name"]
            return not any(k[0] == name for r in res.ALL if r.namespaced for k in self._objects[r])
        return True

    def _finish_namespace(self, rt: ResourceType, removed: Obj) -> None:
        """Remove a terminating namespace once its last object is gone."""
        namespace = removed["metadata"].get("namespace")
        if not rt.namespaced or not namespace:
            return
        ns = self._objects[res.NAMESPACES].get(("", namespace))
        if ns is not None and self._ready_to_remove(res.NAMESPACES, ns):
            self._commit(res.NAMESPACES, "DELETED", ("", namespace), ns, ns)

    def _commit(
        self, rt: ResourceType, kind: ChangeType, key: Key, obj: Obj, previous: Obj | None
    ) -> Obj:
        self._rv += 1
        obj = _with_rv(obj, self._rv)
        if rt is res.SERVICES:
            self._services.replace(self._objects[rt].get(key), None if kind == "DELETED" else obj)
        if kind == "DELETED":
            del self._objects[rt][key]
        else:
            self._objects[rt][key] = obj
        change = Change(kind, self._rv, rt, obj, previous)
        history = self._history[rt]
        history.append(change)
        if len(history) > self.history_limit:
            self._floor[rt] = history.popleft().resource_version
        for listener in list(self._listeners):
            listener(change)
        return obj

    def _snapshot(self, rt: ResourceType, rv: int) -> dict[Key, Obj]:
        """The objects of ``rt`` as they were at ``rv``, rebuilt from the history."""
        state = dict(self._objects[rt])
        for change in reversed(self._history[rt]):
            if change.resource_version <= rv:
                break
            meta = change.object["metadata"]
            key = self._key(rt, meta.get("namespace"), meta["name"])
            if change.previous is None:
                state.pop(key, None)
            else:
                state[key] = change.previous
        return state

    @staticmethod
    def _encode_continue(rv: int, key: Key) -> str:
        raw = json.dumps({"rv": rv, "start": list(key)}).encode()
        return base64.urlsafe_b64encode(raw).decode()

    @staticmethod
    def _decode_continue(token: str) -> tuple[int, Key]:
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode()))
            rv, (namespace, name) = int(data["rv"]), data["start"]
            return rv, (str(namespace), str(name))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise ApiError.bad_request(f"continue key is not valid: {token!r}") from None
