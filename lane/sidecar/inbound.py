"""The sidecar's inbound listener (``--listen``): the aiohttp app WebSocket upgrades are handed to.

Every plain request is served by the one forwarding core (`lane.sidecar.handler.inbound_path`): lane and
trace identity handed to the app, hop collection, answers. This app sees only what that core hands
over on the same connection: a WebSocket upgrade is relayed to the local app with the same lane
carriers (`Sidecar.arrive`); any other upgrade or CONNECT is refused with a plain answer.
"""

from __future__ import annotations

from aiohttp import web

from lane.core.endpoint import Endpoint
from lane.dataplane import responses
from lane.dataplane.upgrades import (
    FAST_PATH,
    SESSION,
    UpstreamFailure,
    is_websocket,
    plain_error,
    refusing_connect,
    request_target,
    session_ctx,
    upstream_headers,
)
from lane.dataplane.websocket_proxy import Refused, open_websocket, pump_websockets, refused_answer
from lane.sidecar.key import SIDECAR
from lane.sidecar.state import Sidecar

__all__ = ["build_inbound_app"]


def _own_instance(request: web.BaseRequest) -> str | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return None
    return str(Endpoint(sockname[0], sockname[1]))


async def _upgrade(request: web.Request) -> web.StreamResponse:
    sc = request.app[SIDECAR]
    if not is_websocket(request):
        return plain_error(400, f"lane sidecar: {request.method} with Upgrade: "
                                f"{request.headers.get('Upgrade', '-')!r} is "
                           "not supported; plain HTTP/1.1 requests and WebSocket upgrades are")
    config = sc.runtime.config
    headers = upstream_headers(request)
    own = sc.arrive(request.headers, headers, _own_instance(request)).own
    protocols = tuple(p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip())
    try:
        up = await open_websocket(request.app[SESSION], sc.app, request_target(request), headers, protocols,
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
    """The inbound listener as one app: its one-core handler (`FAST_PATH`) and the app upgrades reach."""
    from lane.sidecar.handler import inbound_path

    app = web.Application(middlewares=[refusing_connect(
        405, "lane sidecar: CONNECT is not supported; plain HTTP/1.1 requests and WebSocket upgrades are")])
    app[SIDECAR] = sidecar
    app[FAST_PATH] = inbound_path(sidecar)
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", _upgrade)
    return app
