"""Hop-aware timeouts: a hung instance deep in the chain is named and blamed, never the healthy hops above it.

The chain is gateway -> a (base, gray) -> b -> c (base, gray), every proxy a real listener on
127.0.0.1 (the gateway, each instance's sidecar inbound/outbound and admin listener, in this event
loop like the other proxy tests, on the one forwarding core) and
every app a real aiohttp server. The apps forward only the lane and trace headers, never
``x-lane-deadline-ms``: the sidecars carry the budget over on their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from aiohttp import web

from lane.core.config_load import parse_config
from lane.core.deadline import DEADLINE_HEADER
from lane.core.endpoint import Endpoint
from lane.core.hops import PATH_HEADER, parse_path
from lane.dataplane.runtime import Runtime
from lane.gateway.main import build_gateway_app
from lane.process.admin import admin_path
from lane.sidecar.inbound import build_inbound_app
from lane.sidecar.outbound import build_outbound_app
from lane.sidecar.state import Sidecar
from tests.support.processes import free_port, serve_app, serve_handler

FORWARD: Final = ("traceparent", "x-request-id", "x-mse-tag", "baggage")
GRAY: Final = {"x-user": "gray"}
CONFIG: Final = """
lanes: {{gray: {{fallback: base}}}}
entry: a
coloring:
  - {{lane: gray, match: {{headers: [{{name: x-user, exact: gray}}]}}}}
proxy: {{request_timeout: 3, deadline_margin: 0.25, retries: 1, eject_after_failures: 2, eject_seconds: 60}}
services:
  a: {{instances: {{base: ["127.0.0.1:{a_base}"], gray: ["127.0.0.1:{a_gray}"]}}}}
  b: {{instances: {{base: ["127.0.0.1:{b_base}"]}}}}
  c: {{instances: {{base: ["127.0.0.1:{c_base}"], gray: ["127.0.0.1:{c_gray}"]}}}}
"""
OUTBOUND: Final = web.AppKey("outbound", str)
CALLEE: Final = web.AppKey("callee", str)
RELEASE: Final = web.AppKey("release", asyncio.Event)


async def _calling(request: web.Request) -> web.Response:
    """An app that calls the next service through its sidecar and answers with that call's status and body."""
    callee = request.app[CALLEE]
    headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARD}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(f"http://{callee}/", headers=headers, proxy=request.app[OUTBOUND]) as resp:
            return web.Response(status=resp.status, body=await resp.read())


def calling_app(callee: str, outbound: int) -> web.Application:
    app = web.Application()
    app[OUTBOUND] = f"http://127.0.0.1:{outbound}"
    app[CALLEE] = callee
    app.router.add_get("/", _calling)
    return app


async def _hang(request: web.Request) -> web.Response:
    await request.app[RELEASE].wait()  # bounded: the test sets it before it stops the servers
    return web.Response(text="late")


def leaf_app(release: asyncio.Event | None) -> web.Application:
    """c: answers at once, or (with *release*) hangs until the test lets it go."""
    app = web.Application()
    if release is None:
        app.router.add_get("/", _ok)
    else:
        app[RELEASE] = release
        app.router.add_get("/", _hang)
    return app


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@dataclass
class Chain:
    gateway: str
    admins: dict[str, str]  # proxy name -> admin URL ("gateway", "a@gray", ...)

    async def view(self, client: aiohttp.ClientSession, proxy: str) -> dict[str, Any]:
        async with client.get(self.admins[proxy] + "/lane/instances") as resp:
            assert resp.status == 200
            services: dict[str, Any] = (await resp.json())["services"]
            return services


