"""`lane.engine.upstream`: the fast core's keep-alive client, over real sockets on 127.0.0.1.

Upstreams are aiohttp apps (`serve_app`) where a well-behaved HTTP server is wanted and raw
asyncio servers where the test needs exact bytes or misbehaviour (stale keep-alive, garbage,
silence, cuts). Nothing is faked: the connect timeout uses a real listener whose accept queue is
full, on which the kernel drops further SYNs. The core scenarios run again on uvloop, the loop the
proxies run on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

import psutil
import pytest
import uvloop
from aiohttp import web
from multidict import CIMultiDict

from lane.core.config import ProxySpec
from lane.core.endpoint import Endpoint
from lane.dataplane.failures import ConnectFailed, UpstreamBroken, UpstreamTimeout
from lane.engine.answer import UpstreamAnswer
from lane.engine.exchange import NoBody
from lane.engine.upstream import Upstreams
from lane.engine.upstream_connection import READ_HIGH
from tests.support.processes import serve_app

SPEC = ProxySpec(connect_timeout=1.0, request_timeout=2.0)
SHORT = dataclasses.replace(SPEC, request_timeout=0.3)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def endpoint(port: int) -> Endpoint:
    return Endpoint("127.0.0.1", port)


async def read_all(answer: UpstreamAnswer) -> bytes:
    body = answer.read_nowait()
    async for chunk in answer.chunks():
        body += chunk
    return body


class Body:
    """A request body (`BodySource`) from parts; chunks() may be called again while nothing was taken."""

    def __init__(self, parts: Iterable[bytes], *, chunked: bool = False, gate: asyncio.Event | None = None) -> None:
        self.parts = list(parts)
        self.present = True
        self.length = None if chunked else sum(map(len, self.parts))
        self.started = False
        self.gate = gate

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.gate is not None:
            await self.gate.wait()
        for part in self.parts:
            self.started = True
            yield part


class Generated:
    """*total* bytes of a fixed pattern in 1 MiB blocks, produced as fast as they are pulled."""

    BLOCK = bytes(range(256)) * 4096

    def __init__(self, total: int, *, chunked: bool) -> None:
        self.total = total
        self.present = True
        self.length = None if chunked else total
        self.started = False

    async def chunks(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self.total:
            self.started = True
            block = self.BLOCK[: self.total - sent]
            sent += len(block)
            yield block

    @classmethod
    def sha256(cls, total: int) -> str:
        digest = hashlib.sha256()
        for start in range(0, total, len(cls.BLOCK)):
            digest.update(cls.BLOCK[: total - start])
        return digest.hexdigest()


class Failing:
    """A body whose client goes away after the first chunk."""

    present = True
    length = None
    started = False

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        yield b"first"
        await asyncio.sleep(0.05)
        raise ConnectionResetError("the client went away")


# --- raw servers ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Raw:
    port: int = 0
    connections: int = 0
    requests: list[bytes] = dataclasses.field(default_factory=list)  # head + body of each request
    closed: int = 0  # connections the client closed (EOF seen by the server)


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Raw], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader, raw: Raw) -> bytes:
    """One request (head and body, framed by Content-Length or chunked) as bytes; b"" at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        raw.closed += 1
        return b""
    lower = head.lower()
    if b"\r\ntransfer-encoding: chunked\r\n" in lower:
        body = await reader.readuntil(b"0\r\n\r\n")
    else:
        length = next((int(line.split(b":")[1]) for line in lower.split(b"\r\n")
                       if line.startswith(b"content-length:")), 0)
        body = await reader.readexactly(length)
    raw.requests.append(head + body)
    return head + body


