"""The dashboard reads ipam's and the lbdriver's status answers as the contracts define them."""

from __future__ import annotations

import msgspec
import pytest

from vipwire.contracts import ApplianceStatus, IpamStatus, LbdriverStatus, PoolStatus
from vipwire.dashboard.core.control_answers import parse_ipam, parse_lbdriver


def pool(name: str, family: str, size: int, used: int, group: str = "dc1") -> PoolStatus:
    return PoolStatus(
        name=name,
        family=family,  # type: ignore[arg-type]
        appliance_group=group,
        size=size,
        used=used,
        free=size - used,
        stale=0,
    )


def ipam_answer(*pools: PoolStatus) -> bytes:
    status = IpamStatus(
        instance="ipam-1", now=1.0, ready=True, claims=0, services=0, waiting=0, pools=pools
    )
    return msgspec.json.encode(status)


class TestControlAnswers:
    def test_ipam_pools_of_two_families_are_added_up(self) -> None:
        """One entry per family and pool becomes one pool with summed size and use."""
        data = ipam_answer(
            pool("a", "IPv4", 256, 3),
            pool("a", "IPv6", 256, 1),
            pool("b", "IPv4", 16, 16, group="dc2"),
        )
        pools = {p.name: p for p in parse_ipam(data)}
        assert (pools["a"].size, pools["a"].in_use, pools["a"].families) == (
            512,
            4,
            ("IPv4", "IPv6"),
        )
        assert (pools["b"].size, pools["b"].in_use, pools["b"].appliance_group) == (16, 16, "dc2")

    def test_lbdriver_appliances_are_the_lbdrivers_own(self) -> None:
        """The appliances of an LbdriverStatus are shown as the lbdriver sent them."""
        appliance = ApplianceStatus(
            name="f5-a", driver="f5", group="dc1", active=True, health="open", virtual_servers=7
        )
        status = LbdriverStatus(
            instance="lb-1",
            now=1.0,
            ready=True,
            services=1,
            pending=0,
            failing=0,
            drift_repairs=0,
            appliances=(appliance,),
        )
        assert parse_lbdriver(msgspec.json.encode(status)) == (appliance,)

    @pytest.mark.parametrize(
        "data",
        [
            b"not json",
            b"[]",
            b'{"pools": 3}',
            # The synonyms once guessed at are no longer read: the contract names the fields.
            b'{"pools": [{"pool": "a", "total": 256, "in_use": 3}]}',
        ],
    )
    def test_an_answer_that_is_not_an_ipam_status_is_a_value_error(self, data: bytes) -> None:
        """Garbage or another shape is reported (shown as unknown), never crashes the poll."""
        with pytest.raises(ValueError):
            parse_ipam(data)

    def test_an_answer_that_is_not_an_lbdriver_status_is_a_value_error(self) -> None:
        """An appliance list without the lbdriver's fields is reported, not half read."""
        with pytest.raises(ValueError, match="LbdriverStatus"):
            parse_lbdriver(b'{"appliances": [{"name": "f5-a"}]}')
