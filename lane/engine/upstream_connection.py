"""One keep-alive connection to an upstream and the state of the exchange on it (`UpstreamConnection`).

One llhttp parser for all the answers on the connection; the request head goes out in one write and
the body is pumped with transport-level flow control. Timeouts are bounds on *silence*, measured
against a progress timestamp (`UpstreamConnection.last`, moved by every byte that flows either way).
Each connection has one loop timer, re-armed only when it fires (or when a request asks for a shorter
bound than the one pending), so a request costs a few float stores instead of a timer handle. While
the caller has answer bytes it has not taken, or reading is paused for it, silence is the caller's
doing and never times out.

Header text round-trips the way the server side (`lane.engine.connection`) decodes it: names ASCII,
values UTF-8 with surrogate escapes, so bytes a client or an upstream sent pass unchanged.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Final, Protocol, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from multidict import CIMultiDict

from lane.engine.answer import UpstreamAnswer
from lane.engine.exchange import BodySource
from lane.engine.failures import Address, UpstreamBroken, UpstreamFailure, UpstreamTimeout

__all__ = ["BUSY", "CLOSED", "IDLE", "MAX_ANSWER_HEAD", "READ_HIGH", "Owner", "Pool", "UpstreamConnection"]

READ_HIGH: Final = 256 * 1024  # answer bytes buffered for the caller above which reading pauses
MAX_ANSWER_HEAD: Final = 256 * 1024  # an upstream's head (interim answers included) beyond this is broken
_LAST_CHUNK: Final = b"0\r\n\r\n"
_CRLF: Final = b"\r\n"
IDLE, BUSY, CLOSED = 0, 1, 2


class Owner(Protocol):
    """What a connection needs of the pools that own it (`lane.engine.upstream.Upstreams`)."""

    max_idle: int
    idle_seconds: float
    closed: bool

    def forget(self, conn: UpstreamConnection, was_idle: bool) -> None: ...


class Pool:
    """One endpoint's idle connections (a LIFO stack) and its pre-built ``Host`` line."""

    __slots__ = ("endpoint", "host_line", "idle")

    def __init__(self, endpoint: Address) -> None:
        self.endpoint = endpoint
        self.host_line = f"Host: {endpoint}\r\n"
        self.idle: list[UpstreamConnection] = []


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream and the state of the exchange on it."""

    trailers: Final = None  # chunked trailers are not relayed over HTTP/1.1

    __slots__ = (
        "body_sent", "buffer", "buffered", "complete", "dirty", "drain", "error", "fields", "got_bytes",
        "head_bytes", "head_done", "head_only", "headers", "interim", "keep_alive", "last", "length",
        "loop", "lost", "owner", "parser", "parser_spent", "period", "pool", "read_paused", "reason", "reused",
        "state", "status", "timeout", "timer", "timer_when", "transport", "until_close", "upgraded",
        "waiter", "write_paused", "writer",
    )

    def __init__(self, owner: Owner, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.parser_spent = False
        self.state = BUSY
        self.reused = False
        self.last = loop.time()
        self.timeout = self.period = owner.idle_seconds
        self.timer: asyncio.TimerHandle | None = None
        self.timer_when = 0.0
        self.waiter: asyncio.Future[None] | None = None  # the caller, waiting for the head or the body
        self.drain: asyncio.Future[None] | None = None  # the body pump, waiting for the socket to drain
        self.lost: asyncio.Future[None] | None = None
        self.write_paused = False
        self.read_paused = False
        self.writer: asyncio.Task[None] | None = None
        self.buffer: list[bytes] = []
        self._reset(False, True)

    def _reset(self, head_only: bool, body_sent: bool) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.headers: CIMultiDict[str] | None = None
        self.status = 0
        self.reason = ""
        self.length: int | None = None
        self.head_only = head_only
        self.head_done = self.complete = self.interim = self.until_close = self.upgraded = False
        self.keep_alive = self.got_bytes = self.dirty = False
        self.body_sent = body_sent
        self.error: BaseException | None = None
        self.head_bytes = self.buffered = 0

    # --- the exchange, from the caller's side ---
    async def exchange(self, head: bytes, head_only: bool, body: BodySource | None, timeout: float) -> UpstreamAnswer:
        transport = self.transport
        if transport is None or self.state != BUSY:  # the upstream closed it between connect and now
            raise UpstreamBroken(self.pool.endpoint, "EOF: the connection closed before the request")
        if self.parser_spent:
            self.parser = HttpResponseParser(self)
            self.parser_spent = False
        self._reset(head_only, body is None)
        self.timeout = timeout
        self.period = min(timeout, self.owner.idle_seconds)
        self.last = now = self.loop.time()
        if self.timer is None or self.timer_when > now + timeout:
            self._arm(now + self.period)
        transport.write(head)
        if body is not None:
            self.writer = self.loop.create_task(self._pump(body, transport))
        waiter = self.waiter = self.loop.create_future()
        try:
            await waiter
        except BaseException:  # cancelled: the caller gave up on this request
            self.close(abort=True)
            raise
        finally:
            self.waiter = None
        if not self.head_done:
            assert self.error is not None
            raise self.error
        return UpstreamAnswer(self)

    async def _pump(self, body: BodySource, transport: asyncio.Transport) -> None:
        """Stream the request body, framed, pausing while the upstream's socket buffer is full."""
        chunked = body.length is None
        sent = 0
        try:
            async for chunk in body.chunks():
                if not chunk:
                    continue
                if self.state != BUSY:
                    return
                self.last = self.loop.time()
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, _CRLF))
                else:
                    transport.write(chunk)
                sent += len(chunk)
                if self.write_paused:
                    await self._drain()
                    if self.state != BUSY:
                        return
                    self.last = self.loop.time()
            if self.state != BUSY:
                return
            if chunked:
                transport.write(_LAST_CHUNK)
            elif sent != body.length:
                raise ValueError(f"the request body was {sent} bytes, its Content-Length {body.length}")
            self.body_sent = True
            self.last = self.loop.time()
        except Exception as exc:  # noqa: BLE001 - the body's source failed (its client went away), not the upstream
            if self.state == BUSY:
                if self.error is None:
                    # Before the head the caller gets the source's own error (dispatch must not blame
                    # the upstream); mid-answer the answer is cut.
                    self.error = exc if not self.head_done else UpstreamBroken(
                        self.pool.endpoint, f"the request body failed: {type(exc).__name__}: {exc}"[:200])
                self.close(abort=True)
        finally:
            self.writer = None

    async def _drain(self) -> None:
        waiter = self.drain = self.loop.create_future()
        try:
            await waiter
        finally:
            self.drain = None

    def take(self) -> bytes:
        """The answer bytes buffered so far (the caller's progress counts as progress too)."""
        buffer = self.buffer
        if not buffer:
            return b""
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        self.buffered = 0
        if not self.complete:
            self.last = self.loop.time()
            if self.read_paused and self.transport is not None:
                self.read_paused = False
                self.transport.resume_reading()
        return data

    async def wait_body(self) -> None:
        waiter = self.waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    def finish(self, reuse: bool) -> None:
        """The caller is done with the answer: pool the connection if it is clean, else drop it."""
        if self.state != BUSY:
            return
        if (reuse and self.complete and self.keep_alive and self.body_sent and not self.dirty
                and not self.upgraded and self.error is None and not self.owner.closed
                and len(self.pool.idle) < self.owner.max_idle):
            self.buffer.clear()
            self.headers = None
            if self.read_paused and self.transport is not None:
                self.read_paused = False
                self.transport.resume_reading()
            self.state = IDLE
            self.reused = True
            self.last = now = self.loop.time()
            if self.timer is None or self.timer_when > now + self.owner.idle_seconds:
                self._arm(now + self.owner.idle_seconds)
            self.pool.idle.append(self)
        else:
            self.close(abort=not self.complete)

    # --- timing ---
    # The timer never sleeps longer than `period` (the shorter of the request and idle bounds),
    # so neither starting an exchange nor pooling the connection has to re-arm it.
    def _arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_when = when
        self.timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        state = self.state
        if state == CLOSED:
            return
        now = self.loop.time()
        soon = now + self.period
        if state == IDLE:
            due = self.last + self.owner.idle_seconds
            if now >= due:
                self.close(abort=False)
            else:
                self._arm(min(due, soon))
            return
        if self.complete or self.buffered or self.read_paused:
            self._arm(soon)  # the caller's turn: its silence is not the upstream's
            return
        due = self.last + self.timeout
        if now >= due:
            self.fail(UpstreamTimeout(self.pool.endpoint, f"no progress for {self.timeout:g}s"))
        else:
            self._arm(min(due, soon))

    # --- failing and closing ---
    def fail(self, error: UpstreamFailure) -> None:
        if self.error is None:
            self.error = error
        self.close(abort=True)

    def close(self, *, abort: bool) -> None:
        if self.state == CLOSED:
            return
        was_idle = self.state == IDLE
        if not was_idle and not self.complete and self.error is None:
            self.error = UpstreamBroken(self.pool.endpoint, "the answer was closed before its end")
        self.state = CLOSED
        self.owner.forget(self, was_idle)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        writer = self.writer
        if writer is not None and writer is not asyncio.current_task(self.loop):
            writer.cancel()
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        self._wake()
        self.resume_writing()  # a paused body pump sees the connection closed

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - not a TCP socket
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        if self.state == CLOSED:
            return
        if self.state == BUSY and not self.complete:
            if exc is None and self.head_done and self.until_close:
                self.complete = True  # a body delimited by the end of the connection
            elif self.error is None:
                endpoint = self.pool.endpoint
                if exc is not None:
                    self.error = UpstreamBroken(endpoint, f"{type(exc).__name__}: {exc}"[:200])
                elif self.head_done:
                    self.error = UpstreamBroken(endpoint, "EOF: the connection closed in the middle of the answer")
                else:
                    self.error = UpstreamBroken(endpoint, "EOF: the connection closed before an answer")
        self.transport = None
        self.close(abort=False)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain = self.drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.last = self.loop.time()
        if self.state != BUSY or self.complete:
            # Nothing may arrive on an HTTP/1.1 connection without a request asking for it.
            if self.state == IDLE:
                self.close(abort=True)
            else:
                self.dirty = True
            return
        self.got_bytes = True
        if self.upgraded:
            self._feed(data)
            return
        if not self.head_done:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_ANSWER_HEAD:
                self.fail(UpstreamBroken(self.pool.endpoint, f"an answer head larger than {MAX_ANSWER_HEAD} bytes"))
                return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            rest = data[exc.args[0]:]
            if rest:
                self._feed(rest)
        except HttpParserError as malformed:  # a name per clause: compiled (mypyc), a name has one type
            if self.complete:
                self.dirty = True  # bytes after a complete answer: the connection cannot be reused
            else:
                cause = malformed.__context__ or malformed
                self.fail(UpstreamBroken(self.pool.endpoint, f"{type(cause).__name__}: {cause}"[:200]))

    # --- httptools callbacks ---
    def on_message_begin(self) -> None:
        if self.complete:
            raise _Surplus  # a second answer to one request

    def on_status(self, reason: bytes) -> None:
        self.reason = reason.decode("utf-8", "surrogateescape")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        fields = self.fields
        self.fields = []
        if status < 200 and status != 101:
            self.interim = True  # 100 Continue, 103 Early Hints: the answer is still to come
            self.head_bytes = 0
            return
        self.headers = headers = CIMultiDict(
            [(n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in fields])
        self.status = status
        self.keep_alive = parser.should_keep_alive()
        self.head_done = True
        if self.head_only or status == 204 or status == 304:
            self.length = 0
            if self.head_only:  # llhttp does not know the method: it would wait for the body
                self.complete = True
                self.parser_spent = True
        elif status == 101:
            self.upgraded = self.until_close = True
            self.keep_alive = False
        elif "Transfer-Encoding" in headers:
            self.until_close = headers.getall("Transfer-Encoding")[-1].rsplit(",", 1)[-1].strip().lower() != "chunked"
        else:
            length = headers.get("Content-Length")
            if length is None:
                self.until_close = True
            else:
                self.length = int(length)  # llhttp validated it
        self._wake()

    def on_body(self, data: bytes) -> None:
        if self.head_only:
            self.dirty = True  # a body after the answer to HEAD
            return
        self._feed(data)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
        elif not self.complete:
            self.complete = True
            self._wake()

    def _feed(self, data: bytes) -> None:
        self.buffer.append(data)
        self.buffered += len(data)
        if self.buffered > READ_HIGH and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()
        self._wake()


class _Surplus(Exception):
    """Raised from a parser callback to stop parsing bytes that follow a complete answer."""