@contextlib.asynccontextmanager
async def raw_server(handle: RawHandler) -> AsyncIterator[Raw]:
    """A raw TCP server on 127.0.0.1; its connection handlers are cancelled and awaited on exit."""
    raw = Raw()
    tasks: set[asyncio.Task[None]] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw.connections += 1
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handle(reader, writer, raw)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    raw.port = server.sockets[0].getsockname()[1]
    try:
        yield raw
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def answering(*answers: bytes, then: str = "read") -> RawHandler:
    """A handler answering the requests of each connection with *answers* in turn, then *then*."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        for answer in answers:
            if not await read_request(reader, raw):
                return
            writer.write(answer)
            await writer.drain()
        if then == "read":  # keep the connection until the client closes it
            while await read_request(reader, raw):
                pass
        elif then == "drop-next":  # the keep-alive race: close as the next request arrives
            await reader.readuntil(b"\r\n\r\n")
        elif then == "hold":
            await asyncio.sleep(30)
        # "close": the handler returns and the connection is closed

    return handle


# --- what is sent ---------------------------------------------------------------------------------

async def test_method_target_and_headers_arrive_as_sent_and_the_answer_as_received() -> None:
    answer_bytes = (b"HTTP/1.1 200 Fine Thanks\r\nX-Answer: a\r\nx-ANSWER: b\r\nSet-Cookie: a=1\r\n"
                    b"Set-Cookie: b=2\r\nX-Bytes: caf\xe9\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
    async with raw_server(answering(answer_bytes, answer_bytes)) as raw, Upstreams() as upstreams:
        headers = CIMultiDict([("X-Rep", "1"), ("x-MiXed-Case", "v"), ("X-Rep", "2"), ("X-Bytes", "caf\udce9 ok")])
        answer = await upstreams.send("PATCH", endpoint(raw.port), "/p%2Fa?q=1&q=2", headers, None, SPEC)
        assert (answer.status, answer.reason, answer.length) == (200, "Fine Thanks", 2)
        assert list(answer.headers.items())[:5] == [("X-Answer", "a"), ("x-ANSWER", "b"), ("Set-Cookie", "a=1"),
                                                    ("Set-Cookie", "b=2"), ("X-Bytes", "caf\udce9")]
        assert answer.headers["connection"] == "keep-alive"  # hop-by-hop too: the caller strips them
        assert await read_all(answer) == b"ok"
        answer.release()
        with_host = CIMultiDict([("host", "shop.example"), ("X-A", "1")])
        answer = await upstreams.send("GET", endpoint(raw.port), "/", with_host, None, SPEC)
        await read_all(answer)
        answer.release()
    assert raw.requests == [
        f"PATCH /p%2Fa?q=1&q=2 HTTP/1.1\r\nHost: 127.0.0.1:{raw.port}\r\nX-Rep: 1\r\nx-MiXed-Case: v\r\n"
        "X-Rep: 2\r\nX-Bytes: caf".encode() + b"\xe9 ok\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: shop.example\r\nX-A: 1\r\n\r\n",
    ]
    assert raw.connections == 1


async def test_request_bodies_are_framed_by_length_or_chunked_and_stale_framing_headers_replaced() -> None:
    async with raw_server(answering(*[b"HTTP/1.1 204 No Content\r\n\r\n"] * 5)) as raw, Upstreams() as upstreams:
        stale = CIMultiDict([("Content-Length", "999"), ("Transfer-Encoding", "gzip"), ("X-A", "1")])
        cases = [
            ("POST", stale, Body([b"hel", b"lo"])),
            ("POST", stale, Body([b"ab", b"", b"cde"], chunked=True)),
            ("GET", CIMultiDict({"Content-Length": "5"}), None),
            ("POST", CIMultiDict({"Content-Length": "0"}), None),
            ("PUT", CIMultiDict(), NoBody()),
        ]
        for method, headers, body in cases:
            answer = await upstreams.send(method, endpoint(raw.port), "/u", headers, body, SPEC)
            assert answer.status == 204 and answer.at_eof
            answer.release()
    host = f"Host: 127.0.0.1:{raw.port}\r\n".encode()
    assert raw.requests == [
        b"POST /u HTTP/1.1\r\n" + host + b"X-A: 1\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /u HTTP/1.1\r\n" + host + b"X-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n",
        b"GET /u HTTP/1.1\r\n" + host + b"\r\n",
        b"POST /u HTTP/1.1\r\n" + host + b"Content-Length: 0\r\n\r\n",
        b"PUT /u HTTP/1.1\r\n" + host + b"\r\n",
    ]
    assert raw.connections == 1  # every exchange left the connection clean for the next


async def test_a_header_with_cr_or_lf_is_refused_before_anything_is_sent() -> None:
    async with raw_server(answering(OK)) as raw, Upstreams() as upstreams:
        for headers in (CIMultiDict({"X-A": "1\r\nX-Injected: 1"}), CIMultiDict({"X-A": "a\nb"})):
            with pytest.raises(ValueError, match="CR or LF"):
                await upstreams.send("GET", endpoint(raw.port), "/", headers, None, SPEC)
        with pytest.raises(ValueError, match="CR or LF"):
            await upstreams.send("GET", endpoint(raw.port), "/ HTTP/1.1\r\nX: y", CIMultiDict(), None, SPEC)
    assert raw.connections == 0


# --- answers --------------------------------------------------------------------------------------

async def test_head_answers_have_no_body_whatever_their_content_length_says() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n"
    async with raw_server(answering(head, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")) as raw, \
            Upstreams() as upstreams:
        answer = await upstreams.send("HEAD", endpoint(raw.port), "/", CIMultiDict(), None, SPEC)
        assert answer.status == 200 and answer.length == 0 and answer.headers["Content-Length"] == "1000"
        assert answer.at_eof and await read_all(answer) == b""
        answer.release()
        answer = await upstreams.send("GET", endpoint(raw.port), "/", CIMultiDict(), None, SPEC)
        assert answer.length == 3 and await read_all(answer) == b"abc"  # the parser was not left waiting for 1000
        answer.release()
    assert raw.connections == 1


async def test_204_and_304_have_no_body_and_keep_the_connection() -> None:
    answers = (b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", OK)
    async with raw_server(answering(*answers)) as raw, Upstreams() as upstreams:
        for status, body in ((204, b""), (304, b""), (200, b"ok")):
            answer = await upstreams.send("GET", endpoint(raw.port), "/", CIMultiDict(), None, SPEC)
            assert answer.status == status and await read_all(answer) == body
            assert answer.length == len(body) and answer.at_eof
            answer.release()
    assert raw.connections == 1


async def test_chunked_answers_are_decoded_as_they_arrive() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        for _ in range(2):
            await read_request(reader, raw)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
            await writer.drain()
        await read_request(reader, raw)

    async with raw_server(handle) as raw, Upstreams() as upstreams:
        for _ in range(2):
            answer = await upstreams.send("GET", endpoint(raw.port), "/", CIMultiDict(), None, SPEC)
            assert answer.length is None and answer.headers["Transfer-Encoding"] == "chunked"
            assert answer.read_nowait() == b"hello" and not answer.at_eof
            assert await read_all(answer) == b" world" and answer.at_eof
            answer.release()
        assert upstreams.connections == 1


async def test_an_answer_delimited_by_the_end_of_the_connection_is_complete_and_not_pooled() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        await read_request(reader, raw)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"second")
        await writer.drain()

    async with raw_server(handle) as raw, Upstreams() as upstreams:
        answer = await upstreams.send("GET", endpoint(raw.port), "/", CIMultiDict(), None, SPEC)
        assert answer.length is None
        assert await read_all(answer) == b"first second" and answer.at_eof
        answer.release()
        assert upstreams.connections == 0


async def test_interim_answers_are_skipped_and_a_101_is_returned() -> None:
    interim = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
               b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone")
    switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi"
    async with raw_server(answering(interim, OK)) as raw, Upstreams() as upstreams:
        answer = await upstreams.send("POST", endpoint(raw.port), "/", CIMultiDict(), Body([b"x"]), SPEC)
        assert answer.status == 201 and "Link" not in answer.headers and await read_all(answer) == b"done"
        answer.release()
        answer = await upstreams.send("GET", endpoint(raw.port), "/", CIMultiDict(), None, SPEC)
        assert await read_all(answer) == b"ok"
        answer.release()
        assert raw.connections == 1
    async with raw_server(answering(switch, then="hold")) as raw, Upstreams() as upstreams:
        answer = await upstreams.send("GET", endpoint(raw.port), "/ws", CIMultiDict({"Upgrade": "websocket"}),
                                      None, SPEC)
        assert answer.status == 101 and answer.headers["Upgrade"] == "websocket" and answer.length is None
        assert answer.read_nowait() == b"\x81\x02hi"  # the new protocol's bytes, as they came
        answer.close()
        assert upstreams.connections == 0


# --- keep-alive -----------------------------------------------------------------------------------

PEER = web.AppKey("peers", list[int])


async def _peer(request: web.Request) -> web.Response:
    assert request.transport is not None
    port = request.transport.get_extra_info("peername")[1]
    request.app[PEER].append(port)
    if "slow" in request.query:
        await asyncio.sleep(0.1)
    return web.Response(text=str(port))


def peer_app() -> web.Application:
    app = web.Application()
    app[PEER] = []
    app.router.add_get("/", _peer)
    return app


async def test_sequential_requests_reuse_one_connection() -> None:
    app = peer_app()
    async with serve_app(app) as port, Upstreams() as upstreams:
        for _ in range(100):
            answer = await upstreams.send("GET", endpoint(port), "/", CIMultiDict(), None, SPEC)
            await read_all(answer)
            answer.release()
        assert upstreams.connections == 1 and upstreams.idle(endpoint(port)) == 1
    peers: list[int] = app[PEER]
    assert len(peers) == 100 and len(set(peers)) == 1


async def test_concurrent_requests_open_connections_and_the_pool_keeps_at_most_its_limit() -> None:
    app = peer_app()
    async with serve_app(app) as port, Upstreams(max_idle_per_endpoint=3) as upstreams:
        async def one() -> bytes:
            answer = await upstreams.send("GET", endpoint(port), "/?slow", CIMultiDict(), None, SPEC)
            try:
                return await read_all(answer)
            finally:
                answer.release()

        await asyncio.gather(*(one() for _ in range(8)))
        peers: list[int] = app[PEER]
        assert len(set(peers)) == 8
        assert upstreams.idle(endpoint(port)) == 3 and upstreams.connections == 3
        last = (await asyncio.gather(one()))[0]
        assert int(last) in set(peers[:8])  # served by a pooled connection


async def test_idle_connections_expire_and_ones_the_peer_closed_leave_the_pool() -> None:
    app = peer_app()
    async with serve_app(app) as port, Upstreams(idle_seconds=0.3) as upstreams:
        answer = await upstreams.send("GET", endpoint(port), "/", CIMultiDict(), None, SPEC)
        await read_all(answer)
        answer.release()
        assert upstreams.idle(endpoint(port)) == 1
        await asyncio.sleep(0.8)
        assert upstreams.connections == 0
    async with raw_server(answering(OK, then="close")) as raw, Upstreams() as upstreams:
        answer = await upstreams.send("GET", endpoint(raw.port), "/", CIMultiDict(), None, SPEC)
        await read_all(answer)
        answer.release()  # HTTP/1.1 without Connection: close: pooled, then the server closes it
        for _ in range(50):
            if upstreams.connections == 0:
                break
            await asyncio.sleep(0.02)
        assert upstreams.connections == 0 and upstreams.idle(endpoint(raw.port)) == 0


async def test_a_stale_pooled_connection_is_retried_once_on_a_fresh_one() -> None:
    """The upstream closes its idle keep-alive connection just as the next request arrives."""
    async with raw_server(answering(OK, then="drop-next")) as raw, Upstreams() as upstreams:
        for _ in range(3):
            answer = await upstreams.send("GET", endpoint(raw.port), "/", CIMultiDict(), None, SPEC)
            assert await read_all(answer) == b"ok"
            answer.release()
        assert raw.connections == 3  # each reuse met a closing connection and went on to a fresh one
        # A body not started yet (its client has not sent it) may go again too.
        gate = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, gate.set)
        answer = await upstreams.send("POST", endpoint(raw.port), "/", CIMultiDict(), Body([b"late"], gate=gate),
                                      SPEC)
        assert await read_all(answer) == b"ok"
        answer.release()
        assert raw.connections == 4 and raw.requests[-1].endswith(b"\r\n\r\nlate")
        # A started body cannot be sent twice: the failure is the caller's.
        with pytest.raises(UpstreamBroken):  # EOF or a reset, as the kernel has it
            await upstreams.send("POST", endpoint(raw.port), "/", CIMultiDict(), Body([b"data"]), SPEC)
        assert raw.connections == 4


async def test_a_fresh_connection_that_breaks_is_not_retried() -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        await read_request(reader, raw)

    async with raw_server(drop) as raw, Upstreams() as upstreams:
        with pytest.raises(UpstreamBroken, match="EOF: the connection closed before an answer"):
            await upstreams.send("GET", endpoint(raw.port), "/", CIMultiDict(), None, SPEC)
        assert raw.connections == 1 and upstreams.connections == 0


# --- failures and timeouts --------------------------------------------------------------------------

async def test_connection_refused_is_connect_failed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    async with Upstreams() as upstreams:
        with pytest.raises(ConnectFailed) as failed:
            await upstreams.send("GET", endpoint(port), "/", CIMultiDict(), None, SPEC)
    assert failed.value.endpoint == endpoint(port) and failed.value.detail.startswith("connect failed: ")
    assert failed.value.status == 502


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A listener that never accepts and whose accept queue is full: the kernel drops further SYNs."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):  # backlog 0 still queues one; fill until a connect hangs
            client = stack.enter_context(socket.socket())
            client.settimeout(0.2)
            try:
                client.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        else:
            raise AssertionError("could not fill the accept queue")
        yield port


async def test_a_connect_that_hangs_times_out() -> None:
    with full_backlog() as port:
        async with Upstreams() as upstreams:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(ConnectFailed, match=r"connect timed out after 0\.3s"):
                await upstreams.send("GET", endpoint(port), "/", CIMultiDict(), None,
                                     dataclasses.replace(SPEC, connect_timeout=0.3))
            assert 0.25 < loop.time() - started < 2


def silent_after(answer: bytes) -> RawHandler:
    """Reads the request, sends *answer* (maybe nothing, maybe part of one), then stays silent."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        await read_request(reader, raw)
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(30)

    return handle


