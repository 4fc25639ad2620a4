"""Changes applied or explained, sharing across namespaces, visible rejections: the
whole pipeline (watcher → ipam → lbdriver on the sim appliance → node agents → status)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from vipwire.allinone import Stack, StackSettings
from vipwire.cli.main import main
from vipwire.testing import eventually

FINALIZER = "service.kubernetes.io/load-balancer-cleanup"


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    # An insecure bus: replay (and the sampler) connect without credentials.
    async with Stack(StackSettings(secure_bus=False)) as s:
        await s.wait_ready()
        for namespace in ("shop", "blog"):
            await s.emulators["east"].create(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            )
        yield s


def events(stack: Stack, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in stack.emulators["east"].list("events.events.k8s.io", namespace)
        if e["reason"] == reason and e["regarding"]["name"] == name
    ]


def condition(stack: Stack, name: str, namespace: str = "default") -> dict[str, Any]:
    svc = stack.service("east", name, namespace) or {}
    for cond in (svc.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "vipwire.io/Ready":
            found: dict[str, Any] = cond
            return found
    return {}


async def test_two_namespaces_that_both_opt_in_share_one_vip_on_the_appliance(
    stack: Stack,
) -> None:
    """shop/web and blog/api with one sharing key, each naming the other's namespace: one
    VIP in both statuses, both ports on it on the sim appliance; blog/solo, naming nobody,
    gets its own VIP."""
    key = {"vipwire.io/sharing-key": "front"}
    await stack.create_service(
        "east",
        "web",
        namespace="shop",
        annotations={**key, "vipwire.io/share-with-namespaces": "blog"},
    )
    await eventually(
        lambda: stack.ingress_ips("east", "web", "shop"), timeout=5.0, what="shop/web's VIP"
    )
    await stack.create_service(
        "east",
        "api",
        namespace="blog",
        ports=((8080, "TCP"),),
        annotations={**key, "vipwire.io/share-with-namespaces": "*"},
    )
    await stack.create_service(
        "east", "solo", namespace="blog", ports=((9090, "TCP"),), annotations=key
    )
    for namespace, name in (("shop", "web"), ("blog", "api"), ("blog", "solo")):
        await eventually(
            lambda n=name, ns=namespace: stack.ingress_ips("east", n, ns),
            timeout=5.0,
            what=f"east/{namespace}/{name} has a VIP in status",
        )
    (vip,) = stack.ingress_ips("east", "web", "shop")
    assert stack.ingress_ips("east", "api", "blog") == [vip]
    (solo,) = stack.ingress_ips("east", "solo", "blog")
    assert solo != vip
    served = {(vs.address, vs.port) for vs in stack.appliance.virtual_servers("east").values()}
    assert {(vip, 80), (vip, 8080), (solo, 9090)} <= served


async def test_one_side_only_gets_its_own_vip_and_a_sharing_refused_event(stack: Stack) -> None:
    """blog/api names shop, but shop/web names nobody: api gets its own VIP and a
    SharingRefused Warning Event saying web does not accept blog."""
    key = {"vipwire.io/sharing-key": "front"}
    await stack.create_service("east", "web", namespace="shop", annotations=key)
    await eventually(
        lambda: stack.ingress_ips("east", "web", "shop"), timeout=5.0, what="shop/web's VIP"
    )
    await stack.create_service(
        "east",
        "api",
        namespace="blog",
        ports=((8080, "TCP"),),
        annotations={**key, "vipwire.io/share-with-namespaces": "shop"},
    )
    await eventually(
        lambda: events(stack, "blog", "api", "SharingRefused"),
        timeout=5.0,
        what="a SharingRefused Event on blog/api",
    )
    (event,) = events(stack, "blog", "api", "SharingRefused")
    assert "east/shop/web (another namespace: it does not name 'blog'" in event["note"]
    await eventually(
        lambda: stack.ingress_ips("east", "api", "blog"), timeout=5.0, what="blog/api's VIP"
    )
    assert stack.ingress_ips("east", "api", "blog") != stack.ingress_ips("east", "web", "shop")


async def test_changing_the_ips_of_a_served_service_is_explained(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """vipwire.io/ips changed on a served Service to an address it cannot move to (in no
    pool): a MoveRefused Warning Event and condition say what it keeps and why; its VIP
    stays on the appliance, and a replay of ipam's decisions finds the refusal right."""
    await stack.create_service("east", "web", annotations={"vipwire.io/ips": "198.51.100.50"})
    await eventually(
        lambda: stack.ingress_ips("east", "web") == ["198.51.100.50"],
        timeout=5.0,
        what="web serves 198.51.100.50",
    )
    await stack.emulators["east"].patch(
        "services",
        "default",
        "web",
        {"metadata": {"annotations": {"vipwire.io/ips": "203.0.113.77"}}},
    )
    await eventually(
        lambda: condition(stack, "web").get("reason") == "MoveRefused",
        timeout=5.0,
        what="web's condition says MoveRefused",
    )
    cond = condition(stack, "web")
    assert cond["status"] == "False"
    assert "keeps 198.51.100.50 although it asks for 203.0.113.77" in cond["message"]
    assert "it cannot move: requested address 203.0.113.77 is in no pool" in cond["message"]
    await eventually(
        lambda: events(stack, "default", "web", "MoveRefused"),
        timeout=5.0,
        what="a MoveRefused Event on web",
    )
    (event,) = events(stack, "default", "web", "MoveRefused")
    assert event["type"] == "Warning" and cond["message"] in event["note"]
    assert stack.ingress_ips("east", "web") == ["198.51.100.50"]
    served = {vs.address for vs in stack.appliance.virtual_servers("east").values()}
    assert served == {"198.51.100.50"}
    # Replaying ipam's decisions over this history finds the refusal right.
    capsys.readouterr()
    args = ["replay", "--nats", stack.nats.urls[0], "--rerun", "--cluster", "east"]
    code = await asyncio.to_thread(main, args)
    assert code == 0, capsys.readouterr()


