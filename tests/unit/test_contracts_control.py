"""The operator control contract: the answers of ipam and the lbdriver, as readers decode them."""

from __future__ import annotations

import msgspec

from vipwire.contracts import (
    IPAM_STATUS_SUBJECT,
    LBDRIVER_STATUS_SUBJECT,
    AddressView,
    ApplianceStatus,
    ClaimView,
    IpamStatus,
    LbdriverStatus,
    PoolStatus,
    RecordView,
    ServiceView,
    ShowReply,
)
from vipwire.ipam.core.claims import Claim, Sharer
from vipwire.ipam.core.records import ServiceRecord
from vipwire.ipam.core.views import claim_view, record_view

SHARED = Claim(
    cluster="east",
    namespace="shop",
    pool="default",
    appliance_group="dc1",
    sharing_key="k",
    sharers=(
        Sharer(name="dns", uid="u-2", ports=("53/UDP",), labels={"app": "dns"}),
        Sharer(name="web", uid="u-1", ports=("80/TCP",), external_traffic_policy="Local"),
    ),
)
ALONE = Claim(
    cluster="east", namespace="shop", pool="default", sharers=(Sharer(name="a", uid="u"),)
)
RECORD = ServiceRecord(
    uid="u-1", vips=("192.0.2.7",), pool="default", appliance_group="dc1", stale="outside"
)


def test_subjects_stay_outside_the_stream() -> None:
    """Control subjects are not under ``vipwire.>``, so the stream never records an answer."""
    for subject in (IPAM_STATUS_SUBJECT, LBDRIVER_STATUS_SUBJECT):
        assert subject.startswith("vipwire-ctl.")


def test_claim_and_record_views_carry_ipams_json_byte_for_byte() -> None:
    """A show answer carries ipam's KV values as the same bytes ipam writes to the bucket."""
    for claim in (SHARED, ALONE):
        view = claim_view(claim)
        assert isinstance(view, ClaimView)
        assert msgspec.json.encode(view) == msgspec.json.encode(claim)
        assert msgspec.json.decode(msgspec.json.encode(claim), type=ClaimView) == view
    view = record_view(RECORD)
    assert isinstance(view, RecordView)
    assert msgspec.json.encode(view) == msgspec.json.encode(RECORD)


def test_show_reply_round_trips() -> None:
    """A show answer with an address and a Service decodes to what was sent."""
    reply = ShowReply(
        instance="ipam-1",
        address=AddressView(address="192.0.2.7", pool="default", claim=claim_view(SHARED)),
        service=ServiceView(
            service="east/shop/web",
            record=record_view(RECORD),
            claims={"192.0.2.7": claim_view(SHARED), "192.0.2.8": None},
        ),
    )
    assert msgspec.json.decode(msgspec.json.encode(reply), type=ShowReply) == reply


def test_status_field_names_are_the_wire_format() -> None:
    """The status answers keep their field names (the dashboard reads them by name)."""
    pool = PoolStatus(
        name="p", family="IPv4", appliance_group="g", size=10, used=3, free=7, stale=0
    )
    status = IpamStatus(
        instance="i", now=1.0, ready=True, claims=3, services=2, waiting=0, pools=(pool,)
    )
    raw = msgspec.json.decode(msgspec.json.encode(status))
    assert list(raw) == [
        "instance", "now", "ready", "config_path", "reloaded_at", "claims", "services",
        "waiting", "pools", "stale", "stale_total",
    ]  # fmt: skip
    assert raw["pools"][0]["size"] == 10 and raw["pools"][0]["used"] == 3
    appliance = ApplianceStatus(name="f5-a", driver="f5", group="dc1", active=True, health="open")
    lb = LbdriverStatus(
        instance="l", now=1.0, ready=True, services=1, pending=0, failing=0, drift_repairs=0,
        appliances=(appliance,),
    )  # fmt: skip
    assert msgspec.json.decode(msgspec.json.encode(lb), type=LbdriverStatus) == lb
