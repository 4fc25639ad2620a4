"""The static files and the four page shells, served from memory.

The pages are static shells; ``static/app.js`` fills them from the JSON API,
escaping everything it shows. Everything is loaded once, with a gzipped copy
and an ETag, so a page load costs a few small responses.
"""

from __future__ import annotations

import gzip
import hashlib
import html
from importlib import resources
from typing import Final

from aiohttp import web

STATIC_TYPES: Final = {
    "app.css": "text/css",
    "app.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}


class Assets:
    """The static files and page shells, loaded once; gzipped copies for clients that take them."""

    def __init__(self) -> None:
        folder = resources.files("vipwire.dashboard").joinpath("static")
        self.files: dict[str, tuple[bytes, bytes, str, str]] = {}
        for name, kind in STATIC_TYPES.items():
            self._add(name, folder.joinpath(name).read_bytes(), kind)
        for page, (title, main) in _PAGES.items():
            self._add(f"page:{page}", _shell(page, title, main).encode(), "text/html")

    def _add(self, name: str, body: bytes, kind: str) -> None:
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        self.files[name] = (body, gzip.compress(body, mtime=0), kind, etag)

    def response(self, request: web.Request, name: str, *, cache: bool) -> web.StreamResponse:
        body, zipped, kind, etag = self.files[name]
        headers = {
            "ETag": etag,
            "Cache-Control": "public, max-age=300" if cache else "no-cache",
            "Vary": "Accept-Encoding",
        }
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            body = zipped
        charset = None if kind.startswith("image/") else "utf-8"
        return web.Response(body=body, content_type=kind, charset=charset, headers=headers)


# --- page shells ---------------------------------------------------------------------------

_NAV: Final = (("overview", "/", "Overview"), ("services", "/services", "Services"),
               ("appliances", "/appliances", "Appliances"),
               ("nodes", "/nodes", "Nodes"))  # fmt: skip


def _shell(page: str, title: str, main: str) -> str:
    nav = "".join(
        f'<a href="{href}"{" aria-current=page" if key == page or (page == "service" and key == "services") else ""}>'  # noqa: E501
        f"{html.escape(label)}</a>"
        for key, href, label in _NAV
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · vipwire</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head>
<body data-page="{page}">
<header class="top">
  <a class="brand" href="/"><span class="logo" aria-hidden="true"></span>vipwire</a>
  <nav>{nav}</nav>
  <span class="as-of" id="as-of" title="the time of the last message read from the bus"></span>
  <span class="live" id="live" title="live updates"><span class="dot"></span><span id="live-text">connecting</span></span>
</header>
<div class="banners" id="banners" role="alert" aria-live="polite"></div>
<main id="main">
{main}
</main>
</body>
</html>
"""  # noqa: E501


_OVERVIEW: Final = """
<h1>Overview</h1>
<section class="cards" id="cards" aria-label="summary"></section>
<section class="panel">
  <h2>Clusters</h2>
  <table class="grid" id="clusters"><thead><tr>
    <th>Cluster</th><th class="num">Services</th><th>States</th>
    <th class="num">Nodes ready</th><th class="num">Agents</th></tr></thead><tbody></tbody></table>
</section>
<div class="two">
<section class="panel">
  <h2>Pools</h2>
  <table class="grid" id="pools"><thead><tr>
    <th>Pool</th><th>Group</th><th class="num">Services</th><th>Usage</th></tr></thead>
    <tbody></tbody></table>
  <p class="note" id="pools-note"></p>
</section>
<section class="panel">
  <h2>Appliances</h2>
  <table class="grid" id="appliances-brief"><thead><tr>
    <th>Appliance</th><th>Health</th><th class="num">Virtual servers</th>
    <th class="num">Services</th></tr></thead><tbody></tbody></table>
  <p class="note" id="appliances-note"></p>
</section>
</div>
"""

_SERVICES: Final = """
<h1>Services <span class="count" id="count"></span></h1>
<form class="toolbar" id="filters" role="search">
  <input type="search" id="q" name="q" placeholder="Search name, VIP, appliance, pool"
         autocomplete="off" spellcheck="false">
  <select id="cluster" name="cluster" aria-label="cluster"><option value="">All clusters</option></select>
  <select id="namespace" name="namespace" aria-label="namespace"><option value="">All namespaces</option></select>
  <select id="state" name="state" aria-label="state"><option value="">All states</option></select>
</form>
<section class="panel flush">
<table class="grid" id="services-table"><thead><tr>
  <th data-sort="name" tabindex="0">Service</th><th data-sort="cluster" tabindex="0">Cluster</th>
  <th data-sort="state" tabindex="0">State</th><th data-sort="vip" tabindex="0">VIP</th>
  <th data-sort="appliance" tabindex="0">Appliance</th>
  <th class="num" data-sort="nodes" tabindex="0">Nodes applied</th>
  <th class="num" data-sort="convergence" tabindex="0">Convergence</th>
  <th data-sort="reason" tabindex="0">Reason</th></tr></thead>
  <tbody></tbody></table>
<p class="empty" id="empty" hidden>No Service matches.</p>
</section>
<nav class="pager" id="pager">
  <button type="button" id="prev">← Previous</button>
  <span id="page-info"></span>
  <button type="button" id="next">Next →</button>
</nav>
"""  # noqa: E501

_SERVICE: Final = """
<p class="crumbs"><a href="/services">Services</a> / <span id="crumb"></span></p>
<h1><span id="svc-name">…</span> <span id="svc-state"></span></h1>
<p class="error-box" id="svc-error" hidden></p>
<section class="panel">
  <dl class="facts" id="facts"></dl>
</section>
<section class="panel">
  <div class="panel-head"><h2>Last change</h2><a id="trace-link" class="button" hidden
    target="_blank" rel="noopener noreferrer">Open trace in Jaeger ↗</a></div>
  <div id="waterfall" class="waterfall"></div>
</section>
<section class="panel">
  <h2>Earlier changes</h2>
  <div id="history"><p class="muted">None seen since the dashboard started.</p></div>
</section>
<section class="panel">
  <h2>Timeline</h2>
  <table class="grid" id="timeline"><thead><tr>
    <th>Time</th><th>Hop</th><th>Event</th><th>Detail</th><th>Trace</th></tr></thead>
    <tbody></tbody></table>
</section>
"""

_NODES: Final = """
<h1>Nodes <span class="count" id="count"></span></h1>
<p class="note">Which VIPs each node's agent last reported applied, and how long ago.</p>
<section class="panel flush">
<table class="grid" id="nodes"><thead><tr>
  <th>Node</th><th>Cluster</th><th>Ready</th><th class="num">VIPs</th><th>Applied VIPs</th>
  <th>Services</th><th>Reported</th></tr></thead><tbody></tbody></table>
<p class="empty" id="empty" hidden>No node has been seen on the bus yet.</p>
</section>
"""

_APPLIANCES: Final = """
<h1>Appliances</h1>
<section class="panel flush">
<table class="grid" id="appliances"><thead><tr>
  <th>Appliance</th><th>Health</th><th>Driver</th><th>Group</th><th>Role</th>
  <th class="num">Virtual servers</th><th class="num">Services</th><th class="num">Failing</th>
  <th>Last write</th><th>Last error</th></tr></thead><tbody></tbody></table>
<p class="empty" id="empty" hidden>No appliance has programmed a Service yet.</p>
</section>
<p class="note" id="note"></p>
"""

_PAGES: Final = {
    "overview": ("Overview", _OVERVIEW),
    "services": ("Services", _SERVICES),
    "service": ("Service", _SERVICE),
    "appliances": ("Appliances", _APPLIANCES),
    "nodes": ("Nodes", _NODES),
}