async def test_a_service_ipam_refuses_for_good_keeps_no_finalizer(stack: Stack) -> None:
    """Unknown pool, or dual-stack with no IPv6 pool: AllocationFailed (Event, condition)
    and no finalizer, as the README says of a Service never valid; the annotation names
    the refusal's trace (the Event's)."""
    await stack.create_service("east", "gold", annotations={"vipwire.io/pool": "gold"})
    await eventually(
        lambda: events(stack, "default", "gold", "AllocationFailed"),
        timeout=5.0,
        what="an AllocationFailed Event on gold",
    )
    await eventually(
        lambda: not ((stack.service("east", "gold") or {}).get("metadata") or {}).get("finalizers"),
        timeout=5.0,
        what="gold keeps no finalizer",
    )
    meta = (stack.service("east", "gold") or {})["metadata"]
    trace = meta["annotations"]["vipwire.io/last-trace-id"]
    (event,) = events(stack, "default", "gold", "AllocationFailed")
    assert "pool 'gold'" in event["note"] and f"(trace {trace})" in event["note"]
    assert condition(stack, "gold")["reason"] == "AllocationFailed"
    # Dual-stack with no IPv6 pool: refused for good too.
    await stack.emulators["east"].create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "dual", "namespace": "default"},
            "spec": {
                "type": "LoadBalancer",
                "loadBalancerClass": "vipwire.io/dsr",
                "ipFamilies": ["IPv4", "IPv6"],
                "ipFamilyPolicy": "RequireDualStack",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            },
        }
    )
    await eventually(
        lambda: events(stack, "default", "dual", "AllocationFailed"),
        timeout=5.0,
        what="an AllocationFailed Event on dual",
    )
    await eventually(
        lambda: not ((stack.service("east", "dual") or {}).get("metadata") or {}).get("finalizers"),
        timeout=5.0,
        what="dual keeps no finalizer",
    )
    assert "IPv6" in events(stack, "default", "dual", "AllocationFailed")[0]["note"]


