"""What the aiohttp apps that upgrades are handed to share (the one core serves everything else).

A lane listener is served by the one forwarding core (`lane.engine`); on the same connection it hands
a WebSocket upgrade (or a CONNECT) to an aiohttp app built for that, on the first one. Those apps
share this: one pooled `aiohttp.ClientSession` per app (owned by its cleanup context, see
`session_ctx`; used by `lane.dataplane.websocket_proxy`), the origin-form target, the WebSocket test and a
plain-text error answer. `FAST_PATH` is the app key under which an app carries its one-core handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict
from yarl import URL

from lane.core.headers import is_websocket as headers_are_websocket
from lane.core.headers import upstream_headers
from lane.dataplane.failures import ConnectFailed, UpstreamBroken, UpstreamFailure, UpstreamTimeout

if TYPE_CHECKING:
    from lane.engine.listen import FastPath

__all__ = [
    "FAST_PATH",
    "SESSION",
    "ConnectFailed",
    "UpstreamBroken",
    "UpstreamFailure",
    "UpstreamTimeout",
    "is_websocket",
    "make_session",
    "plain_error",
    "refusing_connect",
    "request_target",
    "session_ctx",
    "upstream_headers",
]

SESSION: Final = web.AppKey("lane_session", aiohttp.ClientSession)
# The one-core handler of an app (`lane.engine`): the listener serves the app's requests with it and
# hands only upgrades to the app itself.
FAST_PATH: Final[web.AppKey[FastPath]] = web.AppKey("lane_fast_path")


def make_session() -> aiohttp.ClientSession:
    """The upgrade apps' client session: pooled, no cookies, no redirects, no decompression, no auto headers."""
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, enable_cleanup_closed=False)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None),
    )


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one session for the app's lifetime, closed after in-flight requests drained."""
    app[SESSION] = make_session()
    try:
        yield
    finally:
        await app[SESSION].close()


def request_target(request: web.BaseRequest) -> str:
    """The origin-form target (path and query, as sent) of *request*, also for absolute-form requests."""
    raw = request.raw_path
    if raw.startswith("/"):
        return raw
    return URL(raw, encoded=True).raw_path_qs or "/"


def is_websocket(request: web.BaseRequest) -> bool:
    return headers_are_websocket(request.headers)


def plain_error(status: int, text: str, headers: CIMultiDict[str] | None = None) -> web.Response:
    """A short plain-text error answer, the way a proxy says what went wrong."""
    return web.Response(status=status, text=text.rstrip("\n") + "\n", headers=headers)


def refusing_connect(status: int, text: str) -> Middleware:
    """The middleware of an upgrade app: CONNECT gets *status* and *text*; any answer but a WebSocket closes.

    A CONNECT's authority-form target matches no route, hence a middleware. And once the one core
    handed a connection over, it stays with aiohttp: after an answer that is not a WebSocket (a
    refused upgrade relayed, an error), the connection closes, so the client's next request opens a
    new one that the one core serves.
    """

    @web.middleware
    async def upgrade_only(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "CONNECT":
            answer: web.StreamResponse = plain_error(status, text)
        else:
            answer = await handler(request)
        if not isinstance(answer, web.WebSocketResponse):
            answer.force_close()
        return answer

    return upgrade_only
