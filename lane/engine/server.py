"""The fast core's server side: one llhttp parser per connection, requests handed to a coroutine.

`H1Server` is the protocol factory of a listener. Each connection parses with httptools; a parsed
head becomes a `Request` and the listener's handler coroutine answers it through `Request.respond`
(a complete answer) or `Request.start`/`write`/`end` (a streamed one). Requests on one connection
are answered in order (pipelining is parsed, answers are serialized); the body streams to the
handler through `RequestBody`, which pauses reading from the client while the handler lags.

What is not a plain request-answer exchange is handed, with the bytes read so far, to the
listener's aiohttp server on the same transport (`Fallback`): WebSocket and other upgrades,
``CONNECT``. aiohttp is imported only then, so a proxy that never sees one never loads it.

Limits (a proxy in front of everything must not buffer what a client sends it): request line and
each header field ≤ 8 KiB, the whole head ≤ 64 KiB and ≤ 128 fields (431 otherwise), counted on
the parsed fields however the bytes arrive (one read or many); a malformed head or body framing
(including Content-Length with Transfer-Encoding: request smuggling) is a 400. After such an answer
the connection is closed *gracefully*: the write side is shut down and what the client still sends is
read and dropped (bounded: `_LINGER_BYTES`, `_LINGER_SECONDS`), because closing a socket with unread
bytes makes the kernel send a reset, which can destroy the answer before the client reads it.
Idle keep-alive connections are closed after `keepalive_seconds`, a head that takes longer than
that to arrive too.

A listener's `Limits` (connections, concurrent requests, buffered bytes per connection, memory)
and what it sheds when over them are described in `lane.engine.limits`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Final, cast

import httptools
from multidict import CIMultiDict

from lane.engine.limits import Limits, ShedReason, resident_bytes, trim_heap

__all__ = [
    "MAX_FIELD",
    "MAX_HEAD",
    "ClientGone",
    "Fallback",
    "H1Server",
    "Handler",
    "Request",
    "RequestBody",
    "origin_form",
    "reason_phrase",
    "serialize_head",
]

log = logging.getLogger(__name__)

MAX_FIELD: Final = 8190  # request line / one header field, aiohttp's default too
MAX_HEAD: Final = 64 * 1024
MAX_FIELDS: Final = 128
# At the connection cap: the longest-waiting of the first waiting connections found is closed; the
# search is bounded, so a flood against a listener whose connections are all busy costs little per accept.
_EVICT_SAMPLE: Final = 64
_EVICT_SCAN: Final = 1024
_MEMORY_EVERY: Final = 1.0  # seconds between two reads of the resident size, when a watermark is set
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_LINGER_BYTES: Final = 1024 * 1024  # dropped after a refusal before the connection is closed anyway
_LINGER_SECONDS: Final = 2.0
_NO_BODY_STATUS: Final = frozenset({204, 304})
_REASONS: Final = {s.value: s.phrase for s in HTTPStatus}

Handler = Callable[["Request"], Awaitable[None]]
# Builds (once, lazily) the aiohttp protocol factory upgrades are handed to.
Fallback = Callable[[], Awaitable[Callable[[], asyncio.Protocol]]]


class ClientGone(ConnectionError):
    """The client closed the connection (mid-body, or before the answer could be written)."""


class _HeadTooLarge(Exception):
    def __init__(self, status: int, what: str) -> None:
        self.status = status
        self.what = what


def origin_form(target: str) -> str:
    """The path and query of *target*, also when it came in absolute form (``http://host/path``)."""
    if target.startswith("/") or target == "*":
        return target
    scheme_end = target.find("://")
    if scheme_end < 0:
        return "/"
    slash = target.find("/", scheme_end + 3)
    query = target.find("?", scheme_end + 3)
    if slash < 0 or (0 <= query < slash):
        return "/" + target[query:] if query >= 0 else "/"
    return target[slash:]


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def serialize_head(status: int, reason: str, headers: CIMultiDict[str], extra: str = "") -> bytes:
    """``HTTP/1.1`` status line and header block; *extra* is pre-formatted framing lines.

    Header text round-trips what the parser decoded (UTF-8 with surrogate escapes), so bytes an
    upstream sent leave as they came.
    """
    lines = [f"HTTP/1.1 {status} {reason}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
    lines.append(extra)
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


class RequestBody:
    """The body of one request as it arrives (a `lane.engine.body.BodySource`), read at most once."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_expect_continue",
        "_waiter",
        "length",
        "present",
        "started",
    )

    def __init__(self, conn: H1Connection, present: bool, length: int | None, expect_continue: bool) -> None:
        self._conn = conn
        self.present = present
        self.length = length
        self.started = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = not present
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._expect_continue = expect_continue

    @property
    def complete(self) -> bool:
        """All of the body arrived (it may still be buffered here)."""
        return self._done

    @property
    def consumed(self) -> bool:
        return self._done and not self._chunks

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > self._conn.body_high:  # reading from the client pauses
            self._conn.pause_reading()
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        if not self._done:
            self._done = True
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._expect_continue:  # the client waits for this before it sends the body
            self._expect_continue = False
            self._conn.write_raw(_CONTINUE)
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < self._conn.body_low:
                    self._conn.resume_reading()
                self.started = True
                yield chunk
                continue
            if self._done:
                if self._error is not None:
                    raise self._error
                return
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class Request:
    """One request head, its body stream and the way to answer it."""

    __slots__ = ("_chunked", "_conn", "_keep_alive", "_no_body", "_started", "body", "headers", "method",
                 "status", "target", "version")

    scheme: Final = "http"

    def __init__(self, conn: H1Connection, method: str, target: str, version: str, headers: CIMultiDict[str],
                 body: RequestBody, keep_alive: bool) -> None:
        self._conn = conn
        self.method = method
        self.target = target  # as sent: origin form, or absolute form for a forward proxy
        self.version = version
        self.headers = headers
        self.body = body
        self._keep_alive = keep_alive
        self._started = False
        self._chunked = False
        self._no_body = method == "HEAD"
        self.status = 0  # the answer's status once it started (for the access log)

    # --- what the header helpers read (the same names an aiohttp request has) ---
    @property
    def remote(self) -> str | None:
        return self._conn.peer

    @property
    def sockname(self) -> tuple[str, int] | None:
        return self._conn.sockname

    @property
    def raw_path(self) -> str:
        return self.target

    @property
    def path(self) -> str:
        return origin_form(self.target).partition("?")[0]

    @property
    def query_string(self) -> str:
        return self.target.partition("?")[2]

    @property
    def answered(self) -> bool:
        return self._started

    def close_after(self) -> None:
        """The connection closes once this answer is written (framing by close, or a failure)."""
        self._keep_alive = False

    # --- answering ---
    def respond(self, status: int, headers: CIMultiDict[str], body: bytes = b"", reason: str | None = None) -> None:
        """A complete answer of known length, written at once."""
        if status in _NO_BODY_STATUS or status < 200:
            body = b""
            framing = ""
        else:
            framing = f"Content-Length: {len(body)}\r\n"
        self._begin()
        self.status = status
        if "content-length" in headers:
            headers.popall("content-length")
        conn = self._conn
        if not self._keep_alive or conn.closing:
            framing += "Connection: close\r\n"
        head = serialize_head(status, reason or reason_phrase(status), headers, framing)
        conn.write_raw(head if self._no_body else head + body)
        conn.answer_done(self)

    def start(self, status: int, reason: str, headers: CIMultiDict[str], length: int | None, first: bytes,
              end: bool) -> None:
        """The head of a streamed answer, with its first body bytes (*end*: and nothing more).

        *length* is the body's Content-Length when known (it stays in *headers*), else the body is
        sent chunked (HTTP/1.1 clients) or delimited by closing the connection (HTTP/1.0).
        """
        self._begin()
        self.status = status
        framing = ""
        bodiless = self._no_body or status in _NO_BODY_STATUS or status < 200
        if bodiless:
            first = b""
        elif length is not None:
            if "content-length" not in headers:
                framing = f"Content-Length: {length}\r\n"
        else:
            headers.popall("content-length", None)
            if self.version == "1.1":
                self._chunked = True
                framing = "Transfer-Encoding: chunked\r\n"
            else:
                self._keep_alive = False
        conn = self._conn
        if not self._keep_alive or conn.closing:
            self._keep_alive = False
            framing += "Connection: close\r\n"
        head = serialize_head(status, reason, headers, framing)
        if self._chunked:
            if first:
                head += b"%x\r\n%b\r\n" % (len(first), first)
            if end:
                head += b"0\r\n\r\n"
            conn.write_raw(head)
        else:
            conn.write_raw(head + first)
        if bodiless and not end:
            self._no_body = True
        if end:
            conn.answer_done(self)

    async def write(self, chunk: bytes) -> None:
        """More of a streamed answer; waits while the client reads slower than it is sent."""
        conn = self._conn
        if conn.gone:
            raise ClientGone("the client went away")
        if not chunk or self._no_body:
            return
        conn.write_raw(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked else chunk)
        await conn.drain()

    def end(self) -> None:
        if self._chunked and not self._conn.gone:
            self._conn.write_raw(b"0\r\n\r\n")
        self._conn.answer_done(self)

    def abort(self) -> None:
        """The answer cannot be completed (its upstream broke): cut the connection so the client sees it."""
        self._conn.abort()

    def _begin(self) -> None:
        if self._started:
            raise RuntimeError("this request was already answered")
        self._started = True


class H1Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, server: H1Server) -> None:
        self._server = server
        self.loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.sockname: tuple[str, int] | None = None
        self.gone = False
        self.closing = False
        self._paused = False
        self._write_paused: asyncio.Future[None] | None = None
        self._queue: collections.deque[Request] = collections.deque()
        self._current: Request | None = None  # being answered
        self._parsing: Request | None = None  # whose body is being parsed
        self._url = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._head_bytes = 0  # bytes received while a head is incomplete (a head trickled in)
        self._head_size = 0  # bytes of the parsed head so far: request target and fields
        self._upgrade: Request | None = None
        self._upgrade_data: bytes | None = None
        self._refused = False
        self._refusal: bytes | None = None  # the answer to a refused request, written after the current one
        self._linger_left = 0
        self._eof = False
        self._task: asyncio.Task[None] | None = None
        self.idle_since = self.loop.time()
        self._admitted = False  # counted in the listener's connections (not refused at the cap)
        self.body_high = server.buffer_bytes
        self.body_low = server.buffer_bytes // 4

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tcp = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not a subclass
        server = self._server
        if not server.admit():
            self._refused = True
            tcp.close()
            return
        self._admitted = True
        tcp.set_write_buffer_limits(high=server.buffer_bytes)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else None
        sock = transport.get_extra_info("sockname")
        self.sockname = (sock[0], sock[1]) if sock else None
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        if self._admitted:
            self._admitted = False
            self._server.connections.discard(self)
            self._server.closed_one()
        if self._parsing is not None:
            self._parsing.body._finish(ClientGone("the client closed the connection before its body was sent"))
        for request in self._queue:
            request.body._finish(ClientGone("the client closed the connection"))
        self._wake_writer()

    def pause_writing(self) -> None:
        if self._write_paused is None:
            self._write_paused = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake_writer(self) -> None:
        waiter, self._write_paused = self._write_paused, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._linger_left -= len(data)
            if self._linger_left < 0 and self._refusal is None:
                self.abort()  # still sending after the answer: enough was read
            return
        if self._in_head or self._parsing is None:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0]
            self._begin_upgrade(data[offset:])
            return
        except _HeadTooLarge as exc:
            self._refuse(exc.status, exc.what)
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _HeadTooLarge):
                self._refuse(cause.status, cause.what)
            else:
                self._refuse(400, f"malformed request: {exc}")
            return
        if self._in_head and self._head_bytes > MAX_HEAD:
            self._refuse(431, f"request head larger than {MAX_HEAD} bytes")

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._refused and self._refusal is None:
            return None  # the refusal was written: the client read it and closed, so close too
        if self._parsing is not None:
            self._parsing.body._finish(ClientGone("the client closed the connection before its body was sent"))
            self._parsing = None
        if self._current is None and not self._queue:
            return None  # nothing to answer: close
        return True  # half-closed: still answer what was asked

    # --- httptools callbacks ---
    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._fields = []
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_FIELD:
            raise _HeadTooLarge(414, f"request target longer than {MAX_FIELD} bytes")
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        if size > MAX_FIELD:
            raise _HeadTooLarge(431, f"a header field longer than {MAX_FIELD} bytes")
        if len(self._fields) >= MAX_FIELDS:
            raise _HeadTooLarge(431, f"more than {MAX_FIELDS} header fields")
        # The whole head, also when it arrived in one read (the byte count in `data_received`
        # only sees a head that is still incomplete): ": " and CRLF count as the client sent them.
        self._head_size += size + 4
        if self._head_size > MAX_HEAD:
            raise _HeadTooLarge(431, f"request head larger than {MAX_HEAD} bytes")
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        parser = self._parser
        headers: CIMultiDict[str] = CIMultiDict(
            [(n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in self._fields])
        method = parser.get_method().decode("ascii")
        length_text = headers.get("Content-Length")
        chunked = "Transfer-Encoding" in headers
        if chunked:
            present, length = True, None
        elif length_text is not None:
            length = int(length_text)  # llhttp validated it
            present = length > 0
        else:
            present, length = False, 0
        expect = present and headers.get("Expect", "").lower() == "100-continue"
        body = RequestBody(self, present, length, expect)
        request = Request(self, method, self._url.decode("utf-8", "surrogateescape"), parser.get_http_version(),
                          headers, body, parser.should_keep_alive())
        if parser.should_upgrade():
            self._upgrade = request  # `HttpParserUpgrade` follows: the connection goes to aiohttp
            return
        self._parsing = request if present else None
        self._enqueue(request)

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.body._feed(body)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing.body._finish()
            self._parsing = None

    # --- answering in order ---
    def _enqueue(self, request: Request) -> None:
        if self._current is None:
            self._current = request
            self._task = self.loop.create_task(self._serve(request))
        else:
            self._queue.append(request)
            if len(self._queue) > 1:
                self.pause_reading()  # a client pipelining far ahead waits

    async def _serve(self, request: Request) -> None:
        server = self._server
        if server.active >= server.max_requests or server.over_memory:
            self._shed(request)
            return
        server.active += 1
        try:
            await server.handler(request)
        except ClientGone:
            self.abort()
            return
        except Exception:
            log.exception("lane proxy: the handler of %s %s failed", request.method, request.path)
            if not request.answered and not self.gone:
                request.close_after()
                request.respond(500, CIMultiDict(), b"lane: internal error\n")
            else:
                self.abort()
            return
        finally:
            server.active -= 1
        if not request.answered:
            log.error("lane proxy: the handler of %s %s did not answer", request.method, request.path)
            request.close_after()
            request.respond(500, CIMultiDict(), b"lane: internal error\n")

    def _shed(self, request: Request) -> None:
        """A fast 503 with Retry-After: the listener is over its request cap or its memory watermark."""
        server = self._server
        reason: ShedReason = "memory" if server.over_memory else "requests"
        server.count_shed(reason)
        if reason == "memory":
            request.close_after()  # Envoy's disable_http_keepalive: fewer connections to hold
        what = "memory use is over its watermark" if reason == "memory" else "too many requests at once"
        request.respond(503, CIMultiDict({
            "Retry-After": server.retry_after, "Content-Type": "text/plain; charset=utf-8",
            "x-lane-overloaded": reason,
        }), f"lane: overloaded ({what}), retry later\n".encode())

    @property
    def waiting(self) -> bool:
        """Nothing of this connection is being answered: idle keep-alive, or a head still arriving."""
        return self._current is None and not self._queue and self._upgrade is None

    def answer_done(self, request: Request) -> None:
        """The answer to the current request was written: next one, keep alive, or close."""
        if request is not self._current:
            return
        self._current = None
        keep = request._keep_alive and not self.closing and not self.gone and not self._eof
        if keep and not request.body.complete:
            keep = False  # the rest of an unread body is still on the wire: no way to find the next request
        if not keep:
            if self._refusal is not None:
                self._write_refusal()
            else:
                self.close()
            return
        if self._queue:
            nxt = self._queue.popleft()
            self._current = nxt
            if len(self._queue) <= 1:
                self.resume_reading()
            self._task = self.loop.create_task(self._serve(nxt))
            return
        self.idle_since = self.loop.time()
        if self._upgrade is not None and self._upgrade_data is not None:
            self._hand_over()

    # --- flow control and closing ---
    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.gone:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.gone:
            self._paused = False
            self.transport.resume_reading()

    def write_raw(self, data: bytes) -> None:
        if not self.gone and self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.gone:
            raise ClientGone("the client went away")
        waiter = self._write_paused
        if waiter is not None:
            await waiter
            if self.gone:
                raise ClientGone("the client went away")

    @property
    def idle(self) -> bool:
        return self._current is None and not self._in_head

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _refuse(self, status: int, what: str) -> None:
        """Answer a request that could not be parsed, then close: nothing after it can be trusted."""
        log.debug("refused a request from %s: %s", self.peer, what)
        self._refused = True
        self._in_head = False
        body = f"lane: {what}\n".encode()
        self._refusal = serialize_head(status, reason_phrase(status), CIMultiDict(
            {"Content-Type": "text/plain; charset=utf-8"}),
            f"Content-Length: {len(body)}\r\nConnection: close\r\n") + body
        if self._current is None:
            self._write_refusal()
        else:
            self.closing = True  # the answer in progress finishes, then the refusal, then the close
            self.pause_reading()

    def _write_refusal(self) -> None:
        """Write the refusal, shut the write side, and drop what the client still sends (bounded) before closing.

        A socket closed with unread bytes in its receive buffer answers with a reset, and a reset
        can reach the client before it read the answer: it would see "connection reset" instead
        of the 431. Reading to the client's end (or `_LINGER_BYTES`, or `_LINGER_SECONDS`) avoids it.
        """
        answer, self._refusal = self._refusal, None
        transport = self.transport
        if answer is None or transport is None or self.gone:
            return
        transport.write(answer)
        if self._eof or not transport.can_write_eof():
            self.close()
            return
        transport.write_eof()
        self._linger_left = _LINGER_BYTES
        self.resume_reading()
        self.loop.call_later(_LINGER_SECONDS, self.close)

    # --- upgrades: handed to aiohttp on the same transport ---
    def _begin_upgrade(self, rest: bytes) -> None:
        request = self._upgrade
        if request is None:  # pragma: no cover - llhttp signals an upgrade only after a complete head
            self._refuse(400, "unexpected upgrade")
            return
        self._upgrade_data = _head_bytes(request) + rest
        self.pause_reading()
        if self._current is None:
            self._hand_over()

    def _hand_over(self) -> None:
        data = self._upgrade_data
        assert data is not None and self.transport is not None
        self._upgrade_data = None
        self._server.connections.discard(self)
        if self._admitted:  # aiohttp owns the connection from now on: it no longer counts here
            self._admitted = False
            self._server.closed_one()
        self.loop.create_task(self._server.hand_over(self.transport, data, self._paused))


def _head_bytes(request: Request) -> bytes:
    """The request head again, for the parser it is handed to (same fields, same order)."""
    lines = [f"{request.method} {request.target} HTTP/{request.version}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in request.headers.items())
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


class H1Server:
    """A listener's protocol factory: its connections, its handler, and what upgrades go to."""

    def __init__(self, handler: Handler, fallback: Fallback | None = None, *, keepalive_seconds: float = 75.0,
                 limits: Limits | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.handler = handler
        self.connections: set[H1Connection] = set()
        self.active = 0  # requests being answered
        self.over_memory = False
        self._fallback = fallback
        self._fallback_factory: Callable[[], asyncio.Protocol] | None = None
        self._keepalive = keepalive_seconds
        self._sweeper = self.loop.call_later(min(5.0, keepalive_seconds), self._sweep)
        self._memory_timer: asyncio.TimerHandle | None = None
        self.set_limits(limits or Limits())

    def __call__(self) -> H1Connection:
        return H1Connection(self)

    def set_limits(self, limits: Limits) -> None:
        """Apply *limits* from now on (a config reload re-tunes a running listener; nothing is cut)."""
        self.limits = limits
        self.max_connections = limits.max_connections
        self.max_requests = limits.max_requests
        self.buffer_bytes = limits.buffer_bytes
        self.retry_after = str(limits.retry_after)
        if self._memory_timer is not None:
            self._memory_timer.cancel()
            self._memory_timer = None
        self.over_memory = False
        if limits.memory_bytes > 0:
            self._watch_memory()

    def _watch_memory(self) -> None:
        watermark = self.limits.memory_bytes
        rss = resident_bytes()
        if rss > watermark and not self.over_memory:
            trim_heap()
            rss = resident_bytes()
            self.over_memory = rss > watermark
            if self.over_memory:
                log.warning("memory use %d MiB is over the watermark of %d MiB: new requests get 503 until it is "
                            "back under 90%%", rss >> 20, watermark >> 20)
        elif self.over_memory and rss < watermark * 0.9:
            self.over_memory = False
            log.warning("memory use %d MiB is back under the watermark: serving again", rss >> 20)
        elif self.over_memory:
            trim_heap()
        self._memory_timer = self.loop.call_later(_MEMORY_EVERY, self._watch_memory)

    def admit(self) -> bool:
        """Room for one more connection: at the cap, the longest-waiting one not being answered makes room."""
        if len(self.connections) >= self.max_connections and not self._evict_one():
            self.count_shed("connections")
            return False
        on_connections = self.limits.on_connections
        if on_connections is not None:
            on_connections(1)
        return True

    def closed_one(self) -> None:
        on_connections = self.limits.on_connections
        if on_connections is not None:
            on_connections(-1)

    def _evict_one(self) -> bool:
        oldest: H1Connection | None = None
        for looked, conn in enumerate(self.connections):
            if looked >= _EVICT_SCAN or (looked >= _EVICT_SAMPLE and oldest is not None):
                break
            if conn.waiting and not conn.gone and (oldest is None or conn.idle_since < oldest.idle_since):
                oldest = conn
        if oldest is None:
            return False
        self.connections.discard(oldest)  # its slot is the new one's now; its close follows
        oldest.close()
        self.count_shed("evicted")
        return True

    def count_shed(self, reason: ShedReason) -> None:
        on_shed = self.limits.on_shed
        if on_shed is not None:
            on_shed(reason)

    def _sweep(self) -> None:
        """Close connections idle (or stuck in a head) longer than the keep-alive timeout; one timer for all."""
        deadline = self.loop.time() - self._keepalive
        for conn in [c for c in self.connections if c.idle_since < deadline and (c.idle or c._in_head)]:
            conn.close()
        self._sweeper = self.loop.call_later(min(5.0, self._keepalive), self._sweep)

    async def hand_over(self, transport: asyncio.Transport, data: bytes, paused: bool) -> None:
        if self._fallback is None:
            transport.write(serialize_head(501, "Not Implemented", CIMultiDict(), "Content-Length: 0\r\nConnection: "
                                           "close\r\n"))
            transport.close()
            return
        if self._fallback_factory is None:
            self._fallback_factory = await self._fallback()
        if transport.is_closing():
            return
        protocol = self._fallback_factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(data)
        if paused:
            transport.resume_reading()

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections now, let the others finish their answer (up to *timeout*), then cut them."""
        self._sweeper.cancel()
        if self._memory_timer is not None:
            self._memory_timer.cancel()
        for conn in list(self.connections):
            conn.closing = True
            if conn.idle:
                conn.close()
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
