"""deploy/kustomize, rendered by the real ``kubectl kustomize``: valid, complete, as documented.

Each overlay renders; every object validates against the Kubernetes schema
(``kubernetes-validate``, strict: an unknown field is an error); a second
cluster's overlay carries its own name everywhere and ``east`` nowhere; the node
agent's DaemonSet has what the agent needs and its config changes the node; the
other pods are locked down; and every pod is behind a NetworkPolicy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from support.kustomize import KUSTOMIZE, OVERLAYS, config_of, find, render
from vipwire.cli.main import main
from vipwire.natsserver import find_binary
from vipwire.nodeagent import arp_sysctls

#: The Kubernetes release the manifests are validated against (bundled by the pinned
#: kubernetes-validate; bump both together).
KUBERNETES = "1.37.0"
CLUSTERS = ("east", "west")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
NODE_EXPORTER_PORT = 9100


def validate(obj: dict[str, Any]) -> None:
    """Raise kubernetes_validate's ValidationError when ``obj`` is not a valid object."""
    kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pod template spec of every workload, by workload name."""
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in objects
        if o["kind"] in WORKLOADS
    }


@pytest.mark.parametrize("overlay", ["fleet", *CLUSTERS])
def test_every_overlay_renders_and_validates(overlay: str) -> None:
    """Each overlay renders, and every object in it is valid for the pinned Kubernetes."""
    objects = render(OVERLAYS / overlay)
    assert objects, f"{overlay} renders nothing"
    failures = []
    for obj in objects:
        try:
            validate(obj)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    assert failures == []


def test_validation_catches_a_misspelled_field(tmp_path: Path) -> None:
    """An overlay whose patch misspells a field renders (kustomize does not check fields),
    and the schema check then fails it, naming the field."""
    daemonset = find(render(OVERLAYS / "east"), "DaemonSet", "vipwire-nodeagent")
    validate(daemonset)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(OVERLAYS / "east", tmp_path)],
                "patches": [
                    {
                        "target": {"kind": "DaemonSet", "name": "vipwire-nodeagent"},
                        "patch": "- {op: add, path: /spec/template/spec/hostNetwrok, value: true}",
                    }
                ],
            }
        )
    )
    broken = find(render(tmp_path), "DaemonSet", "vipwire-nodeagent")
    with pytest.raises(kubernetes_validate.ValidationError, match="hostNetwrok"):
        validate(broken)


@pytest.mark.parametrize(
    ("overlay", "configmap"),
    [("fleet", "vipwire-fleet-config")] + [(c, "vipwire-cluster-config") for c in CLUSTERS],
)
def test_overlay_config_passes_config_check(
    overlay: str, configmap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The config each overlay mounts passes `vipwire config check`."""
    data = find(render(OVERLAYS / overlay), "ConfigMap", configmap)["data"]["vipwire.yaml"]
    path = tmp_path / "vipwire.yaml"
    path.write_text(data)
    assert main(["config", "check", str(path)]) == 0, capsys.readouterr().err


def test_a_second_cluster_has_its_name_everywhere_and_east_nowhere() -> None:
    """west's overlay is east's with the one name changed, and renders without `east`."""
    for name in ("kustomization.yaml", "vipwire.yaml"):
        east = (OVERLAYS / "east" / name).read_text()
        west = (OVERLAYS / "west" / name).read_text()
        assert west == re.sub(r"\beast\b", "west", east), (
            f"west/{name} differs in more than its name"
        )
    # The name is given once: only one line of east's files that is not a comment names it.
    named = [
        line
        for name in ("kustomization.yaml", "vipwire.yaml")
        for line in (OVERLAYS / "east" / name).read_text().splitlines()
        if re.search(r"\beast\b", line.split("#", 1)[0])
    ]
    assert named == ["  cluster: &cluster east"]

    objects = render(OVERLAYS / "west")
    text = yaml.safe_dump_all(objects)
    assert re.findall(r".{0,40}\beast\b.{0,40}", text) == []
    config = config_of(objects, "vipwire-cluster-config")
    assert config["watcher"]["cluster"] == "west"
    assert config["nodeagent"]["cluster"] == "west"


def test_a_new_cluster_is_a_copy_of_east_with_its_name_replaced(tmp_path: Path) -> None:
    """The README's recipe: copy overlays/east, replace `east` in its two files; the
    result renders with the new name where the cluster's name goes and `east` nowhere."""
    north = tmp_path / "north"
    north.mkdir()
    for name in ("kustomization.yaml", "vipwire.yaml"):
        text = re.sub(r"\beast\b", "north", (OVERLAYS / "east" / name).read_text())
        # The copy lives outside the repository here: its base, relative to where it is.
        text = text.replace("../../cluster", os.path.relpath(KUSTOMIZE / "cluster", north))
        (north / name).write_text(text)
    objects = render(north)
    assert re.findall(r".{0,40}\beast\b.{0,40}", yaml.safe_dump_all(objects)) == []
    config = config_of(objects, "vipwire-cluster-config")
    assert (config["watcher"]["cluster"], config["nodeagent"]["cluster"]) == ("north", "north")


