"""One HTTP/2 connection's bytes and flow control, for either end, on `h2` (the python-hyper state machine).

`H2Peer` feeds what arrives to ``h2``, hands the events to its subclass (the server side,
`lane.engine.h2_connection`; the client side, `lane.engine.h2_upstream_connection`) and writes what
``h2`` wants sent, once per loop iteration however many streams produced frames. Each stream's body
leaves through an `Outgoing` queue that sends only what the peer's flow-control window allows and
makes its writer wait while more than `SEND_HIGH` bytes are queued or the socket's buffer is full, so
a slow reader at one end slows the writer at the other instead of filling this process's memory.

Received data is handed back to the peer's window (`ack`) only once the consumer took it, which is
how a slow consumer slows the sender: a stream buffers at most its window (``Limits.buffer_bytes``)
and a connection at most `CONNECTION_WINDOWS` of them.

Graceful GOAWAY: ``h2`` calls a connection closed as soon as a GOAWAY is sent or received and refuses
every frame after it, even in the same read (python-hyper/h2 issue 1181), while RFC 9113 §6.8 lets the
streams already in flight finish. So each connection's state machine gets a transition table in which
a GOAWAY leaves an open connection open (`_DRAINING_TRANSITIONS`); what GOAWAY means is kept here: no
new stream is opened on it by this end (the subclasses' ``draining``/``closing``), and a GOAWAY with
an error ends the connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from typing import Final, cast

from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2ConnectionStateMachine
from h2.errors import ErrorCodes
from h2.events import (
    Event,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings

from lane.engine.h2_checks import Kind, malformed
from lane.engine.h2_hpack import CachingDecoder, PlainEncoder
from lane.engine.h2_lean import LeanH2Connection, QuietLogger

__all__ = ["CONNECTION_WINDOWS", "MAX_HEADER_LIST", "SEND_HIGH", "H2Peer", "Outgoing"]

SEND_HIGH: Final = 64 * 1024  # bytes queued on one stream above which its writer waits
CONNECTION_WINDOWS: Final = 16  # the connection's receive window, in stream windows
MAX_HEADER_LIST: Final = 64 * 1024  # as the HTTP/1.1 codec's head limit
_MAX_WINDOW: Final = 2**31 - 1
_QUIET: Final = QuietLogger()  # h2's debug lines, never written, at no cost
_DRAINING_TRANSITIONS: Final = {
    **H2ConnectionStateMachine._transitions,
    **{(state, goaway): (None, state)
       for state in (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN)
       for goaway in (ConnectionInputs.SEND_GOAWAY, ConnectionInputs.RECV_GOAWAY)},
}

_Head = RequestReceived | ResponseReceived | InformationalResponseReceived | TrailersReceived
_HEADS: Final[dict[type[Event], Kind]] = {
    RequestReceived: "request", ResponseReceived: "response", InformationalResponseReceived: "response",
    TrailersReceived: "trailers",
}


class Outgoing:
    """What one stream still has to send: body bytes the peer's window did not take yet, then its end."""

    __slots__ = ("chunks", "done", "end", "failed", "size", "trailers", "waiter")

    def __init__(self) -> None:
        self.chunks: collections.deque[memoryview] = collections.deque()
        self.size = 0
        self.end = False  # the stream ends once the queue is sent
        self.trailers: list[tuple[bytes, bytes]] | None = None  # sent as the end, when given
        self.done = False  # the end was sent (or the stream is gone)
        self.failed = False  # the stream was reset or the connection lost: nothing more can be sent
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class H2Peer(asyncio.Protocol):
    """The bytes of one HTTP/2 connection and the flow control of its streams; subclasses handle the events."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, client_side: bool, window: int,
                 max_streams: int) -> None:
        self.loop = loop
        # Every head lane sends is built by `lane.engine.h2_headers` (lowercase names, pseudo-headers first and
        # complete, no connection-specific field, values trimmed), so h2's outbound normalising and checking would
        # only repeat that per header; every head that arrives is checked by `lane.engine.h2_checks` (the same
        # rules as h2's inbound validation, faster) in `data_received`.
        self.h2 = LeanH2Connection(H2Configuration(client_side=client_side, header_encoding=None, logger=_QUIET,
                                               validate_outbound_headers=False, normalize_outbound_headers=False,
                                               validate_inbound_headers=False))
        self.h2.encoder = PlainEncoder()
        decoder = CachingDecoder()
        decoder.max_header_list_size = self.h2.decoder.max_header_list_size  # what h2 set up, until SETTINGS
        decoder.max_allowed_table_size = self.h2.decoder.max_allowed_table_size
        self.h2.decoder = decoder
        self.h2.state_machine.follow(_DRAINING_TRANSITIONS)  # h2 issue 1181, see above
        self.h2.local_settings = Settings(client=client_side, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: min(window, _MAX_WINDOW),
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            SettingCodes.ENABLE_PUSH: 0,
        })
        self._window = min(window, _MAX_WINDOW)
        self.transport: asyncio.Transport | None = None
        self.gone = False
        self.write_paused = False
        self.goaway_sent = False
        self._flush_soon = False
        self.sending: dict[int, Outgoing] = {}

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tcp = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - not a TCP socket
                pass
        tcp.set_write_buffer_limits(high=SEND_HIGH * 4)
        h2 = self.h2
        h2.initiate_connection()
        grow = min(self._window * CONNECTION_WINDOWS, _MAX_WINDOW) - 65535
        if grow > 0:
            h2.increment_flow_control_window(grow)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.transport = None
        for out in self.sending.values():
            out.failed = out.done = True
            out.wake()
        self.sending.clear()

    def data_received(self, data: bytes) -> None:
        if self._flush_soon:
            self.flush()  # h2 drops frames not yet written when a GOAWAY arrives
        try:
            events = self.h2.receive_data(data)
        except H2Error as exc:  # the peer broke the protocol: h2 queued the GOAWAY
            self._protocol_error(f"HTTP/2 protocol error: {exc}")
            return
        for event in events:
            kind = _HEADS.get(type(event))
            if kind is not None:
                head: _Head = event  # type: ignore[assignment]  # a head, by _HEADS (no cast call per event)
                why = malformed(head.headers or (), kind)
                if why is not None:  # what h2's own check did: the connection ends (RFC 9113 §8.1.1)
                    with contextlib.suppress(H2Error):
                        self.h2.close_connection(ErrorCodes.PROTOCOL_ERROR)
                    self._protocol_error(f"HTTP/2 protocol error: malformed head: {why}")
                    return
            if isinstance(event, WindowUpdated):
                self._window_updated(event.stream_id)
            elif isinstance(event, RemoteSettingsChanged):
                if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    self._window_updated(0)
            else:
                self.on_event(event)
        if not self._flush_soon:  # else a flush is due at the end of this loop iteration: one write, not two
            self.flush()

    def _protocol_error(self, why: str) -> None:
        """The peer broke the protocol and a GOAWAY is queued: fail what is in flight, send it, close."""
        self.broken(why[:200])
        self.flush()
        self.close()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for out in list(self.sending.values()):
            out.wake()

    # --- for subclasses ---
    def on_event(self, event: Event) -> None:
        raise NotImplementedError

    def broken(self, why: str) -> None:
        """The connection is unusable (protocol error): fail what is in flight."""

    def flush(self) -> None:
        """Write what h2 has to send now (h2's buffer is read first: often there is nothing, and no call then)."""
        self._flush_soon = False
        if not self.h2._data_to_send:
            return
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def kick(self) -> None:
        """Write what h2 has to send at the end of this loop iteration (frames of many streams in one write).

        The per-frame callers test ``_flush_soon`` first, so only the first frame of an iteration makes the call."""
        if not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self.flush)

    def close(self) -> None:
        """Close once what is queued is written (frames waiting for the end of this loop iteration too)."""
        if self.transport is not None and not self.transport.is_closing():
            if self._flush_soon:
                self.flush()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def goaway(self) -> None:
        """Tell the peer no new stream will be accepted (GOAWAY, NO_ERROR); streams in flight go on."""
        if self.transport is None or self.gone or self.goaway_sent:
            return
        self.goaway_sent = True
        try:
            self.h2.close_connection()
        except H2Error:
            return
        self.flush()

    def ack(self, stream_id: int, size: int) -> None:
        """*size* received bytes of *stream_id* were consumed: the peer may send that much more."""
        if size and not self.gone:
            try:
                self.h2.acknowledge_received_data(size, stream_id)
            except H2Error:
                return
            if not self._flush_soon:
                self.kick()

    def reset(self, stream_id: int, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        """End *stream_id* at once (RST_STREAM), dropping what it still had to send."""
        out = self.sending.pop(stream_id, None)
        if out is not None:
            out.failed = out.done = True
            out.wake()
        if not self.gone:
            try:
                self.h2.reset_stream(stream_id, code)
            except H2Error:
                return
            self.kick()

    def send_head(self, stream_id: int, block: list[tuple[bytes, bytes]], end: bool) -> None:
        """Send a head (request, answer or trailers) on *stream_id*; a head h2 refuses resets the stream."""
        try:
            self.h2.send_headers(stream_id, block, end_stream=end)
        except H2Error:  # the stream is gone, or a field HTTP/2 cannot carry
            self.reset(stream_id, ErrorCodes.INTERNAL_ERROR)
            return
        if not self._flush_soon:
            self.kick()

    def send(self, stream_id: int, data: bytes, end: bool, trailers: list[tuple[bytes, bytes]] | None = None) -> Outgoing:
        """Queue *data* (then the end, with *trailers* if given) on *stream_id* and send what the window allows."""
        out = self.sending.get(stream_id)
        if out is None:
            out = self.sending[stream_id] = Outgoing()
        if data:
            out.chunks.append(memoryview(data))
            out.size += len(data)
        if end:
            out.end = True
            out.trailers = trailers
        self._push(stream_id, out)
        if not self._flush_soon:
            self.kick()
        return out

    async def drained(self, out: Outgoing) -> None:
        """Wait while *out* has more than `SEND_HIGH` queued or the socket's buffer is full."""
        while not out.failed and (out.size > SEND_HIGH or (self.write_paused and not out.done)):
            out.waiter = self.loop.create_future()
            await out.waiter

    def _window_updated(self, stream_id: int) -> None:
        if stream_id:
            out = self.sending.get(stream_id)
            if out is not None:
                self._push(stream_id, out)
        else:
            for sid, out in list(self.sending.items()):
                self._push(sid, out)

    def _push(self, stream_id: int, out: Outgoing) -> None:
        h2 = self.h2
        chunks = out.chunks
        try:
            while chunks:
                window = h2.local_flow_control_window(stream_id)
                if window <= 0:
                    break
                chunk = chunks[0]
                size = min(window, h2.max_outbound_frame_size, len(chunk))
                if size < len(chunk):
                    piece, chunks[0] = chunk[:size], chunk[size:]
                else:
                    piece = chunks.popleft()
                out.size -= size
                last = not chunks and out.end and out.trailers is None
                h2.send_data(stream_id, piece, end_stream=last)
                if last:
                    out.done = True
            if out.end and not out.done and not chunks:
                if out.trailers is not None:
                    h2.send_headers(stream_id, out.trailers, end_stream=True)
                else:
                    h2.end_stream(stream_id)
                out.done = True
        except H2Error:  # the stream was reset or closed meanwhile
            chunks.clear()
            out.size = 0
            out.failed = out.done = True
        if out.done:
            self.sending.pop(stream_id, None)
        if out.waiter is not None and (out.done or out.size <= SEND_HIGH):
            out.wake()
