"""The allocator core, without NATS: a story of one pool set's life, then focused cases."""

from __future__ import annotations

import ipaddress
import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vipwire.ipam import Allocation, AllocationFailure, Allocator, Claim, PoolSettings, Request
from vipwire.ipam.addresses import from_kv_token, kv_token, parse_block
from vipwire.ipam.intervals import IntervalSet

POOLS = (
    PoolSettings(
        name="default",
        addresses=("192.0.2.0/29", "2001:db8::10-2001:db8::13"),
        avoid=("192.0.2.3",),
        avoid_buggy_ips=True,
    ),
    PoolSettings(name="east-only", addresses=("198.51.100.8/30",), clusters=("east",)),
    PoolSettings(
        name="manual", addresses=("203.0.113.0/30",), auto_assign=False, appliance_group="edge"
    ),
)


def req(name: str, uid: str | None = None, cluster: str = "west", **kw: object) -> Request:
    return Request(cluster=cluster, namespace="shop", name=name, uid=uid or f"uid-{name}", **kw)  # type: ignore[arg-type]


class Story:
    """One allocator plus the test's own model of who holds what, checked after each step."""

    def __init__(self, pools: tuple[PoolSettings, ...] = POOLS) -> None:
        self.pools = {p.name: p for p in pools}
        self.allocator = Allocator(pools)
        self.held: dict[str, tuple[str, ...]] = {}  # service name -> vips

    def step(self, title: str) -> None:
        self.title = title

    def allocate(self, request: Request) -> Allocation | AllocationFailure:
        result = self.allocator.allocate(request)
        if isinstance(result, Allocation):
            self.held[request.name] = result.addresses
        self.check()
        return result

    def got(self, request: Request) -> Allocation:
        result = self.allocate(request)
        assert isinstance(result, Allocation), f"{self.title}: {result}"
        return result

    def failed(self, request: Request, code: str) -> AllocationFailure:
        result = self.allocate(request)
        assert isinstance(result, AllocationFailure), f"{self.title}: got {result}"
        assert result.code == code, f"{self.title}: {result}"
        return result

    def release(self, name: str) -> tuple[str, ...]:
        vips = self.held.pop(name)
        for vip in vips:
            assert self.allocator.release(vip) is not None
        self.check()
        return vips

    def check(self) -> None:
        where = f"after {self.title!r}"
        claims = self.allocator.claims()
        everyone = [vip for vips in self.held.values() for vip in vips]
        assert len(everyone) == len(set(everyone)), f"{where}: an address is owned twice"
        assert set(everyone) == set(claims), f"{where}: claims {claims} != model {self.held}"
        for vip, claim in claims.items():
            assert self.held[claim.name] and vip in self.held[claim.name], where
            pool = self.pools[claim.pool]
            value = int(ipaddress.ip_address(vip))
            blocks = [parse_block(a) for a in pool.addresses]
            assert any(b.first <= value <= b.last for b in blocks), f"{where}: {vip} outside"
            avoided = [parse_block(a) for a in pool.avoid]
            assert not any(b.first <= value <= b.last for b in avoided), f"{where}: {vip} avoided"
            if pool.avoid_buggy_ips and ":" not in vip:
                assert vip.split(".")[-1] not in ("0", "255"), f"{where}: buggy {vip}"
        for usage in self.allocator.usage():
            in_pool = [
                c
                for v, c in claims.items()
                if c.pool == usage.pool and (":" in v) == (usage.family == "IPv6")
            ]
            assert usage.in_use == len(in_pool), f"{where}: usage {usage}"


