"""``vipwire nats config``: the NATS server's identities and permissions for a fleet.

Writes ``OUT/nats-auth.conf`` (the ``authorization`` block, and a ``tls`` block with
``--tls-dir``), ``OUT/creds/<identity>.creds`` (one NKey seed each, mode 0600) and
``OUT/identities.json``. Re-running it keeps every existing key and file and adds what
is new (a cluster, a node, an operator); then reload the server
(``nats-server --signal reload``).
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser("nats", help="NATS server identities and permissions")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    config = verbs.add_parser(
        "config",
        help="write the server's users and permissions and one credentials file per identity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config.add_argument(
        "--cluster",
        action="append",
        default=[],
        metavar="NAME",
        help="a Kubernetes cluster of the fleet (repeat for each): its watcher identity",
    )
    config.add_argument(
        "--nodes",
        action="append",
        default=[],
        metavar="CLUSTER=N1,N2",
        help="the nodes of a cluster: one node agent identity each (repeat per cluster); "
        "CLUSTER='*': one identity nodeagent-CLUSTER shared by every agent of the cluster",
    )
    config.add_argument(
        "--operator",
        action="append",
        default=[],
        metavar="NAME",
        help="an operator identity operator-NAME: every control command (repeatable)",
    )
    config.add_argument(
        "--reader",
        action="append",
        default=[],
        metavar="NAME",
        help="a read-only identity reader-NAME: status and show commands, reads (repeatable)",
    )
    config.add_argument(
        "--tls-dir",
        metavar="DIR",
        help="add a tls {} block: DIR/server-cert.pem, server-key.pem, ca.pem, verify: true",
    )
    config.add_argument("--out", required=True, metavar="DIR", help="where to write")
    return parser


def parse_nodes(values: list[str]) -> dict[str, list[str]]:
    """``["east=n1,n2", "west=w1"]`` -> ``{"east": ["n1", "n2"], "west": ["w1"]}``."""
    found: dict[str, list[str]] = {}
    for value in values:
        cluster, sep, names = value.partition("=")
        if not sep or not cluster or not names:
            raise ValueError(f"--nodes {value!r}: expected CLUSTER=NODE1,NODE2")
        found.setdefault(cluster, []).extend(n for n in names.split(",") if n)
    return found


def execute(args: argparse.Namespace) -> int:
    from vipwire.natsauth import CONFIG_FILE, IdentityError, generate

    try:
        nodes = parse_nodes(args.nodes)
        made = generate(
            args.out,
            args.cluster,
            nodes=nodes,
            operators=args.operator,
            readers=args.reader,
            tls_dir=args.tls_dir,
        )
    except (ValueError, IdentityError) as exc:
        print(f"vipwire nats config: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"vipwire nats config: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    kept = len(made.identities) - len(made.added)
    print(f"{made.out / CONFIG_FILE}: {len(made.identities)} identities")
    for name in made.added:
        print(f"  new: {made.creds(name)}")
    if kept:
        print(f"  kept: {kept} existing credentials unchanged")
    print(
        "Include the config in nats-server's (include nats-auth.conf), reload it "
        "(nats-server --signal reload), and give each component its own creds file "
        "(bus.credentials)."
    )
    return 0
