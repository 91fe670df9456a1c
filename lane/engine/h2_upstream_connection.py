"""One HTTP/2 connection to an upstream (h2c, prior knowledge) and the streams in flight on it.

Many requests share the connection, one stream each (`ClientStream`, the `AnswerSource` of the
`lane.engine.answer.UpstreamAnswer` handed to the caller, the same answer type the HTTP/1.1 client
hands out). A request body is pumped with flow control; answer bytes are handed back to the
upstream's window only once the caller took them. Timeouts bound *silence* per stream as on
HTTP/1.1 (`lane.engine.upstream_connection`): measured against the stream's last progress, never
while the caller holds answer bytes it has not taken.

Failures: a stream the upstream refused (RST_STREAM ``REFUSED_STREAM``, or beyond the last stream of a
GOAWAY) was not processed, so it fails as `ConnectFailed` (another instance may take it) unless its
body was already being sent; a stream reset otherwise, or whose connection broke, is `UpstreamBroken`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, Protocol

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from multidict import CIMultiDict

from lane.engine.exchange import BodySource
from lane.engine.failures import Address, ConnectFailed, UpstreamBroken, UpstreamFailure, UpstreamTimeout
from lane.engine.h2_headers import request_block, response_head, trailers_of
from lane.engine.h2_peer import H2Peer
from lane.engine.h2_stream import H2Body
from lane.engine.head import reason_phrase

__all__ = ["ClientStream", "H2ClientConnection", "Owner"]

log = logging.getLogger(__name__)

_WINDOW: Final = 256 * 1024  # per stream, as the HTTP/1.1 client's read bound (READ_HIGH)


class Owner(Protocol):
    """What a connection needs of the pools that own it (`lane.engine.h2_upstream.H2Upstreams`)."""

    idle_seconds: float

    def forget(self, conn: H2ClientConnection) -> None: ...


class ClientStream:
    """One request on an upstream connection and its answer as it arrives (an `AnswerSource`)."""

    __slots__ = ("_conn", "_flow", "body", "buffer", "complete", "endpoint", "error", "head_done", "headers",
                 "last", "length", "pump", "reason", "received", "status", "stream_id", "timeout", "timer",
                 "trailers", "waiter")

    def __init__(self, conn: H2ClientConnection, stream_id: int, body: BodySource | None, timeout: float) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.endpoint = conn.endpoint
        self.body = body
        self.timeout = timeout
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict[str] | None = None
        self.length: int | None = None
        self.trailers: CIMultiDict[str] | None = None
        self.buffer: list[bytes] = []
        self._flow = 0  # received flow-controlled bytes not yet handed back
        self.head_done = self.complete = self.received = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.pump: asyncio.Task[None] | None = None
        self.last = conn.loop.time()
        self.timer = conn.loop.call_at(self.last + timeout, self._check)

    # --- AnswerSource ---
    def take(self) -> bytes:
        data = b"".join(self.buffer) if len(self.buffer) != 1 else self.buffer[0]
        self.buffer.clear()
        flow, self._flow = self._flow, 0
        self._conn.ack(self.stream_id, flow)
        return data

    async def wait_body(self) -> None:
        await self.wait()

    def finish(self, reuse: bool) -> None:
        """The caller is done with the answer: a stream not ended both ways is reset (CANCEL)."""
        if not self.complete or (self.pump is not None and not self.pump.done()):
            self.fail(UpstreamBroken(self.endpoint, "the answer was closed before its end"))
        self._conn.forget_stream(self)

    # --- the caller's side ---
    async def wait(self) -> None:
        waiter = self.waiter = self._conn.loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    async def head(self) -> None:
        """Wait for the answer's head; raise what made it impossible."""
        try:
            while not self.head_done and self.error is None:
                await self.wait()
        except BaseException:  # cancelled: the caller gave up (its client reset, a deadline)
            self.fail(UpstreamBroken(self.endpoint, "cancelled by the caller"))
            self._conn.forget_stream(self)
            raise
        if not self.head_done:
            assert self.error is not None
            self._conn.forget_stream(self)
            raise self.error

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: UpstreamFailure | BaseException) -> None:
        """End the stream with *error* (reset it upstream unless it already ended there)."""
        if self.error is None and not (self.complete and (self.pump is None or self.pump.done())):
            self.error = error
            self._conn.reset(self.stream_id, ErrorCodes.CANCEL)
        self.stop()
        self.wake()

    def stop(self) -> None:
        self.timer.cancel()
        pump = self.pump
        if pump is not None and not pump.done() and pump is not asyncio.current_task(self._conn.loop):
            pump.cancel()

    def _check(self) -> None:
        """The silence bound: fires at ``last + timeout``, re-armed while there was progress."""
        if self.complete or self.error is not None:
            return
        now = self._conn.loop.time()
        if self.buffer or now - self.last < self.timeout:
            self.timer = self._conn.loop.call_at(max(now, self.last) + self.timeout if self.buffer
                                                 else self.last + self.timeout, self._check)
            return
        self.fail(UpstreamTimeout(self.endpoint, f"no answer for {self.timeout:g}s"))

    # --- from the connection ---
    def got_head(self, block: list[tuple[bytes, bytes]]) -> None:
        self.status, headers = response_head(block)
        self.headers = headers
        self.reason = reason_phrase(self.status)
        declared = headers.get("content-length", "")
        self.length = int(declared) if declared.isdigit() and len(declared) < 19 else None
        self.head_done = self.received = True
        self.last = self._conn.loop.time()
        self.wake()

    def got_data(self, data: bytes, flow: int) -> None:
        self.received = True
        self.last = self._conn.loop.time()
        if data:
            self.buffer.append(data)
        self._flow += flow
        if not data:
            self._conn.ack(self.stream_id, flow)
            self._flow -= flow
        self.wake()

    def ended(self) -> None:
        self.complete = True
        self.timer.cancel()
        self.wake()


