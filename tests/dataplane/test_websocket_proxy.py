"""WebSocket upgrades through the gateway and a sidecar: refusals relayed, the last instances kept, size limits.

Gateway, sidecar and upstream apps run in the test's event loop over real sockets on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from lane.core.config_load import parse_config
from lane.core.endpoint import Endpoint
from lane.core.errors import ConfigError
from lane.dataplane.runtime import Runtime
from lane.gateway.main import build_gateway_app
from lane.sidecar.inbound import build_inbound_app
from lane.sidecar.state import Sidecar
from tests.support.processes import serve_app


async def _hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": True})


async def _auth(request: web.Request) -> web.Response:
    return web.Response(status=401, text="who are you?", headers={"WWW-Authenticate": 'Basic realm="ws"'})


def upstream_app() -> web.Application:
    """Knows ``/`` and a ``/auth`` that wants credentials; every other path is a 404, upgrade or not."""
    app = web.Application()
    app.router.add_get("/", _hello)
    app.router.add_get("/auth", _auth)
    return app


@dataclass(frozen=True)
class Gateway:
    url: str
    runtime: Runtime
    instance: Endpoint


@asynccontextmanager
async def gateway_to(port: int, proxy: str = "{}") -> AsyncIterator[Gateway]:
    text = f"proxy: {proxy}\nentry: a\nservices:\n  a: {{instances: {{base: ['127.0.0.1:{port}']}}}}\n"
    runtime = Runtime(parse_config(text, "ws.yaml"), None)
    async with serve_app(build_gateway_app(runtime)) as gw:
        yield Gateway(f"http://127.0.0.1:{gw}", runtime, Endpoint("127.0.0.1", port))


async def refused_upgrade(client: aiohttp.ClientSession, url: str) -> aiohttp.WSServerHandshakeError:
    try:
        async with client.ws_connect(url):
            pass
    except aiohttp.WSServerHandshakeError as exc:
        return exc
    raise AssertionError(f"the upgrade to {url} was accepted")


async def test_a_refused_upgrade_is_relayed_and_does_not_eject_the_instance() -> None:
    async with serve_app(upstream_app()) as app, gateway_to(app) as gw, aiohttp.ClientSession() as client:
        for _ in range(2 * gw.runtime.config.proxy.eject_after_failures):
            refused = await refused_upgrade(client, gw.url + "/nope")
            assert refused.status == 404  # the upstream's answer, not a 502 from the gateway
            assert refused.headers is not None and refused.headers["x-lane-served"] == "base"
        refused = await refused_upgrade(client, gw.url + "/auth")
        assert refused.status == 401 and refused.headers is not None
        assert refused.headers["WWW-Authenticate"] == 'Basic realm="ws"'
        assert gw.runtime.registry.health.snapshot(gw.instance).healthy  # it answered every time
        async with client.get(gw.url + "/") as resp:
            assert resp.status == 200 and await resp.json() == {"hello": True}


async def test_a_sidecar_relays_its_apps_refusal_with_its_own_hop() -> None:
    async with serve_app(upstream_app()) as app:
        runtime = Runtime(parse_config(f"entry: a\nservices: {{a: {{instances: {{base: ['127.0.0.1:{app}']}}}}}}",
                                       "sc.yaml"), None)
        sidecar = Sidecar.create(runtime, "a", "base", Endpoint("127.0.0.1", app))
        async with serve_app(build_inbound_app(sidecar)) as inbound, gateway_to(inbound) as gw, \
                aiohttp.ClientSession() as client:
            refused = await refused_upgrade(client, gw.url + "/auth")
            assert refused.status == 401 and refused.headers is not None
            assert refused.headers["WWW-Authenticate"] == 'Basic realm="ws"'
            assert refused.headers["x-lane-path"].split(";")[0] == "a@base"
            assert gw.runtime.registry.health.snapshot(gw.instance).healthy


async def test_the_only_instances_of_the_default_lane_are_tried_even_when_ejected() -> None:
    async with serve_app(upstream_app()) as app, gateway_to(app) as gw, aiohttp.ClientSession() as client:
        health = gw.runtime.registry.health
        for _ in range(gw.runtime.config.proxy.eject_after_failures):
            health.record_failure(gw.instance)
        assert not health.is_available(gw.instance)
        async with client.get(gw.url + "/") as resp:  # panic: a 503 for everyone would be worse than a try
            assert resp.status == 200 and resp.headers["x-lane-served"] == "base"
        assert health.is_available(gw.instance)  # it answered: the ejection is lifted


async def _echo_ws(request: web.Request) -> web.WebSocketResponse:
    """Echoes text; on ``big N`` answers with N bytes (the upstream allows any size)."""
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT and msg.data.startswith("big "):
            await ws.send_bytes(b"\0" * int(msg.data[4:]))
        elif msg.type is aiohttp.WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def ws_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/ws", _echo_ws)
    return app


LIMIT = 64 * 1024


async def test_a_message_over_the_limit_closes_with_1009_either_way() -> None:
    assert parse_config("entry: a\nservices: {a: {instances: {base: ['127.0.0.1:1']}}}", "d.yaml") \
        .proxy.max_websocket_message == 4 * 1024 * 1024  # aiohttp's own default
    async with serve_app(ws_app()) as app, gateway_to(app, f"{{max_websocket_message: {LIMIT}}}") as gw, \
            aiohttp.ClientSession() as client:
        async with client.ws_connect(gw.url + "/ws", max_msg_size=0) as ws:
            await ws.send_bytes(b"\1" * LIMIT)  # at the limit: relayed
            assert (await ws.receive(timeout=10)).data == b"\1" * LIMIT
            await ws.send_bytes(b"\2" * (LIMIT + 1))
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        async with client.ws_connect(gw.url + "/ws", max_msg_size=0) as ws:  # the upstream sends too much
            await ws.send_str(f"big {LIMIT + 1}")
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


async def test_a_sidecar_limits_websocket_messages_too() -> None:
    text = f"proxy: {{max_websocket_message: {LIMIT}}}\nentry: a\nservices: {{a: {{instances: {{base: ['127.0.0.1:1']}}}}}}"
    async with serve_app(ws_app()) as app:
        sidecar = Sidecar.create(Runtime(parse_config(text, "sc.yaml"), None), "a", "base", Endpoint("127.0.0.1", app))
        async with serve_app(build_inbound_app(sidecar)) as inbound, aiohttp.ClientSession() as client, \
                client.ws_connect(f"http://127.0.0.1:{inbound}/ws", max_msg_size=0) as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=10)).data == "hello"
            await ws.send_bytes(b"\2" * (LIMIT + 1))
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


def test_the_websocket_limit_must_be_a_positive_integer() -> None:
    with pytest.raises(ConfigError, match="max_websocket_message"):
        parse_config("proxy: {max_websocket_message: 0}\nentry: a\nservices: {a: {instances: {base: ['127.0.0.1:1']}}}",
                     "bad.yaml")
