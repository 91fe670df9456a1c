"""`LeanH2Connection`: ``h2``'s connection without the per-frame work lane never uses.

A unary gRPC call through a lane proxy is ten frames, each through ``h2`` (issue 17), and part of
what ``h2`` does per frame is for options lane turned off or for a log nobody reads:

* its frame buffer parses every frame through hyperframe's generic path
  (`lane.engine.h2_frame_buffer.LeanFrameBuffer` builds a call's frames itself);
* the RST_STREAM a gRPC upstream sends after every answer goes through two lookups and a stream helper
  to change nothing (the stream has already closed);
* receiving DATA runs a dozen helper calls (flow-controlled length, flags, two window managers,
  the stream lookup, the stream's ``receive_data``) for a few lines of arithmetic, and acknowledging
  it looks the stream up again;
* ``_receive_frame`` (a call per frame) formats every received frame for its trace log (``repr(frame)``: the frame, its
  flags and a hex dump of its payload) before calling the logger, so also with h2's no-op default;
* ``_receive_headers_frame`` builds validation flags and runs a generator chain per head for inbound
  checks lane turned off (`lane.engine.h2_checks` does them), only to copy the fields it decoded;
* counting the open streams before each new one walks every stream h2 still holds;
* ``send_headers`` re-encodes every field to bytes (lane's blocks are bytes already,
  `lane.engine.h2_headers`), works out validation flags for the outbound normalising and checks lane
  turned off, and builds frame objects only to serialise them at once; ``send_data`` and
  ``end_stream`` build a frame object each for nine bytes of frame header;
* its default logger's ``debug``, called a dozen times per call, is a Python no-op (`QuietLogger`);
* its state machines hash enum members in Python for every input (`lane.engine.h2_states`), and most
  inputs of a call change nothing in an open connection or stream: those are not given at all (the
  machines' ``stays``: no transition function, the same state; ``process_input`` would return no event).

`LeanH2Connection` overrides those with h2's own steps in h2's order (h2 4.x: the same state machine
inputs, the same limits and errors, the same flow-control bookkeeping, cookie crumbs still joined),
counts streams only when h2 holds enough of them to matter, and writes the frame headers itself
(RFC 9113 §4.1), so the events and the bytes are the same (``tests/engine/test_h2_lean.py`` compares
them with ``H2Connection``'s). What lane never does (priority, padding, h2's own inbound checks, text
fields) goes to ``h2``. These are h2's private methods: the tests pin their behaviour for h2 4.x.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from h2.config import DummyLogger, H2Configuration
from h2.connection import ConnectionInputs
from h2.errors import ErrorCodes, _error_code_from_int
from h2.events import Event, TrailersReceived
from h2.exceptions import (
    DenialOfServiceError,
    FlowControlError,
    FrameTooLargeError,
    InvalidBodyLengthError,
    ProtocolError,
    StreamClosedError,
    StreamIDTooLowError,
    TooManyStreamsError,
)
from h2.stream import STREAM_OPEN, StreamInputs
from h2.utilities import (
    authority_from_headers,
    normalize_inbound_headers,
)
from h2.windows import WindowManager
from hpack.exceptions import HPACKError, OversizedHeaderListError
from hyperframe.exceptions import InvalidPaddingError
from hyperframe.frame import DataFrame, Frame, HeadersFrame, RstStreamFrame, WindowUpdateFrame

from lane.engine.h2_frame_buffer import LeanFrameBuffer
from lane.engine.h2_lean_streams import LeanStreams, max_streams
from lane.engine.h2_states import STREAM_STAYS, LeanConnectionStateMachine

__all__ = ["LeanH2Connection", "QuietLogger"]

_DATA: Final = 0x0
_HEADERS: Final = 0x1
_CONTINUATION: Final = 0x9
_END_STREAM: Final = 0x1
_END_HEADERS: Final = 0x4
# inputs given inline when they change nothing (`lane.engine.h2_states`'s stays): their plain values
_RECV_DATA: Final = ConnectionInputs.RECV_DATA._value_
_RECV_HEADERS: Final = ConnectionInputs.RECV_HEADERS._value_
_RECV_RST_STREAM: Final = ConnectionInputs.RECV_RST_STREAM._value_
_SEND_DATA: Final = ConnectionInputs.SEND_DATA._value_
_SEND_HEADERS: Final = ConnectionInputs.SEND_HEADERS._value_
_STREAM_SEND_DATA: Final = StreamInputs.SEND_DATA._value_
_STREAM_RECV_RST: Final = StreamInputs.RECV_RST_STREAM._value_


def _frame_head(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    """The 9-byte frame header (RFC 9113 §4.1): length, type, flags, stream identifier."""
    return (length << 48 | kind << 40 | flags << 32 | stream_id).to_bytes(9, "big")


def _informational(block: list[Any]) -> bool:
    """h2's ``is_informational_response``: a ``:status`` of 1xx among the pseudo-headers that lead the block."""
    for name, value in block:
        if name[:1] != b":":
            return False
        if name == b":status":
            return bool(value[:1] == b"1")
    return False


