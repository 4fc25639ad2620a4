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


class TestBind:
    @pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "192.0.2.10", "dash.example.org"])
    def test_a_non_loopback_host_without_a_token_is_refused(self, host: str) -> None:
        """Anything but loopback needs a token, or allow_anonymous; the error says what to set."""
        with pytest.raises(DashboardConfigError) as caught:
            DashboardSettings(host=host)
        said = str(caught.value)
        assert "not a loopback address" in said and "dashboard.token_file" in said
        assert "dashboard.allow_anonymous: true" in said

    @pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"])
    def test_loopback_needs_no_token(self, host: str) -> None:
        """Loopback is this machine only: no token needed, nothing to warn about."""
        assert not DashboardSettings(host=host).anonymous_outside

    def test_a_token_or_allow_anonymous_lets_it_bind_anywhere(self, tmp_path: Path) -> None:
        """With a token (or its file) nothing is anonymous; allow_anonymous is (and warns)."""
        assert not DashboardSettings(host="0.0.0.0", token="t").anonymous_outside
        path = tmp_path / "token"
        assert not DashboardSettings(host="0.0.0.0", token_file=str(path)).anonymous_outside
        allowed = DashboardSettings(host="0.0.0.0", allow_anonymous=True)
        assert allowed.anonymous_outside
