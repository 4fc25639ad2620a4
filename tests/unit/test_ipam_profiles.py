"""ipam and appliance profiles: resolved into VipAssigned, an unknown one refused."""

from __future__ import annotations

import msgspec
import pytest

from vipwire.contracts import ServicePort, ServiceSnapshot, VipAssigned, VipFailed
from vipwire.ipam import IpamConfigError, PoolSettings
from vipwire.ipam.core.sandbox import Sandbox
from vipwire.ipam.settings import check_pool_profiles, profile_names

PROFILES = ("fast", "slow")
PLAIN = PoolSettings(name="plain", addresses=("192.0.2.0/28",))
TUNED = PoolSettings(
    name="tuned", addresses=("198.51.100.0/28",), profile="slow", auto_assign=False
)


def snapshot(name: str = "web", **kw: object) -> ServiceSnapshot:
    fields: dict[str, object] = {
        "cluster": "east",
        "namespace": "shop",
        "name": name,
        "uid": f"uid-{name}",
        "resource_version": "1",
        "ports": (ServicePort(port=80),),
    }
    fields.update(kw)
    return msgspec.convert(fields, ServiceSnapshot, from_attributes=True)


def sandbox() -> Sandbox:
    return Sandbox((PLAIN, TUNED), profiles=PROFILES)


def test_the_service_profile_else_the_pool_default_else_none() -> None:
    """VipAssigned names the Service's profile, or its pool's default, or none (built-in)."""
    ipam = sandbox()
    (own,) = ipam.handle(snapshot("a", profile="fast", pool="tuned"))
    (pooled,) = ipam.handle(snapshot("b", pool="tuned"))
    (builtin,) = ipam.handle(snapshot("c"))
    assert isinstance(own, VipAssigned) and own.profile == "fast"
    assert isinstance(pooled, VipAssigned) and pooled.profile == "slow"
    assert isinstance(builtin, VipAssigned) and builtin.profile is None


def test_an_unknown_profile_is_an_invalid_service_listing_the_profiles() -> None:
    """A new Service naming a profile that is not configured gets no VIP: InvalidService,
    with the configured profiles in the message."""
    ipam = sandbox()
    (failed,) = ipam.handle(snapshot(profile="gold"))
    assert isinstance(failed, VipFailed)
    assert failed.reason == "InvalidService"
    assert "'gold' is not configured (profiles: fast, slow)" in failed.message
    assert not ipam.records and not ipam.allocator.claims()


def test_a_served_service_switching_to_an_unknown_profile_keeps_what_it_had() -> None:
    """The refusal is said, then the last assignment again: the appliance keeps the old profile."""
    ipam = sandbox()
    (first,) = ipam.handle(snapshot(profile="fast"))
    failed, kept = ipam.handle(snapshot(profile="gold", resource_version="2"))
    assert isinstance(first, VipAssigned)
    assert isinstance(failed, VipFailed) and failed.reason == "InvalidService"
    assert isinstance(kept, VipAssigned)
    assert (kept.vips, kept.profile) == (first.vips, "fast")
    (changed,) = ipam.handle(snapshot(profile="slow", resource_version="3"))
    assert isinstance(changed, VipAssigned)
    assert (changed.vips, changed.profile) == (first.vips, "slow")


def test_without_known_profiles_no_name_is_refused() -> None:
    """Replay and benchmarks do not know the profiles: names pass through unjudged."""
    (assigned,) = Sandbox((PLAIN,)).handle(snapshot(profile="anything"))
    assert isinstance(assigned, VipAssigned) and assigned.profile == "anything"


def test_pool_defaults_must_be_configured_profiles() -> None:
    """A pool naming a profile the profiles section lacks is a config error naming both."""
    check_pool_profiles((PLAIN, TUNED), PROFILES)
    with pytest.raises(IpamConfigError, match=r"pool 'tuned': profile 'slow'.*profiles: fast"):
        check_pool_profiles((TUNED,), ("fast",))
    assert profile_names({"profiles": {"slow": {}, "fast": None}}) == ("fast", "slow")
    assert profile_names({}) == ()
    with pytest.raises(IpamConfigError, match="DNS labels"):
        profile_names({"profiles": {"Fast": {}}})
