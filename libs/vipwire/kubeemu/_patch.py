"""The three PATCH flavours the API server accepts, as pure functions on JSON values.

* JSON merge patch (RFC 7386).
* JSON patch (RFC 6902): add, remove, replace, move, copy, test.
* Strategic merge patch: a merge patch that merges some lists instead of
  replacing them. The real server reads the merge keys from the Go types; the
  emulator knows only the lists below and replaces every other list, as a
  merge patch would. It honours the ``$patch: replace|delete`` and
  ``$deleteFromPrimitiveList/<field>`` directives and drops
  ``$setElementOrder`` / ``$retainKeys``.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from vipwire.kubeemu._errors import ApiError

MERGE_PATCH: Final = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH: Final = "application/strategic-merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
PATCH_TYPES: Final = (MERGE_PATCH, STRATEGIC_MERGE_PATCH, JSON_PATCH)

_PRIMITIVE: Final = ""  # a list of scalars merged as a set (metadata.finalizers)

# Lists a strategic merge patch merges, by path of map keys: "" for a set of
# scalars, else the merge key of a list of maps.
_MERGE_LISTS_ANY_KIND: dict[tuple[str, ...], str] = {
    ("metadata", "finalizers"): _PRIMITIVE,
    ("metadata", "ownerReferences"): "uid",
}
_MERGE_LISTS: dict[str, dict[tuple[str, ...], str]] = {
    "Service": {("spec", "ports"): "port", ("status", "conditions"): "type"},
    "Node": {
        ("spec", "taints"): "key",
        ("status", "addresses"): "type",
        ("status", "conditions"): "type",
    },
    "Namespace": {("status", "conditions"): "type"},
}


def apply_patch(original: dict[str, Any], patch_type: str, patch: Any) -> Any:
    """Return the patched copy of ``original``; ``original`` is never modified."""
    if patch_type == JSON_PATCH:
        return json_patch(original, patch)
    if not isinstance(patch, dict):
        raise ApiError.bad_request("a merge patch must be a JSON object")
    if patch_type == MERGE_PATCH:
        return merge_patch(original, patch)
    if patch_type == STRATEGIC_MERGE_PATCH:
        return strategic_merge_patch(original, patch, str(original.get("kind", "")))
    accepted = ", ".join(PATCH_TYPES)
    raise ApiError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        + accepted,
    )


# --- RFC 7386 ------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    return _merge(copy.deepcopy(target), patch)


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


# --- strategic merge patch -----------------------------------------------------


def strategic_merge_patch(
    original: dict[str, Any], patch: dict[str, Any], kind: str
) -> dict[str, Any]:
    table = {**_MERGE_LISTS_ANY_KIND, **_MERGE_LISTS.get(kind, {})}
    return _smp_map(copy.deepcopy(original), patch, (), table)


def _smp_map(
    orig: dict[str, Any],
    patch: dict[str, Any],
    path: tuple[str, ...],
    table: dict[tuple[str, ...], str],
) -> dict[str, Any]:
    if patch.get("$patch") == "replace":
        return {k: _strip(v) for k, v in patch.items() if not k.startswith("$")}
    result = dict(orig)
    # Deletions from primitive lists apply to the original, before merging.
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [x for x in result[field] if x not in value]
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        current = result.get(key)
        sub = (*path, key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            if value.get("$patch") == "delete":
                result.pop(key, None)
            else:
                base = current if isinstance(current, dict) else {}
                result[key] = _smp_map(base, value, sub, table)
        elif isinstance(value, list) and sub in table and isinstance(current, list):
            merge_key = table[sub]
            if merge_key == _PRIMITIVE:
                result[key] = current + [x for x in value if x not in current]
            else:
                result[key] = _merge_keyed_list(current, value, merge_key, sub, table)
        else:
            result[key] = _strip(value)
    return result


def _merge_keyed_list(
    orig: list[Any],
    patch: list[Any],
    merge_key: str,
    path: tuple[str, ...],
    table: dict[tuple[str, ...], str],
) -> list[Any]:
    def is_replace(e: Any) -> bool:
        return isinstance(e, dict) and e.get("$patch") == "replace"

    if any(is_replace(e) for e in patch):
        return [_strip(e) for e in patch if not is_replace(e)]
    result = list(orig)
    for element in patch:
        if not isinstance(element, dict) or merge_key not in element:
            raise ApiError.unprocessable(
                f"map: {element!r} does not contain declared merge key: {merge_key}"
            )
        index = next(
            (
                i
                for i, e in enumerate(result)
                if isinstance(e, dict) and e.get(merge_key) == element[merge_key]
            ),
            None,
        )
        if element.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(_strip(element))
        else:
            result[index] = _smp_map(result[index], element, path, table)
    return result


def _strip(value: Any) -> Any:
    """Drop patch directives from a value that is taken as is."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


