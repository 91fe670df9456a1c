"""One HTTP/2 request stream as the engine hands it to a handler: an `lane.engine.exchange.Exchange`.

`H2Exchange` answers through `respond` (a complete answer) or `start`/`write`/`end` (a streamed one,
ended with trailers when given: gRPC's ``grpc-status`` travels there); an answer with no body and
`end` leaves as one HEADERS frame that ends the stream, which is gRPC's trailers-only form.
`H2Body` streams what the client sends and hands each piece back to the client's flow-control window
only once the handler took it. Like Envoy's retry buffer, it keeps what it handed out while that is at
most `REPLAY_BYTES`: such a body (every unary gRPC request, a short stream) can be sent again from its
start to another instance when the first one did not take it (a sidecar saying its app is down), also
while the rest of it is still arriving, so it does not count as ``started``. Both talk to their connection only through `StreamSide`, so this
module does not depend on the connection (`lane.engine.h2_connection`) that creates them.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Final, Protocol

from h2.errors import ErrorCodes
from multidict import CIMultiDict

from lane.engine.exchange import ClientGone
from lane.engine.h2_headers import RequestHead, response_block, trailer_block
from lane.engine.h2_peer import Outgoing
from lane.engine.head import NO_BODY_STATUS, origin_form

__all__ = ["REPLAY_BYTES", "H2Body", "H2Exchange", "StreamSide"]

REPLAY_BYTES: Final = 64 * 1024  # a body handed out is kept up to this size, so it can be sent again
_GONE: Final = "the client reset the stream or closed the connection"


class StreamSide(Protocol):
    """What a stream's exchange and body need of the connection they arrived on."""

    loop: asyncio.AbstractEventLoop
    peer: str | None
    sockname: tuple[str, int] | None

    def send_head(self, stream_id: int, block: list[tuple[bytes, bytes]], end: bool) -> None: ...
    def send(self, stream_id: int, data: bytes, end: bool,
             trailers: list[tuple[bytes, bytes]] | None = None) -> Outgoing: ...
    async def drained(self, out: Outgoing) -> None: ...
    def reset(self, stream_id: int, code: ErrorCodes = ErrorCodes.CANCEL) -> None: ...
    def ack(self, stream_id: int, size: int) -> None: ...
    def answer_done(self, exchange: H2Exchange) -> None: ...