async def test_a_served_service_made_invalid_keeps_serving_and_the_history_reruns_clean(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo on a served Service: InvalidService, its VIP stays on the appliance and in
    status (ipam reads the rejection as the snapshot in force, never as a deletion), and
    replay --rerun of the history finds no divergence."""
    await stack.create_service("east", "web")
    await eventually(lambda: stack.ingress_ips("east", "web"), timeout=5.0, what="web's VIP")
    (vip,) = stack.ingress_ips("east", "web")
    await stack.emulators["east"].patch(
        "services", "default", "web", {"metadata": {"annotations": {"vipwire.io/poool": "x"}}}
    )
    await eventually(
        lambda: condition(stack, "web").get("reason") == "InvalidService",
        timeout=5.0,
        what="web's condition says InvalidService",
    )
    await stack.emulators["east"].patch(
        "services", "default", "web", {"metadata": {"annotations": {"vipwire.io/poool": None}}}
    )
    await eventually(
        lambda: condition(stack, "web").get("status") == "True",
        timeout=5.0,
        what="web is Ready again",
    )
    assert stack.ingress_ips("east", "web") == [vip]
    assert {vs.address for vs in stack.appliance.virtual_servers("east").values()} == {vip}
    capsys.readouterr()
    args = ["replay", "--nats", stack.nats.urls[0], "--rerun", "--cluster", "east"]
    assert await asyncio.to_thread(main, args) == 0, capsys.readouterr()
    capsys.readouterr()
    args = ["replay", "--nats", stack.nats.urls[0], "--service", "east/default/web"]
    assert await asyncio.to_thread(main, args) == 0
    assert "rejected: InvalidService" in capsys.readouterr().out


class Sampler:
    """Where the old and the new VIP are, sampled at every message on the bus (every step
    of every service), from the status, the sim appliance and the nodes' appliers."""

    def __init__(self, stack: Stack, old: str, new: str) -> None:
        self.stack, self.old, self.new = stack, old, new
        self.samples: list[dict[str, Any]] = []

    def sample(self, subject: str) -> None:
        stack = self.stack
        status = set(stack.ingress_ips("east", "web"))
        appliance = {vs.address for vs in stack.appliance.virtual_servers("east").values()}
        nodes = [
            {a.address for a in applier.state.addresses}  # type: ignore[attr-defined]
            for (cluster, _), applier in stack.appliers.items()
            if cluster == "east"
        ]
        self.samples.append(
            {
                "after": subject,
                "status": status,
                "appliance": appliance,
                "old_everywhere": self.old in status
                and self.old in appliance
                and all(self.old in n for n in nodes),
                "new_everywhere": self.new in status
                and self.new in appliance
                and all(self.new in n for n in nodes),
                "old_anywhere": self.old in status
                or self.old in appliance
                or any(self.old in n for n in nodes),
                "new_anywhere": self.new in appliance or any(self.new in n for n in nodes),
            }
        )


async def test_changing_the_ips_moves_make_before_break_at_every_step(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """vipwire.io/ips changed on a served Service: it moves to the new VIP, and at every
    step (sampled at each bus message) the old VIP is withdrawn from nowhere (status,
    appliance, any node) before the new one is in status, on the appliance and on every
    node (one node lags behind); at the end only the new VIP is anywhere, and the old
    address is free again."""
    old, new = "198.51.100.50", "198.51.100.77"
    await stack.create_service("east", "web", annotations={"vipwire.io/ips": old})
    await eventually(
        lambda: stack.ingress_ips("east", "web") == [old], timeout=5.0, what="web serves old"
    )
    sampler = Sampler(stack, old, new)

    def settled_on_old() -> bool:
        sampler.sample("start")
        return bool(sampler.samples[-1]["old_everywhere"])

    await eventually(settled_on_old, timeout=5.0, what="old in status, appliance, every node")
    sampler.samples.clear()
    nc = await nats.connect(stack.nats.urls[0])
    try:

        async def on_msg(msg: Msg) -> None:
            sampler.sample(msg.subject)

        await nc.subscribe("vipwire.>", cb=on_msg)
        # One node lags (its next applies fail and are retried): the old VIP must wait.
        lagging = stack.appliers[("east", stack.node_names("east")[0])]
        lagging.failures = 3  # type: ignore[attr-defined]
        await stack.emulators["east"].patch(
            "services", "default", "web", {"metadata": {"annotations": {"vipwire.io/ips": new}}}
        )

        def moved() -> bool:
            sampler.sample("check")
            last = sampler.samples[-1]
            return bool(last["new_everywhere"] and not last["old_anywhere"])

        await eventually(moved, timeout=10.0, what="web moved to the new VIP everywhere")
    finally:
        await nc.close()
    samples = sampler.samples
    assert any(s["old_everywhere"] and s["new_anywhere"] for s in samples), (
        "never served both at once: no make-before-break"
    )
    first_gone = next(i for i, s in enumerate(samples) if not s["old_everywhere"])
    assert all(s["new_everywhere"] for s in samples[first_gone:]), [
        (s["after"], s["status"], s["appliance"]) for s in samples[first_gone - 2 : first_gone + 3]
    ]
    assert stack.ingress_ips("east", "web") == [new]
    # The old address is free: another Service may ask for it.
    await stack.create_service("east", "next", annotations={"vipwire.io/ips": old})
    await eventually(
        lambda: stack.ingress_ips("east", "next") == [old], timeout=5.0, what="next gets old"
    )
    capsys.readouterr()
    args = ["replay", "--nats", stack.nats.urls[0], "--rerun", "--cluster", "east"]
    assert await asyncio.to_thread(main, args) == 0, capsys.readouterr()