@asynccontextmanager
async def chain(release: asyncio.Event) -> AsyncIterator[Chain]:
    """gateway -> a (base, gray) -> b -> c (base, gray: hangs until *release*), each with its sidecar."""
    names = ("a_base", "a_gray", "b_base", "c_base", "c_gray")
    inbound = {name: free_port() for name in names}
    outbound = {name: free_port() for name in names}
    text = CONFIG.format(**inbound)
    apps = {
        "a_base": calling_app("b", outbound["a_base"]), "a_gray": calling_app("b", outbound["a_gray"]),
        "b_base": calling_app("c", outbound["b_base"]),
        "c_base": leaf_app(None), "c_gray": leaf_app(release),
    }
    admins: dict[str, str] = {}
    async with AsyncExitStack() as stack:
        for name in names:
            app_port = await stack.enter_async_context(serve_app(apps[name]))
            runtime = Runtime(parse_config(text, "chain.yaml"), None)
            service, lane = name.split("_")
            sidecar = Sidecar.create(runtime, service, lane, Endpoint("127.0.0.1", app_port))
            await stack.enter_async_context(serve_app(build_inbound_app(sidecar), port=inbound[name]))
            await stack.enter_async_context(serve_app(build_outbound_app(sidecar), port=outbound[name]))
            admin = await stack.enter_async_context(serve_handler(admin_path(runtime)))
            admins[f"{service}@{lane}"] = f"http://127.0.0.1:{admin}"
        gw_runtime = Runtime(parse_config(text, "chain.yaml"), None)
        gateway = await stack.enter_async_context(serve_app(build_gateway_app(gw_runtime)))
        admins["gateway"] = f"http://127.0.0.1:{await stack.enter_async_context(serve_handler(admin_path(gw_runtime)))}"
        try:
            yield Chain(f"http://127.0.0.1:{gateway}", admins)
        finally:
            release.set()


def unhealthy(view: dict[str, Any]) -> dict[str, list[str]]:
    """Instances that are ejected or have failures counted against them, per ``service@lane``."""
    out: dict[str, list[str]] = {}
    for service, lanes in view.items():
        for lane, instances in lanes.items():
            for inst in instances:
                if not inst["healthy"] or inst["consecutive_failures"]:
                    out.setdefault(f"{service}@{lane}", []).append(inst["instance"])
    return out


async def test_a_hung_inner_instance_is_named_and_blamed_and_no_healthy_hop_is_ejected() -> None:
    release = asyncio.Event()
    async with chain(release) as ch, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as client:
        answers: list[tuple[int, list[str], list[str | None]]] = []
        for _ in range(5):  # sequential: each hanging request costs the innermost budget (~1.8 s)
            async with client.get(ch.gateway + "/", headers=GRAY) as resp:
                await resp.read()
                hops = parse_path(resp.headers.getall(PATH_HEADER, []))
                answers.append((resp.status, [h.label() for h in hops], [h.error for h in hops]))
        # c@gray hangs: the innermost proxy (b's sidecar) times out first and names it ...
        for status, labels, errors in answers[:2]:
            assert status == 504, answers
            assert labels[0] == "a@gray" and "c@gray" in labels, answers
            assert errors[labels.index("c@gray")] == "504" and errors[0] is None, answers
        # ... counts it against c@gray, which is ejected (eject_after_failures: 2), and gray falls back to c@base
        for status, labels, errors in answers[2:]:
            assert status == 200 and labels == ["a@gray", "b@base", "c@base"], answers
        # no healthy instance was blamed anywhere: not a@gray, a@base (gateway), not b (a's sidecar)
        assert unhealthy(await ch.view(client, "gateway")) == {}
        assert unhealthy(await ch.view(client, "a@gray")) == {}
        b_view = await ch.view(client, "b@base")
        assert list(unhealthy(b_view)) == ["c@gray"] and b_view["c"]["gray"][0]["healthy"] is False


