"""The app of the benchmark's 2-hop chain: answers ``/`` by calling the next service, fast.

A real app in a mesh calls its next service through its sidecar's outbound listener and
forwards the lane headers it received. The benchmark needs such an app that costs as little as
possible, so what the table shows is the proxies' overhead, not aiohttp's client: this one is raw
asyncio + httptools on uvloop, keep-alive on both sides, one pooled connection per concurrent
call, no framework.

* ``GET /``: ``GET http://<--next-host>/`` through ``--proxy`` (absolute-form target, exactly
  what ``HTTP_PROXY`` makes a client send), forwarding `FORWARDED` headers; answers the
  upstream's status and body. This is the app hop of ``chain``.
* ``GET /direct``: ``GET /`` straight at ``--direct`` with the same headers: the same app
  calling the next one without any proxy (``direct-chain``, the baseline of the per-hop cost).

With ``--expect-tag LANE`` the app first checks that the request arrived with ``x-mse-tag: LANE``
and answers ``421`` without calling anyone otherwise: like the stub backends, it makes a request
routed to the wrong lane instance (or tagged wrong) visible as an error the load generator counts.
An upstream that cannot be reached is a 502. Run as its own process by `bench/subjects.py`; it
binds 127.0.0.1 port 0 and writes a lane-style ready file (``listeners.app``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from typing import Final, cast

import httptools
import uvloop

from lane.process.readiness import announce

__all__ = ["FORWARDED", "main"]

FORWARDED: Final = frozenset({b"x-mse-tag", b"baggage", b"x-request-id", b"traceparent", b"tracestate",
                              b"x-b3-traceid", b"x-b3-spanid", b"x-b3-sampled"})
_REASONS: Final = {200: b"OK", 404: b"Not Found", 421: b"Misdirected Request", 502: b"Bad Gateway",
                   503: b"Service Unavailable", 504: b"Gateway Timeout"}


class _UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the upstream; one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but the same API

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad upstream answer: {exc}"))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((self.parser.get_status_code(), b"".join(self.body)))
        if not self.parser.should_keep_alive() and self.transport is not None:
            self.transport.close()
            self.closed = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError("upstream closed the connection"))

    def _fail(self, exc: Exception) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc)
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    async def roundtrip(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.body = []
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await asyncio.wait_for(self.answer, 30)


class _Pool:
    """Idle keep-alive connections to one upstream address."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[_UpstreamConnection] = []

    async def send(self, request: bytes) -> tuple[int, bytes]:
        while self.idle:  # a reused connection may have been closed by the peer while idle: try the next
            conn = self.idle.pop()
            if conn.closed:
                continue
            try:
                return self._keep(conn, await conn.roundtrip(request))
            except ConnectionError:
                continue
        _, conn = await asyncio.get_running_loop().create_connection(_UpstreamConnection, self.host, self.port)
        return self._keep(conn, await conn.roundtrip(request))

    def _keep(self, conn: _UpstreamConnection, answer: tuple[int, bytes]) -> tuple[int, bytes]:
        if not conn.closed:
            self.idle.append(conn)
        return answer


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class _App:
    def __init__(self, next_host: str, proxy: str | None, direct: str | None, expect_tag: str | None) -> None:
        self.next_host = next_host.encode()
        self.expect_tag = expect_tag.encode() if expect_tag else None
        self.proxy = _Pool(*_address(proxy)) if proxy else None
        self.direct = _Pool(*_address(direct)) if direct else None

    async def answer(self, path: bytes, headers: Sequence[tuple[bytes, bytes]]) -> tuple[int, bytes]:
        if self.expect_tag is not None and (b"x-mse-tag", self.expect_tag) not in (
                (name.lower(), value) for name, value in headers):
            return 421, b"chain app: misrouted: expected x-mse-tag: " + self.expect_tag + b"\n"
        extra = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        host = b"Host: " + self.next_host + b"\r\n"
        if path == b"/" and self.proxy is not None:
            pool, head = self.proxy, b"GET http://" + self.next_host + b"/ HTTP/1.1\r\n"
        elif path == b"/direct" and self.direct is not None:
            pool, head = self.direct, b"GET / HTTP/1.1\r\n"
        else:
            return 404, b"chain app: GET / (through --proxy) or GET /direct (--direct)\n"
        try:
            return await pool.send(head + host + extra + b"\r\n")
        except (OSError, TimeoutError) as exc:
            return 502, f"chain app: upstream failed: {type(exc).__name__}: {exc}\n".encode()


class _ServerConnection(asyncio.Protocol):
    """One client connection: requests parsed by httptools and answered in order."""

    def __init__(self, app: _App) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.queue: asyncio.Queue[tuple[bytes, list[tuple[bytes, bytes]], bool]] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but the same API
        self.worker = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.worker is not None:
            self.worker.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in FORWARDED:
            self.headers.append((name, value))

    def on_message_complete(self) -> None:
        path = self.url.split(b"?", 1)[0]
        self.queue.put_nowait((path, self.headers, self.parser.should_keep_alive()))
        self.url, self.headers = b"", []

    async def _serve(self) -> None:
        while True:
            path, headers, keep_alive = await self.queue.get()
            status, body = await self.app.answer(path, headers)
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s" % (
                status, _REASONS.get(status, b"Status"), len(body), b"" if keep_alive else b"Connection: close\r\n",
                body))
            if not keep_alive:
                transport.close()
                return


async def _serve(args: argparse.Namespace) -> None:
    app = _App(args.next_host, args.proxy, args.direct, args.expect_tag)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _ServerConnection(app), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    announce("bench-chain-app", {"app": f"127.0.0.1:{port}"}, args.ready_file)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--next-host", default="b", help="the service GET / calls through --proxy (default b)")
    parser.add_argument("--proxy", help="HOST:PORT of the sidecar's outbound listener")
    parser.add_argument("--direct", help="HOST:PORT that GET /direct calls without a proxy")
    parser.add_argument("--expect-tag", help="answer 421 unless the request arrived with x-mse-tag: EXPECT_TAG")
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args(argv)
    uvloop.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
