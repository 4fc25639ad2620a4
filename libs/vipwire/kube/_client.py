"""Building a kubernetes_asyncio ``ApiClient`` from a kubeconfig or the pod's service account."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Final

import yaml
from aiohttp.helpers import get_env_proxy_for_url
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config
from yarl import URL

from vipwire.kube._errors import KubeConfigError

log = logging.getLogger("vipwire.kube")

#: Seconds between checks of an OIDC id-token's expiry (each check decodes the JWT).
_OIDC_CHECK_INTERVAL: Final = 30.0


class _TokenRefresher:
    """Keeps an exec-plugin or OIDC bearer token fresh, checked before every request.

    kubernetes_asyncio reads such tokens once, at load; its own refresh loop
    has to be run by the caller and covers exec plugins and GCP only. This is
    installed as the configuration's ``refresh_api_key_hook``, which the
    client awaits before each request: the loader re-runs the plugin (or
    refreshes the OIDC token) only once the token is within five minutes of
    its expiry, so a fresh token costs one attribute check. A plugin that
    states no expiry is run once, as kubectl does.
    """

    def __init__(self, loader: Any) -> None:  # a kubernetes_asyncio KubeConfigLoader
        self._loader = loader
        self._lock = asyncio.Lock()
        self._next_oidc_check = 0.0

    def needed(self) -> bool:
        loader = self._loader
        if loader.provider == "oidc":
            return True
        user = loader._user
        return bool(user) and "exec" in user

    async def __call__(self, config: Configuration) -> None:
        loader = self._loader
        async with self._lock:
            try:
                if loader.provider == "oidc":
                    if time.monotonic() < self._next_oidc_check:
                        return
                    self._next_oidc_check = time.monotonic() + _OIDC_CHECK_INTERVAL
                    await loader._load_oid_token()
                elif hasattr(loader, "exec_plugin_expiry"):
                    # Returns at once while the token is valid; runs the plugin otherwise.
                    await loader.load_from_exec_plugin()
                else:
                    return
            except Exception as exc:
                # The old token may still be accepted; the request will tell.
                log.warning("could not refresh the kubeconfig credentials: %s", exc)
                return
            token = getattr(loader, "token", None)
            if token and config.api_key.get("BearerToken") != token:
                config.api_key["BearerToken"] = token
                log.info("kubeconfig credentials refreshed")


async def new_api_client(
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
) -> ApiClient:
    """A client for one cluster; close it with ``await client.close()``.

    ``kubeconfig=None`` means in-cluster (the pod's service account, whose
    projected token is re-read as it rotates). Each client has its own
    ``Configuration``: nothing global is set, so one process may talk to
    several clusters. Exec-plugin and OIDC tokens are refreshed before they
    expire.
    """
    config = Configuration()
    try:
        if kubeconfig is None:
            if context is not None:
                raise KubeConfigError("a kubeconfig context was given without a kubeconfig file")
            load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
        else:
            path = os.fspath(kubeconfig)
            # persist_config=False: never rewrite an operator's kubeconfig.
            loader = await load_kube_config(
                config_file=path,
                context=context,
                client_configuration=config,
                persist_config=False,
            )
            refresher = _TokenRefresher(loader)
            if refresher.needed():
                config.refresh_api_key_hook = refresher
    except (ConfigException, OSError, ValueError, LookupError, TypeError, yaml.YAMLError) as exc:
        where = "in-cluster config" if kubeconfig is None else f"kubeconfig {kubeconfig}"
        raise KubeConfigError(f"cannot load {where}: {exc}") from exc
    client = ApiClient(configuration=config)
    _skip_env_lookups(client, config)
    return client


def _skip_env_lookups(client: ApiClient, config: Configuration) -> None:
    """Stop the per-request proxy and netrc lookups where no proxy applies.

    kubernetes_asyncio opens its aiohttp session with ``trust_env=True``, so
    every request looks up the proxy variables and ``~/.netrc`` in a worker
    thread: two thread hops per API call, a sixth of a watcher's CPU in the
    burst benchmark. Whether a proxy applies to the API server is decided here,
    once; if one does, the session is left as it is. Netrc is never wanted: a
    kubeconfig or service account carries the credentials.
    """
    if config.proxy or not config.host:
        return
    try:
        get_env_proxy_for_url(URL(str(config.host)))
    except LookupError:
        session = client.rest_client.pool_manager
        if getattr(session, "_trust_env", False):
            session._trust_env = False


#: Where a pod finds its own namespace (its service account's projected volume).
SERVICE_ACCOUNT_NAMESPACE: Final = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def in_cluster_namespace(default: str = "default") -> str:
    """The namespace of the pod we run in (from its service account), else ``default``."""
    return pod_namespace() or default


def pod_namespace(path: str | os.PathLike[str] = SERVICE_ACCOUNT_NAMESPACE) -> str | None:
    """The namespace of the pod we run in (its service account's), None outside a pod."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def kubeconfig_namespace(
    kubeconfig: str | os.PathLike[str], context: str | None = None
) -> str | None:
    """The namespace a kubeconfig's context names (``context``, else its current-context);
    None when it names none (kubectl would then use ``default``) or cannot be read."""
    try:
        with open(kubeconfig, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    return context_namespace(config, context)


def context_namespace(config: Any, context: str | None = None) -> str | None:
    """The namespace of ``context`` (else the current-context) in a parsed kubeconfig."""
    if not isinstance(config, dict):
        return None
    wanted = context or config.get("current-context")
    for entry in config.get("contexts") or ():
        if isinstance(entry, dict) and entry.get("name") == wanted:
            namespace = (entry.get("context") or {}).get("namespace")
            return str(namespace) if namespace else None
    return None


def own_namespace(
    explicit: str | None,
    kubeconfig: str | os.PathLike[str] | None,
    context: str | None = None,
    *,
    service_account_file: str | os.PathLike[str] = SERVICE_ACCOUNT_NAMESPACE,
) -> tuple[str, str]:
    """The namespace a component keeps its own objects in (a Lease), and where it came from.

    ``explicit`` (a setting) wins; then, with a kubeconfig, its context's namespace; then
    the pod's own (service account); else ``default``, which the caller should log: it is
    rarely where the RBAC grants anything.
    """
    if explicit:
        return explicit, "the setting"
    if kubeconfig is not None:
        found = kubeconfig_namespace(kubeconfig, context)
        if found:
            return found, f"the context of kubeconfig {kubeconfig}"
    found = pod_namespace(service_account_file)
    if found:
        return found, "the pod's service account"
    return "default", "nothing else said (no setting, no kubeconfig namespace, not in a pod)"
