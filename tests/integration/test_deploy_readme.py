"""The README's install section, followed literally, applies in order.

The commands of "Installing on Kubernetes" are read in order, per kubectl
context: `create namespace`/`create secret` define what they name, `apply -k DIR`
defines what ``kubectl kustomize DIR`` renders, in the order it renders it. Every
object may refer only to what is already defined (or built into Kubernetes):
its Namespace, ServiceAccount, ConfigMaps, Secrets, PriorityClass, roles, the
Service a StatefulSet names. And every file a pod reads out of a Secret (the
paths in its config) is a key the README puts into that Secret.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from support.kustomize import ROOT, render

Ref = tuple[str, str, str]  # kind, namespace ("" when cluster-scoped), name

BUILT_IN: frozenset[Ref] = frozenset(
    {
        ("Namespace", "", "default"),
        ("Namespace", "", "kube-system"),
        ("PriorityClass", "", "system-node-critical"),
        ("PriorityClass", "", "system-cluster-critical"),
    }
)
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


def install_commands() -> list[str]:
    """The shell lines of the README's install section, continuations joined."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Installing on Kubernetes\n")
    section = text[start : text.index("\n## ", start + 1)]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert blocks, "the install section has no sh block"
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def references(obj: dict[str, Any]) -> Iterator[Ref]:
    """What an object needs to exist before it is applied."""
    ns = obj["metadata"].get("namespace", "")
    if ns:
        yield ("Namespace", "", ns)
    kind = obj["kind"]
    if kind in WORKLOADS:
        spec = obj["spec"]["template"]["spec"]
        if spec.get("serviceAccountName", "default") != "default":
            yield ("ServiceAccount", ns, spec["serviceAccountName"])
        if "priorityClassName" in spec:
            yield ("PriorityClass", "", spec["priorityClassName"])
        for secret in spec.get("imagePullSecrets", []):
            yield ("Secret", ns, secret["name"])
        for volume in spec.get("volumes", []):
            if "configMap" in volume and not volume["configMap"].get("optional"):
                yield ("ConfigMap", ns, volume["configMap"]["name"])
            if "secret" in volume and not volume["secret"].get("optional"):
                yield ("Secret", ns, volume["secret"]["secretName"])
        for container in spec.get("initContainers", []) + spec["containers"]:
            for env in container.get("env", []):
                source = env.get("valueFrom", {})
                for key, ref_kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                    if key in source and not source[key].get("optional"):
                        yield (ref_kind, ns, source[key]["name"])
            for env_from in container.get("envFrom", []):
                for key, ref_kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if key in env_from and not env_from[key].get("optional"):
                        yield (ref_kind, ns, env_from[key]["name"])
        if kind == "StatefulSet":
            yield ("Service", ns, obj["spec"]["serviceName"])
    if kind in ("RoleBinding", "ClusterRoleBinding"):
        role = obj["roleRef"]
        yield (role["kind"], ns if role["kind"] == "Role" else "", role["name"])
        for subject in obj.get("subjects", []):
            if subject["kind"] == "ServiceAccount":
                yield ("ServiceAccount", subject["namespace"], subject["name"])


def secret_keys(args: list[str]) -> set[str] | None:
    """The keys `kubectl create secret generic` makes from its arguments (None: not known
    here, as when they come from a shell array)."""
    keys: set[str] = set()
    for arg in args:
        if "$" in arg and not arg.startswith("--from-literal="):
            return None
        for flag in ("--from-file=", "--from-literal="):
            if arg.startswith(flag):
                value = arg[len(flag) :]
                key, sep, _ = value.partition("=")
                keys.add(key if sep else posixpath.basename(value))
    return keys


def paths_in(text: str, base: str) -> Iterator[str]:
    """Absolute paths in a config file's text (comments left out; includes resolved)."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0]
        yield from re.findall(r"(?<![\w.])(/[\w./-]+)", line)
        for included in re.findall(r'include\s+"?([^"\s]+)"?', line):
            yield posixpath.normpath(posixpath.join(base, included))


def secret_files(obj: dict[str, Any], configs: dict[str, str]) -> Iterator[tuple[str, str]]:
    """(Secret, key) for every file a workload's config names under a Secret it mounts."""
    spec = obj["spec"]["template"]["spec"]
    # Volume claim templates are volumes too, of neither kind.
    volumes: dict[str, Any] = defaultdict(dict, {v["name"]: v for v in spec.get("volumes", [])})
    for container in spec.get("initContainers", []) + spec["containers"]:
        mounts = container.get("volumeMounts", [])
        texts = [
            (configs[volumes[m["name"]]["configMap"]["name"]], m["mountPath"])
            for m in mounts
            if "configMap" in volumes[m["name"]]
        ]
        for mount in mounts:
            secret = volumes[mount["name"]].get("secret")
            if secret is None or "subPath" in mount or "subPathExpr" in mount:
                continue
            prefix = mount["mountPath"].rstrip("/") + "/"
            for text, base in texts:
                for path in paths_in(text, base):
                    if path.startswith(prefix):
                        yield secret["secretName"], path[len(prefix) :]


def test_readme_install_applies_in_order_with_nothing_referenced_before_it_exists() -> None:
    """Each step of the README's install section finds everything it refers to defined by
    an earlier step, in the same context, or built in; and the Secrets hold the files."""
    defined: dict[str, set[Ref]] = defaultdict(lambda: set(BUILT_IN))
    keys: dict[tuple[str, str, str], set[str] | None] = {}
    missing: list[str] = []
    unread: list[str] = []
    applied = 0
    for line in install_commands():
        if not line.startswith("kubectl "):
            continue
        args = shlex.split(line)[1:]
        context, namespace, rest = "default", "", []
        while args:
            arg = args.pop(0)
            if arg == "--context":
                context = args.pop(0)
            elif arg in ("-n", "--namespace"):
                namespace = args.pop(0)
            else:
                rest.append(arg)
        have = defined[context]
        match rest:
            case ["get", *_]:
                continue
            case ["apply", "-k", directory]:
                objects = render(ROOT / directory)
                configs = {
                    o["metadata"]["name"]: text
                    for o in objects
                    if o["kind"] == "ConfigMap"
                    for text in o.get("data", {}).values()
                }
                for obj in objects:
                    name = f"{context}: {obj['kind']}/{obj['metadata']['name']}"
                    missing += [f"{name} needs {r}" for r in references(obj) if r not in have]
                    have.add(
                        (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
                    )
                    if obj["kind"] in WORKLOADS:
                        for secret, key in secret_files(obj, configs):
                            known = keys.get((context, obj["metadata"]["namespace"], secret))
                            if known is not None and key not in known:
                                unread.append(f"{name} reads {key!r} from Secret {secret}")
                applied += 1
            case ["create", "namespace", name]:
                have.add(("Namespace", "", name))
            case ["create", "secret", "generic", name, *values]:
                if ("Namespace", "", namespace) not in have:
                    missing.append(f"{context}: Secret/{name} needs its Namespace {namespace!r}")
                have.add(("Secret", namespace, name))
                keys[(context, namespace, name)] = secret_keys(values)
            case _:
                raise AssertionError(f"a README step this test does not understand: {line}")
    assert applied >= 2, "the README applies no overlay"
    assert missing == []
    assert unread == []
