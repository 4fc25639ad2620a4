"""The identities of a fleet, their permissions, the NKey encoding and the generator's
re-run (pure decisions, and the files they end up in)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import nkeys
import pytest

from vipwire.cli.nats import parse_nodes
from vipwire.natsauth import (
    IdentityError,
    generate,
    identities_for,
    identity_in,
    may_declare_stream,
    nodeagent,
    operator,
    permissions_for,
    reader,
    render_config,
    seed_in,
    watcher,
)
from vipwire.natsauth._nkeys import NKeyError, decode_user_seed, encode_user_seed, public_key


def test_a_fleet_has_one_identity_per_role_cluster_node_and_person() -> None:
    """Shared services once, a watcher per cluster, an agent per node (dots as _)."""
    names = [
        i.name
        for i in identities_for(
            ["east", "west"], nodes={"east": ["n1", "n2.lab"]}, operators=["alice"], readers=["bob"]
        )
    ]
    assert names == [
        "dashboard",
        "ipam",
        "lbdriver",
        "nodeagent-east-n1",
        "nodeagent-east-n2_lab",
        "operator-alice",
        "reader-bob",
        "watcher-east",
        "watcher-west",
    ]


@pytest.mark.parametrize("bad", ["East", "a.b", "", "x" * 70, "-a"])
def test_a_name_that_cannot_be_a_subject_token_is_refused(bad: str) -> None:
    """Cluster and person names end up in subjects: anything else is refused up front."""
    with pytest.raises(IdentityError):
        identities_for([bad])
    with pytest.raises(IdentityError):
        operator(bad)


def test_a_watcher_publishes_only_its_clusters_own_families() -> None:
    """watcher-east: east's service/endpoints/node/status, no vip, lb, applied, no west."""
    p = permissions_for(watcher("east"))
    published = [s for s in p.publish_allow if s.startswith("vipwire.")]
    assert published == [
        "vipwire.east.service.>",
        "vipwire.east.endpoints.>",
        "vipwire.east.node.>",
        "vipwire.east.status.>",
    ]
    assert "$JS.API.CONSUMER.CREATE.VIPWIRE.*.vipwire.east.>" in p.publish_allow
    assert not any("STREAM.CREATE" in s or "STREAM.UPDATE" in s for s in p.publish_allow)
    assert not any("$KV." in s for s in p.publish_allow)
    assert p.subscribe_allow == ("_INBOX.watcher-east.>",)
    assert not p.allow_responses


def test_a_node_agent_publishes_only_its_own_applied() -> None:
    """nodeagent-east-n2_lab publishes applied.n2_lab and reads lb/endpoints/pools of east."""
    p = permissions_for(nodeagent("east", "n2.lab"))
    assert [s for s in p.publish_allow if s.startswith("vipwire.")] == [
        "vipwire.east.applied.n2_lab"
    ]
    creates = [s for s in p.publish_allow if s.startswith("$JS.API.CONSUMER.CREATE")]
    assert creates == [
        "$JS.API.CONSUMER.CREATE.VIPWIRE.*.vipwire.east.lb.>",
        "$JS.API.CONSUMER.CREATE.VIPWIRE.*.vipwire.east.endpoints.>",
        "$JS.API.CONSUMER.CREATE.VIPWIRE.*.vipwire.east.pools.>",
    ]


def test_a_cluster_may_share_one_agent_identity() -> None:
    """--nodes east=*: nodeagent-east, publishing any east node's applied, nothing else."""
    shared = identities_for(["east"], nodes={"east": ["*"]})
    agent = next(i for i in shared if i.role == "nodeagent")
    assert agent.name == "nodeagent-east" and agent.node is None
    assert "every node" in agent.describe()
    p = permissions_for(agent)
    assert [s for s in p.publish_allow if s.startswith("vipwire.")] == ["vipwire.east.applied.*"]


def test_only_ipam_writes_its_bucket_and_declares_the_stream() -> None:
    """$KV.vipwire-ipam and the stream's create/update/purge are ipam's alone."""
    everyone = identities_for(["east"], nodes={"east": ["n1"]}, operators=["a"], readers=["b"])
    for identity in everyone:
        allowed = permissions_for(identity).publish_allow
        writes = "$KV.vipwire-ipam.>" in allowed or "$JS.API.STREAM.UPDATE.VIPWIRE" in allowed
        assert writes == (identity.name == "ipam"), identity.name
        assert not any("STREAM.DELETE" in s or "STREAM.MSG.DELETE" in s for s in allowed)
    assert may_declare_stream("ipam") and may_declare_stream(None)
    assert not may_declare_stream("watcher-east")


