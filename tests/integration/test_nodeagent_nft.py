"""The rendered ruleset against the real ``nft``, inside a throwaway network namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vipwire.contracts import (
    Endpoint,
    EndpointPort,
    EndpointsSnapshot,
    LbProgrammed,
    NodeEndpoints,
    ServicePort,
)
from vipwire.nodeagent import NftRuleset, desired_state, render_nft
from vipwire.nodeagent.core.desired import DIGEST_PREFIX

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare"),
        reason="needs root, nft and unshare",
    ),
]

NODE = "node-a"


def ruleset(*backends: str) -> NftRuleset:
    ports = (
        ServicePort(port=80, name="http"),
        ServicePort(port=53, name="dns", protocol="UDP"),
        ServicePort(port=9, name="sctp", protocol="SCTP"),
    )
    pod_ports = tuple(
        EndpointPort(port=8000 + p.port, name=p.name, protocol=p.protocol) for p in ports
    )
    lb = LbProgrammed(
        cluster="east",
        namespace="default",
        name="web",
        uid="u",
        appliance="sim-1",
        vips=("192.0.2.10", "2001:db8::10"),
        ports=ports,
        members=(),
    )
    pods = tuple(Endpoint(addresses=(a,), ports=pod_ports) for a in backends)
    eps = EndpointsSnapshot(
        cluster="east",
        namespace="default",
        name="web",
        nodes=(NodeEndpoints(node=NODE, endpoints=pods),),
    )
    state = desired_state({"default/web": lb}, {"default/web": eps}, node=NODE, mode="standalone")
    assert state.nft is not None
    return state.nft


def test_rendered_rulesets_load_and_replace_each_other(tmp_path: Path) -> None:
    """nft accepts the script, a second script replaces the first, and the digest reads back."""
    first = ruleset("10.0.0.5", "10.0.0.6", "fd00::5")
    second = ruleset("10.0.0.7")
    (tmp_path / "first.nft").write_text(render_nft(first))
    (tmp_path / "second.nft").write_text(render_nft(second))
    script = (
        f"nft -f {tmp_path}/first.nft && nft -f {tmp_path}/first.nft && "
        f"nft -f {tmp_path}/second.nft && nft -j list table inet vipwire"
    )
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)["nftables"]
    rules = [item["rule"] for item in listing if "rule" in item]
    (marker,) = [r["comment"] for r in rules if r["chain"] == "prerouting"]
    assert marker == f"{DIGEST_PREFIX}{second.digest}"
    assert sum(1 for r in rules if r["chain"] == "services") == 3