# --- RFC 6902 ------------------------------------------------------------------


def json_patch(document: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise ApiError.bad_request("a JSON patch must be a JSON array of operations")
    doc = copy.deepcopy(document)
    for op in operations:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise ApiError.bad_request(f"invalid JSON patch operation: {op!r}")
        if not isinstance(op.get("path"), str):
            raise ApiError.bad_request(f"JSON patch operation {op['op']!r} has no path")
        doc = _apply_op(doc, op)
    return doc


def _apply_op(doc: Any, op: dict[str, Any]) -> Any:
    name: str = op["op"]
    path = _pointer(op["path"])
    if name in ("add", "replace", "test") and "value" not in op:
        raise ApiError.bad_request(f"JSON patch operation {name!r} has no value")
    if name == "add":
        return _add(doc, path, copy.deepcopy(op["value"]))
    if name == "remove":
        return _remove(doc, path)[0]
    if name == "replace":
        _get(doc, path)  # must exist
        return _add(_remove(doc, path)[0], path, copy.deepcopy(op["value"]))
    if name in ("move", "copy"):
        if not isinstance(op.get("from"), str):
            raise ApiError.bad_request(f"JSON patch operation {name!r} has no from")
        source = _pointer(op["from"])
        if name == "copy":
            return _add(doc, path, copy.deepcopy(_get(doc, source)))
        if path[: len(source)] == source and path != source:
            raise ApiError.unprocessable("JSON patch: cannot move a value into one of its children")
        doc, value = _remove(doc, source)
        return _add(doc, path, value)
    if name == "test":
        if not _json_equal(_get(doc, path), op["value"]):
            raise ApiError.unprocessable(f"testing value {op['path']} failed: test failed")
        return doc
    raise ApiError.bad_request(f"unexpected JSON patch operation {name!r}")


def _pointer(text: str) -> list[str]:
    if text == "":
        return []
    if not text.startswith("/"):
        raise ApiError.bad_request(f"JSON pointer must start with '/': {text!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in text[1:].split("/")]


def _index(container: list[Any], token: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise ApiError.unprocessable(f"JSON patch: invalid array index {token!r}")
    index = int(token)
    limit = len(container) if allow_end else len(container) - 1
    if index > limit:
        raise ApiError.unprocessable(f"JSON patch: array index {index} out of bounds")
    return index


def _get(doc: Any, path: list[str]) -> Any:
    node = doc
    for token in path:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, allow_end=False)]
        else:
            raise ApiError.unprocessable(f"JSON patch: path /{'/'.join(path)} does not exist")
    return node


def _add(doc: Any, path: list[str], value: Any) -> Any:
    if not path:
        return value
    parent = _get(doc, path[:-1])
    token = path[-1]
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, token, allow_end=True), value)
    else:
        raise ApiError.unprocessable(f"JSON patch: cannot add to a scalar at /{'/'.join(path)}")
    return doc


def _remove(doc: Any, path: list[str]) -> tuple[Any, Any]:
    if not path:
        raise ApiError.unprocessable("JSON patch: cannot remove the whole document")
    parent = _get(doc, path[:-1])
    token = path[-1]
    if isinstance(parent, dict) and token in parent:
        return doc, parent.pop(token)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, token, allow_end=False))
    raise ApiError.unprocessable(f"JSON patch: path /{'/'.join(path)} does not exist")


def _json_equal(a: Any, b: Any) -> bool:
    # Python says True == 1; JSON does not.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
