"""The dashboard in headless Chromium while the all-in-one stack runs.

What an operator does: open the Services table, watch a new Service appear
without reloading, open its page and read the timeline and the waterfall.
Screenshots of each page are written to ``artifacts/`` at the repository root.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from vipwire.allinone import Stack, StackSettings
from vipwire.testing import eventually

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
NAMESPACES = ("default", "shop", "platform")
SEED = (
    ("web", "default", ((80, "TCP"), (443, "TCP")), "Cluster"),
    ("api", "platform", ((8080, "TCP"),), "Cluster"),
    ("cart", "shop", ((443, "TCP"),), "Local"),
    ("dns", "platform", ((53, "UDP"), (53, "TCP")), "Cluster"),
)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with Stack(StackSettings(clusters=2, nodes=3)) as s:
        await s.wait_ready()
        for cluster in s.clusters:
            for namespace in NAMESPACES[1:]:
                await s.emulators[cluster].create(
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
                )
        yield s


def q(selector: str) -> str:
    """A JavaScript expression for document.querySelector(selector)."""
    return f"document.querySelector({json.dumps(selector)})"


def qa(selector: str) -> str:
    return f"document.querySelectorAll({json.dumps(selector)})"


async def test_services_appear_live_and_a_service_page_shows_its_change(
    stack: Stack, browser: Any
) -> None:
    """Table fills; a new Service appears without reload; its page has timeline and waterfall."""
    started = time.monotonic()
    for cluster in stack.clusters:
        for name, namespace, ports, policy in SEED:
            await stack.create_service(
                cluster,
                name,
                namespace=namespace,
                ports=ports,
                external_traffic_policy=policy,
                endpoints_on=[0] if policy == "Local" else None,
            )
    await stack.create_service("east", "legacy", annotations={"vipwire.io/pool": "retired"})
    seeded = [(c, n, ns) for c in stack.clusters for n, ns, _, _ in SEED]
    await eventually(
        lambda: all(stack.ingress_ips(c, n, ns) for c, n, ns in seeded),
        10.0,
        what="every seeded Service has a VIP",
    )
    url = stack.dashboard_url
    assert url is not None

    # The Services table fills from the JSON API.
    await browser.navigate(url + "services")
    rows = f"{qa('#services-table tbody tr')}.length"
    await browser.wait_for(f"{rows} >= {len(seeded) + 1}")
    states = await browser.evaluate(
        f"[...{qa('#services-table tbody tr')}].map(r => [r.dataset.key, "
        "r.querySelector('.badge').textContent, r.cells[3].textContent])"
    )
    by_key = {key: (state, vip) for key, state, vip in states}
    assert by_key["east/default/legacy"][0] == "failed"
    for cluster, name, namespace in seeded:
        state, vip = by_key[f"{cluster}/{namespace}/{name}"]
        assert state in ("programmed", "ready") and vip.startswith("198.51.100."), (name, vip)

    # A Service created now appears in the open table, without a reload.
    await browser.evaluate("window.__sameDocument = true")
    await stack.create_service("east", "checkout", namespace="shop", ports=((443, "TCP"),))
    new_row = q('#services-table tbody tr[data-key="east/shop/checkout"]')
    await browser.wait_for(f"!!{new_row}")
    assert await browser.evaluate("window.__sameDocument === true"), "the page was reloaded"
    await browser.wait_for(f"{new_row}.querySelector('.badge').textContent !== 'pending'")
    await eventually(
        lambda: stack.ingress_ips("east", "checkout", "shop"), 5.0, what="shop/checkout has a VIP"
    )
    services_png = await browser.screenshot(ARTIFACTS / "dashboard-services.png")

    # Its page: facts, the timeline of its events, and the per-hop waterfall.
    # Clicked after evaluate has answered: a click that navigates inside evaluate
    # can end it with "Inspected target navigated or closed".
    await browser.evaluate(f"setTimeout(() => {new_row}.querySelector('a').click(), 0)")
    await browser.wait_for("location.pathname === '/services/east/shop/checkout'")
    # Node agents report at most once per report_interval_s, so theirs may come last.
    await browser.wait_for(f"{q('#waterfall .bar[data-hop=nodeagent]')} !== null", timeout=10.0)
    await browser.wait_for(
        f"[...{qa('#timeline tbody tr .hop')}].some(e => e.textContent === 'nodeagent')"
    )
    hops = await browser.evaluate(f"[...{qa('#timeline tbody tr .hop')}].map(e => e.textContent)")
    assert {"watcher", "ipam", "lbdriver", "nodeagent"} <= set(hops)
    bars = await browser.evaluate(
        f"Object.fromEntries([...{qa('#waterfall .bar')}].map(b => "
        "[b.dataset.hop, [b.getBoundingClientRect().left, b.getBoundingClientRect().right]]))"
    )
    assert {"watcher", "ipam", "lbdriver", "nodeagent"} <= set(bars)
    # Placed by time: each hop starts where the one before it ended.
    assert bars["ipam"][1] <= bars["lbdriver"][0] + 1
    assert bars["lbdriver"][1] <= bars["nodeagent"][0] + 1
    state = await browser.evaluate(f"{q('#svc-state .badge')}.textContent")
    # The status bar is drawn exactly when the watcher reported the status write.
    assert ("status" in bars) == (state == "ready"), (state, sorted(bars))
    service_png = await browser.screenshot(ARTIFACTS / "dashboard-service.png")

    await browser.navigate(url)
    await browser.wait_for(f"{qa('#clusters tbody tr')}.length === 2")
    overview_png = await browser.screenshot(ARTIFACTS / "dashboard-overview.png")

    assert browser.errors == []
    for path in (services_png, service_png, overview_png):
        assert path.stat().st_size > 10_000
        print(f"screenshot: {path}")
    print(f"browser test took {time.monotonic() - started:.1f} s")


async def test_sorting_a_banner_and_the_node_view(stack: Stack, browser: Any) -> None:
    """The Services table sorts naturally by a clicked column (and back); a node without an
    agent raises a banner; the node view lists each node's applied VIPs and when; a
    Service's page draws each of its changes with its own trace."""
    for name in ("svc-10", "svc-2", "svc-1"):
        await stack.create_service("east", name)
    await eventually(
        lambda: all(stack.ingress_ips("east", n) for n in ("svc-10", "svc-2", "svc-1")),
        10.0,
        what="the svc-N Services have VIPs",
    )
    url = stack.dashboard_url
    assert url is not None

    # Sorting: by name descending, then ascending (natural: svc-2 before svc-10).
    await browser.navigate(url + "services?q=svc-")
    rows = f"[...{qa('#services-table tbody tr')}].map(r => r.dataset.key.split('/')[2])"
    await browser.wait_for(f"{rows}.length === 3")
    header = q('#services-table th[data-sort="name"]')
    await browser.evaluate(f"{header}.click()")
    await browser.wait_for(f"{header}.getAttribute('aria-sort') === 'ascending'")
    await browser.wait_for(f"{rows}.join() === 'svc-1,svc-2,svc-10'")
    await browser.evaluate(f"{header}.click()")
    await browser.wait_for(f"{rows}.join() === 'svc-10,svc-2,svc-1'")
    assert await browser.evaluate(f"{header}.getAttribute('aria-sort')") == "descending"
    assert "sort=name" in await browser.evaluate("location.search")
    reason = await browser.evaluate(f"{qa('#services-table thead th')}[7].textContent")
    assert reason == "Reason"

    # A banner: a node whose agent never reports, while the others do, is "lost".
    await stack.emulators["east"].add_node("east-node-9", "192.0.2.250")
    banner = q('#banners .banner[data-kind="consumer"]')
    await browser.wait_for(f"!!{banner} && {banner}.textContent.includes('east-node-9')", 10.0)
    assert await browser.evaluate(f"{q('#as-of')}.textContent.startsWith('as of ')")
    banner_png = await browser.screenshot(ARTIFACTS / "dashboard-banner.png")

    # The node view: east-node-1 applied the svc-N VIPs, a moment ago; node 9 never did.
    await browser.navigate(url + "nodes")
    node1 = q('#nodes tbody tr[data-node="east/east-node-1"]')
    vips = [stack.ingress_ips("east", n)[0] for n in ("svc-1", "svc-2", "svc-10")]
    await browser.wait_for(
        f"!!{node1} && {json.dumps(vips)}.every(v => "
        f"{node1}.querySelector('.vips').textContent.includes(v))",
        10.0,
    )
    reported = await browser.evaluate(f"{node1}.querySelector('.reported').textContent")
    assert "ago" in reported, reported
    services = await browser.evaluate(f"{node1}.textContent")
    assert "east/default/svc-10" in services
    node9 = q('#nodes tbody tr[data-node="east/east-node-9"]')
    assert await browser.evaluate(f"{node9}.querySelector('.reported').textContent") == "never"
    nodes_png = await browser.screenshot(ARTIFACTS / "dashboard-nodes.png")

    # A second change of svc-1 (a port added): its page draws both, each with its trace.
    await stack.emulators["east"].patch(
        "services",
        "default",
        "svc-1",
        {"spec": {"ports": [{"name": "p80", "port": 80, "protocol": "TCP"},
                            {"name": "p8080", "port": 8080, "protocol": "TCP"}]}},
    )  # fmt: skip
    await browser.navigate(url + "services/east/default/svc-1")
    earlier = q("#history .change")
    await browser.wait_for(f"!!{earlier} && !!{earlier}.querySelector('.bar[data-hop=ipam]')", 10.0)
    traces = await browser.evaluate(
        f"[...{qa('#waterfall .wf-meta .mono, #history .wf-meta .mono')}].map(e => e.textContent)"
    )
    assert len(traces) == 2 and traces[0] != traces[1], traces

    assert browser.errors == []
    for path in (banner_png, nodes_png):
        assert path.stat().st_size > 10_000