async def test_no_head_within_request_timeout_is_upstream_timeout() -> None:
    async with raw_server(silent_after(b"")) as raw, Upstreams() as upstreams:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamTimeout, match=r"no progress for 0\.3s") as failed:
            await upstreams.send("GET", endpoint(raw.port), "/", CIMultiDict(), None, SHORT)
        assert 0.25 < loop.time() - started < 2 and failed.value.status == 504
        assert upstreams.connections == 0


async def test_silence_in_the_middle_of_the_body_times_out_from_chunks() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    async with raw_server(silent_after(head)) as raw, Upstreams() as upstreams:
        answer = await upstreams.send("GET", endpoint(raw.port), "/", CIMultiDict(), None, SHORT)
        assert answer.length == 100 and answer.read_nowait() == b"x" * 10
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamTimeout, match="no progress"):
            await read_all(answer)
        assert 0.25 < loop.time() - started < 2
        answer.close()
        assert upstreams.connections == 0


async def test_slow_but_flowing_bodies_and_a_slow_reader_do_not_time_out() -> None:
    """request_timeout 0.3 s bounds silence: a 1.2 s upload, a 1.2 s answer and a caller that waits all pass."""

    async def echo_slowly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        request = await read_request(reader, raw)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(8):
            writer.write(b"1\r\nt\r\n")
            await writer.drain()
            await asyncio.sleep(0.15)
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(request), request))
        await writer.drain()
        await read_request(reader, raw)

    class Trickle(Body):
        async def chunks(self) -> AsyncIterator[bytes]:
            for part in self.parts:
                self.started = True
                yield part
                await asyncio.sleep(0.15)

    async with raw_server(echo_slowly) as raw, Upstreams() as upstreams:
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await upstreams.send("POST", endpoint(raw.port), "/", CIMultiDict(), Trickle([b"u"] * 8), SHORT)
        assert loop.time() - started > 1.0  # the head came only after the whole slow upload
        body = await read_all(answer)
        assert body.startswith(b"t" * 8) and body.endswith(b"\r\n\r\nuuuuuuuu")
        assert loop.time() - started > 2.2
        answer.release()

    async def pause_midway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        await read_request(reader, raw)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + b"a" * 10)
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.write(b"b" * 10)
        await writer.drain()
        await read_request(reader, raw)

    async with raw_server(pause_midway) as raw, Upstreams() as upstreams:
        answer = await upstreams.send("GET", endpoint(raw.port), "/", CIMultiDict(), None, SHORT)
        await asyncio.sleep(0.7)  # the caller is busy (a slow client): unread bytes are its silence, not the upstream's
        assert await read_all(answer) == b"a" * 10 + b"b" * 10
        answer.release()


