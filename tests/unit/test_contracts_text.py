"""How contract values read: ServiceRef, port text and the one-line message summary."""

from __future__ import annotations

import pytest

from vipwire.contracts import (
    LbFailed,
    ServicePort,
    ServiceRef,
    ServiceSnapshot,
    VipReleased,
    port_text,
    summary,
)

SVC = {"cluster": "east", "namespace": "shop", "name": "web", "uid": "u-1"}


def test_service_ref_is_the_tuple_it_replaces() -> None:
    """A ServiceRef equals and hashes as the plain (cluster, namespace, name) triple."""
    ref = ServiceRef("east", "shop", "web")
    assert ref == ("east", "shop", "web")
    assert {("east", "shop", "web"): 1}[ref] == 1
    assert ref.text == "/".join(ref) == "east/shop/web"


def test_service_ref_parses_its_text() -> None:
    """``cluster/namespace/name`` parses back; anything else is a ValueError naming it."""
    assert ServiceRef.parse(" east/shop/web ") == ServiceRef("east", "shop", "web")
    for bad in ("east/shop", "east//web", "a/b/c/d", ""):
        with pytest.raises(ValueError, match="CLUSTER/NAMESPACE/NAME"):
            ServiceRef.parse(bad)


def test_port_text() -> None:
    """A port reads ``80/TCP``."""
    assert port_text(80, "TCP") == "80/TCP"
    assert port_text(53, "UDP") == "53/UDP"


def test_summary_words() -> None:
    """The summary says what a message says, in the words the timeline always used."""
    snapshot = ServiceSnapshot(
        **SVC,
        resource_version="7",
        ports=(ServicePort(port=80), ServicePort(port=53, protocol="UDP")),
    )
    assert summary(snapshot) == "80/TCP,53/UDP · Cluster"
    assert summary(VipReleased(**SVC)) == "released (held none)"
    failed = LbFailed(**SVC, appliance="f5-a", reason="Timeout", message="no answer", removing=True)
    assert summary(failed) == "removing: Timeout on f5-a: no answer"
