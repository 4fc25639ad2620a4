"""The watcher and ``vipwire.io/profile``: carried in the snapshot, its syntax checked."""

from __future__ import annotations

from typing import Any

from vipwire.watcher.core.translate import PROFILE_ANNOTATION, service_snapshot
from vipwire.watcher.core.validate import service_problems

CLASS = "vipwire.io/dsr"


def service(annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "u-1",
            "resourceVersion": "41",
            "annotations": annotations,
        },
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": CLASS,
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        },
    }


def test_the_profile_annotation_is_carried_in_the_snapshot() -> None:
    """The name, trimmed, travels to ipam; no annotation (or a blank one) is None."""
    for value, expected in (("fast", "fast"), (" fast ", "fast"), ("", None)):
        snap = service_snapshot(
            service({PROFILE_ANNOTATION: value}), cluster="east", load_balancer_class=CLASS
        )
        assert snap is not None and snap.profile == expected
    snap = service_snapshot(service({}), cluster="east", load_balancer_class=CLASS)
    assert snap is not None and snap.profile is None


def test_a_profile_name_is_known_and_checked_as_a_dns_label() -> None:
    """The annotation is not refused as unknown; a name that cannot be a profile is,
    with how to fix it (whether it exists is ipam's to say)."""
    protocols = ("TCP",)
    assert service_problems(service({PROFILE_ANNOTATION: "fast"}), protocols=protocols) == ()
    (problem,) = service_problems(service({PROFILE_ANNOTATION: "Fast!"}), protocols=protocols)
    assert problem.startswith('vipwire.io/profile: "Fast!" cannot name a profile')
    (typo,) = service_problems(service({"vipwire.io/profil": "fast"}), protocols=protocols)
    assert "vipwire.io/profile" in typo  # the known annotations are listed