def test_control_subjects_carry_the_callers_own_token() -> None:
    """An operator sends any verb with its token; a reader and the dashboard read verbs only."""
    assert "vipwire-ctl.*.*.operator-alice" in permissions_for(operator("alice")).publish_allow
    reading = [s for s in permissions_for(reader("bob")).publish_allow if "ctl" in s]
    assert reading == [
        "vipwire-ctl.ipam.status.reader-bob",
        "vipwire-ctl.ipam.show.reader-bob",
        "vipwire-ctl.lbdriver.status.reader-bob",
    ]
    ipam = next(i for i in identities_for([]) if i.name == "ipam")
    p = permissions_for(ipam)
    assert "vipwire-ctl.ipam.>" in p.subscribe_allow and p.allow_responses


def test_nobody_but_ipam_reaches_ipams_durables() -> None:
    """Pulling from (or acking for, deleting) ipam's durables is denied to the others."""
    for identity in identities_for(["east"], operators=["a"]):
        denied = permissions_for(identity).publish_deny
        carved = "$JS.API.CONSUMER.MSG.NEXT.VIPWIRE.ipam-service" in denied
        assert carved == (identity.name != "ipam"), identity.name


def test_the_config_names_public_keys_and_tls_files_only() -> None:
    """Rendered users are sorted by name and quoted; tls_dir adds a verifying tls block."""
    seed = encode_user_seed(bytes(range(32)))
    text = render_config(
        [(watcher("west"), public_key(seed)), (watcher("east"), "UKEY")], tls_dir="/t/"
    )
    assert text.index("watcher-east") < text.index("watcher-west")
    assert seed not in text
    assert '"$JS.API.STREAM.INFO.VIPWIRE"' in text
    assert 'ca_file: "/t/ca.pem"' in text and "verify: true" in text


def test_our_nkey_encoding_is_the_nkeys_one() -> None:
    """Seed and public key agree with the nkeys library; a damaged seed is refused."""
    seed = encode_user_seed(bytes(range(32)))
    assert seed.startswith("SU")
    assert decode_user_seed(seed) == bytes(range(32))
    pair = nkeys.from_seed(seed.encode())
    assert pair.public_key.decode() == public_key(seed)
    damaged = seed[:10] + ("A" if seed[10] != "A" else "B") + seed[11:]
    with pytest.raises(NKeyError):
        decode_user_seed(damaged)


def test_a_credentials_file_names_its_identity() -> None:
    """The first line gives the identity; the seed line is found; a JWT file names none."""
    text = "# vipwire NATS identity: watcher-east (role watcher, cluster east)\n# x\nSUABC\n"
    assert identity_in(text) == "watcher-east"
    assert seed_in(text) == "SUABC"
    assert identity_in("-----BEGIN NATS USER JWT-----\n") is None


def _files(base: Path) -> dict[str, bytes]:
    return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*") if p.is_file()}


def test_a_rerun_keeps_every_file_and_adds_a_cluster(tmp_path: Path) -> None:
    """Re-run with the same names: byte-identical; with a new cluster: only it is added."""
    first = generate(tmp_path, ["east"], nodes={"east": ["n1"]}, operators=["alice"])
    before = _files(tmp_path)
    again = generate(tmp_path, ["east"], nodes={"east": ["n1"]}, operators=["alice"])
    assert again.added == () and _files(tmp_path) == before
    more = generate(tmp_path, ["west"])
    assert more.added == ("watcher-west",)
    after = _files(tmp_path)
    for name, content in before.items():
        if name.startswith("creds/"):
            assert after[name] == content, name
    assert len(more.identities) == len(first.identities) + 1
    listing = json.loads((tmp_path / "identities.json").read_text())
    assert {i["name"] for i in listing["identities"]} >= {"watcher-east", "watcher-west"}
    mode = stat.S_IMODE((tmp_path / "creds" / "watcher-west.creds").stat().st_mode)
    assert mode == 0o600


def test_a_foreign_file_in_place_of_credentials_is_refused(tmp_path: Path) -> None:
    """A creds file naming another identity is not silently replaced."""
    generate(tmp_path, ["east"])
    path = tmp_path / "creds" / "watcher-east.creds"
    path.write_text(path.read_text().replace("watcher-east", "watcher-west", 1))
    with pytest.raises(IdentityError, match="watcher-east"):
        generate(tmp_path, ["east"])


def test_nodes_are_given_per_cluster() -> None:
    """--nodes east=n1,n2 --nodes west=w1; a value without = is refused."""
    assert parse_nodes(["east=n1,n2", "west=w1"]) == {"east": ["n1", "n2"], "west": ["w1"]}
    with pytest.raises(ValueError):
        parse_nodes(["east"])


def test_each_stack_component_logs_in_as_its_own_identity() -> None:
    """vipwire up: every ipam replica as ipam, a watcher and an agent as theirs."""
    from vipwire.allinone.stack import component_identity

    assert component_identity("ipam:2") == "ipam"
    assert component_identity("lbdriver") == "lbdriver"
    assert component_identity("watcher:east") == "watcher-east"
    assert component_identity("nodeagent:east/east-node-1") == "nodeagent-east-east-node-1"
