"""The forwarding core, through the gateway, over real sockets on 127.0.0.1.

The gateway and a purpose-built upstream run in the test's event loop (real listeners, real
connections); the memory check runs the gateway as its own process so its RSS can be measured.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
from aiohttp import web

from lane.core.config_load import parse_config
from lane.dataplane.runtime import Runtime
from lane.gateway.main import build_gateway_app
from tests.support.processes import lane_process, serve_app

PROXY_SPEC = "proxy: {request_timeout: 1.5, connect_timeout: 0.5, retries: 1}"


def config_text(port: int, proxy: str = PROXY_SPEC) -> str:
    return f"entry: up\n{proxy}\nservices:\n  up:\n    instances:\n      base: [\"127.0.0.1:{port}\"]\n"


async def _inspect(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({
        "method": request.method, "target": request.raw_path, "headers": list(request.headers.items()),
        "body": len(body),
    })


async def _redirect(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "/elsewhere"})


async def _gzip(request: web.Request) -> web.Response:
    return web.Response(body=gzip.compress(b"hello " * 100), headers={"Content-Encoding": "gzip",
                                                                        "Content-Type": "text/plain"})


async def _hop(request: web.Request) -> web.Response:
    response = web.Response(text="hop", status=203, reason="Non-Authoritative Information",
                            headers={"Connection": "X-Private", "X-Private": "secret", "Keep-Alive": "timeout=5",
                                     "X-End": "kept"})
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    return response


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.Response(text="late")


async def _upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"size": size, "sha256": digest.hexdigest()})


async def _download(request: web.Request) -> web.StreamResponse:
    total = int(request.query["size"])
    response = web.StreamResponse()
    response.content_length = total
    await response.prepare(request)
    block = b"x" * (1024 * 1024)
    sent = 0
    while sent < total:
        await response.write(block[: total - sent])
        sent += min(len(block), total - sent)
    await response.write_eof()
    return response


async def _trickle(request: web.Request) -> web.StreamResponse:
    """A streamed answer that takes 3 s, a chunk every 0.4 s: slow, but never silent for long."""
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(8):
        await response.write(b"t" * 1000)
        await asyncio.sleep(0.4)
    await response.write_eof()
    return response


async def _stall_upload(request: web.Request) -> web.Response:
    """Reads nothing of the body and never answers: a hung app behind a big upload."""
    await asyncio.sleep(30)
    return web.Response(text="never")


HELD: web.AppKey[asyncio.Event] = web.AppKey("held", asyncio.Event)


async def _held(request: web.Request) -> web.StreamResponse:
    """The head at once, the body only once the test releases it (a long poll, a slow stream)."""
    response = web.StreamResponse(headers={"X-Head": "early"})
    await response.prepare(request)
    await request.app[HELD].wait()
    await response.write(b"late body")
    await response.write_eof()
    return response


def upstream_app() -> web.Application:
    app = web.Application()
    app[HELD] = asyncio.Event()
    app.router.add_get("/held", _held)
    app.router.add_get("/redirect", _redirect)
    app.router.add_get("/gzip", _gzip)
    app.router.add_get("/hop", _hop)
    app.router.add_get("/slow", _slow)
    app.router.add_post("/upload", _upload)
    app.router.add_get("/download", _download)
    app.router.add_get("/trickle", _trickle)
    app.router.add_post("/stall", _stall_upload)
    app.router.add_route("*", "/{tail:.*}", _inspect)
    return app


async def gateway_on(text: str) -> tuple[web.Application, Runtime]:
    runtime = Runtime(parse_config(text, "test.yaml"), None)
    return build_gateway_app(runtime), runtime


async def test_method_path_query_and_end_to_end_headers_are_preserved() -> None:
    async with serve_app(upstream_app()) as up:
        app, _ = await gateway_on(config_text(up))
        async with serve_app(app) as gw, aiohttp.ClientSession() as client:
            url = f"http://127.0.0.1:{gw}/some/p%2Fath?q=1&q=2&x=%20y"
            headers = {"X-Custom": "1", "Connection": "keep-alive, X-Hop", "X-Hop": "drop me", "TE": "trailers",
                       "Proxy-Authorization": "Basic Zm9v", "Host": "shop.example"}
            async with client.patch(url, data=b"payload", headers=headers) as resp:
                seen = await resp.json()
    assert seen["method"] == "PATCH" and seen["target"] == "/some/p%2Fath?q=1&q=2&x=%20y" and seen["body"] == 7
    names = {k.lower(): v for k, v in seen["headers"]}
    assert names["x-custom"] == "1" and names["host"] == "shop.example"
    assert "x-hop" not in names and "te" not in names and "proxy-authorization" not in names
    assert names["x-forwarded-for"] == "127.0.0.1" and names["x-forwarded-proto"] == "http"
    assert names["x-forwarded-host"] == "shop.example"
    assert names["x-mse-tag"] == "base" and names["baggage"] == "x-mse-tag=base"
    assert names["traceparent"].startswith("00-") and names["x-request-id"]


async def test_status_reason_cookies_kept_hop_by_hop_answer_headers_stripped() -> None:
    async with serve_app(upstream_app()) as up:
        app, _ = await gateway_on(config_text(up))
        async with serve_app(app) as gw, aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{gw}/hop") as resp:
                assert (resp.status, resp.reason) == (203, "Non-Authoritative Information")
                assert resp.headers["X-End"] == "kept" and "X-Private" not in resp.headers
                assert "Keep-Alive" not in resp.headers
                assert len(resp.headers.getall("Set-Cookie")) == 2
                assert resp.headers["x-lane-path"].startswith(f"up@base;requested=base;instance=127.0.0.1:{up}")
                assert resp.headers["x-lane-served"] == "base"


async def test_redirects_are_passed_back_not_followed_and_bodies_not_decompressed() -> None:
    async with serve_app(upstream_app()) as up:
        app, _ = await gateway_on(config_text(up))
        async with serve_app(app) as gw, aiohttp.ClientSession(auto_decompress=False) as client:
            async with client.get(f"http://127.0.0.1:{gw}/redirect", allow_redirects=False) as resp:
                assert resp.status == 302 and resp.headers["Location"] == "/elsewhere"
            async with client.get(f"http://127.0.0.1:{gw}/gzip", headers={"Accept-Encoding": "gzip"}) as resp:
                assert resp.headers["Content-Encoding"] == "gzip"
                assert gzip.decompress(await resp.read()) == b"hello " * 100


async def test_the_head_of_a_slow_answer_is_relayed_before_its_body_arrives() -> None:
    upstream = upstream_app()
    async with serve_app(upstream) as up:
        app, _ = await gateway_on(config_text(up, "proxy: {request_timeout: 10}"))
        async with serve_app(app) as gw, aiohttp.ClientSession() as client:
            async with asyncio.timeout(5):
                async with client.get(f"http://127.0.0.1:{gw}/held") as resp:
                    # The upstream holds its body until the head reached the client through the gateway.
                    assert resp.status == 200 and resp.headers["X-Head"] == "early"
                    upstream[HELD].set()
                    assert await resp.read() == b"late body"


async def test_a_small_answer_is_relayed_whole_and_the_connection_kept() -> None:
    async with serve_app(upstream_app()) as up:
        app, _ = await gateway_on(config_text(up))
        async with serve_app(app) as gw:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw)
            try:
                for target in (b"/hop", b"/hop"):  # twice on one connection: the framing is intact
                    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                    assert head.startswith(b"HTTP/1.1 203 ") and b"\r\nContent-Length: 3\r\n" in head
                    assert await asyncio.wait_for(reader.readexactly(3), 10) == b"hop"
            finally:
                writer.close()


async def test_connection_refused_is_a_short_502_and_timeouts_a_504() -> None:
    async with serve_app(upstream_app()) as up:
        pass  # the port is closed again: nothing listens there
    app, _ = await gateway_on(config_text(up))
    async with serve_app(app) as gw, aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{gw}/") as resp:
            text = await resp.text()
            assert resp.status == 502 and "connect failed" in text and len(text) < 300
    async with serve_app(upstream_app()) as up:
        app, _ = await gateway_on(config_text(up))
        async with serve_app(app) as gw, aiohttp.ClientSession() as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with client.get(f"http://127.0.0.1:{gw}/slow") as resp:
                assert resp.status == 504 and "timed out" in await resp.text()
            assert loop.time() - started < 4.5  # 1.5s per attempt, one retry for a GET


async def _trickled(chunks: int, pause: float) -> AsyncIterator[bytes]:
    for _ in range(chunks):
        yield b"u" * 1000
        await asyncio.sleep(pause)


async def test_request_timeout_bounds_silence_not_slow_uploads_and_downloads() -> None:
    """1 s of request_timeout: a 3 s upload and a 3 s streamed answer both complete, because data keeps flowing."""
    async with serve_app(upstream_app()) as up:
        app, _ = await gateway_on(config_text(up, "proxy: {request_timeout: 1, retries: 0}"))
        async with serve_app(app) as gw, aiohttp.ClientSession() as client, asyncio.timeout(20):
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with client.post(f"http://127.0.0.1:{gw}/upload", data=_trickled(8, 0.4)) as resp:
                assert resp.status == 200 and (await resp.json())["size"] == 8000
            assert loop.time() - started > 2.5  # it really was slower than the timeout
            started = loop.time()
            async with client.get(f"http://127.0.0.1:{gw}/trickle") as resp:
                assert resp.status == 200 and await resp.read() == b"t" * 8000
            assert loop.time() - started > 2.5


async def test_a_stall_is_still_a_quick_504_after_an_upload_and_a_cut_while_streaming() -> None:
    async with serve_app(upstream_app()) as up:
        app, _ = await gateway_on(config_text(up, "proxy: {request_timeout: 1, retries: 0}"))
        async with serve_app(app) as gw, aiohttp.ClientSession() as client:
            loop = asyncio.get_running_loop()
            for data in (b"small body", _generated(64 * 1024 * 1024)):  # sent whole / the app stops reading
                started = loop.time()
                async with client.post(f"http://127.0.0.1:{gw}/stall", data=data) as resp:
                    assert resp.status == 504 and "timed out" in await resp.text()
                assert loop.time() - started < 4
            upstream_held = f"http://127.0.0.1:{gw}/held"  # the head, then silence: the answer is cut
            started = loop.time()
            async with client.get(upstream_held) as resp:
                assert resp.status == 200
                try:
                    await resp.read()
                    raise AssertionError("a stalled answer must be cut, not completed")
                except aiohttp.ClientPayloadError:
                    pass
            assert loop.time() - started < 4


class FlakyUpstream:
    """A raw HTTP server that drops the first connection's request unanswered, then answers."""

    def __init__(self) -> None:
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        if length:
            await reader.readexactly(length)
        self.requests += 1
        if self.requests > 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        writer.close()


