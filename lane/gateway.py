"""``lane gateway``: color requests from outside and send them down their lane.

For every request: a lane tag an outside client sent (the tag header, the lane member of
``baggage``) is removed unless the peer is in ``proxy.trusted_cidrs`` — other baggage members
survive; the request is colored by the rules (first match wins, else the default lane; a trusted
peer's valid tag wins over the rules); it gets a ``traceparent`` when it has none and an
``x-request-id`` of the gateway's own unless the peer is trusted and sent one (so sidecars can always
recover the lane by trace id, and a client cannot choose the id another request is recovered by:
its id travels on as ``x-client-request-id``, like Envoy's ``preserve_external_request_id: false``;
a client's ``traceparent`` is kept for tracing, sidecars distrust a trace id two lanes claim); it leaves with the tag header and
the baggage member set, to the entry service's instance of its lane (with live fallback). The
answer carries ``x-lane-path``, ``x-lane-served`` and, when it fell back, ``x-lane-fallback``.
With ``--otlp-endpoint`` each request also gets a span with lane attributes (`lane.tracing`).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from collections.abc import Callable
from typing import Final

from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from . import explain, responses
from .admin import build_admin
from .admin_access import add_admin_arguments, admin_access
from .config import LaneConfig
from .deadline import DEADLINE_HEADER
from .errors import ConfigError
from .forward import forward_http
from .headers import ForwardedFrom
from .metrics import REJECTED_TAGS, in_flight
from .proxy import (
    FAST_PATH,
    SESSION,
    is_websocket,
    relay,
    session_ctx,
    upstream_headers,
)
from .readiness import announce
from .rules import Coloring, RequestView, color
from .runtime import Runtime, load_initial
from .server import HostPort, Listener, add_server_arguments, host_port, run_loop, serve
from .trace_identity import TraceIdentity, new_request_id
from .tracing import RequestSpan, Tracing, add_tracing_arguments, open_tracing, otlp_traces_url
from .websocket_proxy import forward_websocket
from .wire import has_lane_tag, request_lane, set_lane, strip_lane

__all__ = [
    "CLIENT_REQUEST_ID",
    "EXPLAIN",
    "RUNTIME",
    "TRACING",
    "add_arguments",
    "build_gateway_app",
    "coloring_view",
    "distrust_request_id",
    "drop_repeated_trace_headers",
    "ensure_trace_headers",
    "is_trusted",
    "lane_of",
    "run",
]

log = logging.getLogger(__name__)

RUNTIME = web.AppKey("lane_gateway_runtime", Runtime)
EXPLAIN = web.AppKey("lane_gateway_explain", bool)
TRACING = web.AppKey("lane_gateway_tracing", Tracing)
_B3_RELATED: Final = ("x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3")
CLIENT_REQUEST_ID: Final = "x-client-request-id"


def is_trusted(config: LaneConfig, peer: str | None) -> bool:
    """Whether *peer* (an IP address) is inside one of the trusted CIDRs.

    A dual-stack listener reports IPv4 clients as IPv4-mapped IPv6 (``::ffff:10.1.2.3``); they are
    compared as the IPv4 address they are, so IPv4 CIDRs match them.
    """
    if not peer or not config.proxy.trusted_cidrs:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in config.proxy.trusted_cidrs)


def distrust_request_id(headers: CIMultiDict[str]) -> None:
    """Move an untrusted client's ``x-request-id`` to ``x-client-request-id`` (the gateway mints its own).

    Sidecars recover a request's lane and hop record by this id, so it must be unique per request:
    a client that sent the same id with many requests would otherwise mix their lanes up.
    """
    sent = headers.popall("x-request-id", None)
    if sent is not None:
        headers[CLIENT_REQUEST_ID] = sent[0]


def drop_repeated_trace_headers(headers: CIMultiDict[str], names: tuple[str, ...]) -> None:
    """Remove every trace header an untrusted client sent more than once (the gateway then mints its own).

    Sidecars recover lanes by trace id, and which of two values an app keeps is the app's choice: a
    client that appended the trace id of another request it saw could otherwise pull its own calls
    into that request's lane. Exactly one value of each trace header leaves the gateway.
    """
    for name in (*names, *_B3_RELATED):
        values = headers.getall(name, None)
        if values is not None and len(values) > 1:
            headers.popall(name)


def ensure_trace_headers(headers: CIMultiDict[str]) -> None:
    """Give the request a ``traceparent`` and an ``x-request-id`` (a version 4 UUID) when it has none.

    The ids only have to be unique, not secret: like OpenTelemetry's `RandomIdGenerator` they come
    from `random.getrandbits`, which costs a fraction of `secrets`/`uuid4` (a system call each).
    """
    if "traceparent" not in headers:
        identity = TraceIdentity.new()
        headers["traceparent"] = f"00-{identity.trace_hex}-{identity.span_hex}-01"
    if "x-request-id" not in headers:
        headers["x-request-id"] = new_request_id()


def lane_of(config: LaneConfig, headers: CIMultiDict[str], received: MultiMapping[str], raw_query: str,
            trusted: bool, peer: str | None) -> Coloring:
    """The request's lane, and the rule that chose it (None: a trusted tag or the default lane).

    *headers* are the ones leaving (the lane tag is stripped from them); *received* and *raw_query*
    are what the client sent, which the rules look at.
    """
    lane = None
    if trusted:
        lane = request_lane(headers, config.tag)
    elif has_lane_tag(headers, config.tag):
        source = "header" if config.tag.header in headers else "baggage"
        REJECTED_TAGS.labels(source=source).inc()
        log.debug("removed a lane tag sent by untrusted peer %s", peer)
    strip_lane(headers, config.tag)
    if lane is not None:
        return Coloring(lane, None)
    if not config.rules:
        return Coloring(config.default_lane, None)  # nothing to match: skip building the request view
    return color(config.rules, RequestView.of_request(received, raw_query), config.default_lane)


def colored_headers(config: LaneConfig, request: ForwardedFrom, raw_query: str) -> tuple[CIMultiDict[str], Coloring]:
    """The headers to send upstream and the request's coloring, as both cores' gateways start a request.

    Only a trusted peer keeps its X-Forwarded-*, lane tag and x-request-id; the request leaves with its
    lane in the tag header and as the first baggage member.
    """
    trusted = is_trusted(config, request.remote)
    headers = upstream_headers(request, trust_forwarded=trusted)
    coloring = lane_of(config, headers, request.headers, raw_query, trusted, request.remote)
    if not trusted:
        distrust_request_id(headers)
        drop_repeated_trace_headers(headers, config.proxy.trace_headers)
        headers.popall(DEADLINE_HEADER, None)  # a client must not shorten the wait and get instances blamed
    set_lane(headers, config.tag, coloring.lane)
    return headers, coloring


async def _handle(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    config = runtime.config  # this request's snapshot, even if a reload happens meanwhile
    headers, coloring = colored_headers(config, request, request.rel_url.raw_query_string)
    lane = coloring.lane
    service = config.entry
    if is_websocket(request):
        ensure_trace_headers(headers)
        return await forward_websocket(request, request.app[SESSION], runtime.registry, config,
                                       service=service, lane=lane, headers=headers, proxy="gateway")
    with request.app[TRACING].span("gateway", service, request.method, request.path, headers,
                                   requested=lane, rule=coloring.rule) as span:
        span.inject(headers)  # before ensure_trace_headers: a traced request continues this span
        ensure_trace_headers(headers)
        return await _forward(request, runtime, config, service, lane, headers, span)


async def _forward(
    request: web.Request, runtime: Runtime, config: LaneConfig, service: str, lane: str,
    headers: CIMultiDict[str], span: RequestSpan,
) -> web.StreamResponse:
    in_flight("gateway").inc()
    try:
        sent = await forward_http(request, runtime.registry, config, proxy="gateway", service=service, lane=lane,
                                  headers=headers, span=span)
        if isinstance(sent, web.Response):
            return sent
        out = responses.answer_headers(sent.response.headers, sent.hop)
        if request.app[EXPLAIN]:
            return await explain.relay_explained(request, sent.response, out)
        return await relay(request, sent.response, out)
    finally:
        in_flight("gateway").dec()


def build_gateway_app(
    runtime: Runtime, *, explain_json: bool = False, tracing: Tracing | None = None
) -> web.Application:
    app = web.Application()
    app[RUNTIME] = runtime
    app[EXPLAIN] = explain_json
    app[TRACING] = tracing or Tracing()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", _handle)
    if not explain_json:  # the fast core serves everything but upgrades (and --explain-json, a demo aid)
        from .gateway_h1 import gateway_path

        app[FAST_PATH] = gateway_path(runtime, app[TRACING])
    return app


def coloring_view(config: LaneConfig) -> dict[str, object]:
    """``GET /lane/coloring``: the rules in force, in order, with each lane and percentage.

    Read-only; `lane rollout` reads the share a running gateway applies from it (so a rerun after a
    crash continues from what is in force, not from what a file says).
    """
    rules = [{"name": rule.name, "lane": rule.lane, "conditions": len(rule.conditions),
              "percent": None if rule.percentage is None else rule.percentage.percent,
              "sticky": rule.percentage is not None and rule.percentage.key is not None}
             for rule in config.rules]
    return {"config": config.source, "default_lane": config.default_lane, "rules": rules}


def _admin_views(runtime: Runtime) -> dict[str, Callable[[], object]]:
    """The gateway's own admin views: ``/lane/coloring`` (`coloring_view` of the config in force)."""
    return {"/lane/coloring": lambda: coloring_view(runtime.config)}


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
        config = load_initial(args.config, demo=args.demo, command="lane gateway")
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if args.workers > 1:
        from . import workers

        return workers.supervise(args, "gateway", config)

    return run_loop(_main(args, config))


async def _main(args: argparse.Namespace, config: LaneConfig) -> int:
    # Tracing outlives the listeners: serve() returns after the drain, then the last spans are flushed.
    async with open_tracing(otlp_traces_url(args.otlp_endpoint), "lane-gateway") as tracing:

        async def build() -> tuple[list[Listener], Runtime]:
            runtime = Runtime(config, args.config)
            app = build_gateway_app(runtime, explain_json=args.explain_json, tracing=tracing)
            return [
                Listener("gateway", args.listen, app),
                Listener("admin", args.admin, build_admin(runtime, _admin_views(runtime), admin_access(args)),
                         reuse_port=False),
            ], runtime

        def ready(bound: dict[str, HostPort]) -> None:
            announce("gateway", bound, args.ready_file)

        return await serve(build, drain_seconds=args.drain_seconds, on_ready=ready, access_log=args.access_log,
                           core=args.core)

