"""NATS URLs as they may be shown: never with a password.

nats-py reads ``user:password@`` from a server URL, so a URL may carry a
secret; every log line and error that names a server goes through
:func:`redacted` first.
"""

from __future__ import annotations

from collections.abc import Iterable

#: What a password (or a token given as the user part alone) is shown as.
HIDDEN = "***"


def redacted(url: str) -> str:
    """``url`` with its password (or its token) replaced by ``***``.

    ``nats://opsuser:Top-Secret@host:4222`` shows as ``nats://opsuser:***@host:4222``;
    ``nats://s3cr3t-token@host:4222`` (a token, which nats-py takes from the user
    part) as ``nats://***@host:4222``; the same without a scheme. A URL without
    credentials is returned as is.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    # The authority ends at the first '/', '?' or '#' (none in a plain NATS URL).
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        return url
    user, colon, _secret = userinfo.partition(":")
    shown = f"{user}:{HIDDEN}" if colon else HIDDEN
    return f"{scheme}{sep}{shown}@{hostport}{tail}"


def redacted_all(urls: Iterable[str]) -> str:
    """Several URLs, each redacted, joined by ``, `` (as log lines list servers)."""
    return ", ".join(redacted(url) for url in urls)


def secrets_of(urls: Iterable[str]) -> list[str]:
    """The passwords and tokens the URLs carry (to scrub them from any text)."""
    found: list[str] = []
    for url in urls:
        _, sep, rest = url.partition("://")
        authority = (rest if sep else url).split("/", 1)[0]
        userinfo, at, _ = authority.rpartition("@")
        if at:
            user, colon, secret = userinfo.partition(":")
            found.append(secret if colon else user)
    return [s for s in found if s]


def scrubbed(text: str, urls: Iterable[str]) -> str:
    """``text`` with every URL of ``urls`` redacted and any password of theirs hidden
    (a last line of defence for messages made by other libraries)."""
    urls = list(urls)
    for url in urls:
        text = text.replace(url, redacted(url))
    for secret in secrets_of(urls):
        text = text.replace(secret, HIDDEN)
    return text
