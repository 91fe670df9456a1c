"""The app behind the data-plane benchmark: as little work per request as aiohttp allows.

``GET /``: ``ok``. ``GET /call``: one call straight to ``--back`` (``GET /``), answering what it
answered; ``GET /call-proxied``: the same call as ``http://back/`` through ``--proxy`` (a
sidecar's outbound port), the app hop of the "one outbound hop" topology. ``POST /upload``: reads the body in chunks and
discards it, answering the byte count (the bounded-memory check streams 256 MiB into it).

Run by `bench/dataplane.py` as its own process; it writes a lane-style ready file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
from aiohttp import web

from lane.core.endpoint import Endpoint
from lane.process.readiness import announce
from lane.process.server import Listener, run_loop, serve

__all__ = ["build_app", "main"]

SESSION: Final = web.AppKey("bench_session", aiohttp.ClientSession)
BACK: Final = web.AppKey("bench_back", str)
PROXY: Final = web.AppKey("bench_proxy", str)


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=1000)
    app[SESSION] = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))
    try:
        yield
    finally:
        await app[SESSION].close()


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _get(request: web.Request, url: str, proxy: str | None) -> web.Response:
    async with request.app[SESSION].get(url, proxy=proxy) as resp:
        body = await resp.read()
        return web.Response(body=body, status=resp.status)


async def _call(request: web.Request) -> web.Response:
    return await _get(request, f"http://{request.app[BACK]}/", None)


async def _call_proxied(request: web.Request) -> web.Response:
    if not request.app[PROXY]:
        return web.Response(status=500, text="started without --proxy")
    return await _get(request, "http://back/", request.app[PROXY])


async def _upload(request: web.Request) -> web.Response:
    total = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        total += len(chunk)
    return web.Response(text=str(total))


def build_app(back: str, proxy: str | None) -> web.Application:
    app = web.Application()
    app[BACK] = back
    app[PROXY] = proxy or ""
    app.cleanup_ctx.append(_session_ctx)
    app.router.add_get("/", _ok)
    app.router.add_get("/call", _call)
    app.router.add_get("/call-proxied", _call_proxied)
    app.router.add_post("/upload", _upload)
    return app


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--back", required=True, help="HOST:PORT that GET /call reaches directly")
    parser.add_argument("--proxy", help="forward proxy URL of GET /call-proxied (a sidecar's outbound)")
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args(argv)

    async def build() -> tuple[list[Listener], None]:
        app = build_app(args.back, args.proxy)
        return [Listener("app", Endpoint("127.0.0.1", args.port), app, reuse_port=False)], None

    def ready(bound: dict[str, Endpoint]) -> None:
        announce("bench-app", bound, args.ready_file)

    return run_loop(serve(build, drain_seconds=1.0, on_ready=ready))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
