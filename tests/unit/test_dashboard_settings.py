"""The dashboard's settings: token, token file and Jaeger URL checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from vipwire.dashboard import DashboardConfigError, DashboardSettings


class TestSettings:
    def test_token_and_token_file_are_exclusive(self) -> None:
        """Setting both is a configuration error."""
        with pytest.raises(DashboardConfigError):
            DashboardSettings(token="a", token_file="/x")

    def test_the_token_file_is_read_and_stripped(self, tmp_path: Path) -> None:
        """A mounted Secret's trailing newline is not part of the token."""
        path = tmp_path / "token"
        path.write_text("s3cret\n")
        assert DashboardSettings(token_file=str(path)).load_token() == "s3cret"
        path.write_text("\n")
        with pytest.raises(DashboardConfigError, match="empty"):
            DashboardSettings(token_file=str(path)).load_token()

    def test_jaeger_url_must_be_http(self) -> None:
        """A Jaeger URL without a scheme would make broken links."""
        with pytest.raises(DashboardConfigError):
            DashboardSettings(jaeger_url="localhost:16686")
