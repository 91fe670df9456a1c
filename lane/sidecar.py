"""``lane sidecar``: the proxy beside one instance (service S, lane L) of an app.

Inbound (``--listen``): forwards to the local app (``--app``). It reads the request's lane (tag
header, else baggage) and remembers ``trace id -> lane`` for every configured trace header, opens
a hop collection under those trace ids, and answers with its own hop first followed by the hops
of the calls the app made meanwhile. When the app cannot be reached it answers 502 with
``x-lane-unavailable``, so the caller treats this instance as down and falls back.

Outbound (``--outbound``): the app's way out, either as an HTTP forward proxy (absolute-form
targets, so ``HTTP_PROXY=http://127.0.0.1:PORT`` works) or by sending ``Host: <service>``. Only
services in the config are reachable (403 otherwise: this is not an open proxy). The lane is the
outbound request's own tag, else the one recovered from the trace-id cache, else the default
lane; the request leaves with the tag header and baggage member set, to the right instance of
the target service (live fallback), and its hop record is added to the inbound collection.

With ``--otlp-endpoint`` every inbound and outbound request gets a span (`lane.tracing`).

One process only: ``--workers N > 1`` is refused (`WORKERS_REFUSED`). The trace-id cache and the
hop collections are in-process state keyed by the inbound request; with several workers sharing
the ports an app's outbound call could land on a worker that never saw the inbound request.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict
from opentelemetry.trace import SpanKind
from yarl import URL

from . import responses
from .admin import build_admin
from .config import Endpoint, LaneConfig
from .dispatch import UNAVAILABLE_HEADER, dispatch, http_opener, retry_guard
from .errors import ConfigError, UpstreamUnavailable
from .hop_collector import Collection, HopCollector
from .hops import FALLBACK_HEADER, PATH_HEADER, FallbackReason, Hop, encode_path, parse_path
from .metrics import FORBIDDEN, in_flight, observe_request
from .proxy import (
    SESSION,
    Body,
    ConnectFailed,
    UpstreamFailure,
    is_websocket,
    plain_error,
    relay,
    request_target,
    send,
    session_ctx,
    upstream_headers,
)
from .readiness import announce
from .runtime import Runtime, load_initial
from .server import HostPort, Listener, add_server_arguments, host_port, run_loop, serve
from .tags import is_valid_lane
from .trace_cache import TraceCache, trace_keys
from .tracing import RequestSpan, Tracing, add_tracing_arguments, open_tracing, otlp_traces_url
from .websocket_proxy import forward_websocket, open_websocket, pump_websockets
from .wire import request_lane, set_lane

__all__ = [
    "SIDECAR",
    "WORKERS_REFUSED",
    "Sidecar",
    "add_arguments",
    "build_inbound_app",
    "build_outbound_app",
    "run",
    "target_host",
]

log = logging.getLogger(__name__)

_REASONS = frozenset(r.value for r in FallbackReason)
# Why `--workers` must stay 1: sharing the state between processes would need a store every
# worker reaches on every request; a sidecar serves one app instance, so scaling is the app's job.
WORKERS_REFUSED: Final = (
    "lane sidecar runs as one process; --workers {workers} is refused: the trace-id cache (which "
    "recovers the lane when the app forwards only a trace header) and the hop collection (x-lane-path) "
    "live in the process's memory, so an outbound call of the app that lands on another worker would "
    "lose its lane and its hops. To scale, run more app instances, each with its own sidecar"
)


@dataclass(slots=True)
class Sidecar:
    """The state one sidecar process shares between its inbound and outbound listeners."""

    runtime: Runtime
    service: str
    lane: str
    app: Endpoint
    traces: TraceCache
    hops: HopCollector
    tracing: Tracing = field(default_factory=Tracing)

    @classmethod
    def create(cls, runtime: Runtime, service: str, lane: str, app: Endpoint,
               tracing: Tracing | None = None) -> Sidecar:
        spec = runtime.config.proxy
        sidecar = cls(runtime, service, lane, app, TraceCache(spec.trace_cache_size, spec.trace_cache_ttl),
                      HopCollector(), tracing or Tracing())
        runtime.on_swap(lambda c: sidecar.traces.configure(c.proxy.trace_cache_size, c.proxy.trace_cache_ttl))
        return sidecar


SIDECAR = web.AppKey("lane_sidecar", Sidecar)


def _own_instance(request: web.BaseRequest) -> str | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return None
    return str(HostPort(sockname[0], sockname[1]))


async def _inbound(request: web.Request) -> web.StreamResponse:
    sc = request.app[SIDECAR]
    config = sc.runtime.config
    headers = upstream_headers(request)
    incoming = request_lane(headers, config.tag)
    requested = incoming or config.default_lane
    keys = trace_keys(request.headers, config.proxy.trace_headers)
    if incoming is not None:
        sc.traces.remember(keys, incoming)
    said = headers.popall(FALLBACK_HEADER, [""])[0].strip()
    reason = said if said in _REASONS and requested != sc.lane else None
    own = Hop(sc.service, sc.lane, requested, reason, _own_instance(request))
    target = request_target(request)
    session = request.app[SESSION]
    if is_websocket(request):
        return await _inbound_websocket(request, sc, config, headers, target)
    in_flight("inbound").inc()
    try:
        with sc.tracing.span("inbound", sc.service, request.method, request.path, headers,
                             requested=requested) as span:
            span.inject(headers)
            span.routed(sc.lane, reason, own.instance)
            with sc.hops.collect(keys) as collection:
                collection.trace_context = span.context
                try:
                    upstream = await send(session, request.method, sc.app, target, headers, Body(request),
                                          config.proxy)
                except ConnectFailed as exc:
                    observe_request(config, "inbound", sc.service, requested, sc.lane, reason, 502)
                    span.answered(502, type(exc).__name__)
                    return plain_error(502, f"lane sidecar: the app of {sc.service}@{sc.lane} is unavailable: "
                                       f"{exc.detail}", CIMultiDict({UNAVAILABLE_HEADER: "app-connect-failed"}))
                except UpstreamFailure as exc:
                    observe_request(config, "inbound", sc.service, requested, sc.lane, reason, exc.status)
                    span.answered(exc.status, type(exc).__name__)
                    return responses.failure(exc)
                path = encode_path([own, *collection.hops()])
            observe_request(config, "inbound", sc.service, requested, sc.lane, reason, upstream.status)
            span.answered(upstream.status)
            return await relay(request, upstream, responses.own_headers(upstream.headers, path, own))
    finally:
        in_flight("inbound").dec()


async def _inbound_websocket(
    request: web.Request, sc: Sidecar, config: LaneConfig, headers: CIMultiDict[str], target: str
) -> web.StreamResponse:
    protocols = tuple(p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip())
    try:
        up = await open_websocket(request.app[SESSION], sc.app, target, headers, protocols,
                                  config.proxy.connect_timeout)
    except UpstreamFailure as exc:
        return responses.failure(exc)
    down = web.WebSocketResponse(protocols=(up.protocol,) if up.protocol else (), max_msg_size=0, autoping=True)
    await down.prepare(request)
    await pump_websockets(down, up)
    return down


def target_host(request: web.BaseRequest) -> str | None:
    """The host an outbound request is for: the absolute-form target's, else the Host header."""
    raw = request.raw_path
    if not raw.startswith("/") and raw != "*":
        url = URL(raw, encoded=True)
        if url.host:
            return f"{url.host}:{url.port}" if url.explicit_port else url.host
    return request.headers.get("Host")


