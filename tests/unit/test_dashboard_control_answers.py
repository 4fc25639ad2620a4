"""The dashboard reads ipam's and the lbdriver's status answers; pure, no NATS."""

from __future__ import annotations

import msgspec
import pytest

from vipwire.dashboard.core.control_answers import parse_ipam, parse_lbdriver


class TestControlAnswers:
    def test_ipam_pools_of_two_families_are_added_up(self) -> None:
        """One entry per family and pool becomes one pool with summed size and use."""
        data = msgspec.json.encode(
            {
                "pools": [
                    {"pool": "a", "family": "IPv4", "size": 256, "in_use": 3},
                    {"pool": "a", "family": "IPv6", "size": 256, "in_use": 1},
                    {"name": "b", "size": 16, "used": 16, "appliance_group": "dc2", "new": 1},
                ]
            }
        )
        pools = {p.name: p for p in parse_ipam(data)}
        assert (pools["a"].size, pools["a"].in_use, pools["a"].families) == (
            512,
            4,
            ("IPv4", "IPv6"),
        )
        assert (pools["b"].size, pools["b"].in_use, pools["b"].appliance_group) == (16, 16, "dc2")

    def test_lbdriver_appliances_keep_known_fields(self) -> None:
        """Known fields are read, unknown ones ignored, wrong types left unknown."""
        data = msgspec.json.encode(
            {
                "appliances": [
                    {"name": "f5-a", "health": "open", "virtual_servers": 7, "active": True},
                    {"name": "f5-b", "virtual_servers": "many", "surprise": [1]},
                    {"health": "closed"},
                ]
            }
        )
        a, b = parse_lbdriver(data)
        assert (a.name, a.health, a.virtual_servers, a.active) == ("f5-a", "open", 7, True)
        assert (b.name, b.health, b.virtual_servers) == ("f5-b", None, None)

    @pytest.mark.parametrize("data", [b"not json", b"[]", b'{"pools": 3}'])
    def test_an_unusable_answer_is_a_value_error(self, data: bytes) -> None:
        """Garbage is reported (shown as unknown), never crashes the poll."""
        with pytest.raises(ValueError):
            parse_ipam(data)
