"""What the lbdriver reports: the lb messages, their reasons and texts, and when one is news."""

from __future__ import annotations

from vipwire.contracts import LbFailed, LbRemoved, ServiceRef, VipReleasing
from vipwire.lbdriver.core.desired import InvalidAssignment
from vipwire.lbdriver.core.outcomes import (
    appliance_failure,
    failure,
    failure_is_news,
    invalid_assignment,
    message_id,
    outcome,
    success_is_news,
    unknown_group,
)
from vipwire.lbdriver.io.drivers.credentials import CredentialSource, scrub

KEY = ServiceRef("prod", "shop", "web")
RELEASING = VipReleasing(
    cluster="prod",
    namespace="shop",
    name="web",
    uid="uid-web",
    vips=("192.0.2.10",),
    appliance_group="default",
)


def test_a_release_is_reported_removed_or_failed_while_removing() -> None:
    """A releasing Service's success is LbRemoved; its failure says it was removing."""
    assert outcome(KEY, RELEASING, "lb-a", {}) == LbRemoved(
        cluster="prod",
        namespace="shop",
        name="web",
        uid="uid-web",
        appliance="lb-a",
        vips=("192.0.2.10",),
    )
    failed = failure(KEY, RELEASING, "lb-a", unknown_group("edge"))
    assert isinstance(failed, LbFailed) and failed.removing
    assert failed.reason == "UnknownApplianceGroup"
    assert failed.message == "no appliance is configured for group 'edge'"


def test_failure_texts_name_their_reason_and_what_to_check() -> None:
    """A refused login points at the appliance's credentials; an invalid assignment
    keeps the core's own message."""
    why = appliance_failure("ApplianceAuthError", "appliance f5: 401", credentials_of="f5")
    assert why.reason == "ApplianceAuthError"
    assert why.message.endswith(
        ": check the credentials of appliance f5 "
        "(lbdriver.appliances[f5].username and its password_file or password_env)"
    )
    bad = invalid_assignment(InvalidAssignment("port 0 is out of range"))
    assert bad == ("InvalidAssignment", "port 0 is out of range")


def test_an_unchanged_report_is_news_only_when_it_answers_an_assignment() -> None:
    """Same content is not republished, unless forced by an assignment the stream does
    not already answer."""
    assert success_is_news(b"a", b"b", force=False, answered=False)
    assert not success_is_news(b"a", b"a", force=False, answered=False)
    assert success_is_news(b"a", b"a", force=True, answered=False)
    assert not success_is_news(b"a", b"a", force=True, answered=True)


def test_a_repeated_failure_is_news_only_at_start_up_when_unanswered() -> None:
    """Retries of one failure are not news; at start-up an unanswered assignment is."""
    same = {"known": True, "force": True, "answered": False}
    assert not failure_is_news(b"a", b"a", ready=True, **same)
    assert failure_is_news(b"a", b"a", ready=False, **same)
    assert not failure_is_news(b"a", b"a", ready=False, known=True, force=True, answered=True)
    assert failure_is_news(b"a", b"b", ready=True, known=True, force=False, answered=False)
    assert failure_is_news(None, b"a", ready=True, known=False, force=False, answered=False)


def test_message_ids_name_cause_incarnation_count_and_content() -> None:
    """An answer to the Service's own vip message names no Service; one caused by a
    node or endpoints message names it (the cause covers many Services)."""
    common = {"incarnation": "beef", "count": 3, "stamp": bytes(range(16))}
    vip = "vipwire.prod.vip.shop.web"
    assert (
        message_id(KEY, cause_subject=vip, cause_seq=9, cause_family="vip", **common)
        == f"{vip}#9->lb:beef.3:0001020304050607"
    )
    node = "vipwire.prod.node.n1"
    assert (
        message_id(KEY, cause_subject=node, cause_seq=4, cause_family="node", **common)
        == f"{node}#4->lb:shop.web:beef.3:0001020304050607"
    )


def test_a_refused_login_names_where_the_password_is_never_the_user() -> None:
    """The Event text of a refused login says where the secret comes from and never the
    appliance user name, even when the appliance's own answer quotes it."""
    source = CredentialSource("f5", "admin", password_file="/etc/vipwire/f5-password")
    text = source.refused("HTTP 401: user admin is locked out; admin-group unchanged")
    assert "admin " not in text and "'admin'" not in text
    assert text == (
        "the appliance refused vipwire's login (HTTP 401: user <user> is locked out; "
        "admin-group unchanged); its password is read from the password file "
        "/etc/vipwire/f5-password"
    )
    env = CredentialSource("a10", "ops", password_env="A10_PASSWORD")
    assert env.refused("HTTP 403").endswith("the environment variable A10_PASSWORD")
    assert scrub("no user named here", "") == "no user named here"
