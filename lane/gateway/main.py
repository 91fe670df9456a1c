"""``lane gateway``: color requests from outside and send them down their lane.

The command: options, listeners, the run loop. The request logic (trust, coloring, trace headers)
is `lane.gateway.request`, served by the one forwarding core (`lane.gateway.handler`); each request
leaves with the tag header and the baggage member set, to the entry service's instance of its lane
(with live fallback), and the answer carries ``x-lane-path``, ``x-lane-served`` and, when it fell
back, ``x-lane-fallback``. WebSocket upgrades are handed to an aiohttp app on the same connection
(built, and aiohttp loaded, on the first one). With ``--otlp-endpoint`` each request also gets a
span with lane attributes (`lane.telemetry.tracing`).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable

from aiohttp import web

from lane.core.config import LaneConfig
from lane.core.config_load import load_config_or_demo
from lane.core.endpoint import Endpoint
from lane.core.errors import ConfigError
from lane.dataplane.coloring_view import COLORING_PATH, coloring_view
from lane.dataplane.runtime import Runtime
from lane.dataplane.upgrades import (
    FAST_PATH,
    SESSION,
    is_websocket,
    plain_error,
    refusing_connect,
    session_ctx,
)
from lane.dataplane.websocket_proxy import forward_websocket
from lane.gateway.handler import gateway_path
from lane.gateway.request import colored_headers, ensure_trace_headers
from lane.process.admin import admin_path
from lane.process.admin_access import add_admin_arguments, admin_access
from lane.process.options import add_server_arguments, host_port
from lane.process.readiness import announce
from lane.process.server import Listener, run_loop, serve
from lane.telemetry.tracing import Tracing, add_tracing_arguments, open_tracing, otlp_traces_url

__all__ = ["RUNTIME", "TRACING", "add_arguments", "build_gateway_app", "run"]

log = logging.getLogger(__name__)

RUNTIME = web.AppKey("lane_gateway_runtime", Runtime)
TRACING = web.AppKey("lane_gateway_tracing", Tracing)


async def _upgrade(request: web.Request) -> web.StreamResponse:
    """What the one core hands over: a WebSocket upgrade (forwarded by lane), or another upgrade or CONNECT (refused)."""
    runtime = request.app[RUNTIME]
    config = runtime.config  # this request's snapshot, even if a reload happens meanwhile
    if not is_websocket(request):
        return plain_error(400, f"lane gateway: {request.method} with Upgrade: "
                                f"{request.headers.get('Upgrade', '-')!r} is "
                           "not supported; plain HTTP/1.1 requests and WebSocket upgrades are")
    headers, coloring = colored_headers(config, request, request.rel_url.raw_query_string)
    ensure_trace_headers(headers)
    return await forward_websocket(request, request.app[SESSION], runtime.registry, config,
                                   service=config.entry, lane=coloring.lane, headers=headers, proxy="gateway")


def build_gateway_app(runtime: Runtime, *, explain_json: bool = False,
                      tracing: Tracing | None = None) -> web.Application:
    """The gateway as one app: its one-core handler (`FAST_PATH`) and the aiohttp app upgrades reach."""
    app = web.Application(middlewares=[refusing_connect(
        405, "lane gateway: CONNECT is not supported; plain HTTP/1.1 requests and WebSocket upgrades are")])
    app[RUNTIME] = runtime
    app[TRACING] = tracing or Tracing()
    app[FAST_PATH] = gateway_path(runtime, app[TRACING], explain=explain_json)
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", _upgrade)
    return app


def _admin_views(runtime: Runtime) -> dict[str, Callable[[], object]]:
    """The gateway's own admin views: ``/lane/coloring`` (`lane.dataplane.coloring_view` of the config in force)."""
    return {COLORING_PATH: lambda: coloring_view(runtime.config)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=os.environ.get("LANE_CONFIG"),
                        help="lane config YAML (default: $LANE_CONFIG; required unless --demo)")
    parser.add_argument("--demo", action="store_true",
                        help="without --config: serve the embedded demo config (never a silent default)")
    parser.add_argument("--listen", type=host_port, default=host_port("127.0.0.1:8080"),
                        help="HOST:PORT to serve on (default 127.0.0.1:8080)")
    parser.add_argument("--admin", type=host_port, default=host_port("127.0.0.1:9901"),
                        help="HOST:PORT of the admin listener: /metrics, /healthz, /lane/instances, /lane/coloring, "
                        "/lane/reload (default 127.0.0.1:9901)")
    parser.add_argument("--explain-json", action="store_true",
                        help="add the hop record as \"path\"/\"hops\" to small JSON object answers (the demo uses it)")
    add_admin_arguments(parser)
    add_tracing_arguments(parser)
    add_server_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config_or_demo(args.config, demo=args.demo, command="lane gateway")
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if args.workers > 1:
        from lane.process import workers

        return workers.supervise(args, "gateway", config)

    return run_loop(_main(args, config))


async def _main(args: argparse.Namespace, config: LaneConfig) -> int:
    # Tracing outlives the listeners: serve() returns after the drain, then the last spans are flushed.
    async with open_tracing(otlp_traces_url(args.otlp_endpoint), "lane-gateway") as tracing:

        async def build() -> tuple[list[Listener], Runtime]:
            runtime = Runtime(config, args.config)
            access = admin_access(args)
            return [
                Listener("gateway", args.listen,
                         build_gateway_app(runtime, explain_json=args.explain_json, tracing=tracing)),
                Listener("admin", args.admin, None, reuse_port=False,
                         fast=admin_path(runtime, _admin_views(runtime), access)),
            ], runtime

        def ready(bound: dict[str, Endpoint]) -> None:
            announce("gateway", bound, args.ready_file)

        return await serve(build, drain_seconds=args.drain_seconds, on_ready=ready, access_log=args.access_log)

