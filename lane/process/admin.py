"""The admin listener of every lane process: one implementation, on the engine like the data listeners.

* ``GET /metrics``: Prometheus text exposition (prometheus-client's default registry, or the
  multiprocess collector when ``--workers`` > 1 share a directory);
* ``GET /healthz``: 200 ``ok`` while the proxy serves (a supervisor: how many workers are alive);
* ``GET /lane/instances``: ``{"services": {svc: {lane: [{"instance", "healthy", ...}]}}}``, this
  proxy's passive-health view (a supervisor: merged over its workers);
* ``POST /lane/reload``: reload the config file; 200 when swapped, 400 with the reason when rejected;
* more read-only JSON views a process adds (*views*: a sidecar's ``/lane/carriers``, a gateway's
  ``/lane/coloring``).

``GET``/``HEAD`` are read-only and open; any other method passes `AdminAccess.refusal` first
(loopback peer and local Host, or the admin token; never a foreign Origin). The admin port serves no
upgrade and no ``CONNECT`` (501), so it never loads aiohttp.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from lane.dataplane.runtime import Runtime
from lane.engine.exchange import Exchange, Handler
from lane.process.admin_access import READ_ONLY_METHODS, AdminAccess

if TYPE_CHECKING:
    from lane.dataplane.runtime import ReloadResult
    from lane.engine.exchange import Sender
    from lane.engine.listen import FastPath

__all__ = ["AdminViews", "View", "admin_path", "metrics_registry"]

# A read-only JSON view: what to serve, computed per request (a coroutine for one that asks others).
View = Callable[[], Any] | Callable[[], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class AdminViews:
    """What a process answers beyond the defaults: extra views, and its own instances / health / reload."""

    extra: Mapping[str, View] | None = None
    instances: View | None = None  # default: this process's registry
    health: Callable[[], tuple[int, str]] | None = None  # (status, text); default: 200 "ok"
    reload: Callable[[], ReloadResult] | None = None  # default: the runtime's reload


def metrics_registry() -> CollectorRegistry:
    """The registry to expose: aggregated over worker processes when they share a multiprocess dir."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def _json(request: Exchange, body: Any, status: int = 200) -> None:
    request.respond(status, CIMultiDict({"Content-Type": "application/json; charset=utf-8"}),
                    json.dumps(body).encode())


def _text(request: Exchange, status: int, text: str, **headers: str) -> None:
    request.respond(status, CIMultiDict({"Content-Type": "text/plain; charset=utf-8", **headers}), text.encode())


async def _value(view: View) -> Any:
    value = view()
    return await value if inspect.isawaitable(value) else value


def admin_path(runtime: Runtime, views: AdminViews | Mapping[str, View] | None = None,
               access: AdminAccess | None = None) -> FastPath:
    """The admin handler; *views* are more read-only JSON endpoints (path -> what to serve) or an
    `AdminViews`; *access* guards mutating methods (default: loopback only, no token)."""
    spec = views if isinstance(views, AdminViews) else AdminViews(extra=views)
    extra = dict(spec.extra or {})
    policy = access or AdminAccess()

    def instances() -> Any:
        return {"config": runtime.config.source, "services": runtime.registry.view()}

    show_instances = spec.instances or instances
    health = spec.health or (lambda: (200, "ok\n"))
    reload = spec.reload or runtime.reload
    routes = {"/metrics": "GET", "/healthz": "GET", "/lane/instances": "GET", "/lane/reload": "POST",
              **dict.fromkeys(extra, "GET")}

    def with_pools(upstreams: Sender) -> Handler:
        async def admin(request: Exchange) -> None:
            path, method = request.path, request.method
            if path not in routes:
                _text(request, 404, "404: Not Found")
                return
            if method != routes[path] and not (method == "HEAD" and routes[path] == "GET"):
                _text(request, 405, "405: Method Not Allowed", Allow=routes[path])
                return
            async for _ in request.body.chunks():  # an admin request's body means nothing; read it off the wire
                pass
            if method not in READ_ONLY_METHODS:
                refusal = policy.refusal(method, request.remote, request.sockname, request.headers)
                if refusal is not None:
                    extra_headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else {}
                    _text(request, refusal.status, refusal.reason + "\n", **extra_headers)
                    return
            if path == "/metrics":
                request.respond(200, CIMultiDict({"Content-Type": CONTENT_TYPE_LATEST}),
                                generate_latest(metrics_registry()))
            elif path == "/healthz":
                status, text = health()
                _text(request, status, text)
            elif path == "/lane/instances":
                _json(request, await _value(show_instances))
            elif path in extra:
                _json(request, await _value(extra[path]))
            else:
                result = reload()
                _json(request, {"reloaded": result.ok, "message": result.message}, 200 if result.ok else 400)

        return admin

    return with_pools
