"""The lane graph as admin routes: ``GET /lane/admins`` and a self-refreshing ``GET /lane/graph`` page.

An admin that knows a set of proxies (`lane demo`'s) lists their admin URLs at ``/lane/admins``, so
``lane graph --admin <that admin>`` reads them all; ``/lane/graph`` is the same picture as an HTML
page with the SVG inline that reloads itself (``?refresh=SECONDS``, default 5; ``?format=json`` for
the JSON). The page is built from the proxies' metrics at each request; nothing is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from xml.sax.saxutils import escape

from aiohttp import web

from lane.graph.model import collect
from lane.graph.render import render_svg

__all__ = ["graph_routes"]

PAGE_WINDOW = 1.0  # seconds between the two readings of a page's rates


def _seconds(request: web.Request, name: str, default: float, highest: float) -> float:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise web.HTTPBadRequest(text=f"?{name}: expected seconds, got {text[:40]!r}\n") from None
    if not 0 <= value <= highest:
        raise web.HTTPBadRequest(text=f"?{name}: expected seconds from 0 to {highest:g}\n")
    return value


def graph_routes(admins: Callable[[], list[str]]) -> list[web.RouteDef]:
    """The two routes, reading the proxies *admins()* names (their admin base URLs) at each request."""

    async def listed(_request: web.Request) -> web.Response:
        return web.json_response({"admins": admins()})

    async def page(request: web.Request) -> web.Response:
        refresh = _seconds(request, "refresh", 5.0, 3600.0)
        graph = await collect(admins(), _seconds(request, "window", PAGE_WINDOW, 30.0))
        if request.query.get("format") == "json":
            return web.json_response(graph.as_json())
        meta = f'<meta http-equiv="refresh" content="{refresh:g}">' if refresh > 0 else ""
        html = (f"<!doctype html><html><head><meta charset=\"utf-8\">{meta}<title>lane graph</title></head>"
                f"<body style=\"margin:0\">{render_svg(graph, 'lane graph (live)')}"
                f"<p style=\"font:12px sans-serif;color:#666;margin:8px 30px\">{escape(str(len(graph.edges)))} "
                f"edges from {escape(str(len(admins())))} proxies; refreshes every {refresh:g} s</p></body></html>")
        return web.Response(text=html, content_type="text/html")

    return [web.get("/lane/admins", listed), web.get("/lane/graph", page)]
