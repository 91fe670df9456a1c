"""The sidecar's inbound listener (``--listen``): what callers reach, forwarding to the local app.

It reads the request's lane (tag header, else baggage) and remembers ``trace id -> lane`` for
every configured trace header, opens a hop collection under those trace ids, and answers with its
own hop first followed by the hops of the calls the app made meanwhile (`lane.sidecar_outbound`).
When the app cannot be reached it answers 502 with ``x-lane-unavailable``, so the caller treats
this instance as down and falls back.
"""

from __future__ import annotations

from time import perf_counter

from aiohttp import web
from multidict import CIMultiDict

from . import responses
from .config import LaneConfig
from .hops import Hop, encode_path
from .metrics import UNKNOWN_SOURCE, in_flight, observe_request
from .proxy import (
    FAST_PATH,
    SESSION,
    Body,
    UpstreamFailure,
    is_websocket,
    relay,
    request_target,
    send,
    session_ctx,
    upstream_headers,
)
from .server import HostPort
from .sidecar_app import app_failure_answer, app_wait
from .sidecar_key import SIDECAR
from .sidecar_state import Sidecar
from .websocket_proxy import Refused, open_websocket, pump_websockets, refused_answer

__all__ = ["build_inbound_app"]



def _own_instance(request: web.BaseRequest) -> str | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return None
    return str(HostPort(sockname[0], sockname[1]))


async def _inbound(request: web.Request) -> web.StreamResponse:
    started = perf_counter()
    sc = request.app[SIDECAR]
    config = sc.runtime.config
    headers = upstream_headers(request)
    arrival = sc.arrive(request.headers, headers, _own_instance(request))
    requested, reason, own = arrival.requested, arrival.reason, arrival.own
    target = request_target(request)
    session = request.app[SESSION]
    if is_websocket(request):
        return await _inbound_websocket(request, sc, config, headers, target, own)
    in_flight("inbound").inc()
    try:
        with sc.tracing.span("inbound", sc.service, request.method, request.path, headers,
                             requested=requested) as span:
            span.inject(headers)
            span.routed(sc.lane, reason, own.instance)
            with sc.collecting(arrival, headers) as collection:
                collection.trace_context = span.context
                try:
                    upstream = await send(session, request.method, sc.app, target, headers, Body(request),
                                          config.proxy, app_wait(arrival.wait, sc.app))
                except UpstreamFailure as exc:
                    observe_request(config, "inbound", sc.service, requested, sc.lane, reason, exc.status,
                                    started=started, source=UNKNOWN_SOURCE)
                    span.answered(exc.status, type(exc).__name__)
                    return app_failure_answer(sc.service, sc.lane, own, exc, collection).as_response()
                path = encode_path([own, *collection.hops()])
            observe_request(config, "inbound", sc.service, requested, sc.lane, reason, upstream.status,
                            started=started, source=UNKNOWN_SOURCE)
            span.answered(upstream.status)
            return await relay(request, upstream, responses.own_headers(upstream.headers, path, own))
    finally:
        in_flight("inbound").dec()


async def _inbound_websocket(
    request: web.Request, sc: Sidecar, config: LaneConfig, headers: CIMultiDict[str], target: str, own: Hop,
) -> web.StreamResponse:
    protocols = tuple(p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip())
    try:
        up = await open_websocket(request.app[SESSION], sc.app, target, headers, protocols,
                                  config.proxy.connect_timeout, max_message=config.proxy.max_websocket_message)
    except UpstreamFailure as exc:
        return responses.failure(exc)
    if isinstance(up, Refused):  # the app answered, just not with 101: relay its answer
        return refused_answer(up, responses.own_headers(up.headers, own.encode(), own))
    down = web.WebSocketResponse(protocols=(up.protocol,) if up.protocol else (),
                                 max_msg_size=config.proxy.max_websocket_message + 1, autoping=True)
    await down.prepare(request)
    await pump_websockets(down, up)
    return down


def build_inbound_app(sidecar: Sidecar) -> web.Application:
    app = web.Application()
    app[SIDECAR] = sidecar
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", _inbound)
    from .sidecar_h1 import inbound_path

    app[FAST_PATH] = inbound_path(sidecar)  # the fast core serves it; upgrades reach this app
    return app
