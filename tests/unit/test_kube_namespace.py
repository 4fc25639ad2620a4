"""Where the watcher keeps its Lease, and how a 403 is put in RBAC's words (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vipwire.kube import KubeApiError, context_namespace, own_namespace

CONFIG = {
    "current-context": "a",
    "contexts": [
        {"name": "a", "context": {"cluster": "c", "namespace": "team-a"}},
        {"name": "b", "context": {"cluster": "c"}},
    ],
}


def test_context_namespace_follows_the_chosen_or_current_context() -> None:
    """The named context's namespace, else the current-context's; none when it names none."""
    assert context_namespace(CONFIG) == "team-a"
    assert context_namespace(CONFIG, "b") is None
    assert context_namespace(CONFIG, "missing") is None
    assert context_namespace("not a mapping") is None


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(CONFIG))
    sa = tmp_path / "namespace"
    sa.write_text("vipwire-system\n")
    return kubeconfig, sa


def test_the_setting_wins(files: tuple[Path, Path]) -> None:
    """An explicit lease_namespace is used whatever the kubeconfig or pod say."""
    kubeconfig, sa = files
    assert own_namespace("ops", kubeconfig, service_account_file=sa)[0] == "ops"


def test_the_kubeconfig_context_comes_next(files: tuple[Path, Path]) -> None:
    """With a kubeconfig, its context's namespace; a context naming none falls to the pod's."""
    kubeconfig, sa = files
    assert own_namespace(None, kubeconfig, service_account_file=sa)[0] == "team-a"
    assert own_namespace(None, kubeconfig, "b", service_account_file=sa)[0] == "vipwire-system"


def test_in_a_pod_its_own_namespace(files: tuple[Path, Path]) -> None:
    """In a pod (no kubeconfig) the service account's namespace."""
    _, sa = files
    assert own_namespace(None, None, service_account_file=sa) == (
        "vipwire-system",
        "the pod's service account",
    )


def test_default_only_when_nothing_says_otherwise(tmp_path: Path) -> None:
    """No setting, no kubeconfig namespace, not in a pod: default, with why."""
    namespace, why = own_namespace(None, None, service_account_file=tmp_path / "none")
    assert namespace == "default" and "not in a pod" in why


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            'leases.coordination.k8s.io "l" is forbidden: User "system:serviceaccount:x:w" '
            'cannot get resource "leases" in API group "coordination.k8s.io" in the '
            'namespace "default"',
            'get leases (coordination.k8s.io) in namespace "default"',
        ),
        (
            'services is forbidden: User "u" cannot list resource "services" in API group "" '
            "at the cluster scope",
            "list services cluster-wide",
        ),
        (
            'services "web" is forbidden: User "u" cannot patch resource "services/status" '
            'in API group "" in the namespace "shop"',
            'patch services/status in namespace "shop"',
        ),
        ("forbidden by an admission webhook", "what we tried"),
    ],
)
def test_missing_permission_in_rbac_terms(message: str, expected: str) -> None:
    """The API server's wording gives verb, resource, group and namespace; else our own."""
    exc = KubeApiError(403, "Forbidden", message)
    assert exc.forbidden
    assert exc.missing_permission("what we tried") == expected
