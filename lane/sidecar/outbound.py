"""The sidecar's outbound listener (``--outbound``): the aiohttp app WebSocket upgrades are handed to.

Every plain request is served by the one forwarding core (`lane.sidecar.handler.outbound_path`): the
app's way out, as an HTTP forward proxy (``HTTP_PROXY=http://127.0.0.1:PORT``) or with
``Host: <service>``, to services in the config only, routed by lane with live fallback. This app
sees only what that core hands over on the same connection: a WebSocket upgrade is routed the same
way (`Sidecar.depart`); CONNECT tunnels and hosts outside the config get 403 (this is not an open
proxy), other upgrades a plain refusal.
"""

from __future__ import annotations

from aiohttp import web

from lane.dataplane.upgrades import (
    FAST_PATH,
    SESSION,
    is_websocket,
    plain_error,
    refusing_connect,
    session_ctx,
    upstream_headers,
)
from lane.dataplane.websocket_proxy import forward_websocket
from lane.sidecar.destination import destination, not_a_service
from lane.sidecar.key import SIDECAR
from lane.sidecar.state import Sidecar
from lane.telemetry.metrics import FORBIDDEN

__all__ = ["build_outbound_app"]


async def _upgrade(request: web.Request) -> web.StreamResponse:
    sc = request.app[SIDECAR]
    config = sc.runtime.config
    svc, host = destination(config, request.raw_path, request.headers)
    if svc is None:
        FORBIDDEN.inc()
        return plain_error(403, not_a_service(config, host))
    if not is_websocket(request):
        return plain_error(400, f"lane sidecar: Upgrade: {request.headers.get('Upgrade', '-')!r} is not supported; "
                           "plain HTTP/1.1 requests and WebSocket upgrades are")
    headers = upstream_headers(request)
    lane = sc.depart(headers).lane
    return await forward_websocket(request, request.app[SESSION], sc.runtime.registry, config,
                                   service=svc.name, lane=lane, headers=headers, proxy="outbound",
                                   source=(sc.service, sc.lane))


def build_outbound_app(sidecar: Sidecar) -> web.Application:
    """The outbound listener as one app: its one-core handler (`FAST_PATH`) and the app upgrades reach."""
    from lane.sidecar.handler import outbound_path

    app = web.Application(middlewares=[refusing_connect(
        403, "lane sidecar: CONNECT tunnels are not supported; send plain HTTP to a service in the lane config "
        "so it can be routed by lane")])
    app[SIDECAR] = sidecar
    app[FAST_PATH] = outbound_path(sidecar)
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", _upgrade)
    return app