async def test_an_upstream_that_stops_reading_a_big_upload_times_out() -> None:
    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(30)

    async with raw_server(never_read) as raw, Upstreams() as upstreams:
        loop = asyncio.get_running_loop()
        started = loop.time()
        body = Generated(64 * 1024 * 1024, chunked=False)
        with pytest.raises(UpstreamTimeout, match="no progress"):
            await upstreams.send("POST", endpoint(raw.port), "/", CIMultiDict(), body, SHORT)
        assert loop.time() - started < 3 and upstreams.connections == 0


async def test_an_upstream_that_closes_mid_body_is_upstream_broken() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        await read_request(reader, raw)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    async with raw_server(cut) as raw, Upstreams() as upstreams:
        answer = await upstreams.send("GET", endpoint(raw.port), "/", CIMultiDict(), None, SPEC)
        with pytest.raises(UpstreamBroken, match="in the middle of the answer"):
            await read_all(answer)
        assert not answer.at_eof
        answer.close()
        assert upstreams.connections == 0


async def test_an_answer_that_is_not_http_is_upstream_broken() -> None:
    for garbage in (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n"):
        async with raw_server(silent_after(garbage)) as raw, Upstreams() as upstreams:
            with pytest.raises(UpstreamBroken) as failed:
                await upstreams.send("GET", endpoint(raw.port), "/", CIMultiDict(), None, SPEC)
            assert failed.value.status == 502 and len(failed.value.detail) <= 200
            assert upstreams.connections == 0


async def test_a_request_body_that_fails_before_the_head_raises_its_own_error() -> None:
    """The client went away: not the upstream's fault, so not an `UpstreamFailure` that would count against it."""
    async with raw_server(silent_after(b"")) as raw, Upstreams() as upstreams:
        with pytest.raises(ConnectionResetError, match="client went away"):
            await upstreams.send("POST", endpoint(raw.port), "/", CIMultiDict(), Failing(), SPEC)
        assert upstreams.connections == 0


async def test_close_drops_idle_and_busy_connections_and_refuses_new_requests() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        while request := await read_request(reader, raw):
            if request.startswith(b"GET /silent "):
                continue
            partial = request.startswith(b"GET /partial ")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc" if partial else OK)
            await writer.drain()

    async with raw_server(handle) as raw:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            upstreams = Upstreams()
            answers = [await upstreams.send("GET", endpoint(raw.port), "/", CIMultiDict(), None, SPEC)
                       for _ in range(4)]
            for answer in answers:
                assert await read_all(answer) == b"ok"
            for answer in answers[0], answers[2], answers[3]:
                answer.release()
            busy = await upstreams.send("GET", endpoint(raw.port), "/partial", CIMultiDict(), None, SPEC)
            assert busy.read_nowait() == b"abc"
            in_flight = asyncio.create_task(
                upstreams.send("GET", endpoint(raw.port), "/silent", CIMultiDict(), None, SPEC))
            while len(raw.requests) < 6:
                await asyncio.sleep(0.01)
            # idle: one; mid-body: `busy`; waiting for a head: `in_flight`; complete, not released: answers[1]
            assert upstreams.connections == 4 and upstreams.idle(endpoint(raw.port)) == 1
            await upstreams.close()
            assert upstreams.connections == 0 and upstreams.idle(endpoint(raw.port)) == 0
            with pytest.raises(UpstreamBroken, match="closed"):
                await read_all(busy)
            with pytest.raises(UpstreamBroken, match="closed"):  # not retried elsewhere: the client is closed
                await in_flight
            busy.close()
            answers[1].release()
            with pytest.raises(ConnectFailed, match="closed"):
                await upstreams.send("GET", endpoint(raw.port), "/", CIMultiDict(), None, SPEC)
            for _ in range(50):  # the server sees all four connections end
                if raw.closed == 4:
                    break
                await asyncio.sleep(0.02)
            assert raw.closed == 4 and raw.connections == 4
            del answers, answer, busy, in_flight, upstreams
            gc.collect()
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


# --- streaming -----------------------------------------------------------------------------------

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
    if "chunked" not in request.query:
        response.content_length = total
    await response.prepare(request)
    async for block in Generated(total, chunked=False).chunks():
        await response.write(block)
    await response.write_eof()
    return response


async def test_50_mib_stream_both_ways_with_bounded_buffers() -> None:
    size = 50 * 1024 * 1024
    expected = Generated.sha256(size)
    app = web.Application(client_max_size=size * 2)
    app.router.add_post("/upload", _upload)
    app.router.add_get("/download", _download)
    process = psutil.Process()
    async with serve_app(app) as port, Upstreams() as upstreams:
        baseline = peak = process.memory_info().rss

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, process.memory_info().rss)
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        try:
            for chunked in (False, True):
                # The body arrives as fast as it is pulled: only pause_writing keeps it out of memory.
                answer = await upstreams.send("POST", endpoint(port), "/upload", CIMultiDict(),
                                              Generated(size, chunked=chunked), SPEC)
                assert answer.status == 200
                assert await read_all(answer) == b'{"size": %d, "sha256": "%s"}' % (size, expected.encode())
                answer.release()
            for query in ("", "&chunked"):
                answer = await upstreams.send("GET", endpoint(port), f"/download?size={size}{query}",
                                              CIMultiDict(), None, SPEC)
                assert answer.length == (None if query else size)
                digest, received, largest = hashlib.sha256(), 0, 0
                async for chunk in answer.chunks():  # a slow reader: only pause_reading bounds the buffer
                    digest.update(chunk)
                    received += len(chunk)
                    largest = max(largest, len(chunk))
                    await asyncio.sleep(0.002)
                assert received == size and digest.hexdigest() == expected
                assert largest <= READ_HIGH + 512 * 1024, largest
                answer.release()
        finally:
            sampler.cancel()
        assert upstreams.connections == 1
    growth = (peak - baseline) / (1024 * 1024)
    assert growth < 30, f"RSS grew by {growth:.1f} MiB while streaming 50 MiB each way"