def test_nodeagent_daemonset_has_what_the_agent_needs() -> None:
    """dry_run off; host network with its DNS policy; uid 0 with NET_ADMIN; a privileged
    init container that sets exactly the agent's ARP sysctls; the rest as the issue asks."""
    objects = render(OVERLAYS / "east")
    config = config_of(objects, "vipwire-cluster-config")
    assert config["nodeagent"]["dry_run"] is False
    port = config["http"]["port"]
    assert port != NODE_EXPORTER_PORT

    spec = pod_specs(objects)["vipwire-nodeagent"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["automountServiceAccountToken"] is False

    (agent,) = spec["containers"]
    security = agent["securityContext"]
    assert security["runAsUser"] == 0
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert not security.get("privileged")
    assert security["allowPrivilegeEscalation"] is False
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (http,) = agent["ports"]
    assert http["containerPort"] == port
    assert agent["resources"]["requests"] and agent["resources"]["limits"]
    credentials = next(m for m in agent["volumeMounts"] if m["name"] == "nats")
    assert credentials["mountPath"] == config["bus"]["credentials"]
    assert credentials["subPathExpr"] == "$(VIPWIRE_NODE).creds"

    (init,) = spec["initContainers"]
    assert init["securityContext"]["privileged"] is True
    script = init["command"][-1]
    written = {path: value for value, path in re.findall(r"echo (\S+) > /proc/sys/(\S+)", script)}
    assert written == {s.key.replace(".", "/"): s.value for s in arp_sysctls()}

    # The manifest says why: each privilege it grants is named in its comment.
    comment = "\n".join(
        line
        for line in (KUSTOMIZE / "cluster" / "nodeagent.yaml").read_text().splitlines()
        if line.startswith("#")
    )
    for reason in ("hostNetwork", "ClusterFirstWithHostNet", "NET_ADMIN", "uid 0", "privileged"):
        assert reason in comment, f"the manifest's comment does not explain {reason}"


@pytest.mark.parametrize("overlay", ["fleet", "east"])
def test_other_pods_are_locked_down(overlay: str) -> None:
    """Every pod but the node agent: seccomp RuntimeDefault, non-root, read-only root
    filesystem, no capabilities, no privilege escalation; a token only for the watcher."""
    for name, spec in pod_specs(render(OVERLAYS / overlay)).items():
        if name == "vipwire-nodeagent":
            continue
        pod = spec["securityContext"]
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["runAsNonRoot"] is True, name
        assert spec.get("automountServiceAccountToken", True) is (name == "vipwire-watcher"), name
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name


def selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        assert expr["operator"] == "In", "only In is understood here"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


@pytest.mark.parametrize("overlay", ["fleet", "east"])
def test_every_pod_is_behind_a_network_policy(overlay: str) -> None:
    """Each pod on the pod network is selected for both ingress and egress."""
    objects = render(OVERLAYS / overlay)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    for workload in (o for o in objects if o["kind"] in WORKLOADS):
        template = workload["spec"]["template"]
        if template["spec"].get("hostNetwork"):
            continue
        types = {
            t
            for p in policies
            if selects(p, template["metadata"]["labels"])
            for t in p["spec"]["policyTypes"]
        }
        assert types >= {"Ingress", "Egress"}, workload["metadata"]["name"]


def test_fleet_and_a_cluster_can_share_one_namespace() -> None:
    """The fleet and a workload cluster may be the same Kubernetes cluster: no object
    but the Namespace is defined by both."""

    def keys(overlay: str) -> set[tuple[str, str]]:
        return {(o["kind"], o["metadata"]["name"]) for o in render(OVERLAYS / overlay)}

    assert keys("fleet") & keys("east") == {("Namespace", "vipwire-system")}


def test_the_image_is_named_in_one_place() -> None:
    """Every vipwire container runs the image the images component names, and only that
    component names a registry."""
    component = yaml.safe_load((KUSTOMIZE / "images" / "kustomization.yaml").read_text())
    (image,) = [i for i in component["images"] if i["name"] == "vipwire"]
    expected = f"{image['newName']}:{image['newTag']}"
    for overlay in ("fleet", *CLUSTERS):
        for spec in pod_specs(render(OVERLAYS / overlay)).values():
            for container in spec.get("initContainers", []) + spec["containers"]:
                if container["name"] != "nats":
                    assert container["image"] == expected
    naming = {
        p.relative_to(KUSTOMIZE).as_posix()
        for p in KUSTOMIZE.rglob("*.yaml")
        if image["newName"] in p.read_text()
    }
    assert naming == {"images/kustomization.yaml"}


def test_nats_config_is_one_nats_server_accepts(tmp_path: Path) -> None:
    """The rendered nats-server.conf, with the auth file the Secret provides and TLS
    files where the StatefulSet mounts them, passes `nats-server -t`."""
    nats_server = find_binary()
    if shutil.which("openssl") is None:
        pytest.skip("openssl not on PATH: needed for a throwaway server certificate")
    objects = render(OVERLAYS / "fleet")
    statefulset = find(objects, "StatefulSet", "vipwire-nats")
    spec = statefulset["spec"]
    assert spec["replicas"] == 3
    assert [c["metadata"]["name"] for c in spec["volumeClaimTemplates"]] == ["data"]
    pdb = find(objects, "PodDisruptionBudget", "vipwire-nats")
    assert pdb["spec"]["maxUnavailable"] == 1

    # Lay the pod's files out under tmp_path as the container sees them.
    (container,) = spec["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    root = tmp_path / "root"

    def at(mount: str) -> Path:
        path = root / mounts[mount].lstrip("/")
        path.mkdir(parents=True, exist_ok=True)
        return path

    conf = find(objects, "ConfigMap", "vipwire-nats-config")["data"]["nats-server.conf"]
    for mount in ("data", "run"):
        at(mount)
    tls = at("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=vipwire-nats",
            "-keyout",
            str(tls / "server-key.pem"),
            "-out",
            str(tls / "server-cert.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    shutil.copy(tls / "server-cert.pem", tls / "ca.pem")
    (at("auth") / "nats-auth.conf").write_text(
        "authorization { users = [ {user: a, password: b} ] }\n"
    )
    path = at("config") / "nats-server.conf"
    path.write_text(conf.replace('"/', f'"{root}/').replace(": /", f": {root}/"))
    done = subprocess.run(
        [nats_server, "-t", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"POD_NAME": "vipwire-nats-0"},
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
