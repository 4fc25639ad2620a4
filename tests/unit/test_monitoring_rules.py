"""The monitoring manifests: a PrometheusRule the Prometheus Operator accepts, alerts an
operator can act on, and the tokenizer that finds the metrics they read."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from support.promql import (
    DASHBOARD,
    RULES,
    dashboard_expressions,
    exported_names,
    metric_names,
    rule_expressions,
)

RUNBOOK = Path(__file__).parents[2] / "docs" / "RUNBOOK.md"
COMPONENTS = ("ipam", "lbdriver", "dashboard", "watcher", "nodeagent")
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def test_metric_names_skips_functions_labels_and_literals() -> None:
    """Only metric names come out: no function, keyword, label, range or number."""
    expr = (
        "histogram_quantile(0.99, sum by (le, verb) (rate(vipwire_kube_request_seconds_bucket"
        '{verb!="watch", code=~"5.."}[5m]))) > 1 and on (job) (max(vipwire_lbdriver_leader) '
        "or vector(0)) < 1 unless time() - vipwire_bus_consumer_last_progress_seconds > 3e2"
    )
    assert metric_names(expr) == {
        "vipwire_kube_request_seconds_bucket",
        "vipwire_lbdriver_leader",
        "vipwire_bus_consumer_last_progress_seconds",
    }


def test_metric_names_sees_a_misspelt_metric() -> None:
    """A name nobody exports is found, so the stack test can fail on it."""
    assert metric_names("max(vipwire_lbdriver_leeder) < 1") == {"vipwire_lbdriver_leeder"}


def test_exported_names_include_histogram_series() -> None:
    """A histogram is exported as its _bucket, _sum and _count too."""
    page = "# HELP x_seconds h\n# TYPE x_seconds histogram\n# TYPE y gauge\ny 1\n"
    assert exported_names(page) == {"x_seconds", "x_seconds_bucket", "x_seconds_sum",
                                    "x_seconds_count", "y"}  # fmt: skip


def test_the_prometheus_rule_has_what_the_operator_requires() -> None:
    """apiVersion/kind/metadata.name, groups with unique names, each alert with an expr,
    a valid duration, a severity, a summary, a description and a runbook section."""
    doc = yaml.safe_load(RULES.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["kind"] == "PrometheusRule"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    groups = doc["spec"]["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    runbook = RUNBOOK.read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", runbook, re.M)
    }
    alerts = []
    for group in groups:
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations",
                                 "keep_firing_for"}, rule  # fmt: skip
            assert rule.get("alert") and isinstance(rule["expr"], str) and rule["expr"].strip()
            assert "for" not in rule or DURATION.match(rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            notes = rule["annotations"]
            assert notes["summary"] and len(notes["description"]) > 60, rule["alert"]
            anchor = notes["runbook_url"].rsplit("#", 1)[1]
            assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in RUNBOOK.md"
            alerts.append(rule["alert"])
    assert len(set(alerts)) == len(alerts)


def test_the_issue_s_alerts_are_all_there() -> None:
    """Pool, appliance, consumer, convergence, lbdriver leader and stream usage each alert."""
    metrics_by_alert = {a: metric_names(e) for a, e in rule_expressions()}
    read = set().union(*metrics_by_alert.values())
    for needed in (
        "vipwire_ipam_pool_addresses_in_use",
        "vipwire_lbdriver_appliance_breaker_state",
        "vipwire_lbdriver_appliance_failures_total",
        "vipwire_bus_consumer_pending",
        "vipwire_bus_consumer_connected",
        "vipwire_watcher_oldest_unconverged_seconds",
        "vipwire_lbdriver_leader",
        "vipwire_bus_store_used_ratio",
    ):
        assert needed in read, needed


def test_the_dashboard_is_grafana_json_with_queries() -> None:
    """The dashboard parses, has a uid and a datasource variable, and every panel a query."""
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"]
    assert any(v["type"] == "datasource" for v in doc["templating"]["list"])
    queries = list(dashboard_expressions(doc))
    assert len(queries) > 20
    assert all(metric_names(expr) for _, expr in queries)


def test_the_kustomization_renders_what_prometheus_and_grafana_pick_up() -> None:
    """`kubectl kustomize` renders a metrics Service per component selecting the pods'
    name and part-of labels, a ServiceMonitor selecting them, the rule and the dashboard
    ConfigMap (labelled for Grafana's sidecar), all in vipwire-system."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(RULES.parent)], check=True, capture_output=True, text=True
    ).stdout
    docs = list(yaml.safe_load_all(rendered))
    assert {d["metadata"]["namespace"] for d in docs} == {"vipwire-system"}
    services = [d for d in docs if d["kind"] == "Service"]
    components = {s["spec"]["selector"]["app.kubernetes.io/name"] for s in services}
    assert components == {f"vipwire-{c}" for c in COMPONENTS}
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    for service in services:
        assert service["spec"]["selector"]["app.kubernetes.io/part-of"] == "vipwire"
        assert wanted.items() <= service["metadata"]["labels"].items()
        assert ports <= {p["name"] for p in service["spec"]["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}
    assert any(d["kind"] == "PrometheusRule" for d in docs)
    board = next(d for d in docs if d["kind"] == "ConfigMap")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["vipwire-dashboard.json"]) == json.loads(DASHBOARD.read_text())
