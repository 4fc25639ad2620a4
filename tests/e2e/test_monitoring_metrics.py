"""Every metric the alert rules and the Grafana dashboard read is one a running stack exports.

Starts the all-in-one stack, converges one Service (so the histograms of a Service's
life have samples), scrapes every component's /metrics and checks the names the
PrometheusRule and the dashboard use against what was offered.
"""

from __future__ import annotations

import aiohttp

from support.promql import (
    SYNTHETIC,
    dashboard_expressions,
    exported_names,
    metric_names,
    rule_expressions,
)
from vipwire.allinone import Stack, StackSettings
from vipwire.testing import eventually


async def test_every_metric_of_the_rules_and_dashboard_is_exported() -> None:
    """Alerts and panels read only metrics some component exports (build info in each)."""
    settings = StackSettings(clusters=1, nodes=1, dashboard_port=0)
    async with Stack(settings) as stack:
        await stack.wait_ready()
        await stack.create_service("east", "web")
        await eventually(lambda: stack.ingress_ips("east", "web"), what="east/web has a VIP")
        exported: set[str] = set()
        components: set[str] = set()
        async with aiohttp.ClientSession() as http:
            for name, component in stack.components.items():
                runtime = component.runtime
                assert runtime is not None and runtime.http_port, name
                url = f"http://127.0.0.1:{runtime.http_port}/metrics"
                async with http.get(url) as response:
                    assert response.status == 200, name
                    page = await response.text()
                names = exported_names(page)
                assert "vipwire_build_info" in names, f"{name} exports no build info"
                components.add(name.partition(":")[0])
                exported |= names
                if name.startswith("watcher:"):
                    # Measured, not only declared: the Lease calls and the Service's wait.
                    assert 'resource="leases"' in page and 'code="200"' in page, page
                    assert "vipwire_watcher_convergence_seconds_count 1" in page, page
    assert components == {"ipam", "lbdriver", "nodeagent", "watcher", "dashboard"}
    used = [("alert " + a, e) for a, e in rule_expressions()]
    used += [("panel " + p, e) for p, e in dashboard_expressions()]
    missing = {
        f"{where}: {metric}"
        for where, expr in used
        for metric in metric_names(expr)
        if metric not in exported and metric not in SYNTHETIC
    }
    assert not missing, "read but exported by no component:\n" + "\n".join(sorted(missing))