async def test_a_client_cannot_shorten_the_gateways_wait_but_a_trusted_peer_can_only_shorten_it() -> None:
    seen: list[str | None] = []

    async def slow(request: web.Request) -> web.Response:
        seen.append(request.headers.get(DEADLINE_HEADER))
        await asyncio.sleep(0.3)
        return web.Response(text="ok")

    up = web.Application()
    up.router.add_get("/", slow)
    async with serve_app(up) as port, aiohttp.ClientSession() as client:
        for trusted in ("", "127.0.0.0/8"):
            text = (f"entry: up\nproxy: {{request_timeout: 2, trusted_cidrs: [{trusted}]}}\n"
                    f"services: {{up: {{instances: {{base: ['127.0.0.1:{port}']}}}}}}\n")
            runtime = Runtime(parse_config(text, "t.yaml"), None)
            async with serve_app(build_gateway_app(runtime)) as gw:
                for sent in ("1", "99999999", "-5", "1e9", "x"):
                    calls = len(seen)
                    async with client.get(f"http://127.0.0.1:{gw}/", headers={DEADLINE_HEADER: sent}) as resp:
                        status = resp.status
                    if trusted and sent == "1":  # a trusted peer's 1 ms budget: spent before it could be sent
                        assert status == 504 and len(seen) == calls
                        continue
                    # ignored (untrusted, or not a budget) or capped: request_timeout less the margin
                    given = seen[-1]
                    assert status == 200 and given is not None and 1700 <= int(given) <= 1750, (trusted, sent, given)
            assert runtime.registry.health.any_ejected() is False


@asynccontextmanager
async def dying_app(seen: list[str]) -> AsyncIterator[int]:
    """An app that drops the connection after reading the request: always on ``/die``, the first time on ``/die-once``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target = head.split(b" ", 2)[:2]
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":", 1)[1]))
            seen.append(f"{method.decode()} {target.decode()}")
            if target == b"/die" or (target == b"/die-once" and seen.count(seen[-1]) == 1):
                writer.transport.abort()  # the app process died mid-request
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_an_app_dying_mid_request_is_retried_when_idempotent_and_counted_against_its_instance() -> None:
    seen: list[str] = []
    async with AsyncExitStack() as stack, aiohttp.ClientSession() as client:
        base_port = await stack.enter_async_context(serve_app(leaf_app(None)))
        app_port = await stack.enter_async_context(dying_app(seen))
        gray_in = free_port()
        text = (f"lanes: {{gray: {{fallback: base}}}}\nentry: c\n"
                "coloring:\n  - {lane: gray, match: {headers: [{name: x-user, exact: gray}]}}\n"
                "proxy: {request_timeout: 3, retries: 1, eject_after_failures: 5}\n"
                f"services: {{c: {{instances: {{base: ['127.0.0.1:{base_port}'], gray: ['127.0.0.1:{gray_in}']}}}}}}\n")
        sidecar = Sidecar.create(Runtime(parse_config(text, "c.yaml"), None), "c", "gray",
                                 Endpoint("127.0.0.1", app_port))
        await stack.enter_async_context(serve_app(build_inbound_app(sidecar), port=gray_in))
        runtime = Runtime(parse_config(text, "c.yaml"), None)
        gateway = f"http://127.0.0.1:{await stack.enter_async_context(serve_app(build_gateway_app(runtime)))}"

        def failures() -> int:
            return int(runtime.registry.view()["c"]["gray"][0]["consecutive_failures"])

        # idempotent: the gateway tries again (the app is back), and the client never sees the death
        async with client.get(gateway + "/die-once", headers=GRAY) as resp:
            assert resp.status == 200 and await resp.text() == "ok"
        assert seen == ["GET /die-once", "GET /die-once"] and failures() == 0  # the answer cleared it
        # the app keeps dying: both attempts count against c@gray, the answer names it
        async with client.get(gateway + "/die", headers=GRAY) as resp:
            hops = parse_path(resp.headers.getall(PATH_HEADER, []))
            assert resp.status == 502 and "x-lane-unavailable" not in resp.headers  # never past its direct caller
        assert [(h.label(), h.error) for h in hops] == [("c@gray", "502")] and failures() == 2
        # not idempotent: sent once, never again, and still counted against the instance whose app died
        async with client.post(gateway + "/die", data=b"order #1", headers=GRAY) as resp:
            assert resp.status == 502 and "x-lane-unavailable" not in resp.headers
        assert seen.count("POST /die") == 1 and failures() == 3
        assert runtime.registry.view()["c"]["base"][0]["consecutive_failures"] == 0
