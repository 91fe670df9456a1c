"""WebSocket upgrades, passed through a lane proxy message by message.

The upstream is chosen exactly like a plain request (lane, fallback, health), then the proxy
completes the client's handshake with the subprotocol the upstream picked and relays frames both
ways until one side closes, passing the close code on. Pings are answered per hop.

An upstream that answers the upgrade with anything but 101 (a 404, a 401 asking for credentials)
did answer: that is a health *success*, and its status and headers are relayed to the client as a
plain answer (aiohttp's client drops the body of a refused handshake, so the body is empty).
Counting refusals as failures would let any client eject an instance with a few bad upgrades.

Messages are bounded both ways by ``proxy.max_websocket_message``: aiohttp assembles each message
in memory before it is relayed, so an unbounded one would let a client grow the proxy at will. The
side that receives a bigger message closes with 1009 (message too big) and the relay passes that
code on to the other side. (aiohttp's ``max_msg_size`` refuses sizes *at* it, hence the ``+ 1``.)
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from time import perf_counter
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from lane.core.config import LaneConfig, ProxySpec
from lane.core.endpoint import Endpoint
from lane.core.errors import UpstreamUnavailable
from lane.core.hops import FALLBACK_HEADER, PATH_HEADER, SERVED_HEADER
from lane.dataplane.dispatch import dispatch
from lane.dataplane.registry import Registry
from lane.dataplane.responses import answer_headers, failure, unavailable
from lane.dataplane.upgrades import ConnectFailed, UpstreamBroken, UpstreamFailure, request_target
from lane.telemetry.metrics import GATEWAY_SOURCE, Source, observe_request

__all__ = ["Refused", "forward_websocket", "open_websocket", "pump_websockets", "refused_answer"]

log = logging.getLogger(__name__)

_DEFAULT_MAX_MESSAGE: Final = ProxySpec().max_websocket_message
_HANDSHAKE = ("sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol")


@dataclass(frozen=True, slots=True)
class Refused:
    """The upstream's answer to an upgrade it did not accept (any status but 101)."""

    status: int
    headers: CIMultiDictProxy[str]


def refused_answer(refused: Refused, headers: CIMultiDict[str]) -> web.Response:
    """The plain answer that relays a refused upgrade; *headers* are the answer headers to send."""
    for name in ("content-length", "content-encoding"):
        headers.popall(name, None)  # the body is not relayed
    return web.Response(status=refused.status, headers=headers)


def _protocols(request: web.BaseRequest) -> tuple[str, ...]:
    value = request.headers.get("Sec-WebSocket-Protocol", "")
    return tuple(p.strip() for p in value.split(",") if p.strip())


async def open_websocket(
    session: aiohttp.ClientSession, endpoint: Endpoint, target: str, headers: CIMultiDict[str],
    protocols: tuple[str, ...], connect_timeout: float, *, max_message: int = _DEFAULT_MAX_MESSAGE,
) -> aiohttp.ClientWebSocketResponse | Refused:
    """Open the upstream side of a WebSocket; a non-101 answer is returned as `Refused`, not raised."""
    for name in _HANDSHAKE:
        headers.popall(name, None)
    url = URL(f"http://{endpoint}{target}", encoded=True)
    try:
        return await session.ws_connect(
            url, headers=headers, protocols=protocols, max_msg_size=max_message + 1, compress=0, autoping=True,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
        )
    except aiohttp.ClientConnectorError as exc:
        raise ConnectFailed(endpoint, f"connect failed: {exc.os_error.strerror or exc.os_error}") from None
    except aiohttp.ConnectionTimeoutError:
        raise ConnectFailed(endpoint, f"connect timed out after {connect_timeout:g}s") from None
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status != 101:
            return Refused(exc.status, CIMultiDictProxy(CIMultiDict(exc.headers or {})))
        raise UpstreamBroken(endpoint, f"websocket handshake refused: {exc.status} {exc.message}"[:200]) from None
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise UpstreamBroken(endpoint, f"{type(exc).__name__}: {exc}"[:200]) from None


async def _pump(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
    async for msg in src:
        if msg.type is aiohttp.WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type is aiohttp.WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type is aiohttp.WSMsgType.ERROR:
            break
    if not dst.closed:
        code = src.close_code if src.close_code is not None else aiohttp.WSCloseCode.GOING_AWAY
        await dst.close(code=code)


async def pump_websockets(down: web.WebSocketResponse, up: aiohttp.ClientWebSocketResponse) -> None:
    """Relay frames both ways until either side closes; then close the other."""
    tasks = [asyncio.create_task(_pump(down, up)), asyncio.create_task(_pump(up, down))]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() is not None:
                log.debug("websocket relay ended: %s", task.exception())
        await asyncio.wait(pending, timeout=5.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not up.closed:
            await up.close()
        if not down.closed:
            await down.close()


async def forward_websocket(
    request: web.Request, session: aiohttp.ClientSession, registry: Registry, config: LaneConfig,
    *, service: str, lane: str, headers: CIMultiDict[str], proxy: str, source: Source = GATEWAY_SOURCE,
) -> web.StreamResponse:
    """Route a WebSocket upgrade down its lane and relay it (its duration: until the upgrade answer)."""
    started = perf_counter()
    protocols = _protocols(request)
    target = request_target(request)

    async def opener(endpoint: Endpoint, attempt_headers: CIMultiDict[str],
                     _wait: float) -> aiohttp.ClientWebSocketResponse | Refused:
        return await open_websocket(session, endpoint, target, attempt_headers, protocols, config.proxy.connect_timeout,
                                    max_message=config.proxy.max_websocket_message)

    try:
        sent = await dispatch(registry, config, service=service, lane=lane, headers=headers,
                              opener=opener, may_retry=lambda: True)
    except UpstreamUnavailable as exc:
        observe_request(config, proxy, service, lane, None, None, 503, started=started, source=source)
        return unavailable(exc)
    except UpstreamFailure as exc:
        observe_request(config, proxy, service, lane, None, None, exc.status, started=started, source=source)
        return failure(exc)
    up = sent.response
    if isinstance(up, Refused):
        observe_request(config, proxy, service, lane, sent.route.lane, sent.hop.fallback, up.status,
                        started=started, source=source)
        return refused_answer(up, answer_headers(up.headers, sent.hop))
    down = web.WebSocketResponse(protocols=(up.protocol,) if up.protocol else (),
                                 max_msg_size=config.proxy.max_websocket_message + 1, autoping=True)
    down.headers[PATH_HEADER] = sent.hop.encode()
    down.headers[SERVED_HEADER] = sent.hop.lane
    if sent.hop.fallback:
        down.headers[FALLBACK_HEADER] = sent.hop.fallback
    observe_request(config, proxy, service, lane, sent.route.lane, sent.hop.fallback, 101, started=started,
                    source=source)
    await down.prepare(request)
    await pump_websockets(down, up)
    return down