def _processed(window: WindowManager, size: int) -> int | None:
    """``window.process_bytes(size)``: *size* more bytes consumed, the window increment to send now (0: none
    yet, None: nothing consumed at all) -- h2's ``process_bytes`` and ``_maybe_update_window`` in one call."""
    processed = window._bytes_processed = window._bytes_processed + size
    if not processed:
        return None
    current, largest = window.current_window_size, window.max_window_size
    if (current == 0 and processed > min(1024, largest // 4)) or processed >= largest // 2:
        increment = min(processed, largest - current)
        window._bytes_processed = 0
        window.current_window_size = current + increment
        return increment
    return 0


class QuietLogger(DummyLogger):
    """The logger lane hands h2: h2 calls ``debug`` (and ``trace``) with a format and its arguments a dozen
    times per unary call, and its ``DummyLogger`` makes each a Python call that does nothing.
    ``"".format`` takes any arguments, ignores them and returns at once, in C."""

    debug = "".format  # type: ignore[assignment]
    trace = "".format  # type: ignore[assignment]


class LeanH2Connection(LeanStreams):
    """``H2Connection`` without the per-frame work lane never uses (see the module docstring).

    The configuration is read once, here: lane never changes a connection's configuration afterwards."""

    state_machine: LeanConnectionStateMachine

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        self.state_machine = LeanConnectionStateMachine()  # still IDLE: nothing sent or received yet
        self.incoming_buffer = LeanFrameBuffer(server=not config.client_side)  # nothing received yet
        self._lean_heads = not config.validate_inbound_headers and not isinstance(config.header_encoding, str)
        self._join_cookies = bool(config.normalize_inbound_headers)

    def receive_data(self, data: Any) -> list[Event]:
        """``H2Connection.receive_data`` with its ``_receive_frame`` inline (a Python call per frame less, and
        no trace-log call): each frame to its handler, what the handler sends queued, a frame on a closed
        stream handled as `_receive_frame` handles it (`_refused`), the connection ended on a protocol error."""
        events: list[Event] = []
        buffer = self.incoming_buffer
        buffer.add_data(data)
        buffer.max_frame_size = self.max_inbound_frame_size
        table = self._frame_dispatch_table
        try:
            for frame in buffer:
                try:
                    frames, received = table[frame.__class__](frame)
                except (StreamClosedError, StreamIDTooLowError) as e:
                    received = self._refused(e)
                else:
                    if frames:  # h2's _prepare_for_sending does nothing for none, the usual case
                        self._prepare_for_sending(frames)
                events += received
        except InvalidPaddingError as e:
            self._terminate_connection(ErrorCodes.PROTOCOL_ERROR)
            raise ProtocolError("Received frame with invalid padding.") from e
        except ProtocolError as e:  # h2 readies a GOAWAY before the error goes up
            self._terminate_connection(e.error_code)
            raise
        return events

    def _refused(self, e: StreamClosedError | StreamIDTooLowError) -> list[Event]:
        """What h2's ``_receive_frame`` makes of a frame on a closed stream: on a stream this end reset, a stream
        error (RST_STREAM again); on one already cleaned up or closed implicitly by a newer one, how it closed
        decides; anything else is a connection error (raised)."""
        if isinstance(e, StreamClosedError):
            if not self._stream_is_closed_by_reset(e.stream_id):
                raise e
            rst = RstStreamFrame(e.stream_id)
            rst.error_code = e.error_code
            self._prepare_for_sending([rst])
            return e._events
        if self._stream_is_closed_by_reset(e.stream_id):
            rst = RstStreamFrame(e.stream_id)
            rst.error_code = ErrorCodes.STREAM_CLOSED
            self._prepare_for_sending([rst])
            return []
        if self._stream_is_closed_by_end(e.stream_id):
            raise StreamClosedError(e.stream_id) from e
        raise e

    def _receive_data_frame(self, frame: DataFrame) -> tuple[list[Frame], list[Event]]:
        """``H2Connection._receive_data_frame`` and ``H2Stream.receive_data`` as one: the same state machine
        inputs, window accounting (h2's ``WindowManager.window_consumed``, inline) and content-length check,
        in h2's order, without their helper calls per frame."""
        held = frame.flags._flags
        data = frame.data
        length = len(data) + (frame.pad_length + 1 if "PADDED" in held else 0)  # frame.flow_controlled_length
        state = self.state_machine
        events = [] if (state.state._value_, _RECV_DATA) in state.stays else state.process_input(
            ConnectionInputs.RECV_DATA)
        window = self._inbound_flow_control_window_manager
        window.current_window_size -= length
        if window.current_window_size < 0:
            raise FlowControlError("Flow control window shrunk below 0")
        try:
            stream = self.streams.get(frame.stream_id)
            if stream is None:  # h2's errors for a stream it does not hold
                stream = self._get_stream_by_id(frame.stream_id)
            end_stream = "END_STREAM" in held
            machine = stream.state_machine
            stream_events = machine.process_input(StreamInputs.RECV_DATA)
            received: Any = stream_events[0]  # DataReceived
            window = stream._inbound_window_manager
            window.current_window_size -= length
            if window.current_window_size < 0:
                raise FlowControlError("Flow control window shrunk below 0")
            stream._actual_content_length += len(data)  # h2's _track_content_length, inline
            expected = stream._expected_content_length
            if expected is not None and (expected < stream._actual_content_length or (
                    end_stream and expected != stream._actual_content_length)):
                raise InvalidBodyLengthError(expected, stream._actual_content_length)
            if end_stream:
                ended = machine.process_input(StreamInputs.RECV_END_STREAM)
                received.stream_ended = ended[0]
                stream_events.extend(ended)
            received.data = data
            received.flow_controlled_length = length
        except StreamClosedError as e:  # marked CLOSED, or already gone
            return self._handle_data_on_closed_stream(events, e, frame)
        return [], events + stream_events

    def _receive_rst_stream_frame(self, frame: RstStreamFrame) -> tuple[list[Frame], list[Event]]:
        """``H2Connection._receive_rst_stream_frame`` and ``H2Stream.stream_reset`` as one: the stream looked
        up in place (h2 does nothing for a stream it does not hold, whether never opened or already
        forgotten), its machine told, the error code set on the `StreamReset` if the stream was not closed."""
        state = self.state_machine
        events = [] if (state.state._value_, _RECV_RST_STREAM) in state.stays else state.process_input(
            ConnectionInputs.RECV_RST_STREAM)
        stream = self.streams.get(frame.stream_id)
        if stream is None:
            return [], events
        machine = stream.state_machine
        stream_events = [] if (machine.state, _STREAM_RECV_RST) in STREAM_STAYS else machine.process_input(
            StreamInputs.RECV_RST_STREAM)
        if stream_events:  # none for a stream already closed
            stream_events[0].error_code = _error_code_from_int(frame.error_code)  # type: ignore[attr-defined]
        return [], events + stream_events

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        """``H2Connection.acknowledge_received_data`` (and ``H2Stream``'s) for a stream h2 holds: the stream
        looked up and its ``open`` read inline, no call when there is no WINDOW_UPDATE to send. The window
        arithmetic is h2's ``WindowManager.process_bytes``, in one call (`_processed`); anything else, and
        any error, is h2's."""
        stream = self.streams.get(stream_id)
        if stream is None or acknowledged_size < 0:
            super().acknowledge_received_data(acknowledged_size, stream_id)
            return
        frames: list[Frame] = []
        increment = _processed(self._inbound_flow_control_window_manager, acknowledged_size)
        if increment:
            update = WindowUpdateFrame(0)
            update.window_increment = increment
            frames.append(update)
        if STREAM_OPEN[stream.state_machine.state]:  # stream.open: no point in growing a closed stream's window
            increment = _processed(stream._inbound_window_manager, acknowledged_size)
            if increment:
                update = WindowUpdateFrame(stream_id)
                update.window_increment = increment
                frames.append(update)
        if frames:
            self._prepare_for_sending(frames)

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[Event]]:
        """``H2Connection._receive_headers_frame`` and ``H2Stream.receive_headers`` as one, for lane's
        configuration (inbound checks off, fields left as bytes): no validation flags built for checks that
        do not run, no generator chain and copy of the decoded fields unless there are cookies to join.
        Priority, h2's inbound checks or text fields go to h2."""
        held = frame.flags._flags  # the names themselves: `in` on Flags is a Python call, on its set it is not
        if not self._lean_heads or "PRIORITY" in held:
            return super()._receive_headers_frame(frame)
        stream_id = frame.stream_id
        if stream_id not in self.streams:
            limit, count = max_streams(self.local_settings), self._open_streams(self._inbound_ids)
            if count + 1 > limit:
                raise TooManyStreamsError(f"Max inbound streams is {limit}, {count} open")
        try:  # h2's _decode_headers, inline
            decoded = self.decoder.decode(frame.data, raw=True)
        except OversizedHeaderListError as e:
            raise DenialOfServiceError(f"Oversized header block: {e}") from e
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as e:
            raise ProtocolError(f"Error decoding header block: {e}") from e
        headers = decoded if isinstance(decoded, list) else list(decoded)
        state = self.state_machine
        events = [] if (state.state._value_, _RECV_HEADERS) in state.stays else state.process_input(
            ConnectionInputs.RECV_HEADERS)
        stream = self.streams.get(stream_id)  # h2's _get_or_create_stream, inline
        if stream is None:
            stream = self._begin_new_stream(stream_id, self._inbound_ids)
        machine = stream.state_machine
        end_stream = "END_STREAM" in held
        first = headers[0][0] if headers else b""  # `_informational` without its call for answers and trailers
        if headers[0][1][:1] == b"1" if first == b":status" else first[:1] == b":" and _informational(headers):
            if end_stream:
                raise ProtocolError("Cannot set END_STREAM on informational responses")
            stream_events = machine.process_input(StreamInputs.RECV_INFORMATIONAL_HEADERS)
        else:
            stream_events = machine.process_input(StreamInputs.RECV_HEADERS)
        head: Any = stream_events[0]  # RequestReceived, ResponseReceived, TrailersReceived or informational
        if end_stream:  # never informational (above)
            ended = machine.process_input(StreamInputs.RECV_END_STREAM)
            head.stream_ended = ended[0]
            stream_events += ended
        stream._initialize_content_length(headers)
        if isinstance(head, TrailersReceived) and not end_stream:
            raise ProtocolError("Trailers must have END_STREAM set")
        if self._join_cookies:
            for field in headers:
                if field[0] == b"cookie":
                    # h2's one inbound normalising step: cookie crumbs joined into one field, last (RFC 9113 §8.2.3)
                    flags = stream._build_hdr_validation_flags(stream_events)
                    headers = list(normalize_inbound_headers(headers, flags))
                    break
        head.headers = headers
        return [], events + stream_events

    def send_headers(self, stream_id: int, headers: Iterable[Any], end_stream: bool = False,
                     priority_weight: int | None = None, priority_depends_on: int | None = None,
                     priority_exclusive: bool | None = None) -> None:
        """``H2Connection.send_headers`` for a block of bytes fields, without priority (lane never sends it)."""
        if priority_weight is not None or priority_depends_on is not None or priority_exclusive is not None:
            super().send_headers(stream_id, headers, end_stream, priority_weight, priority_depends_on,
                                 priority_exclusive)
            return
        if stream_id not in self.streams and not self.may_open_outbound():
            limit, count = max_streams(self.remote_settings), self._open_streams(self._outbound_ids)
            raise TooManyStreamsError(f"Max outbound streams is {limit}, {count} open")
        state = self.state_machine
        if (state.state._value_, _SEND_HEADERS) not in state.stays:
            state.process_input(ConnectionInputs.SEND_HEADERS)
        stream = self.streams.get(stream_id)  # h2's _get_or_create_stream, inline
        if stream is None:
            stream = self._begin_new_stream(stream_id, self._outbound_ids)
        machine = stream.state_machine
        block = headers if isinstance(headers, list) else list(headers)
        first = block[0][0] if block else b""  # `_informational` without its call for answers and trailers
        informational = not machine.client and (
            block[0][1][:1] == b"1" if first == b":status" else first[:1] == b":" and _informational(block))
        if informational and end_stream:
            raise ProtocolError("Cannot set END_STREAM on informational responses.")
        machine.process_input(StreamInputs.SEND_INFORMATIONAL_HEADERS if informational else StreamInputs.SEND_HEADERS)
        encoded = self.encoder.encode(block)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        if machine.trailers_sent and not end_stream:
            raise ProtocolError("Trailers must have END_STREAM set.")
        if machine.client and stream._authority is None:
            stream._authority = authority_from_headers(block)
        method = None  # h2's extract_method_header, inline: the first :method (lane's blocks are bytes)
        for name, value in block:
            if name == b":method":
                method = value
                break
        stream.request_method = method
        size = self.max_outbound_frame_size
        out = self._data_to_send
        first = encoded[:size]
        flags = (_END_STREAM if end_stream else 0) | (_END_HEADERS if len(encoded) <= size else 0)
        out += (len(first) << 48 | _HEADERS << 40 | flags << 32 | stream_id).to_bytes(9, "big")  # _frame_head
        out += first
        for at in range(size, len(encoded), size):  # the rest of a block larger than a frame (§6.10)
            piece = encoded[at:at + size]
            out += _frame_head(len(piece), _CONTINUATION, _END_HEADERS if at + size >= len(encoded) else 0,
                               stream_id)
            out += piece

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False,
                  pad_length: Any = None) -> None:
        """``H2Connection.send_data`` without padding (lane never pads), on a stream h2 holds."""
        stream = self.streams.get(stream_id)
        if pad_length is not None or stream is None:  # padding, or h2's errors for a stream it does not hold
            super().send_data(stream_id, data, end_stream, pad_length)
            return
        size = len(data)
        window = min(self.outbound_flow_control_window, stream.outbound_flow_control_window)  # h2's, inline
        if size > 0 and size > window:
            raise FlowControlError(f"Cannot send {size} bytes, flow control window is {window}")
        if size > self.max_outbound_frame_size:
            raise FrameTooLargeError(f"Cannot send frame size {size}, max frame size is {self.max_outbound_frame_size}")
        state = self.state_machine
        if (state.state._value_, _SEND_DATA) not in state.stays:
            state.process_input(ConnectionInputs.SEND_DATA)
        machine = stream.state_machine
        if (machine.state, _STREAM_SEND_DATA) not in STREAM_STAYS:
            machine.process_input(StreamInputs.SEND_DATA)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        stream.outbound_flow_control_window -= size
        out = self._data_to_send
        out += (size << 48 | (_END_STREAM if end_stream else 0) << 32 | stream_id).to_bytes(9, "big")  # DATA
        out += data
        self.outbound_flow_control_window -= size

    def end_stream(self, stream_id: int) -> None:
        """``H2Connection.end_stream``: an empty DATA frame with END_STREAM."""
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        self._get_stream_by_id(stream_id).state_machine.process_input(StreamInputs.SEND_END_STREAM)
        self._data_to_send += _frame_head(0, _DATA, _END_STREAM, stream_id)
