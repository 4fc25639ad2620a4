"""``vipwire emulator``: serve an emulated Kubernetes API for a local stack (compose).

A stand-in for a cluster on a laptop: the watcher talks to it with
kubernetes-asyncio exactly as to a real API server.
"""

from __future__ import annotations

import argparse
import signal
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser("emulator", help="serve an emulated Kubernetes API (for compose)")
    parser.add_argument("--cluster", default="east", help="cluster (and context) name")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=6443, help="port to listen on (default 6443)")
    parser.add_argument("--nodes", type=int, default=3, help="nodes to register (default 3)")
    parser.add_argument(
        "--kubeconfig-out", metavar="FILE", help="write a kubeconfig for this API here"
    )
    parser.add_argument(
        "--advertise",
        metavar="URL",
        help="server URL written into the kubeconfig (default: the listening address)",
    )
    parser.add_argument(
        "--watch-first",
        type=float,
        default=0.0,
        metavar="P",
        help="chance (0..1), per write, that its watch events go out before its reply, as a "
        "real API server may do (default 0: the reply first)",
    )
    parser.add_argument("--seed", type=int, help="seed of the --watch-first draws")
    return parser


def execute(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from vipwire.kubeemu import KubeEmulator

    emulator = KubeEmulator(
        args.cluster, bookmark_interval=30.0, watch_first=args.watch_first, seed=args.seed
    )
    url = await emulator.start(args.host, args.port)
    for i in range(args.nodes):
        # 192.0.2.0/24 is a documentation range: nothing is ever sent there.
        await emulator.add_node(f"{args.cluster}-node-{i + 1}", f"192.0.2.{i + 1}")
    if args.kubeconfig_out:
        path = emulator.write_kubeconfig(args.kubeconfig_out, args.cluster)
        if args.advertise:
            text = path.read_text().replace(url, args.advertise)
            path.write_text(text)
    print(f"vipwire emulator: cluster {args.cluster} at {url}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await emulator.stop()
    return 0