class H2ClientConnection(H2Peer):
    """One HTTP/2 connection to an upstream endpoint and its streams."""

    def __init__(self, owner: Owner, endpoint: Address, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, client_side=True, window=_WINDOW, max_streams=0)
        self.owner = owner
        self.endpoint = endpoint
        self.streams: dict[int, ClientStream] = {}
        self.draining = False  # GOAWAY received, or closing: no new streams
        self.lost: asyncio.Future[None] | None = None
        self.served = 0  # streams that got an answer head: a connection that served some is "reused"
        self._idle_timer: asyncio.TimerHandle | None = None

    @property
    def usable(self) -> bool:
        if self.gone or self.draining or self.transport is None:
            return False
        return self.h2.may_open_outbound()

    def open(self, method: str, target: str, headers: CIMultiDict[str], body: BodySource | None,
             timeout: float) -> ClientStream:
        """Send the request head on a new stream; the body (if any) follows through `pump`."""
        h2 = self.h2
        sid = h2.get_next_available_stream_id()
        h2.send_headers(sid, request_block(method, str(self.endpoint), target, headers), end_stream=body is None)
        stream = self.streams[sid] = ClientStream(self, sid, body, timeout)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if body is not None:
            whole = body.whole() if isinstance(body, H2Body) else None
            if whole is None:
                stream.pump = self.loop.create_task(self._pump(stream, body))
            else:  # all of the body is here (a unary call): queued now, sent as the window allows, no pump task
                self.send(sid, whole[0] if len(whole) == 1 else b"".join(whole), True)
        if not self._flush_soon:  # at the end of this loop iteration: the head and the body (or its start) in one write
            self.kick()
        return stream

    async def _pump(self, stream: ClientStream, body: BodySource) -> None:
        sid = stream.stream_id
        try:
            async for chunk in body.chunks():
                if stream.error is not None:
                    return
                stream.last = self.loop.time()
                out = self.send(sid, chunk, False)
                await self.drained(out)
                if out.failed:
                    return
            if stream.error is None:
                self.send(sid, b"", True)
                stream.last = self.loop.time()
        except Exception as exc:  # noqa: BLE001 - the body's source failed (its client went away), not the upstream
            # Before the head the caller gets the source's own error (dispatch must not blame the upstream).
            stream.fail(exc if not stream.head_done else UpstreamBroken(
                self.endpoint, f"the request body failed: {type(exc).__name__}"))

    def forget_stream(self, stream: ClientStream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        stream.timer.cancel()
        if not self.streams:
            if self.draining:
                self.close()
            elif not self.gone and self._idle_timer is None:
                self._idle_timer = self.loop.call_later(self.owner.idle_seconds, self._idle_close)

    def _idle_close(self) -> None:
        self._idle_timer = None
        if not self.streams:
            self.draining = True
            self.owner.forget(self)
            self.goaway()
            self.close()

    # --- events ---
    def on_event(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.ack(event.stream_id, event.flow_controlled_length)
            else:
                stream.got_data(event.data or b"", event.flow_controlled_length)
        elif isinstance(event, ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self.served += 1
                stream.got_head(list(event.headers or ()))
        elif isinstance(event, TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.trailers = trailers_of(event.headers or ())
        elif isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.ended()
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                if not stream.complete and stream.error is None:
                    code = event.error_code
                    stream.error = self._refused(stream) if code == ErrorCodes.REFUSED_STREAM else UpstreamBroken(
                        self.endpoint, f"the upstream reset the stream ({_code_name(code)})")
                stream.stop()  # also the body pump, when the upstream answered before the body ended
                stream.wake()
        elif isinstance(event, ConnectionTerminated):  # GOAWAY: the streams it covers finish, if it is graceful
            self.draining = True
            self.owner.forget(self)
            last = event.last_stream_id if event.last_stream_id is not None else 2**31
            graceful = event.error_code == ErrorCodes.NO_ERROR
            for sid, stream in list(self.streams.items()):
                if sid > last and not stream.head_done:
                    stream.fail(self._refused(stream))
                elif not graceful:
                    stream.fail(UpstreamBroken(self.endpoint, f"the upstream ended the connection "
                                                              f"({_code_name(event.error_code or 0)})"))
            if not self.streams:
                self.close()

    def _refused(self, stream: ClientStream) -> UpstreamFailure:
        """A stream the upstream did not process: safe elsewhere, unless its body was already taken from the client."""
        if stream.body is not None and stream.body.started:
            return UpstreamBroken(self.endpoint, "the upstream refused the stream after its body was sent")
        return ConnectFailed(self.endpoint, "the upstream refused the stream (not processed)")

    def broken(self, why: str) -> None:
        for stream in list(self.streams.values()):
            stream.fail(UpstreamBroken(self.endpoint, why))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.draining = True
        self.owner.forget(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        why = f"{type(exc).__name__}: {exc}"[:200] if exc is not None else "EOF: the connection closed"
        for stream in list(self.streams.values()):
            if not stream.complete and stream.error is None:
                stream.error = UpstreamBroken(self.endpoint, why)
            stream.stop()
            stream.wake()

    def close_now(self, why: str) -> None:
        """Close the connection, failing whatever is still in flight on it."""
        self.draining = True
        for stream in list(self.streams.values()):
            stream.fail(UpstreamBroken(self.endpoint, why))
        self.goaway()
        self.close()


def _code_name(code: int) -> str:
    try:
        return str(ErrorCodes(code).name)
    except ValueError:
        return str(code)
