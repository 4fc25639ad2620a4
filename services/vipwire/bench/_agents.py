"""``python -m vipwire.bench._agents --config FILE``: several node agents in one process.

For the benchmarks only: a cluster's node agents, each exactly as ``vipwire
run nodeagent`` builds it (its own Runtime: NATS connection, tracer, metrics),
sharing one process so that a 50-node cluster does not need 50 interpreters.
The file has the common sections and ``nodeagents:``, a list of nodeagent
sections; ``http.port`` serves one ``/readyz`` for all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

import msgspec
from aiohttp import web

from vipwire.aio import serve_http
from vipwire.nodeagent import NodeagentService, NodeagentSettings
from vipwire.runtime import HttpSettings, Runtime, decode_settings, load_common, read_config
from vipwire.telemetry import configure_logging


async def serve(config_path: str) -> int:
    data = read_config(config_path)
    common = load_common(data, source=config_path)
    configure_logging(common.telemetry.log_level)
    sections: list[dict[str, Any]] = data.get("nodeagents") or []
    own = msgspec.structs.replace(common, http=HttpSettings(host="127.0.0.1", port=0))
    agents: list[tuple[Runtime, NodeagentService]] = []
    for i, section in enumerate(sections):
        where = f"nodeagents[{i}]"
        settings = decode_settings(section, NodeagentSettings, where=where, source=config_path)
        runtime = Runtime("nodeagent", own, instance=settings.node)
        agents.append((runtime, NodeagentService(settings, runtime)))

    async def readyz(_: web.Request) -> web.Response:
        waiting = [s.settings.node for _, s in agents if s.readiness() is not None]
        if waiting:
            return web.Response(status=503, text=f"not ready: {len(waiting)} agents\n")
        return web.Response(text="ready\n")

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    server = await serve_http(
        app, host=common.http.host, port=common.http.port, shutdown_timeout_s=60.0
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for runtime, service in agents:
            await runtime.start()
            runtime.set_readiness(service.readiness)
            await service.start()
        await stop.wait()
    finally:
        for runtime, service in reversed(agents):
            with contextlib.suppress(Exception):
                await service.stop()
            await runtime.stop()
        await server.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m vipwire.bench._agents")
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    return asyncio.run(serve(args.config))


if __name__ == "__main__":
    sys.exit(main())
