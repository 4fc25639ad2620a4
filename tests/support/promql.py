"""The metric names a PromQL expression reads: enough of PromQL to check alert rules and
dashboards against what the services export (no evaluation, no full grammar)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

MONITORING = Path(__file__).parents[2] / "deploy" / "kustomize" / "monitoring"
RULES = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "vipwire-dashboard.json"

KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
     "offset", "bool", "inf", "nan"}
)  # fmt: skip
#: Metrics Prometheus makes itself for every target, not exported by any service.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*(?=\s*(\()?)")
_NUMBER_SUFFIX = re.compile(r"(?<![A-Za-z0-9_:.])\d[\dA-Za-z_.]*")


def metric_names(expr: str) -> set[str]:
    """Every metric name ``expr`` selects: identifiers that are neither a function
    (followed by ``(``), a keyword, a label name (in ``{}`` or a grouping), nor a literal."""
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _NUMBER_SUFFIX.sub(" ", text)  # 0.99, 5m, 1e3
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(0), match.group(1)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def exported_names(exposition: str) -> set[str]:
    """Every name a /metrics page offers: each ``# TYPE`` (a histogram with its
    ``_bucket``, ``_sum`` and ``_count``) and each sample's name."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def rule_expressions(doc: dict[str, Any] | None = None) -> Iterator[tuple[str, str]]:
    """(alert name, expression) of every rule of the PrometheusRule."""
    doc = doc if doc is not None else yaml.safe_load(RULES.read_text())
    for group in doc["spec"]["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule.get("record"), rule["expr"]


def dashboard_expressions(doc: dict[str, Any] | None = None) -> Iterator[tuple[str, str]]:
    """(panel title, expression) of every query of the Grafana dashboard, rows included."""
    doc = doc if doc is not None else json.loads(DASHBOARD.read_text())

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets") or ():
                if target.get("expr"):
                    yield panel.get("title", "?"), target["expr"]
            yield from walk(panel.get("panels") or [])

    yield from walk(doc.get("panels") or [])