async def test_idempotent_requests_are_retried_once_others_are_not() -> None:
    for method, expected_status, expected_requests in (("GET", 200, 2), ("POST", 502, 1)):
        flaky = FlakyUpstream()
        server = await asyncio.start_server(flaky.handle, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            app, _ = await gateway_on(config_text(port))
            async with serve_app(app) as gw, aiohttp.ClientSession() as client:
                async with client.request(method, f"http://127.0.0.1:{gw}/x", data=b"body" if method == "POST"
                                          else None) as resp:
                    assert resp.status == expected_status, method
            assert flaky.requests == expected_requests, method
        finally:
            server.close()
            await server.wait_closed()


async def _generated(total: int, block: int = 1024 * 1024) -> AsyncIterator[bytes]:
    chunk = bytes(range(256)) * (block // 256)
    sent = 0
    while sent < total:
        yield chunk[: total - sent]
        sent += min(block, total - sent)


async def test_a_50_mib_body_streams_both_ways_with_bounded_memory(tmp_path: Path) -> None:
    size = 50 * 1024 * 1024
    expected = hashlib.sha256()
    async for chunk in _generated(size):
        expected.update(chunk)
    async with serve_app(upstream_app()) as up:
        config = tmp_path / "lane.yaml"
        config.write_text(config_text(up))  # request_timeout 1.5 s: it bounds silence, not size
        with lane_process(tmp_path, "gateway", "gateway", "--config", str(config), "--listen", "127.0.0.1:0",
                          "--admin", "127.0.0.1:0") as gateway:
            process = psutil.Process(gateway.popen.pid)
            async with aiohttp.ClientSession() as client:
                await (await client.get(gateway.url("gateway") + "/warm")).read()
                baseline = process.memory_info().rss
                peak = baseline

                async def sample() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, process.memory_info().rss)
                        await asyncio.sleep(0.02)

                sampler = asyncio.create_task(sample())
                try:
                    async with client.post(gateway.url("gateway") + "/upload", data=_generated(size)) as resp:
                        assert resp.status == 200
                        assert await resp.json() == {"size": size, "sha256": expected.hexdigest()}
                    async with client.get(gateway.url("gateway") + f"/download?size={size}") as resp:
                        received = 0
                        async for chunk in resp.content.iter_chunked(1024 * 1024):
                            received += len(chunk)
                        assert received == size
                finally:
                    sampler.cancel()
    growth = (peak - baseline) / (1024 * 1024)
    print(f"gateway RSS growth while streaming: {growth:.1f} MiB")
    assert growth < 40, f"gateway RSS grew by {growth:.1f} MiB while streaming 50 MiB each way"


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


async def test_malformed_and_oversized_requests_get_4xx_and_the_proxy_keeps_serving() -> None:
    async with serve_app(upstream_app()) as up:
        app, _ = await gateway_on(config_text(up))
        async with serve_app(app) as gw:
            bad = [
                b"GARBAGE\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
                b"GET /" + b"p" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            ]
            for request in bad:
                answer = await _raw(gw, request)
                status = int(answer.split(b" ", 2)[1])
                assert 400 <= status < 500, (request[:40], answer[:80])
            # large but legal: 2000 baggage members are handled, not refused
            answer = await _raw(gw, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nbaggage: "
                                + b"k=v," * 2000 + b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200")
            async with aiohttp.ClientSession() as client, client.get(f"http://127.0.0.1:{gw}/still") as resp:
                assert resp.status == 200 and (await resp.json())["target"] == "/still"


async def test_explain_json_maps_a_broken_or_silent_json_answer_to_502_or_504() -> None:
    """With --explain-json the gateway reads small JSON answers whole: a cut or stalled body is 502/504, not a 500."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\": ")
        await writer.drain()
        if b"/stall" in head.split(b"\r\n")[0]:
            await asyncio.sleep(10)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        runtime = Runtime(parse_config(config_text(port, "proxy: {request_timeout: 1, retries: 0}"), "t.yaml"), None)
        async with serve_app(build_gateway_app(runtime, explain_json=True)) as gw, \
                aiohttp.ClientSession() as client:
            for target, status in (("/cut", 502), ("/stall", 504)):
                async with client.get(f"http://127.0.0.1:{gw}{target}") as resp:
                    assert resp.status == status, target
                    assert resp.headers["x-lane-path"].endswith(f"error={status}")
    finally:
        server.close()
        await server.wait_closed()
