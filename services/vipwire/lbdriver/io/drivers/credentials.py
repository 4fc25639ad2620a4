"""Appliance credentials: read from a file or the environment, never from config, never shown.

A secret is read again at every login, so a rotated file (a Kubernetes Secret
volume, a vault agent) takes effect without a restart, and a wrong one is
reported as an authentication failure of the appliance that needs it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vipwire.lbdriver.io.drivers.base import ApplianceAuthError


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and its password; the password never appears in a repr or a log."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<redacted>)"

    __str__ = __repr__


def scrub(text: str, username: str) -> str:
    """``text`` with the user name replaced by ``<user>`` (an appliance's error may
    quote it; Events must not)."""
    if not username:
        return text
    return re.sub(rf"(?<![\w.-]){re.escape(username)}(?![\w.-])", "<user>", text)


class CredentialSource:
    """Where an appliance's password comes from: ``password_file`` or ``password_env``.

    :meth:`load` raises :class:`ApplianceAuthError` when the secret cannot be read,
    naming where it looked, never what it found.
    """

    def __init__(
        self,
        appliance: str,
        username: str,
        *,
        password_file: str | None = None,
        password_env: str | None = None,
        password: str | None = None,
    ) -> None:
        """``password`` is for tests and embedding only; configuration offers no inline secret."""
        if sum(x is not None for x in (password_file, password_env, password)) != 1:
            raise ValueError("exactly one of password_file, password_env or password is needed")
        self.appliance = appliance
        self.username = username
        self._file = password_file
        self._env = password_env
        self._password = password

    def __repr__(self) -> str:
        if self._file is not None:
            where = f"file {self._file}"
        elif self._env is not None:
            where = f"env ${self._env}"
        else:
            where = "given"
        return f"CredentialSource({self.username!r}, password from {where})"

    def where(self) -> str:
        """Where the password comes from (a file, an environment variable)."""
        if self._file is not None:
            return f"the password file {self._file}"
        if self._env is not None:
            return f"the environment variable {self._env}"
        return "the password given"

    def refused(self, vendor_says: str) -> str:
        """What an Event says of a refused login: never the user name (Events are read
        by every tenant of the cluster; the log line has it)."""
        said = scrub(vendor_says, self.username)
        return (
            f"the appliance refused vipwire's login ({said}); "
            f"its password is read from {self.where()}"
        )

    def load(self) -> Credentials:
        if self._password is not None:
            return Credentials(self.username, self._password)
        if self._file is not None:
            try:
                text = Path(self._file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ApplianceAuthError(
                    self.appliance, f"cannot read password file {self._file}: {exc.strerror}"
                ) from exc
            # Secret files usually end in a newline the password does not contain.
            password = text.rstrip("\r\n")
            if not password:
                raise ApplianceAuthError(self.appliance, f"password file {self._file} is empty")
            return Credentials(self.username, password)
        assert self._env is not None
        value = os.environ.get(self._env)
        if not value:
            raise ApplianceAuthError(
                self.appliance, f"environment variable {self._env} is unset or empty"
            ) from KeyError(self._env)
        return Credentials(self.username, value)