@web.middleware
async def _refuse_tunnels(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CONNECT targets are authority-form, so no route matches them; refuse them before routing."""
    if request.method == "CONNECT":
        FORBIDDEN.inc()
        return plain_error(403, "lane sidecar: CONNECT tunnels are not supported; send plain HTTP to a service "
                           "in the lane config so it can be routed by lane")
    return await handler(request)


async def _outbound(request: web.Request) -> web.StreamResponse:
    sc = request.app[SIDECAR]
    config = sc.runtime.config
    host = target_host(request)
    svc = config.service_by_host(host) if host else None
    if svc is None:
        FORBIDDEN.inc()
        shown = repr(host[:100]) if host else "(no host)"
        return plain_error(403, f"lane sidecar: {shown} is not a service in the lane config {config.source}; "
                           f"the sidecar only forwards to: {', '.join(sorted(config.services))}")
    headers = upstream_headers(request)
    keys = trace_keys(request.headers, config.proxy.trace_headers)
    lane = request_lane(headers, config.tag) or sc.traces.recall(keys) or config.default_lane
    set_lane(headers, config.tag, lane)
    if is_websocket(request):
        return await forward_websocket(request, request.app[SESSION], sc.runtime.registry, config,
                                       service=svc.name, lane=lane, headers=headers, proxy="outbound")
    collection = sc.hops.find(keys)
    slot = collection.reserve() if collection is not None else -1
    in_flight("outbound").inc()
    try:
        with sc.tracing.span("outbound", svc.name, request.method, request.path, headers, requested=lane,
                             kind=SpanKind.CLIENT, parent=collection.trace_context if collection else None) as span:
            span.inject(headers)
            return await _forward_outbound(request, sc, config, svc.name, lane, headers, collection, slot, span)
    finally:
        in_flight("outbound").dec()


async def _forward_outbound(
    request: web.Request, sc: Sidecar, config: LaneConfig, service: str, lane: str, headers: CIMultiDict[str],
    collection: Collection | None, slot: int, span: RequestSpan,
) -> web.StreamResponse:
    body = Body(request)
    try:
        sent = await dispatch(
            sc.runtime.registry, config, service=service, lane=lane, headers=headers,
            opener=http_opener(request.app[SESSION], request.method, request_target(request), body, config.proxy),
            may_retry=retry_guard(request.method, body),
        )
    except UpstreamUnavailable as exc:
        observe_request(config, "outbound", service, lane, None, None, 503)
        span.answered(503, type(exc).__name__)
        return responses.unavailable(exc)
    except UpstreamFailure as exc:
        observe_request(config, "outbound", service, lane, None, None, exc.status)
        span.answered(exc.status, type(exc).__name__)
        return responses.failure(exc)
    out = responses.answer_headers(sent.response.headers, sent.hop)
    if collection is not None:
        collection.fill(slot, parse_path(out[PATH_HEADER]))
    observe_request(config, "outbound", service, lane, sent.route.lane, sent.hop.fallback, sent.response.status)
    span.routed(sent.route.lane, sent.hop.fallback, sent.hop.instance)
    span.answered(sent.response.status)
    return await relay(request, sent.response, out)


def build_inbound_app(sidecar: Sidecar) -> web.Application:
    app = web.Application()
    app[SIDECAR] = sidecar
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", _inbound)
    return app


def build_outbound_app(sidecar: Sidecar) -> web.Application:
    app = web.Application(middlewares=[_refuse_tunnels])
    app[SIDECAR] = sidecar
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", _outbound)
    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=os.environ.get("LANE_CONFIG"),
                        help="lane config YAML (default: $LANE_CONFIG, else the embedded demo config)")
    parser.add_argument("--service", default=os.environ.get("LANE_SERVICE"),
                        help="the service this instance belongs to (default: $LANE_SERVICE)")
    parser.add_argument("--lane", default=os.environ.get("LANE_LANE"),
                        help="the lane of this instance (default: $LANE_LANE)")
    parser.add_argument("--app", type=host_port, default=os.environ.get("LANE_APP"),
                        help="HOST:PORT of the local app (default: $LANE_APP)")
    parser.add_argument("--listen", type=host_port, default=host_port("127.0.0.1:15006"),
                        help="inbound HOST:PORT, what callers reach (default 127.0.0.1:15006)")
    parser.add_argument("--outbound", type=host_port, default=host_port("127.0.0.1:15001"),
                        help="outbound HOST:PORT, the app's HTTP_PROXY (default 127.0.0.1:15001)")
    parser.add_argument("--admin", type=host_port, default=host_port("127.0.0.1:15000"),
                        help="admin HOST:PORT (default 127.0.0.1:15000)")
    add_tracing_arguments(parser)
    add_server_arguments(parser, workers_help="must be 1: a sidecar keeps per-request state in one process "
                         "(trace-id cache, hop collection); scale the app instead")


def _check(args: argparse.Namespace, config: LaneConfig) -> str | None:
    if args.workers != 1:
        return WORKERS_REFUSED.format(workers=args.workers)
    if not args.service:
        return "--service is required (or set LANE_SERVICE)"
    if args.service not in config.services:
        return f"--service {args.service!r} is not a service in {config.source}: {', '.join(sorted(config.services))}"
    if not args.lane or not is_valid_lane(args.lane):
        return f"--lane must be a DNS label (or set LANE_LANE), got {args.lane!r}"
    if args.app is None:
        return "--app HOST:PORT is required (or set LANE_APP)"
    return None


def run(args: argparse.Namespace) -> int:
    if isinstance(args.app, str):
        args.app = host_port(args.app)
    try:
        config = load_initial(args.config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    problem = _check(args, config)
    if problem:
        log.error("%s", problem)
        return 2

    return run_loop(_main(args, config))


async def _main(args: argparse.Namespace, config: LaneConfig) -> int:
    # Tracing outlives the listeners: serve() returns after the drain, then the last spans are flushed.
    instance = {"lane.sidecar.service": args.service, "lane.sidecar.lane": args.lane}
    async with open_tracing(otlp_traces_url(args.otlp_endpoint), "lane-sidecar", instance) as tracing:

        async def build() -> tuple[list[Listener], Runtime]:
            runtime = Runtime(config, args.config)
            sidecar = Sidecar.create(runtime, args.service, args.lane, Endpoint(args.app.host, args.app.port),
                                     tracing)
            return [
                Listener("inbound", args.listen, build_inbound_app(sidecar)),
                Listener("outbound", args.outbound, build_outbound_app(sidecar)),
                Listener("admin", args.admin, build_admin(runtime), reuse_port=False),
            ], runtime

        def ready(bound: dict[str, HostPort]) -> None:
            announce("sidecar", bound, args.ready_file)

        return await serve(build, drain_seconds=args.drain_seconds, on_ready=ready)
