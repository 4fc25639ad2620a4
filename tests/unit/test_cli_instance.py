"""``vipwire run``: what tells a process apart from others of its kind."""

from __future__ import annotations

import pytest

from vipwire.cli.run import instance_of
from vipwire.nodeagent.settings import NODE_ENV

AGENT = {"nodeagent": {"cluster": "east", "node": "node-7"}}


def test_a_node_agent_is_told_apart_by_its_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node agent's instance is its node: from its section, or $VIPWIRE_NODE (as the
    DaemonSet sets it), which wins."""
    monkeypatch.delenv(NODE_ENV, raising=False)
    assert instance_of("nodeagent", AGENT, "test.yaml") == "node-7"
    monkeypatch.setenv(NODE_ENV, "node-9")
    assert instance_of("nodeagent", AGENT, "test.yaml") == "node-9"


def test_other_services_and_a_broken_section_have_no_instance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Other services have none; a section that does not decode gives none here (the
    service's own build names the bad field)."""
    monkeypatch.delenv(NODE_ENV, raising=False)
    assert instance_of("watcher", AGENT, "test.yaml") is None
    assert instance_of("nodeagent", {"nodeagent": {"cluster": "east"}}, "test.yaml") is None
    assert instance_of("nodeagent", {"nodeagent": {"cluster": 5}}, "test.yaml") is None
