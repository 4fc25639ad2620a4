"""Listings: a partition's objects with an owner index, never changed by a write."""

from __future__ import annotations

import pytest

from vipwire.contracts import Member
from vipwire.lbdriver import (
    CreateVirtualServer,
    DeleteVirtualServer,
    Monitor,
    OperationConflict,
    UpdateMembers,
    UpdateVirtualServer,
    VirtualServer,
    apply_operations,
    owned_scope,
)
from vipwire.lbdriver.core.drift import held_by
from vipwire.lbdriver.core.listing import Listing, digest

PREFIX = "vipwire"
WEB = "prod/shop/web"
API = "prod/shop/api"


def vs(name: str, owner: str = WEB, *members: str, port: int = 80) -> VirtualServer:
    return VirtualServer(
        name=name,
        owner=owner,
        address="192.0.2.10",
        port=port,
        protocol="TCP",
        members=tuple(Member(node=n, address=f"198.51.100.{n[1:]}") for n in members),
        monitor=Monitor(port=10256),
    )


A = "vipwire-prod-shop-web-192.0.2.10-80-tcp"
B = "vipwire-prod-shop-web-192.0.2.10-443-tcp"
X = "vipwire-prod-shop-api-192.0.2.11-80-tcp"
START = {A: vs(A, WEB, "n2", "n1"), X: vs(X, API, "n1"), "legacy": vs("legacy", "", "n9")}


def scanned(state: dict[str, VirtualServer], owner: str) -> dict[str, VirtualServer]:
    return {n: s for n, s in state.items() if s.owner == owner}


class TestListing:
    def test_index_and_count_follow_every_kind_of_write(self) -> None:
        """After creates, updates (one moving an object to another owner), member updates
        and deletes, each owner's objects and our count are what a scan finds."""
        listing = Listing(START, PREFIX)
        batches = [
            [CreateVirtualServer(server=vs(B, WEB, "n1", port=443))],
            [UpdateMembers(name=A, members=(Member(node="n3", address="198.51.100.3"),))],
            [UpdateVirtualServer(server=vs(X, WEB, "n1"))],  # taken over by web
            [DeleteVirtualServer(name=A), DeleteVirtualServer(name="legacy")],
        ]
        state = dict(listing)
        for ops in batches:
            listing = listing.after(ops)
            state = apply_operations(state, ops)
            assert dict(listing) == state
            for owner in (WEB, API, ""):
                assert dict(listing.of(owner)) == scanned(state, owner)
            assert listing.owned == sum(1 for n in state if n.startswith(f"{PREFIX}-"))
        assert set(listing.owners()) == {WEB}

    def test_a_write_leaves_the_earlier_listing_as_it_was(self) -> None:
        """Whoever holds a listing across a write keeps the state it read."""
        before = Listing(START, PREFIX)
        after = before.after([DeleteVirtualServer(name=A), UpdateVirtualServer(server=vs(X))])
        assert set(before) == {A, X, "legacy"} and set(before.of(WEB)) == {A}
        assert set(before.of(API)) == {X} and before.owned == 2
        assert set(after.of(WEB)) == {X} and list(after.of(API)) == [] and after.owned == 1

    def test_members_are_kept_canonical_and_conflicts_refused(self) -> None:
        """Listed pools are sorted like diff's; a write that does not fit raises."""
        listing = Listing(START, PREFIX)
        assert [m.node for m in listing[A].members] == ["n1", "n2"]
        with pytest.raises(OperationConflict):
            listing.after([CreateVirtualServer(server=vs(A))])
        with pytest.raises(OperationConflict):
            listing.after([DeleteVirtualServer(name="missing")])

    def test_scope_and_holdings_match_a_scan(self) -> None:
        """owned_scope and held_by answer from the index as they do from a plain dict."""
        listing = Listing(START, PREFIX)
        desired = {X: vs(X, WEB), B: vs(B, WEB, port=443)}
        assert owned_scope(listing, WEB, desired) == owned_scope(dict(listing), WEB, desired)
        assert held_by(listing, {WEB, API}, PREFIX) == held_by(dict(listing), {WEB, API}, PREFIX)


class TestDigest:
    def test_equal_sets_match_and_any_change_does_not(self) -> None:
        """Order does not matter; a member, an extra or a missing object does."""
        a, b = vs(A, WEB, "n1"), vs(B, WEB, "n1", port=443)
        assert digest([a, b]) == digest([b, a])
        assert digest([a, b]) != digest([a, vs(B, WEB, "n2", port=443)])
        assert digest([a, b]) != digest([a])
        assert digest([]) == digest(())
