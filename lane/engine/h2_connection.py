"""One HTTP/2 client connection (h2c, prior knowledge) of a listener: each stream an `Exchange`.

The listener's HTTP/1.1 connection sees the connection preface and hands the socket over
(`lane.engine.server.H1Server.hand_to_h2`), as Envoy's ``codec_type: AUTO`` picks the codec from the
first bytes. From then on every request stream becomes a `lane.engine.h2_stream.H2Exchange` handed to
the listener's HTTP/2 handler, many at once. The listener's limits apply per stream as to an
HTTP/1.1 request (over ``max_requests`` or the memory watermark: a fast 503), its buffer bound is the
stream's flow-control window.

Draining: when the listener stops (or the client says GOAWAY) the connection says GOAWAY, answers
the streams in flight and refuses new ones (RST_STREAM ``REFUSED_STREAM``: a gRPC client retries those
elsewhere), then closes once its last stream ended.

Cancellation: a stream the client resets (RST_STREAM: a gRPC call cancelled, or its deadline passed)
cancels its handler task, so the request logic stops waiting and whatever it opened upstream is reset
in turn; a lost connection does the same for every stream on it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final, Protocol

from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, DataReceived, Event, RequestReceived, StreamEnded, StreamReset
from multidict import CIMultiDict

from lane.engine.exchange import ClientGone, Handler
from lane.engine.h2_headers import request_head
from lane.engine.h2_peer import H2Peer
from lane.engine.h2_stream import H2Body, H2Exchange
from lane.engine.limits import ShedReason

__all__ = ["MAX_STREAMS", "H2Listener", "H2ServerConnection"]

log = logging.getLogger(__name__)

MAX_STREAMS: Final = 1000  # concurrent streams a client may open on one connection (SETTINGS)


class H2Listener(Protocol):
    """What an HTTP/2 connection needs of its listener (`lane.engine.server.H1Server`)."""

    loop: asyncio.AbstractEventLoop
    connections: set[Any]
    active: int
    max_requests: int
    over_memory: bool
    buffer_bytes: int
    retry_after: str

    def h2_handler(self) -> Handler: ...
    def closed_one(self) -> None: ...
    def count_shed(self, reason: ShedReason) -> None: ...


class H2ServerConnection(H2Peer):
    """One HTTP/2 client connection: its streams, each answered by its own handler task."""

    def __init__(self, server: H2Listener) -> None:
        super().__init__(server.loop, client_side=False, window=server.buffer_bytes, max_streams=MAX_STREAMS)
        self._server = server
        self._handler = server.h2_handler()
        self.streams: dict[int, H2Exchange] = {}
        self.peer: str | None = None
        self.sockname: tuple[str, int] | None = None
        self._closing = False
        self.in_head = False  # what the listener's sweeper asks of every connection
        self.idle_since = self.loop.time()
        self._admitted = True  # admitted by the HTTP/1.1 connection that handed it over

    # --- what the listener asks of its connections ---
    @property
    def closing(self) -> bool:
        return self._closing

    @closing.setter
    def closing(self, value: bool) -> None:
        """The listener is stopping: GOAWAY now, close once the streams in flight are answered."""
        if value and not self._closing:
            self._closing = True
            self.goaway()
            self._maybe_idle()

    @property
    def idle(self) -> bool:
        return not self.streams

    @property
    def waiting(self) -> bool:
        return not self.streams

    def close(self) -> None:
        """Say GOAWAY and close (streams in flight are cut: the listener calls this only on idle connections)."""
        self.goaway()
        super().close()

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else None
        sock = transport.get_extra_info("sockname")
        self.sockname = (sock[0], sock[1]) if sock else None
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._admitted:
            self._admitted = False
            self._server.connections.discard(self)
            self._server.closed_one()
        for exchange in list(self.streams.values()):
            self._gone(exchange)
        self.streams.clear()

    def on_event(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            exchange = self.streams.get(event.stream_id)
            if exchange is None:
                self.ack(event.stream_id, event.flow_controlled_length)
            else:
                exchange.body.feed(event.data, event.flow_controlled_length)
        elif isinstance(event, RequestReceived):
            self._open(event)
        elif isinstance(event, StreamEnded):
            exchange = self.streams.get(event.stream_id)
            if exchange is not None:
                exchange.body.finish()
        elif isinstance(event, StreamReset):
            exchange = self.streams.pop(event.stream_id, None)
            if exchange is not None:
                self._gone(exchange)
                self._maybe_idle()
        elif isinstance(event, ConnectionTerminated):  # GOAWAY: no new streams; finish the ones in flight
            if event.error_code != ErrorCodes.NO_ERROR:
                self.abort()  # the client gave up on the connection: every stream on it is cancelled
                return
            self.closing = True
        # Request trailers (TrailersReceived) are dropped: the stream's end follows as StreamEnded.

    def broken(self, why: str) -> None:
        log.debug("HTTP/2 connection from %s closed: %s", self.peer, why)

    # --- streams ---
    def _open(self, event: RequestReceived) -> None:
        sid = event.stream_id
        if self._closing:  # after our GOAWAY: not processed, the client may send it elsewhere
            self.reset(sid, ErrorCodes.REFUSED_STREAM)
            return
        head = request_head(event.headers or ())
        present = not event.stream_ended
        length: int | None = 0
        if present:
            declared = head.headers.get("content-length", "")
            length = int(declared) if declared.isdigit() and len(declared) < 19 else None
            present = length != 0
        body = H2Body(self, sid, present, length)
        exchange = H2Exchange(self, sid, head, body)
        if event.stream_ended:
            body.finish()
        self.streams[sid] = exchange
        exchange.task = self.loop.create_task(self._serve(exchange))

    async def _serve(self, exchange: H2Exchange) -> None:
        """Run the handler of one stream, then retire the stream (here rather than in a done callback: a closure
        and two calls less per stream). A task cancelled before its first step never gets here, but only `_gone`
        cancels, and it already did what retiring does."""
        server = self._server
        try:
            if server.active >= server.max_requests or server.over_memory:
                self._shed(exchange)
                return
            server.active += 1
            try:
                await self._handler(exchange)
            except asyncio.CancelledError:  # the client reset the stream: the handler stopped where it was
                return
            except ClientGone:
                exchange.abort()
                return
            except Exception:
                log.exception("lane proxy: the handler of %s %s failed", exchange.method, exchange.path)
                if not exchange.answered and not exchange.gone:
                    exchange.respond(500, CIMultiDict(), b"lane: internal error\n")
                else:
                    exchange.abort()
                return
            finally:
                server.active -= 1
            if not exchange.answered:
                log.error("lane proxy: the handler of %s %s did not answer", exchange.method, exchange.path)
                exchange.respond(500, CIMultiDict(), b"lane: internal error\n")
        finally:
            exchange.task = None  # the handler returned: `_retire` forgets the stream once its answer ended
            self._retire(exchange)

    def _shed(self, exchange: H2Exchange) -> None:
        server = self._server
        reason: ShedReason = "memory" if server.over_memory else "requests"
        server.count_shed(reason)
        what = "memory use is over its watermark" if reason == "memory" else "too many requests at once"
        exchange.respond(503, CIMultiDict({
            "retry-after": server.retry_after, "content-type": "text/plain; charset=utf-8",
            "x-lane-overloaded": reason,
        }), f"lane: overloaded ({what}), retry later\n".encode())

    def answer_done(self, exchange: H2Exchange) -> None:
        self._retire(exchange)

    def _retire(self, exchange: H2Exchange) -> None:
        """Forget a stream once its answer ended and its handler returned; the rest of its body is dropped."""
        if not exchange.ended or exchange.task is not None:
            return
        if self.streams.get(exchange.stream_id) is exchange:
            del self.streams[exchange.stream_id]
        exchange.body.discard()
        self._maybe_idle()

    def _gone(self, exchange: H2Exchange) -> None:
        """The client reset the stream (or the connection is lost): stop its handler, drop what it was sending."""
        exchange.gone = True
        exchange.body.finish(ClientGone("the client reset the stream or closed the connection"))
        exchange.body.discard()
        out = self.sending.pop(exchange.stream_id, None)
        if out is not None:
            out.failed = out.done = True
            out.wake()
        task = exchange.task
        if task is not None and not task.done():
            task.cancel()

    def _maybe_idle(self) -> None:
        if not self.streams:
            self.idle_since = self.loop.time()
            if self.closing:
                self.close()

