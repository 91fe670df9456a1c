"""The admin listener on the fast core (what a sidecar serves without loading aiohttp).

The same endpoints as `lane.process.admin`: ``GET /metrics`` (Prometheus text), ``GET /healthz``,
``GET /lane/instances`` (the registry's view as JSON), the read-only views, ``POST /lane/reload``;
and the same guard on every method but ``GET``/``HEAD`` (`lane.process.admin_access`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lane.dataplane.runtime import Runtime
from lane.engine.exchange import Exchange, Handler
from lane.process.admin_access import READ_ONLY_METHODS, AdminAccess
from lane.process.admin_registry import metrics_registry

if TYPE_CHECKING:
    from lane.engine.exchange import Sender
    from lane.engine.listen import FastPath

__all__ = ["admin_path"]


def _json(request: Exchange, body: Any, status: int = 200) -> None:
    request.respond(status, CIMultiDict({"Content-Type": "application/json; charset=utf-8"}),
                    json.dumps(body).encode())


def admin_path(runtime: Runtime, views: Mapping[str, Callable[[], Any]] | None = None,
               access: AdminAccess | None = None) -> FastPath:
    """The admin handler; *views* are more read-only JSON endpoints (path -> what to serve).

    *access* guards mutating methods (default: loopback only, no token).
    """
    extra = dict(views or {})
    policy = access or AdminAccess()
    routes = {"/metrics": "GET", "/healthz": "GET", "/lane/instances": "GET", "/lane/reload": "POST",
              **dict.fromkeys(extra, "GET")}

    def with_pools(upstreams: Sender) -> Handler:
        async def admin(request: Exchange) -> None:
            path, method = request.path, request.method
            if path not in routes:
                request.respond(404, CIMultiDict({"Content-Type": "text/plain"}), b"404: Not Found")
                return
            if method != routes[path] and not (method == "HEAD" and routes[path] == "GET"):
                request.respond(405, CIMultiDict({"Allow": routes[path], "Content-Type": "text/plain"}),
                                b"405: Method Not Allowed")
                return
            async for _ in request.body.chunks():  # an admin request's body means nothing; read it off the wire
                pass
            if method not in READ_ONLY_METHODS:
                refusal = policy.refusal(method, request.remote, request.sockname, request.headers)
                if refusal is not None:
                    headers = CIMultiDict({"Content-Type": "text/plain; charset=utf-8"})
                    if refusal.status == 401:
                        headers["WWW-Authenticate"] = "Bearer"
                    request.respond(refusal.status, headers, refusal.reason.encode() + b"\n")
                    return
            if path == "/metrics":
                request.respond(200, CIMultiDict({"Content-Type": CONTENT_TYPE_LATEST}),
                                generate_latest(metrics_registry()))
            elif path == "/healthz":
                request.respond(200, CIMultiDict({"Content-Type": "text/plain; charset=utf-8"}), b"ok\n")
            elif path == "/lane/instances":
                _json(request, {"config": runtime.config.source, "services": runtime.registry.view()})
            elif path in extra:
                _json(request, extra[path]())
            else:
                result = runtime.reload()
                _json(request, {"reloaded": result.ok, "message": result.message}, 200 if result.ok else 400)

        return admin

    return with_pools
