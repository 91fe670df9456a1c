"""Stub lane backends for `lane mesh verify`: one tiny HTTP server per service subset.

Each answers every request with JSON saying which ``service@lane`` it is and the lane headers it
received (tag header and ``baggage``), so a test of the routing can see both where a request
went and what the gateway filter did to it. All bind 127.0.0.1 port 0 and are cleaned up when
the ``async with`` block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from aiohttp import web

__all__ = ["Backend", "run_backends"]

IDENTITY: Final = web.AppKey("identity", tuple)
TAG_HEADER: Final = web.AppKey("tag_header", str)


@dataclass(frozen=True, slots=True)
class Backend:
    service: str
    lane: str
    port: int


async def _answer(request: web.Request) -> web.Response:
    service, lane = request.app[IDENTITY]
    return web.json_response({
        "service": service,
        "lane": lane,
        "tag": request.headers.get(request.app[TAG_HEADER]),
        "baggage": ",".join(request.headers.getall("baggage", [])) or None,
    })


@contextlib.asynccontextmanager
async def run_backends(
    subsets: Iterable[tuple[str, str]], tag_header: str
) -> AsyncIterator[Mapping[tuple[str, str], Backend]]:
    """Serve one stub per ``(service, lane)`` until the block ends; yields them by that pair."""
    runners: list[web.AppRunner] = []
    out: dict[tuple[str, str], Backend] = {}
    try:
        for service, lane in subsets:
            app = web.Application()
            app[IDENTITY] = (service, lane)
            app[TAG_HEADER] = tag_header
            app.router.add_route("*", "/{tail:.*}", _answer)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = int(runner.addresses[0][1])
            out[(service, lane)] = Backend(service, lane, port)
        yield out
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
