"""The fast core's 64 KiB request-head limit, on the gateway and both sidecar listeners, over real sockets.

The limit holds however the head arrives (one write, trickled, many small fields, one huge field),
and the client reads a well-formed 431 followed by a clean end of stream, not a connection reset
(a socket closed with unread bytes answers with a reset, which can destroy the 431 in flight).
The proxies and the app run in the test's event loop on 127.0.0.1; the client is a raw socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from aiohttp import web

from lane.core.config_load import parse_config
from lane.core.endpoint import Endpoint
from lane.dataplane.runtime import Runtime
from lane.engine.head import MAX_HEAD
from lane.gateway.main import build_gateway_app
from lane.sidecar.inbound import build_inbound_app
from lane.sidecar.main import Sidecar
from lane.sidecar.outbound import build_outbound_app
from tests.support.processes import serve_app

CONFIG = """
entry: app
services:
  app: {{instances: {{base: ["127.0.0.1:{port}"]}}}}
"""


async def _echo_size(request: web.Request) -> web.Response:
    size = sum(len(k) + len(v) for k, v in request.raw_headers)
    return web.Response(text=f"head fields {size} bytes")


@asynccontextmanager
async def listeners() -> AsyncIterator[dict[str, int]]:
    """The gateway, a sidecar's inbound and outbound listeners, all in front of one aiohttp app."""
    app = web.Application(handler_args={"max_field_size": 16 * 1024})
    app.router.add_route("*", "/{tail:.*}", _echo_size)
    async with AsyncExitStack() as stack:
        port = await stack.enter_async_context(serve_app(app))
        runtime = Runtime(parse_config(CONFIG.format(port=port), "t.yaml"), None)
        sidecar = Sidecar.create(runtime, "app", "base", Endpoint("127.0.0.1", port))
        yield {
            "gateway": await stack.enter_async_context(serve_app(build_gateway_app(runtime))),
            "inbound": await stack.enter_async_context(serve_app(build_inbound_app(sidecar))),
            "outbound": await stack.enter_async_context(serve_app(build_outbound_app(sidecar))),
        }


def head(fields: int, field_size: int) -> bytes:
    """A GET head with *fields* fields of *field_size* bytes each (name, ": ", value and CRLF), to the app."""
    lines = [b"GET /big HTTP/1.1\r\nHost: app\r\nConnection: close\r\n"]
    for i in range(fields):
        name = b"x-f%04d" % i
        lines.append(name + b": " + b"v" * (field_size - len(name) - 4) + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


async def exchange(port: int, data: bytes, piece: int | None = None) -> bytes:
    """Send *data* (in one write, or in *piece*-byte writes a moment apart) and read until the proxy closes.

    A reset anywhere (while writing or reading) fails the test: the client must get the answer.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if piece is None:
            writer.write(data)
        else:
            for start in range(0, len(data), piece):
                writer.write(data[start:start + piece])
                await writer.drain()
                await asyncio.sleep(0.002)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer.split(b" ", 2)[1])


LISTENERS = ["gateway", "inbound", "outbound"]


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize(("fields", "field_size"), [
    (10, 7 * 1024 + 120),  # 69.5 KiB in ten legal fields
    (18, 7 * 1024),  # 123.6 KiB
    (127, 600),  # many small fields (under the 128-field limit), 74 KiB in all
])
async def test_a_head_over_64_kib_in_one_write_is_a_431_then_a_clean_close(listener: str, fields: int,
                                                                          field_size: int) -> None:
    data = head(fields, field_size)
    assert len(data) > MAX_HEAD
    async with listeners() as ports:
        answer = await exchange(ports[listener], data)
        assert status_of(answer) == 431, answer[:200]
        assert b"request head larger than 65536 bytes" in answer
        assert b"\r\nConnection: close\r\n" in answer
        head_part, _, body = answer.partition(b"\r\n\r\n")
        assert f"Content-Length: {len(body)}".encode() in head_part  # whole, and nothing after it


@pytest.mark.parametrize("listener", LISTENERS)
async def test_a_head_trickled_past_64_kib_is_a_431_the_client_reads_not_a_reset(listener: str) -> None:
    data = head(14, 7 * 1024)  # 98 KiB, in 2 KiB writes: the proxy answers while the client still sends
    async with listeners() as ports:
        answer = await exchange(ports[listener], data, piece=2048)
        assert status_of(answer) == 431, answer[:200]


@pytest.mark.parametrize("listener", LISTENERS)
async def test_one_huge_field_trickled_is_refused_whatever_the_pieces(listener: str) -> None:
    data = b"GET / HTTP/1.1\r\nHost: app\r\nX-Huge: " + b"h" * 200_000 + b"\r\n\r\n"
    async with listeners() as ports:
        answer = await exchange(ports[listener], data, piece=4096)
        assert status_of(answer) == 431, answer[:200]
        answer = await exchange(ports[listener], data)
        assert status_of(answer) == 431, answer[:200]


@pytest.mark.parametrize("listener", LISTENERS)
async def test_a_large_but_legal_head_is_forwarded_in_one_write_or_trickled(listener: str) -> None:
    data = head(7, 8 * 1024)  # 56 KiB plus what the proxy adds: under the limit
    assert len(data) < MAX_HEAD
    async with listeners() as ports:
        for piece in (None, 1500):
            answer = await exchange(ports[listener], data, piece)
            assert status_of(answer) == 200, answer[:300]
            assert b"head fields" in answer
