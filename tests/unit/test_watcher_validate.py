"""What the watcher refuses in a Service itself, and how it tells the user to fix it."""

from __future__ import annotations

from typing import Any

import pytest

from vipwire.watcher.core.validate import invalid_note, service_problems

ALL = ("TCP", "UDP", "SCTP")


def service(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body_spec: dict[str, Any] = {
        "type": "LoadBalancer",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        **spec,
    }
    return {
        "metadata": {"name": "web", "namespace": "shop", "annotations": annotations or {}},
        "spec": body_spec,
    }


def problems(svc: dict[str, Any], protocols: tuple[str, ...] = ALL) -> tuple[str, ...]:
    return service_problems(svc, protocols=protocols)


class TestValid:
    @pytest.mark.parametrize(
        "annotations",
        [
            {},
            {"vipwire.io/pool": "gold"},
            {"vipwire.io/ips": "198.51.100.20, 2001:db8::20"},
            {"vipwire.io/ips": "198.51.100.20,"},  # a trailing comma is harmless
            {"vipwire.io/sharing-key": "web-front_1.a"},
            {"vipwire.io/share-with-namespaces": "shop, web-2"},
            {"vipwire.io/share-with-namespaces": "*"},
            {"vipwire.io/last-trace-id": "ab", "vipwire.io/cluster": "east"},
            {"example.com/whatever": "!!"},  # not ours to judge
        ],
    )
    def test_good_services_have_no_problems(self, annotations: dict[str, str]) -> None:
        """Well-formed annotations, our own bookkeeping and foreign annotations pass."""
        assert problems(service(annotations)) == ()

    def test_load_balancer_ip_and_app_protocol_are_fine(self) -> None:
        """spec.loadBalancerIP as a valid address passes; appProtocol is not judged (L4 DSR)."""
        svc = service(loadBalancerIP="198.51.100.9")
        svc["spec"]["ports"][0]["appProtocol"] = "kubernetes.io/h2c"
        assert problems(svc) == ()


class TestInvalid:
    @pytest.mark.parametrize(
        ("annotations", "spec", "expected"),
        [
            ({"vipwire.io/ips": "198.51.100.300"}, {}, 'vipwire.io/ips: "198.51.100.300" is not'),
            ({"vipwire.io/ips": "fe80::1%eth0"}, {}, "is not an IP address"),
            ({}, {"loadBalancerIP": "web.example.com"}, "spec.loadBalancerIP"),
            ({"vipwire.io/pool": "Gold Pool"}, {}, "a pool name is a DNS label"),
            ({"vipwire.io/sharing-key": "-bad-"}, {}, "is not a sharing key"),
            ({"vipwire.io/pools": "gold"}, {}, "annotation vipwire.io/pools is not one"),
            ({"vipwire.io/ips": " , ,"}, {}, 'vipwire.io/ips: " , ," names no address'),
            ({"vipwire.io/ips": ""}, {}, "or remove the annotation for an automatic VIP"),
            ({"vipwire.io/share-with-namespaces": "Shop"}, {}, '"Shop" is not a namespace'),
            ({"vipwire.io/share-with-namespaces": " ,"}, {}, "is not a namespace"),
        ],
    )
    def test_each_problem_names_the_field_and_the_fix(
        self, annotations: dict[str, str], spec: dict[str, Any], expected: str
    ) -> None:
        """Malformed (or blank) addresses, pool names, sharing keys, namespaces to share
        with, and typos of our annotations."""
        found = problems(service(annotations, **spec))
        assert len(found) == 1
        assert expected in found[0]

    def test_protocol_the_appliances_cannot_serve(self) -> None:
        """A port whose protocol is not in watcher.protocols is refused, naming what is."""
        svc = service(ports=[{"name": "sig", "port": 3868, "protocol": "SCTP"}])
        assert problems(svc) == ()
        (found,) = problems(svc, protocols=("TCP", "UDP"))
        assert "3868/SCTP (sig)" in found and "serve TCP, UDP only" in found

    def test_several_problems_are_all_reported_in_a_stable_order(self) -> None:
        """Everything wrong at once, so the user fixes it in one go."""
        svc = service({"vipwire.io/pool": "BAD", "vipwire.io/ips": "x"})
        first = problems(svc)
        assert len(first) == 2 and first == problems(svc)

    def test_note_says_what_happens_until_fixed(self) -> None:
        """A Service never served gets no VIP; one already served keeps what it has."""
        assert invalid_note(("p",), served=False).endswith(
            "(no VIP is assigned until this is fixed)"
        )
        assert "keeps its current VIPs" in invalid_note(("p",), served=True)

    def test_garbage_never_crashes(self) -> None:
        """Whatever the API hands over, the check answers."""
        weird: dict[str, Any] = {"metadata": {"annotations": None}, "spec": {"ports": [None, 3]}}
        assert problems(weird) == ()
        assert problems({}) == ()