def test_story_of_a_pool_set() -> None:
    """Allocations, failures and releases, as operators meet them, keep every invariant."""
    s = Story()

    s.step("a plain Service gets the first usable address of the first auto pool")
    assert s.got(req("web")).addresses == ("192.0.2.1",)  # .0 is avoided as buggy

    s.step("the next one skips the avoid list")
    assert s.got(req("api")).addresses == ("192.0.2.2",)
    assert s.got(req("cart")).addresses == ("192.0.2.4",)

    s.step("RequireDualStack gets one address of each family, primary first")
    dual = s.got(req("dual", ip_families=("IPv6",), ip_family_policy="RequireDualStack"))
    assert dual.addresses == ("2001:db8::10", "192.0.2.5")

    s.step("a requested address is honoured, even in a pool that does not auto-assign")
    manual = s.got(req("pinned", requested_ips=("203.0.113.2",)))
    assert (manual.pool, manual.appliance_group, manual.addresses) == (
        "manual",
        "edge",
        ("203.0.113.2",),
    )

    s.step("a requested address someone owns fails and names the owner")
    taken = s.failed(req("thief", requested_ips=("192.0.2.1",)), "AddressTaken")
    assert "west/shop/web" in taken.message and taken.retryable

    s.step("a requested address on the avoid list fails and says so")
    assert "avoid" in s.failed(req("x", requested_ips=("192.0.2.3",)), "AddressAvoided").message

    s.step("a requested address outside every pool fails")
    s.failed(req("x", requested_ips=("10.0.0.1",)), "AddressNotInPool")

    s.step("an unknown pool annotation fails, naming the pools there are")
    assert "'default'" in s.failed(req("x", pool="nope"), "UnknownPool").message

    s.step("a pool restricted to a cluster refuses others and serves its own")
    s.failed(req("x", pool="east-only"), "PoolNotAllowed")
    assert s.got(req("e1", cluster="east", pool="east-only")).pool == "east-only"

    s.step("PreferDualStack in an IPv4-only pool gets IPv4 only")
    prefer = s.got(req("p", cluster="east", pool="east-only", ip_family_policy="PreferDualStack"))
    assert len(prefer.addresses) == 1

    s.step("RequireDualStack in an IPv4-only pool fails as not retryable")
    s.failed(
        req("r", cluster="east", pool="east-only", ip_family_policy="RequireDualStack"),
        "FamilyNotInPool",
    )

    s.step("the default pool runs dry and the failure gives its usage")
    s.got(req("fill"))
    s.got(req("fill2"))
    dry = s.failed(req("late"), "PoolExhausted")
    assert dry.retryable and "'default' (6/6 in use)" in dry.message

    s.step("releasing one lets the waiting Service have it")
    freed = s.release("api")
    assert s.got(req("late")).addresses == freed

    s.step("a restarted allocator fed the claims hands out nothing owned (the MetalLB bug)")
    restarted = Story()
    for vip, claim in s.allocator.claims().items():
        restarted.allocator.claim(vip, claim)
    restarted.held = dict(s.held)
    restarted.step("restart")
    restarted.check()
    restarted.failed(req("new"), "PoolExhausted")
    assert restarted.got(req("new2", ip_family_policy="SingleStack", ip_families=("IPv6",)))

    s.step("releasing everything returns every pool to empty")
    for name in list(s.held):
        s.release(name)
    assert all(u.in_use == 0 for u in s.allocator.usage())


def test_next_fit_does_not_reuse_a_just_released_address() -> None:
    """After a release, new Services get fresh addresses until the pool wraps round."""
    allocator = Allocator([PoolSettings(name="p", addresses=("192.0.2.0/28",))])
    first = allocator.allocate(req("a"))
    assert isinstance(first, Allocation)
    allocator.release(first.addresses[0])
    second = allocator.allocate(req("b"))
    assert isinstance(second, Allocation) and second.addresses != first.addresses


def test_same_incarnation_adopts_what_it_already_holds() -> None:
    """A Service whose claim survived a crash (no record) gets that claim back, not a new one."""
    allocator = Allocator(POOLS)
    allocator.claim(
        "192.0.2.6",
        Claim(cluster="west", namespace="shop", name="web", uid="uid-web", pool="default"),
    )
    again = allocator.allocate(req("web"))
    assert isinstance(again, Allocation)
    assert (again.addresses, again.new, again.held) == (("192.0.2.6",), (), ("192.0.2.6",))
    replaced = allocator.allocate(req("web", uid="other", requested_ips=("192.0.2.6",)))
    assert isinstance(replaced, AllocationFailure)
    assert "earlier incarnation" in replaced.message


def test_check_without_reserving_changes_nothing() -> None:
    """allocate(reserve=False) answers whether a request would succeed, claiming nothing."""
    allocator = Allocator(POOLS)
    assert isinstance(allocator.allocate(req("a"), reserve=False), Allocation)
    assert allocator.claims() == {}


