"""Calling the API as plain JSON, and reading watch streams line by line.

The generated kubernetes_asyncio methods are used for what they do well
(paths, query parameters, authentication) with ``_preload_content=False``:
we get the raw response and work on the JSON the server sent. That avoids the
model classes (which drop fields they do not know and cost a lot on large
lists) and the library's watch helper, whose traps we would otherwise have to
work around: BOOKMARK events arrive as raw dicts, a 410 is retried once with
the same stale resourceVersion, and ``aiohttp.ClientPayloadError`` escapes the
iterator when the server cuts a stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Final

import aiohttp
import msgspec

from vipwire.kube._errors import KubeApiError, KubeUnavailable

#: A generated API method, e.g. ``CoreV1Api(client).list_node``.
ApiCall = Callable[..., Awaitable[Any]]

MERGE_PATCH: Final = "application/merge-patch+json"

_decoder: Final = msgspec.json.Decoder()
_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


def _name(call: ApiCall) -> str:
    return getattr(call, "__name__", "request")


def _error(status: int, body: bytes) -> KubeApiError:
    try:
        decoded = _decoder.decode(body)
    except msgspec.DecodeError:
        decoded = None
    if isinstance(decoded, dict) and decoded.get("kind") == "Status":
        return KubeApiError.from_status(decoded, fallback_code=status)
    text = body.decode("utf-8", "replace").strip()[:500]
    return KubeApiError(status, "", text or f"HTTP {status}")


async def request_json(
    call: ApiCall,
    *args: Any,
    timeout: float | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Call a generated API method and return the JSON object it answered with.

    Raises :class:`KubeApiError` for an error status and
    :class:`KubeUnavailable` when the server cannot be reached.
    """
    try:
        response = await call(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
        async with response:
            status = response.status
            body = await response.read()
    except _TRANSPORT_ERRORS as exc:
        raise KubeUnavailable(f"{_name(call)}: {exc!r}") from exc
    if not 200 <= status < 300:
        raise _error(status, body)
    try:
        decoded = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise KubeUnavailable(f"{_name(call)}: the answer is not JSON: {exc}") from exc
    if not isinstance(decoded, dict):
        raise KubeUnavailable(f"{_name(call)}: the answer is not a JSON object")
    return decoded


async def list_all(
    call: ApiCall,
    *args: Any,
    timeout: float | None = None,
    page_size: int = 500,
    **kwargs: Any,
) -> tuple[list[dict[str, Any]], str]:
    """Every item of a list, page by page; returns the items and the list's resourceVersion.

    A continue token that expires mid-way (410) is raised like any other
    :class:`KubeApiError`: the caller starts over.
    """
    items: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        extra = {"_continue": token} if token else {}
        page = await request_json(call, *args, timeout=timeout, limit=page_size, **extra, **kwargs)
        items.extend(i for i in page.get("items") or () if isinstance(i, dict))
        meta = page.get("metadata") or {}
        token = meta.get("continue") or None
        if token is None:
            return items, str(meta.get("resourceVersion") or "")


async def watch_events(
    call: ApiCall,
    *args: Any,
    resource_version: str,
    timeout_seconds: int,
    connect_timeout: float = 10.0,
    idle_timeout: float | None = None,
    **kwargs: Any,
) -> AsyncGenerator[dict[str, Any], None]:
    """Watch events (``{"type": ..., "object": ...}``) from ``resource_version`` on.

    Ends when the server closes the watch (after ``timeout_seconds``).
    Raises :class:`KubeApiError` for an ``ERROR`` event or an error status (410
    when ``resource_version`` is too old) and :class:`KubeUnavailable` when the
    stream breaks or stays silent longer than ``idle_timeout`` seconds.
    Use it inside ``contextlib.aclosing`` so the connection is closed early.
    """
    idle = idle_timeout if idle_timeout is not None else timeout_seconds + 30.0
    client_timeout = aiohttp.ClientTimeout(
        total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=idle
    )
    try:
        response = await call(
            *args,
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds,
            _preload_content=False,
            _request_timeout=client_timeout,
            **kwargs,
        )
    except _TRANSPORT_ERRORS as exc:
        raise KubeUnavailable(f"{_name(call)} watch: {exc!r}") from exc
    try:
        if response.status != 200:
            try:
                body = await response.read()
            except _TRANSPORT_ERRORS as exc:
                raise KubeUnavailable(f"{_name(call)} watch: {exc!r}") from exc
            raise _error(response.status, body)
        buffer = b""
        while True:
            try:
                chunk = await response.content.readany()
            except _TRANSPORT_ERRORS as exc:
                raise KubeUnavailable(f"{_name(call)} watch broke: {exc!r}") from exc
            if not chunk:
                return
            buffer += chunk
            if b"\n" not in chunk:
                continue
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    event = _decoder.decode(line)
                except msgspec.DecodeError as exc:
                    raise KubeUnavailable(f"{_name(call)} watch: bad event line: {exc}") from exc
                if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
                    raise KubeUnavailable(f"{_name(call)} watch: event without an object")
                if event.get("type") == "ERROR":
                    raise KubeApiError.from_status(event["object"])
                yield event
    finally:
        response.close()
