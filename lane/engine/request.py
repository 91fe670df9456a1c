"""A request as the engine hands it to a handler: head, body stream, and the ways to answer it.

`Request` answers through `respond` (a complete answer) or `start`/`write`/`end` (a streamed one);
`RequestBody` streams what the client sends and pauses reading from it while the handler lags.
Both talk to their connection only through `ConnectionSide`, so this module does not depend on
the connection state machine (`lane.engine.connection`) that creates them.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Final, Protocol

from multidict import CIMultiDict

from lane.engine.exchange import ClientGone
from lane.engine.head import NO_BODY_STATUS, origin_form, reason_phrase, serialize_head

__all__ = ["ConnectionSide", "Request", "RequestBody"]

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

class ConnectionSide(Protocol):
    """What a request and its body need of the connection they arrived on."""

    loop: asyncio.AbstractEventLoop
    peer: str | None
    sockname: tuple[str, int] | None
    gone: bool
    closing: bool
    body_high: int
    body_low: int

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def write_raw(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def answer_done(self, request: Request) -> None: ...
    def abort(self) -> None: ...


class RequestBody:
    """The body of one request as it arrives (a `lane.engine.exchange.BodySource`), read at most once."""

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

    def __init__(self, conn: ConnectionSide, present: bool, length: int | None, expect_continue: bool) -> None:
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

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > self._conn.body_high:  # reading from the client pauses
            self._conn.pause_reading()
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
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

    __slots__ = ("_chunked", "_conn", "_no_body", "_started", "body", "headers", "keep_alive", "method",
                 "status", "target", "version")

    scheme: Final = "http"

    def __init__(self, conn: ConnectionSide, method: str, target: str, version: str, headers: CIMultiDict[str],
                 body: RequestBody, keep_alive: bool) -> None:
        self._conn = conn
        self.method = method
        self.target = target  # as sent: origin form, or absolute form for a forward proxy
        self.version = version
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
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
        self.keep_alive = False

    # --- answering ---
    def respond(self, status: int, headers: CIMultiDict[str], body: bytes = b"", reason: str | None = None) -> None:
        """A complete answer of known length, written at once."""
        if status in NO_BODY_STATUS or status < 200:
            body = b""
            framing = ""
        else:
            framing = f"Content-Length: {len(body)}\r\n"
        self._begin()
        self.status = status
        if "content-length" in headers:
            headers.popall("content-length")
        conn = self._conn
        if not self.keep_alive or conn.closing:
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
        bodiless = self._no_body or status in NO_BODY_STATUS or status < 200
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
                self.keep_alive = False
        conn = self._conn
        if not self.keep_alive or conn.closing:
            self.keep_alive = False
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

    def end(self, trailers: CIMultiDict[str] | None = None) -> None:
        """The end of a streamed answer; *trailers* are dropped (HTTP/1.1 trailers are not relayed)."""
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