# --- the same core scenarios on uvloop ------------------------------------------------------------

UVLOOP_SCENARIOS = [
    test_method_target_and_headers_arrive_as_sent_and_the_answer_as_received,
    test_request_bodies_are_framed_by_length_or_chunked_and_stale_framing_headers_replaced,
    test_head_answers_have_no_body_whatever_their_content_length_says,
    test_chunked_answers_are_decoded_as_they_arrive,
    test_an_answer_delimited_by_the_end_of_the_connection_is_complete_and_not_pooled,
    test_interim_answers_are_skipped_and_a_101_is_returned,
    test_sequential_requests_reuse_one_connection,
    test_a_stale_pooled_connection_is_retried_once_on_a_fresh_one,
    test_a_connect_that_hangs_times_out,
    test_no_head_within_request_timeout_is_upstream_timeout,
    test_silence_in_the_middle_of_the_body_times_out_from_chunks,
    test_an_upstream_that_stops_reading_a_big_upload_times_out,
    test_an_upstream_that_closes_mid_body_is_upstream_broken,
    test_an_answer_that_is_not_http_is_upstream_broken,
    test_close_drops_idle_and_busy_connections_and_refuses_new_requests,
]


@pytest.mark.parametrize("scenario", UVLOOP_SCENARIOS, ids=lambda f: f.__name__.removeprefix("test_"))
def test_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    async def run() -> None:
        await scenario()

    uvloop.run(run())
