"""One client connection of the HTTP/1.1 engine: parse with llhttp, queue, answer in order.

Each connection parses with httptools; a parsed head becomes a `lane.engine.request.Request` handed to
the listener's handler coroutine. Requests on one connection are answered in order (pipelining is
parsed, answers are serialized). What is not a plain request-answer exchange (upgrades) is handed,
with the bytes read so far, to the listener (`Listener.hand_over`); a connection whose first bytes are
the HTTP/2 preface is handed to the listener's HTTP/2 side (`Listener.hand_to_h2`, h2c for gRPC).

Limits (a proxy in front of everything must not buffer what a client sends it): request line and
each header field ≤ 8 KiB, the whole head ≤ 64 KiB and ≤ 128 fields (431 otherwise), counted on
the parsed fields however the bytes arrive (one read or many); a malformed head or body framing
(including Content-Length with Transfer-Encoding: request smuggling) is a 400. After such an answer
the connection is closed *gracefully*: the write side is shut down and what the client still sends is
read and dropped (bounded: `_LINGER_BYTES`, `_LINGER_SECONDS`), because closing a socket with unread
bytes makes the kernel send a reset, which can destroy the answer before the client reads it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Final, Protocol, cast

import httptools
from multidict import CIMultiDict

from lane.engine.exchange import ClientGone, Handler
from lane.engine.h2_headers import PREFACE
from lane.engine.head import MAX_FIELD, MAX_FIELDS, MAX_HEAD, reason_phrase, request_head, serialize_head
from lane.engine.limits import ShedReason
from lane.engine.request import Request, RequestBody

__all__ = ["H1Connection", "Listener"]

log = logging.getLogger(__name__)

_LINGER_BYTES: Final = 1024 * 1024  # dropped after a refusal before the connection is closed anyway
_LINGER_SECONDS: Final = 2.0


class Listener(Protocol):
    """What a connection needs of its listener (`lane.engine.server.H1Server`): admission, limits, handler."""

    loop: asyncio.AbstractEventLoop
    handler: Handler
    connections: set[Any]  # this and the listener's other connections (`lane.engine.server.Served`)
    active: int
    max_requests: int
    over_memory: bool
    buffer_bytes: int
    retry_after: str

    def admit(self) -> bool: ...
    def closed_one(self) -> None: ...
    def count_shed(self, reason: ShedReason) -> None: ...
    async def hand_over(self, transport: asyncio.Transport, data: bytes, paused: bool) -> None: ...
    def hand_to_h2(self, conn: H1Connection, transport: asyncio.Transport, data: bytes) -> None: ...


class _HeadTooLarge(Exception):
    def __init__(self, status: int, what: str) -> None:
        self.status = status
        self.what = what


def _too_large(size: int, count: int) -> _HeadTooLarge:
    """Which head limit a header field broke (`H1Connection.on_header`)."""
    if size > MAX_FIELD:
        return _HeadTooLarge(431, f"a header field longer than {MAX_FIELD} bytes")
    if count >= MAX_FIELDS:
        return _HeadTooLarge(431, f"more than {MAX_FIELDS} header fields")
    return _HeadTooLarge(431, f"request head larger than {MAX_HEAD} bytes")


class H1Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, server: Listener) -> None:
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
        self.in_head = False
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
        self._sniffing = True  # the first bytes may be HTTP/2's connection preface
        self._sniffed = b""

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
            self._parsing.body.finish(ClientGone("the client closed the connection before its body was sent"))
        for request in self._queue:
            request.body.finish(ClientGone("the client closed the connection"))
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
        if self._sniffing:
            data = self._sniff(data)
            if not data:
                return
        if self._refused:
            self._linger_left -= len(data)
            if self._linger_left < 0 and self._refusal is None:
                self.abort()  # still sending after the answer: enough was read
            return
        if self.in_head or self._parsing is None:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0]
            self._begin_upgrade(data[offset:])
            return
        except _HeadTooLarge as too_large:  # a name per clause: compiled (mypyc), a name has one type
            self._refuse(too_large.status, too_large.what)
            return
        except httptools.HttpParserError as malformed:
            cause = malformed.__context__
            if isinstance(cause, _HeadTooLarge):
                self._refuse(cause.status, cause.what)
            else:
                self._refuse(400, f"malformed request: {malformed}")
            return
        if self.in_head and self._head_bytes > MAX_HEAD:
            self._refuse(431, f"request head larger than {MAX_HEAD} bytes")

    def _sniff(self, data: bytes) -> bytes:
        """The bytes to parse as HTTP/1.1; b"" while they may still be the HTTP/2 preface, or once handed over.

        Only the first bytes of a connection are looked at (Envoy's ``codec_type: AUTO``): a request
        line never starts with ``PRI * HTTP/2.0``, so one comparison tells the two apart.
        """
        seen = self._sniffed + data if self._sniffed else data
        size = min(len(seen), len(PREFACE))
        if seen[:size] != PREFACE[:size]:
            self._sniffing = False
            self._sniffed = b""
            return seen
        if size < len(PREFACE):
            self._sniffed = seen  # a preface cut short by the network: wait for the rest
            return b""
        self._sniffing = False
        self._sniffed = b""
        if self._admitted and self.transport is not None:
            self._admitted = False  # the HTTP/2 connection counts for the listener from now on
            self._server.hand_to_h2(self, self.transport, seen)
        return b""

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._refused and self._refusal is None:
            return None  # the refusal was written: the client read it and closed, so close too
        if self._parsing is not None:
            self._parsing.body.finish(ClientGone("the client closed the connection before its body was sent"))
            self._parsing = None
        if self._current is None and not self._queue:
            return None  # nothing to answer: close
        return True  # half-closed: still answer what was asked

    # --- httptools callbacks ---
    def on_message_begin(self) -> None:
        self.in_head = True
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
        fields = self._fields
        # The whole head, also when it arrived in one read (the byte count in `data_received`
        # only sees a head that is still incomplete): ": " and CRLF count as the client sent them.
        self._head_size += size + 4
        if size > MAX_FIELD or len(fields) >= MAX_FIELDS or self._head_size > MAX_HEAD:  # one test per field
            raise _too_large(size, len(fields))
        fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
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
            self._parsing.body.feed(body)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing.body.finish()
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
        keep = request.keep_alive and not self.closing and not self.gone and not self._eof
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
        return self._current is None and not self.in_head

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
        self.in_head = False
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
        self._upgrade_data = request_head(request.method, request.target, request.version,
                                         request.headers.items()) + rest
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
