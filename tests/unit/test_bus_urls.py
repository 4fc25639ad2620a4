"""URLs as they are shown: never with a password or a token."""

from __future__ import annotations

import pytest

from vipwire.bus import redacted, redacted_all, scrubbed


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://opsuser:Top-Secret-Pw@127.0.0.1:4222", "nats://opsuser:***@127.0.0.1:4222"),
        ("tls://opsuser:Top-Secret-Pw@nats.example:4222", "tls://opsuser:***@nats.example:4222"),
        ("nats://s3cr3t-token@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("opsuser:Top-Secret-Pw@127.0.0.1:4222", "opsuser:***@127.0.0.1:4222"),
        ("nats://opsuser:pass@word@host:4222", "nats://opsuser:***@host:4222"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://[::1]:4222", "nats://[::1]:4222"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    """The password (or token) becomes ***; the user, host and port stay."""
    assert redacted(url) == shown


def test_every_server_of_a_list_is_redacted() -> None:
    """A list of servers (a log line's) hides each one's password."""
    urls = ("nats://a:one-Pw@h1:4222", "nats://h2:4222")
    assert redacted_all(urls) == "nats://a:***@h1:4222, nats://h2:4222"


def test_text_made_by_a_library_is_scrubbed_of_the_urls_secrets() -> None:
    """A message quoting the URL, or the password alone, shows neither the password."""
    url = "nats://opsuser:Top-Secret-Pw@127.0.0.1:4222"
    text = f"Error(url={url!r}, said='Top-Secret-Pw refused')"
    out = scrubbed(text, [url])
    assert "Top-Secret-Pw" not in out
    assert "nats://opsuser:***@127.0.0.1:4222" in out
