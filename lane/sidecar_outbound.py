"""The sidecar's outbound listener (``--outbound``): the app's way out, routed by lane.

It works as an HTTP forward proxy (absolute-form targets, so ``HTTP_PROXY=http://127.0.0.1:PORT``
works) or with ``Host: <service>``. Only services in the config are reachable (403 otherwise: this
is not an open proxy; CONNECT tunnels are refused). The lane is the outbound request's own tag,
else the one recovered from the trace-id cache, else the default lane; the request leaves with
the tag header and baggage member set, to the right instance of the target service (live
fallback), and its hop record is added to the inbound request's collection (`lane.sidecar_inbound`).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict
from opentelemetry.trace import SpanKind
from yarl import URL

from . import responses
from .config import LaneConfig
from .forward import forward_http
from .metrics import FORBIDDEN, in_flight
from .proxy import (
    FAST_PATH,
    SESSION,
    is_websocket,
    plain_error,
    relay,
    session_ctx,
    upstream_headers,
)
from .sidecar_key import SIDECAR
from .sidecar_state import Departure, Sidecar
from .tracing import RequestSpan
from .websocket_proxy import forward_websocket

__all__ = ["build_outbound_app", "target_host"]


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
    departure = sc.depart(headers)
    lane, collection = departure.lane, departure.collection
    if is_websocket(request):
        return await forward_websocket(request, request.app[SESSION], sc.runtime.registry, config,
                                       service=svc.name, lane=lane, headers=headers, proxy="outbound",
                                       source=(sc.service, sc.lane))
    slot = collection.reserve() if collection is not None else -1
    in_flight("outbound").inc()
    try:
        with sc.tracing.span("outbound", svc.name, request.method, request.path, headers, requested=lane,
                             kind=SpanKind.CLIENT, parent=collection.trace_context if collection else None) as span:
            span.inject(headers)
            return await _forward_outbound(request, sc, config, svc.name, headers, departure, slot, span)
    finally:
        in_flight("outbound").dec()


async def _forward_outbound(
    request: web.Request, sc: Sidecar, config: LaneConfig, service: str, headers: CIMultiDict[str],
    departure: Departure, slot: int, span: RequestSpan,
) -> web.StreamResponse:
    lane, collection = departure.lane, departure.collection
    sent = await forward_http(request, sc.runtime.registry, config, proxy="outbound", service=service, lane=lane,
                              headers=headers, span=span, source=(sc.service, sc.lane))
    if isinstance(sent, web.Response):
        hops = departure.answered(sent.headers)
        if collection is not None:  # the failed call stays in the record: "c answered 503", not "c never called"
            collection.fill(slot, hops)
        return sent
    out = responses.answer_headers(sent.response.headers, sent.hop)
    hops = departure.answered(out)
    if collection is not None:
        collection.fill(slot, hops)
    return await relay(request, sent.response, out)


def build_outbound_app(sidecar: Sidecar) -> web.Application:
    app = web.Application(middlewares=[_refuse_tunnels])
    app[SIDECAR] = sidecar
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", _outbound)
    from .sidecar_h1 import outbound_path

    app[FAST_PATH] = outbound_path(sidecar)  # the fast core serves it; upgrades reach this app
    return app
