"""The small Kubernetes client helpers (vipwire.kube) against the API emulator."""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio.client import ApiClient, CoreV1Api

from vipwire.kube import (
    KubeApiError,
    KubeConfigError,
    KubeUnavailable,
    list_all,
    new_api_client,
    request_json,
    watch_events,
)
from vipwire.kubeemu import KubeEmulator


@pytest.fixture
async def emu() -> AsyncIterator[KubeEmulator]:
    async with KubeEmulator("east", bookmark_interval=0.2) as e:
        yield e


@pytest.fixture
async def client(emu: KubeEmulator, tmp_path: Path) -> AsyncIterator[ApiClient]:
    path = emu.write_kubeconfig(tmp_path / "kubeconfig", context_name="east")
    api = await new_api_client(path, "east")
    try:
        yield api
    finally:
        await api.close()


class TestConfig:
    async def test_missing_kubeconfig_is_a_config_error(self, tmp_path: Path) -> None:
        """A kubeconfig that is not there fails with KubeConfigError naming it."""
        with pytest.raises(KubeConfigError, match="kubeconfig"):
            await new_api_client(tmp_path / "nope", None)

    async def test_unknown_context_is_a_config_error(
        self, emu: KubeEmulator, tmp_path: Path
    ) -> None:
        """Asking for a context the file does not have fails with KubeConfigError."""
        path = emu.write_kubeconfig(tmp_path / "kubeconfig", context_name="east")
        with pytest.raises(KubeConfigError):
            await new_api_client(path, "west")

    async def test_in_cluster_outside_a_pod_is_a_config_error(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No service account environment: KubeConfigError, not a library exception."""
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        with pytest.raises(KubeConfigError, match="in-cluster"):
            await new_api_client(None)


class TestCalls:
    async def test_json_in_and_out(self, emu: KubeEmulator, client: ApiClient) -> None:
        """request_json returns the server's JSON; list_all pages through everything."""
        for i in range(5):
            await emu.add_node(f"n{i}", f"192.0.2.{10 + i}")
        core = CoreV1Api(client)
        node = await request_json(core.read_node, "n3")
        assert node["status"]["addresses"][0]["address"] == "192.0.2.13"
        items, rv = await list_all(core.list_node, page_size=2)
        assert sorted(n["metadata"]["name"] for n in items) == [f"n{i}" for i in range(5)]
        assert rv

    async def test_errors_are_typed(self, client: ApiClient) -> None:
        """A Status error becomes KubeApiError with its code and reason."""
        core = CoreV1Api(client)
        with pytest.raises(KubeApiError) as info:
            await request_json(core.read_namespaced_service, "nope", "default")
        assert info.value.not_found and info.value.reason == "NotFound"

    async def test_unreachable_server_is_unavailable(self, tmp_path: Path) -> None:
        """Nothing listening: KubeUnavailable."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        path = tmp_path / "kubeconfig"
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
            f"clusters: [{{name: x, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
            "users: [{name: x, user: {}}]\n"
            "contexts: [{name: x, context: {cluster: x, user: x}}]\n"
        )
        api = await new_api_client(path)
        try:
            with pytest.raises(KubeUnavailable):
                await request_json(CoreV1Api(api).list_node, timeout=2)
        finally:
            await api.close()


class TestWatch:
    async def test_events_and_bookmarks(self, emu: KubeEmulator, client: ApiClient) -> None:
        """A watch yields ADDED/DELETED and BOOKMARK events as dicts, then ends."""
        core = CoreV1Api(client)
        _, rv = await list_all(core.list_node)
        await emu.add_node("n1", "192.0.2.11")
        await emu.delete("nodes", None, "n1")
        seen: list[str] = []
        events = watch_events(core.list_node, resource_version=rv, timeout_seconds=1)
        async with contextlib.aclosing(events):
            async for event in events:
                seen.append(event["type"])
        assert seen[:2] == ["ADDED", "DELETED"]
        assert "BOOKMARK" in seen

    async def test_compacted_resource_version_is_gone(
        self, emu: KubeEmulator, client: ApiClient
    ) -> None:
        """Watching from a compacted resourceVersion raises KubeApiError with gone set."""
        core = CoreV1Api(client)
        _, rv = await list_all(core.list_node)
        await emu.add_node("n1", "192.0.2.11")
        emu.compact()
        events = watch_events(core.list_node, resource_version=rv, timeout_seconds=5)
        with pytest.raises(KubeApiError) as info:
            async with contextlib.aclosing(events):
                async for _ in events:
                    pass
        assert info.value.gone

    async def test_a_cut_stream_is_unavailable(self, emu: KubeEmulator, client: ApiClient) -> None:
        """A watch the server cuts mid-stream raises KubeUnavailable."""
        core = CoreV1Api(client)
        _, rv = await list_all(core.list_node)
        events = watch_events(core.list_node, resource_version=rv, timeout_seconds=30)
        with pytest.raises(KubeUnavailable):
            async with contextlib.aclosing(events):
                async for event in events:
                    if event["type"] == "BOOKMARK":
                        await emu.break_watches()


class TestCredentials:
    @staticmethod
    def _kubeconfig(tmp_path: Path, emu: KubeEmulator, expires_in_s: float | None) -> Path:
        """A kubeconfig whose user is an exec plugin counting its runs in a file."""
        script = tmp_path / "plugin.py"
        counter = tmp_path / "runs"
        expiry = (
            ""
            if expires_in_s is None
            else (
                "status['expirationTimestamp'] = (datetime.datetime.now(datetime.UTC)"
                f" + datetime.timedelta(seconds={expires_in_s})).strftime('%Y-%m-%dT%H:%M:%SZ')"
            )
        )
        script.write_text(
            "import datetime, json\n"
            f"with open({str(counter)!r}, 'a') as f: f.write('x')\n"
            f"status = {{'token': {emu.token!r}}}\n"
            f"{expiry}\n"
            "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', "
            "'kind': 'ExecCredential', 'status': status}))\n"
        )
        exec_user = {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script)],
            "interactiveMode": "Never",
        }
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "x",
            "clusters": [{"name": "x", "cluster": {"server": emu.url}}],
            "users": [{"name": "x", "user": {"exec": exec_user}}],
            "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
        }
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return path

    @pytest.mark.parametrize(
        ("expires_in_s", "runs_after_three_calls"),
        [(60.0, 4), (3600.0, 1), (None, 1)],
    )
    async def test_exec_plugin_token_is_refreshed_before_it_expires(
        self, tmp_path: Path, expires_in_s: float | None, runs_after_three_calls: int
    ) -> None:
        """A token within five minutes of its expiry is fetched anew before the request;
        a fresh one (or one that states no expiry) is used as it is."""
        async with KubeEmulator("east", token="sekret") as emu:
            api = await new_api_client(self._kubeconfig(tmp_path, emu, expires_in_s))
            try:
                for _ in range(3):
                    await request_json(CoreV1Api(api).list_node, timeout=5)
            finally:
                await api.close()
        assert len((tmp_path / "runs").read_text()) == runs_after_three_calls