class H2Body:
    """The body of one request stream as it arrives (a `lane.engine.exchange.BodySource`), read at most once."""

    __slots__ = ("_chunks", "_conn", "_discarded", "_done", "_error", "_handed", "_kept", "_kept_bytes", "_waiters",
                 "length", "present", "stream_id")

    def __init__(self, conn: StreamSide, stream_id: int, present: bool, length: int | None) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.present = present
        self.length = length
        self._handed = False  # some of it was handed out
        self._kept: list[bytes] | None = []  # what was handed out, while at most REPLAY_BYTES
        self._kept_bytes = 0
        self._chunks: collections.deque[tuple[bytes, int]] = collections.deque()
        self._done = not present
        self._discarded = False
        self._error: BaseException | None = None
        # One per reader: a reader cancelled while waiting (an attempt given up) never takes the next one's wake-up.
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def complete(self) -> bool:
        return self._done

    @property
    def started(self) -> bool:
        """Some of it was handed out and it cannot be sent again (more than `REPLAY_BYTES`, or it failed)."""
        return self._handed and (self._kept is None or self._error is not None)

    def feed(self, data: bytes, flow: int) -> None:
        """*data* arrived, *flow* bytes of the client's window (padding included)."""
        if self._discarded:
            self._conn.ack(self.stream_id, flow)
            return
        self._chunks.append((data, flow))
        if self._waiters:  # usually none: a unary call's body has all arrived before it is read
            self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        if not self._done:
            self._done = True
            self._error = error
        if self._waiters:
            self._wake()

    def discard(self) -> None:
        """Nobody will read the rest: give its window back now, and that of whatever still arrives."""
        self._discarded = True
        while self._chunks:
            self._conn.ack(self.stream_id, self._chunks.popleft()[1])

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def whole(self) -> list[bytes] | None:
        """What `chunks` would yield, at once, when all of the body arrived without error (a unary gRPC call's
        body usually has by the time it is sent on); None otherwise, then it is read through `chunks`."""
        if not self._done or self._error is not None or (self._handed and self.started):
            return None
        out = list(self._kept or ())
        while self._chunks:
            out.extend(self._take())
        return out

    def _take(self) -> list[bytes]:
        """Hand out the first piece that arrived (giving its window back and keeping it while it can be sent again)."""
        data, flow = self._chunks.popleft()
        self._conn.ack(self.stream_id, flow)
        self._handed = True
        if self._kept is not None:
            self._kept_bytes += len(data)
            if self._kept_bytes > REPLAY_BYTES:
                self._kept = None
            elif data:
                self._kept.append(data)
        return [data] if data else []

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body from its start: what was already handed out (when kept), then the rest as it arrives."""
        if self._handed and self.started:
            raise RuntimeError("this request body was already sent and cannot be sent again")
        for data in list(self._kept or ()):
            yield data
        while True:
            if self._chunks:
                for data in self._take():
                    yield data
                continue
            if self._done:
                if self._error is not None:
                    raise self._error
                return
            waiter = self._conn.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)


class H2Exchange:
    """One request stream, its body and the way to answer it."""

    __slots__ = ("_conn", "_ended", "_no_body", "_started", "body", "gone", "headers", "method", "scheme", "status",
                 "stream_id", "target", "task", "version")

    def __init__(self, conn: StreamSide, stream_id: int, head: RequestHead, body: H2Body) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.method = head.method
        self.scheme = head.scheme
        self.target = head.path
        self.headers = head.headers
        self.body = body
        self.version = "2"
        self.status = 0
        self.gone = False  # the client reset the stream, or the connection is lost
        self.task: asyncio.Task[None] | None = None
        self._started = False
        self._ended = False
        self._no_body = head.method == "HEAD"

    @property
    def remote(self) -> str | None:
        return self._conn.peer

    @property
    def sockname(self) -> tuple[str, int] | None:
        return self._conn.sockname

    @property
    def path(self) -> str:
        return origin_form(self.target).partition("?")[0]

    @property
    def query_string(self) -> str:
        return self.target.partition("?")[2]

    @property
    def answered(self) -> bool:
        return self._started

    @property
    def ended(self) -> bool:
        return self._ended

    def close_after(self) -> None:
        """Nothing to do: a stream's end never ends the connection."""

    def respond(self, status: int, headers: CIMultiDict[str], body: bytes = b"", reason: str | None = None) -> None:
        """A complete answer; without a body it is one HEADERS frame ending the stream."""
        self._begin(status)
        headers.popall("content-length", None)
        if self._no_body or status in NO_BODY_STATUS or status < 200:
            body = b""
        if body:
            headers["content-length"] = str(len(body))
        if not self.gone:
            self._conn.send_head(self.stream_id, response_block(status, headers), end=not body)
            if body:
                self._conn.send(self.stream_id, body, True)
        self._end()

    def start(self, status: int, reason: str, headers: CIMultiDict[str], length: int | None, first: bytes,
              end: bool) -> None:
        """The head of a streamed answer, with its first body bytes (*end*: and nothing more)."""
        self._begin(status)
        if self._no_body or status in NO_BODY_STATUS or status < 200:
            first = b""
            self._no_body = True
        if not self.gone:
            conn = self._conn
            conn.send_head(self.stream_id, response_block(status, headers), end=end and not first)
            if first:
                conn.send(self.stream_id, first, end)
        if end:
            self._end()

    async def write(self, chunk: bytes) -> None:
        """More of a streamed answer; waits while the client's window or the socket holds it back."""
        if self.gone:
            raise ClientGone(_GONE)
        if not chunk or self._no_body:
            return
        out = self._conn.send(self.stream_id, chunk, False)
        await self._conn.drained(out)
        if out.failed:
            raise ClientGone(_GONE)

    def end(self, trailers: CIMultiDict[str] | None = None) -> None:
        """The end of a streamed answer, with *trailers* (gRPC's status) when given."""
        if not self.gone and not self._ended:
            self._conn.send(self.stream_id, b"", True, trailer_block(trailers) if trailers else None)
        self._end()

    def abort(self) -> None:
        """The answer cannot be completed (its upstream broke): reset this stream, the connection goes on."""
        if not self.gone:
            self.gone = True
            self._conn.reset(self.stream_id, ErrorCodes.INTERNAL_ERROR)
        self._end()

    def _begin(self, status: int) -> None:
        if self._started:
            raise RuntimeError("this request was already answered")
        self._started = True
        self.status = status

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._conn.answer_done(self)
