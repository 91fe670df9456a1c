"""The admin listener of a lane proxy (loopback by default; mutations guarded, `lane.process.admin_access`).

* ``GET /metrics``: Prometheus text exposition (prometheus-client's default registry, or the
  multiprocess collector when ``--workers`` > 1);
* ``GET /healthz``: 200 ``ok`` while the proxy serves;
* ``GET /lane/instances``: ``{"services": {svc: {lane: [{"instance", "healthy", ...}]}}}``, this
  proxy's passive-health view;
* ``POST /lane/reload``: reload the config file; 200 when swapped, 400 with the reason when rejected;
* more read-only JSON views a proxy adds (*views*: a sidecar's ``/lane/carriers``, `lane.sidecar.carriers`).

``GET``/``HEAD`` are read-only and open; any other method passes `AdminAccess.refusal` first
(loopback peer and local Host, or the admin token; never a foreign Origin), by `access_middleware`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lane.dataplane.runtime import Runtime
from lane.process.admin_access import READ_ONLY_METHODS, AdminAccess
from lane.process.admin_registry import metrics_registry

__all__ = ["RUNTIME", "access_middleware", "build_admin", "metrics_handler", "metrics_registry"]

RUNTIME: Final = web.AppKey("lane_runtime", Runtime)


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(metrics_registry())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _instances(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    body: dict[str, Any] = {"config": runtime.config.source, "services": runtime.registry.view()}
    return web.json_response(body)


async def _reload(request: web.Request) -> web.Response:
    result = request.app[RUNTIME].reload()
    return web.json_response({"reloaded": result.ok, "message": result.message}, status=200 if result.ok else 400)


def access_middleware(access: AdminAccess) -> Middleware:
    """An aiohttp middleware refusing mutations the policy does not allow (401/403, one line of text)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in READ_ONLY_METHODS:
            sock = request.transport.get_extra_info("sockname") if request.transport else None
            refusal = access.refusal(request.method, request.remote, (sock[0], sock[1]) if sock else None,
                                     request.headers)
            if refusal is not None:
                headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
                return web.Response(status=refusal.status, text=refusal.reason + "\n", headers=headers)
        return await handler(request)

    return guard


def _view(make: Callable[[], Any]) -> Callable[[web.Request], Any]:
    async def view(request: web.Request) -> web.Response:
        return web.json_response(make())

    return view


def build_admin(runtime: Runtime, views: Mapping[str, Callable[[], Any]] | None = None,
                access: AdminAccess | None = None) -> web.Application:
    """The admin app; *access* guards mutating methods (default: loopback only, no token)."""
    app = web.Application(middlewares=[access_middleware(access or AdminAccess())])
    for path, make in (views or {}).items():
        app.router.add_get(path, _view(make))
    app[RUNTIME] = runtime
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/lane/instances", _instances)
    app.router.add_post("/lane/reload", _reload)
    return app