def test_a_slash_16_allocates_fast_and_stays_compact() -> None:
    """65 534 allocations in a /16 take well under a second per 10k and keep one free run."""
    pool = PoolSettings(name="big", addresses=("10.0.0.0/16",), avoid_buggy_ips=True)
    allocator = Allocator([pool])
    started = time.perf_counter()
    got = set()
    for i in range(10_000):
        result = allocator.allocate(req(f"s{i}"))
        assert isinstance(result, Allocation)
        got.add(result.addresses[0])
    assert len(got) == 10_000
    assert time.perf_counter() - started < 2.0
    space = allocator._pools["big"].spaces["IPv4"]
    assert len(list(space.free.runs())) < 300  # holes are only the avoided .0/.255s


def test_ipv6_pool_of_two_to_the_64_is_no_problem() -> None:
    """A /64 is kept as one run; its size and usage are exact."""
    allocator = Allocator([PoolSettings(name="v6", addresses=("2001:db8:1::/64",))])
    result = allocator.allocate(req("a", ip_families=("IPv6",)))
    assert isinstance(result, Allocation) and result.addresses == ("2001:db8:1::",)
    (usage,) = allocator.usage()
    assert (usage.size, usage.in_use) == (2**64, 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60)), max_size=120))
def test_interval_set_behaves_like_a_set(ops: list[tuple[bool, int]]) -> None:
    """Any mix of add/discard on IntervalSet matches a plain set, with runs kept disjoint."""
    model = set(range(10, 40))
    runs = IntervalSet([(10, 39)])
    for add, value in ops:
        assert (runs.add(value) if add else runs.discard(value)) == (
            (value not in model) if add else (value in model)
        )
        (model.add if add else model.discard)(value)
        assert runs.count == len(model)
        flat = [v for lo, hi in runs.runs() for v in range(lo, hi + 1)]
        assert flat == sorted(model)
        pairs = list(runs.runs())
        assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(pairs))
        if model:
            probe = value
            expected = min((v for v in model if v >= probe), default=min(model))
            assert runs.next_from(probe) == expected


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_kv_token_round_trips_and_is_a_valid_key(address: object) -> None:
    """Every IPv4 and IPv6 address maps to one KV key token and back."""
    token = kv_token(str(address))
    assert all(c.isalnum() or c in "-_" for c in token)
    assert from_kv_token(token) == str(address)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"name": "a", "addresses": ["192.0.2.1/24"]}, "did you mean 192.0.2.0/24"),
        ({"name": "a", "addresses": ["192.0.2.9-192.0.2.1"]}, "ends before it starts"),
        ({"name": "a", "addresses": ["192.0.2.1-2001:db8::1"]}, "mixes IPv4 and IPv6"),
        ({"name": "a", "addresses": ["192.0.2.0/24", "192.0.2.7"]}, "overlap"),
        ({"name": "a", "addresses": []}, "must not be empty"),
        ({"name": "A b", "addresses": ["192.0.2.1"]}, "DNS label"),
        ({"name": "a", "addresses": ["192.0.2.0/24"], "avoid": ["10.0.0.1"]}, "not inside"),
        ({"name": "a", "addresses": ["192.0.2.0/24"], "clusters": ["No"]}, "DNS label"),
    ],
)
def test_bad_pool_config_is_a_config_error(config: dict[str, object], message: str) -> None:
    """A pool that cannot work is refused with a ConfigError saying why and where."""
    from vipwire.ipam import IpamSettings
    from vipwire.runtime import ConfigError, section

    with pytest.raises(ConfigError, match=message) as info:
        section({"ipam": {"pools": [config]}}, "ipam", IpamSettings)
    assert "ipam.pools[0]" in str(info.value)


def test_pools_across_each_other_are_refused() -> None:
    """Two pools sharing an address, or two pools of one name, are config errors."""
    from vipwire.ipam import IpamSettings
    from vipwire.runtime import ConfigError

    with pytest.raises(ConfigError, match=r"pools 'a' and 'b' overlap: 192\.0\.2\.0/24 and"):
        IpamSettings(
            pools=(
                PoolSettings(name="a", addresses=("192.0.2.0/24",)),
                PoolSettings(name="b", addresses=("192.0.2.128-192.0.2.130",)),
            )
        )
    with pytest.raises(ConfigError, match="repeated: a"):
        IpamSettings(
            pools=(
                PoolSettings(name="a", addresses=("192.0.2.0/24",)),
                PoolSettings(name="a", addresses=("198.51.100.0/24",)),
            )
        )
