"""`LeanH2Connection` answers every frame as ``h2``'s own connection does: same events, same bytes, same errors.

Each case feeds the same client bytes to an ``H2Connection`` and a `LeanH2Connection` (server side, lane's
configuration) and compares what they hand back: the ordinary call, and the frames on closed streams that
take the copied error paths (a stream this end reset, one that ended both ways, one skipped over).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import cast

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from h2.windows import WindowManager
from hyperframe.exceptions import HyperframeError
from hyperframe.flags import Flags
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)

from lane.engine.h2_frame_buffer import LeanFrameBuffer
from lane.engine.h2_headers import PREFACE
from lane.engine.h2_lean import LeanH2Connection, QuietLogger, _processed

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/p.S/M"),
           (b"content-type", b"application/grpc"), (b"te", b"trailers")]
ANSWER = [(b":status", b"200")]


def _client() -> H2Connection:
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    return client


def _server(kind: type[H2Connection]) -> H2Connection:
    server = kind(H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=False))
    server.initiate_connection()
    return server


def _outcome(server: H2Connection, data: bytes) -> tuple[str, bytes]:
    """What the server made of *data*: its events (or error) and what it would send back."""
    try:
        events = server.receive_data(data)
    except H2Error as exc:
        what = f"raised {type(exc).__name__}"
    else:
        what = repr([(type(e).__name__, getattr(e, "stream_id", None), getattr(e, "error_code", None))
                     for e in events])
    return what, server.data_to_send()


def _same(script: Callable[[H2Connection, H2Connection], bytes]) -> tuple[str, bytes]:
    """Run *script* (client, server -> the bytes to feed last) against both kinds; assert equal outcomes."""
    outcomes = []
    for kind in (H2Connection, LeanH2Connection):
        client, server = _client(), _server(kind)
        server.receive_data(client.data_to_send())
        server.data_to_send()
        outcomes.append(_outcome(server, script(client, server)))
    assert outcomes[0] == outcomes[1]
    return outcomes[1]


def test_an_ordinary_call_gives_the_same_events() -> None:
    def call(client: H2Connection, server: H2Connection) -> bytes:
        client.send_headers(1, REQUEST)
        client.send_data(1, b"\x00\x00\x00\x00\x00", end_stream=True)
        return client.data_to_send()

    events, _ = _same(call)
    assert "RequestReceived" in events and "StreamEnded" in events


def test_data_on_a_stream_this_end_reset_is_answered_with_rst_stream() -> None:
    def after_reset(client: H2Connection, server: H2Connection) -> bytes:
        client.send_headers(1, REQUEST)
        server.receive_data(client.data_to_send())
        server.reset_stream(1, ErrorCodes.CANCEL)
        server.data_to_send()
        client.send_data(1, b"late")  # in flight before the client saw the reset
        return client.data_to_send()

    events, sent = _same(after_reset)
    assert not events.startswith("raised")
    assert sent[3] == 0x3  # an RST_STREAM frame, the connection goes on


def test_data_on_a_stream_that_ended_both_ways_is_a_stream_error() -> None:
    def after_end(client: H2Connection, server: H2Connection) -> bytes:
        client.send_headers(1, REQUEST, end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(1, ANSWER, end_stream=True)
        server.data_to_send()
        return _frame(0x0, 1, b"late")  # DATA on stream 1, past the client's own checks

    events, sent = _same(after_end)
    assert events == "[]" and sent[3] == 0x3  # a stream error (RST_STREAM): the connection goes on


@pytest.mark.parametrize(("frame_type", "sent_type"), [(0x0, 0x3), (0x1, 0x7)])
def test_a_frame_on_a_stream_skipped_over(frame_type: int, sent_type: int) -> None:
    """DATA there is a stream error (RST_STREAM); HEADERS tries to open a stream below the highest one: the
    connection ends (GOAWAY)."""
    def skipped(client: H2Connection, server: H2Connection) -> bytes:
        client.send_headers(3, REQUEST, end_stream=True)  # stream 1 is now closed without ever being used
        server.receive_data(client.data_to_send())
        server.data_to_send()
        payload = b"late" if frame_type == 0 else client.encoder.encode(REQUEST)
        return _frame(frame_type, 1, payload, flags=0x4 if frame_type == 1 else 0)  # END_HEADERS

    events, sent = _same(skipped)
    assert events.startswith("raised") == (sent_type == 0x7)
    assert sent[3] == sent_type


def test_a_head_on_a_stream_that_ended_and_was_forgotten_ends_the_connection_as_stream_closed() -> None:
    """h2 tells a stream it closed by END_STREAM (and then forgot) from one closed implicitly: the GOAWAY's
    error code says STREAM_CLOSED, not PROTOCOL_ERROR."""
    def forgotten(client: H2Connection, server: H2Connection) -> bytes:
        client.send_headers(1, REQUEST, end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(1, ANSWER, end_stream=True)  # stream 1 ended both ways
        server.data_to_send()
        client.send_headers(3, REQUEST)
        server.receive_data(client.data_to_send())  # opening stream 3 counts the streams: 1 is forgotten
        return _frame(0x1, 1, client.encoder.encode(REQUEST), flags=0x5)

    events, sent = _same(forgotten)
    assert events == "raised StreamClosedError"
    assert sent[3] == 0x7 and int.from_bytes(sent[13:17], "big") == ErrorCodes.STREAM_CLOSED


def _frame(frame_type: int, stream_id: int, payload: bytes, flags: int = 0) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((frame_type, flags)) + stream_id.to_bytes(4, "big") + payload


# --- sending: the same bytes and the same errors as H2Connection, step by step ---

Step = Callable[[H2Connection], object]


def _sent_alike(client_side: bool, steps: list[Step]) -> list[tuple[str, bytes]]:
    """Run *steps* on an ``H2Connection`` and on a `LeanH2Connection` (lane's configuration), each after the
    connection's preface and the peer's SETTINGS; assert the same bytes and errors (and messages) after every step."""
    runs = []
    for kind in (H2Connection, LeanH2Connection):
        conn = kind(H2Configuration(client_side=client_side, header_encoding=None, validate_outbound_headers=False,
                                    normalize_outbound_headers=False, validate_inbound_headers=False,
                                    logger=QuietLogger()))  # lane's logger: every debug line h2 writes goes there
        conn.initiate_connection()
        peer = H2Connection(H2Configuration(client_side=not client_side))
        peer.initiate_connection()
        if not client_side:  # a request on stream 1, so the server has something to answer
            peer.send_headers(1, REQUEST)
        conn.receive_data(peer.data_to_send())
        conn.data_to_send()
        run: list[tuple[str, bytes]] = []
        messages: list[str] = []
        for step in steps:
            try:
                step(conn)
            except (H2Error, KeyError, ValueError) as exc:  # KeyError: h2's own, for nothing sent on a stream it
                # never had; ValueError: h2's refusal of a negative size or stream 0
                run.append((f"raised {type(exc).__name__}", conn.data_to_send()))
                messages.append(str(exc))
            else:
                run.append(("ok", conn.data_to_send()))
        runs.append((run, messages))
    assert runs[0] == runs[1]
    return runs[1][0]


def test_a_unary_call_is_sent_byte_for_byte_as_h2_sends_it() -> None:
    answer = _sent_alike(False, [
        lambda c: c.send_headers(1, [(b":status", b"100")]),  # informational, then the answer
        lambda c: c.send_headers(1, [*ANSWER, (b"content-type", b"application/grpc")]),
        lambda c: c.send_data(1, memoryview(b"\x00\x00\x00\x00\x02hi")),
        lambda c: c.send_headers(1, [(b"grpc-status", b"0")], end_stream=True),
        lambda c: c.send_data(1, b"late"),  # the stream is closed
    ])
    assert [what for what, _ in answer] == ["ok"] * 4 + ["raised ProtocolError"]
    request = _sent_alike(True, [
        lambda c: c.send_headers(1, REQUEST),
        lambda c: c.send_data(1, b"\x00\x00\x00\x00\x00"),
        lambda c: c.end_stream(1),
        lambda c: c.send_headers(3, REQUEST, end_stream=True),
    ])
    assert [what for what, _ in request] == ["ok"] * 4
    assert request[2][1] == b"\x00\x00\x00\x00\x01\x00\x00\x00\x01"  # an empty DATA frame ending stream 1


def test_a_head_larger_than_a_frame_continues_in_continuation_frames() -> None:
    big = [*REQUEST, (b"x-big", b"v" * 40_000)]
    (what, sent), = _sent_alike(True, [lambda c: c.send_headers(1, big, end_stream=True)])
    assert what == "ok" and len(sent) > 16_384 + 9
    assert sent[3:5] == b"\x01\x01"  # HEADERS with END_STREAM, without END_HEADERS: CONTINUATION follows
    frames, at = [], 0
    while at < len(sent):
        length = int.from_bytes(sent[at:at + 3], "big")
        frames.append((sent[at + 3], sent[at + 4]))
        at += 9 + length
    assert frames[0] == (0x1, 0x1) and frames[-1] == (0x9, 0x4) and all(f == (0x9, 0x0) for f in frames[1:-1])


def test_what_h2_refuses_to_send_is_refused_alike() -> None:
    answer = _sent_alike(False, [
        lambda c: c.send_headers(1, [(b":status", b"103")], end_stream=True),  # informational cannot end
        lambda c: c.send_headers(3, ANSWER),  # no such request
    ])
    assert [what for what, _ in answer] == ["raised ProtocolError", "raised ProtocolError"]
    trailers = _sent_alike(False, [
        lambda c: c.send_headers(1, ANSWER),
        lambda c: c.send_headers(1, [(b"grpc-status", b"0")]),  # trailers must end the stream
    ])
    assert [what for what, _ in trailers] == ["ok", "raised ProtocolError"]
    window = _sent_alike(True, [
        lambda c: c.send_headers(1, REQUEST),
        lambda c: c.receive_data(_frame(0x8, 0, (1 << 20).to_bytes(4, "big"))),  # the connection's window grows
        lambda c: c.send_data(1, b"x" * 16_384),
        lambda c: c.send_data(1, b"x" * 16_385),  # over the peer's largest frame
        *[lambda c: c.send_data(1, b"x" * 16_384)] * 2,
        lambda c: c.send_data(1, b"x" * 16_384),  # one byte over the stream's 65535-byte window
        lambda c: c.send_data(1, b"x" * 16_383),
        lambda c: c.send_data(1, b"x", end_stream=True),  # over the stream's window by one, and it ends
        lambda c: c.send_data(1, b"", end_stream=True),  # nothing to send: the window is not looked at
        lambda c: c.send_data(1, b""),  # on a stream that ended this way
        lambda c: c.send_data(3, b"x"),  # on a stream never opened
        lambda c: c.send_headers(3, REQUEST),
        lambda c: c.send_data(3, b"x" * 16_383),  # the connection's window is the stream's here
        lambda c: c.send_data(3, b"x" * 100, end_stream=True),
        lambda c: c.send_headers(2**31 - 1, REQUEST),  # the largest stream identifier, in every frame header
        lambda c: c.send_data(2**31 - 1, b"x", end_stream=True),
    ])
    assert [what for what, _ in window] == ["ok", "ok", "ok", "raised FrameTooLargeError", "ok", "ok",
                                            "raised FlowControlError", "ok", "raised FlowControlError", "ok",
                                            "raised ProtocolError", "raised NoSuchStreamError", "ok", "ok", "ok", "ok",
                                            "ok"]
    shared = _sent_alike(True, [  # the connection's window (65535, never grown) runs out before stream 3's
        lambda c: c.send_headers(1, REQUEST), lambda c: c.send_headers(3, REQUEST),
        *[lambda c: c.send_data(1, b"x" * 16_384)] * 3, lambda c: c.send_data(1, b"x" * 16_383),
        lambda c: c.send_data(3, b"x"),
    ])
    assert [what for what, _ in shared][-2:] == ["ok", "raised FlowControlError"]
    closed = _sent_alike(True, [  # after this end's GOAWAY h2's connection machine refuses anything more
        lambda c: c.send_headers(1, REQUEST), lambda c: c.close_connection(), lambda c: c.send_data(1, b"x"),
        lambda c: c.send_headers(3, REQUEST)])
    assert [what for what, _ in closed] == ["ok", "ok", "raised ProtocolError", "raised ProtocolError"]
    never = _sent_alike(True, [lambda c: c.send_headers(1, REQUEST), lambda c: c.send_data(5, b"")])
    assert never[1] == ("raised KeyError", b"")  # nothing, on a stream never opened: h2's own KeyError


def test_received_data_is_acknowledged_as_h2_acknowledges_it() -> None:
    """The WINDOW_UPDATE frames (the connection's, the stream's, none) and the refusals, step by step."""
    acks = _sent_alike(False, [
        *[lambda c: c.receive_data(_frame(0x0, 1, b"x" * 16_000))] * 4,  # both windows nearly used up
        *[lambda c: c.acknowledge_received_data(9_000, 1)] * 5,  # the windows' own thresholds decide
        lambda c: c.acknowledge_received_data(0, 1),
        lambda c: c.acknowledge_received_data(-1, 1),
        lambda c: c.acknowledge_received_data(10, 0),
        lambda c: c.acknowledge_received_data(10, 3),  # a stream never opened
        lambda c: c.send_headers(1, ANSWER, end_stream=True),  # stream 1 still open: the client has not ended
        lambda c: c.acknowledge_received_data(40_000, 1),
        lambda c: c.receive_data(_frame(0x0, 1, b"x" * 16_000)),
        lambda c: c.reset_stream(1),
        lambda c: c.acknowledge_received_data(40_000, 1),  # closed: the connection's window only
    ])
    sent = [what for what, _ in acks]
    assert sent == ["ok"] * 10 + ["raised ValueError", "raised ValueError", "raised NoSuchStreamError"] + ["ok"] * 5
    assert any(data for _, data in acks[4:9])
    assert len(acks[-1][1]) == 13 and acks[-1][1][3] == 0x8 and acks[-1][1][5:9] == bytes(4)  # one, on stream 0


# --- receiving heads: the same events (fields included) and the same errors as H2Connection ---

Peer = Callable[[H2Connection, H2Connection], bytes]


def _event(event: object) -> tuple[object, ...]:
    fields = getattr(event, "headers", None)
    ended = getattr(event, "stream_ended", None)
    priority = getattr(event, "priority_updated", None)
    return (type(event).__name__, getattr(event, "stream_id", None), getattr(event, "error_code", None),
            None if fields is None else [(type(f).__name__, bytes(f[0]), bytes(f[1])) for f in fields],
            None if ended is None else type(ended).__name__,
            None if priority is None else (priority.weight, priority.depends_on, priority.exclusive),
            getattr(event, "data", None), getattr(event, "flow_controlled_length", None))


def _windows(conn: H2Connection) -> list[object]:
    """What the connection counted: its and every stream's receive window, and each stream's body so far."""
    return [conn._inbound_flow_control_window_manager.current_window_size, conn.outbound_flow_control_window,
            conn.highest_inbound_stream_id, conn.highest_outbound_stream_id,
            *[(sid, s._inbound_window_manager.current_window_size, s._inbound_window_manager.max_window_size,
               s.outbound_flow_control_window, s.max_outbound_frame_size, s._actual_content_length,
               s.state_machine.state) for sid, s in sorted(conn.streams.items())]]


def _received_alike(client_side: bool, script: Peer, max_streams: int = 100) -> list[tuple[object, ...]] | str:
    """Feed what *script* (peer, conn -> bytes) makes the peer send to an ``H2Connection`` and to a
    `LeanH2Connection` (lane's configuration); assert the same events, fields and errors, and the same reply."""
    outcomes = []
    for kind in (H2Connection, LeanH2Connection):
        conn = kind(H2Configuration(client_side=client_side, header_encoding=None, validate_outbound_headers=False,
                                    normalize_outbound_headers=False, validate_inbound_headers=False,
                                    logger=QuietLogger()))  # lane's logger: every debug line h2 writes goes there
        conn.local_settings.max_concurrent_streams = max_streams
        conn.initiate_connection()
        peer = H2Connection(H2Configuration(client_side=not client_side, header_encoding=None,
                                            validate_outbound_headers=False, normalize_outbound_headers=False))
        peer.initiate_connection()
        peer.receive_data(conn.data_to_send())
        conn.receive_data(peer.data_to_send())
        conn.data_to_send()
        message = ""
        try:
            got: list[tuple[object, ...]] | str = [_event(e) for e in conn.receive_data(script(peer, conn))]
        except H2Error as exc:
            got, message = f"raised {type(exc).__name__}", str(exc)
        outcomes.append((got, message, conn.data_to_send(), _windows(conn)))
    assert outcomes[0] == outcomes[1]
    return outcomes[1][0]


def _data_script(case: str) -> Peer:
    def script(peer: H2Connection, conn: H2Connection) -> bytes:
        length = [(b"content-length", b"3")] if case.startswith("content-length") else []
        peer.send_headers(1, [*REQUEST, *length], end_stream=case == "ended")
        if case == "padded":
            peer.send_data(1, b"abc", pad_length=5)
            peer.send_data(1, b"", pad_length=0)
            peer.send_data(1, b"de", end_stream=True)
        elif case == "content-length over":
            peer.send_data(1, b"abcd")
        elif case == "content-length short":
            peer.send_data(1, b"ab", end_stream=True)
        elif case == "content-length exact":
            peer.send_data(1, b"ab")
            peer.send_data(1, b"c", end_stream=True)
        sent = peer.data_to_send()
        if case in ("connection window", "stream window"):
            if case == "stream window":
                conn.increment_flow_control_window(100_000)  # the connection's window is larger than the stream's
                conn.data_to_send()
            sent += b"".join(_frame(0x0, 1, b"x" * 16_384) for _ in range(4)) + _frame(0x0, 1, b"x" * 10)
        elif case == "never opened":
            sent += _frame(0x0, 5, b"x")
        elif case == "ended":
            sent += _frame(0x0, 1, b"late")
        elif case == "after goaway":  # this end closed the connection: h2's connection machine refuses DATA
            conn.receive_data(sent)
            conn.close_connection()
            conn.data_to_send()
            sent = _frame(0x0, 1, b"late")
        return sent
    return script


@pytest.mark.parametrize("case", ["padded", "content-length over", "content-length short", "content-length exact",
                                  "connection window", "stream window", "never opened", "ended", "after goaway"])
def test_data_arrives_as_h2_hands_it(case: str) -> None:
    """Received DATA: the same events (data, flow-controlled length, end), windows, body counts and errors."""
    got = _received_alike(False, _data_script(case))
    if case == "padded":
        assert [e[-1] for e in got if e[0] == "DataReceived"] == [9, 1, 2]  # padding counts against the window
    elif case == "content-length exact":
        assert got[-1][0] == "StreamEnded"
    elif case in ("content-length over", "content-length short", "connection window", "stream window",
                  "after goaway"):
        assert isinstance(got, str) and got.startswith("raised")


@pytest.mark.parametrize("acked", [False, True])
def test_new_streams_take_the_window_sizes_in_force(acked: bool) -> None:
    """A stream opened after the peer's SETTINGS and, once acknowledged, after this end's own, starts with the
    initial windows then in force, as h2's do; before the acknowledgement with the old receive window."""
    def script(peer: H2Connection, conn: H2Connection) -> bytes:
        conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 5_000, SettingCodes.MAX_FRAME_SIZE: 20_000})
        if acked:
            peer.receive_data(conn.data_to_send())  # the peer acknowledges this end's settings
        peer.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1_000, SettingCodes.MAX_FRAME_SIZE: 17_000})
        peer.send_headers(1, REQUEST)
        peer.send_headers(3, REQUEST)
        peer.send_data(3, b"x" * 10)
        return peer.data_to_send()

    got = _received_alike(False, script)
    assert [e[0] for e in got][-3:] == ["RequestReceived", "RequestReceived", "DataReceived"]


def test_a_head_with_priority_arrives_as_h2_hands_it() -> None:
    def request(peer: H2Connection, conn: H2Connection) -> bytes:
        peer.send_headers(1, REQUEST, priority_weight=42, priority_depends_on=0, priority_exclusive=True)
        peer.send_headers(3, REQUEST, end_stream=True, priority_weight=7, priority_depends_on=1)
        return peer.data_to_send()

    events = _received_alike(False, request)
    assert [e[0] for e in events] == ["RequestReceived", "PriorityUpdated", "RequestReceived", "StreamEnded",
                                      "PriorityUpdated"]
    assert events[0][5] == (42, 0, True)


def test_a_request_and_its_answer_arrive_with_the_same_fields() -> None:
    cookies = [(b"cookie", b"a=1"), (b"x-id", b"7"), (b"cookie", b"b=2")]  # crumbs: joined, last

    def request(peer: H2Connection, conn: H2Connection) -> bytes:
        peer.send_headers(1, [*REQUEST, *cookies, (b"content-length", b"5")])
        peer.send_data(1, b"12345", end_stream=True)
        peer.send_headers(3, REQUEST, end_stream=True)
        return peer.data_to_send()

    events = _received_alike(False, request)
    assert isinstance(events, list) and [e[0] for e in events] == ["RequestReceived", "DataReceived", "StreamEnded",
                                                                   "RequestReceived", "StreamEnded"]
    assert events[0][3] is not None and events[0][3][-1] == ("NeverIndexedHeaderTuple", b"cookie", b"a=1; b=2")
    assert events[3][4] == "StreamEnded"

    def answer(peer: H2Connection, conn: H2Connection) -> bytes:
        conn.send_headers(1, REQUEST, end_stream=True)
        peer.receive_data(conn.data_to_send())
        peer.send_headers(1, [(b":status", b"100")])
        peer.send_headers(1, [*ANSWER, (b"content-type", b"application/grpc")])
        peer.send_data(1, b"\x00\x00\x00\x00\x00")
        peer.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
        return peer.data_to_send()

    events = _received_alike(True, answer)
    assert isinstance(events, list) and [e[0] for e in events] == [
        "InformationalResponseReceived", "ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"]


@pytest.mark.parametrize("case", ["informational ends", "trailers do not end", "bad content-length", "too many",
                                  "after goaway"])
def test_a_head_h2_refuses_is_refused_alike(case: str) -> None:
    def send(peer: H2Connection, conn: H2Connection) -> bytes:
        if case == "too many":
            for sid in (1, 3):
                peer.send_headers(sid, REQUEST)
            return peer.data_to_send()
        if case == "after goaway":  # this end closed the connection: h2's connection machine refuses a head
            conn.close_connection()
            peer.send_headers(1, REQUEST)
            return peer.data_to_send()
        conn.send_headers(1, REQUEST)
        peer.receive_data(conn.data_to_send())
        peer.data_to_send()
        if case == "informational ends":
            block = peer.encoder.encode([(b":status", b"100")])
            return _frame(0x1, 1, block, flags=0x5)  # HEADERS, END_STREAM | END_HEADERS
        if case == "trailers do not end":
            peer.send_headers(1, ANSWER)
            return peer.data_to_send() + _frame(0x1, 1, peer.encoder.encode([(b"grpc-status", b"0")]), flags=0x4)
        peer.send_headers(1, [*ANSWER, (b"content-length", b"x1")])
        return peer.data_to_send()

    outcome = _received_alike(case not in ("too many", "after goaway"), send, max_streams=1)
    assert outcome == "raised " + ("TooManyStreamsError" if case == "too many" else "ProtocolError")


def test_the_peers_stream_limit_holds_and_closed_streams_are_still_forgotten() -> None:
    conn = LeanH2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    peer = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    peer.local_settings = Settings(client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    peer.initiate_connection()
    conn.receive_data(peer.data_to_send())
    conn.send_headers(1, REQUEST)
    conn.send_headers(3, REQUEST)
    assert not conn.may_open_outbound()
    with pytest.raises(H2Error):
        conn.send_headers(5, REQUEST)
    conn.reset_stream(1)  # one open stream left: one more may open
    assert conn.may_open_outbound()
    conn.send_headers(5, REQUEST)

    unlimited = LeanH2Connection(H2Configuration(client_side=True, header_encoding=None))
    unlimited.initiate_connection()
    for sid in range(1, 2 * 500, 2):  # 500 calls, each reset once sent: h2 must not keep them all
        unlimited.send_headers(sid, REQUEST, end_stream=True)
        unlimited.reset_stream(sid)
    assert len(unlimited.streams) <= 64


# --- the frame buffer: the same frames and errors as h2's, however the bytes are cut ---

def _held(frame: Frame) -> dict[str, object]:
    """Everything a frame holds, its flags as the names set and the names it may carry."""
    held = dict(vars(frame))
    flags = held.pop("flags")
    assert type(flags) is Flags
    return {**held, "flags": (sorted(flags), sorted(flags._valid_flags), sorted(vars(flags)))}


def _frames_of(buffer: FrameBuffer, chunks: list[bytes], max_size: int) -> list[object]:
    seen: list[object] = []
    for chunk in chunks:
        try:
            buffer.add_data(chunk)
            buffer.max_frame_size = max_size
            for frame in buffer:
                seen.append((type(frame).__name__, _held(frame), getattr(frame, "flow_controlled_length", None),
                             "END_STREAM" in frame.flags, len(frame.flags), repr(frame)))
        except (H2Error, HyperframeError) as exc:  # h2 turns the second kind (bad padding) into a protocol error
            seen.append(f"raised {type(exc).__name__}")
            break
    return seen


def _random_frame(rnd: random.Random) -> bytes:
    stream_id = rnd.choice([0, 1, 3, 2**31 - 1])
    kind = rnd.random()
    if kind < 0.35:
        frame: Frame = DataFrame(stream_id or 1, data=rnd.randbytes(rnd.randrange(40)))
        if rnd.random() < 0.2:
            frame.flags.add("PADDED")
            cast(DataFrame, frame).pad_length = rnd.randrange(5)
    elif kind < 0.7:
        frame = HeadersFrame(stream_id or 1, data=rnd.randbytes(rnd.randrange(40)))
        for flag in ("END_HEADERS", "END_HEADERS", "PRIORITY", "PADDED"):
            if rnd.random() < 0.5:
                frame.flags.add(flag)
    elif kind < 0.8:
        frame = ContinuationFrame(stream_id or 1, data=rnd.randbytes(rnd.randrange(20)))
        if rnd.random() < 0.6:
            frame.flags.add("END_HEADERS")
    elif kind < 0.85:
        frame = WindowUpdateFrame(0, window_increment=rnd.randrange(1, 1000))
    elif kind < 0.9:
        frame = RstStreamFrame(stream_id or 1, error_code=rnd.choice([0, 8, 2**32 - 1]))
    else:  # a hand-made header: stream 0 for DATA, HEADERS or RST_STREAM, unknown flag bits, an unknown type,
        # oversized, an RST_STREAM of another length than four
        payload = rnd.randbytes(rnd.choice([rnd.randrange(30), 4]))
        return (len(payload) + rnd.choice([0, 0, 20_000])).to_bytes(3, "big") + bytes(
            (rnd.choice([0x0, 0x1, 0x1, 0x3, 0xA]), rnd.randrange(256))) + rnd.choice([0, 1, 5]).to_bytes(4, "big") + payload
    if rnd.random() < 0.5:
        frame.flags.add("END_STREAM") if isinstance(frame, (DataFrame, HeadersFrame)) else None
    return frame.serialize()


@pytest.mark.parametrize("seed", range(6))
def test_the_frame_buffer_yields_what_h2s_yields_however_the_bytes_are_cut(seed: int) -> None:
    rnd = random.Random(seed)
    compared = 0
    for _ in range(300):
        server = rnd.random() < 0.3
        stream = (PREFACE if server else b"") + b"".join(_random_frame(rnd) for _ in range(rnd.randrange(1, 8)))
        cuts = sorted(rnd.sample(range(1, len(stream)), min(rnd.randrange(4), len(stream) - 1)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        max_size = rnd.choice([16_384, 16_384, 20, 3])  # 3: below even RST_STREAM's four bytes
        theirs = _frames_of(FrameBuffer(server=server), chunks, max_size)
        assert _frames_of(LeanFrameBuffer(server=server), chunks, max_size) == theirs
        compared += len(theirs)
    assert compared > 500


def test_the_quiet_logger_takes_whatever_h2_logs() -> None:
    quiet = QuietLogger()
    quiet.debug("Send data on stream ID %d with len %d", 1, 5)
    quiet.trace("Received frame: %s", object(), extra={"k": 1})
    quiet.debug("{0} {missing}")  # a format with fields of its own is not formatted either


@pytest.mark.parametrize("seed", range(4))
def test_consumed_bytes_give_the_window_increments_h2s_window_manager_gives(seed: int) -> None:
    """`_processed` against ``WindowManager.process_bytes``: the increment (or None) and the window's state
    after every step, for small and large windows, windows used up to 0, and steps of no bytes."""
    for largest, sizes in ((65_535, [1_020, 4, 1]), (4_000, [999, 1, 1]), (65_535, [30_000, 2_767, 1])):
        theirs, ours = WindowManager(largest), WindowManager(largest)
        theirs.window_consumed(largest)  # used up: an update once 1024 bytes (or a quarter) are consumed
        ours.window_consumed(largest)
        for size in sizes:
            assert _processed(ours, size) == theirs.process_bytes(size)
            assert vars(ours) == vars(theirs)
    rnd = random.Random(seed)
    for _ in range(200):
        largest = rnd.choice([1, 7, 1024, 4000, 65_535, 2**31 - 1])
        theirs, ours = WindowManager(largest), WindowManager(largest)
        for _ in range(rnd.randrange(1, 12)):
            received = rnd.choice([0, rnd.randrange(theirs.current_window_size + 1)])
            theirs.window_consumed(received)  # the peer sent that much
            ours.window_consumed(received)
            size = rnd.choice([0, received, rnd.randrange(2 * largest // 3 + 2)])
            assert _processed(ours, size) == theirs.process_bytes(size)
            assert vars(ours) == vars(theirs)


@pytest.mark.parametrize("case", ["bad padding", "settings and ping", "two calls at once"])
def test_what_arrives_in_one_read_is_taken_as_h2_takes_it(case: str) -> None:
    """Several frames in one read, frames h2 answers itself (SETTINGS, PING: their acks are queued), and a
    DATA frame whose padding is longer than the frame (a connection error: GOAWAY, then the error)."""
    def script(peer: H2Connection, conn: H2Connection) -> bytes:
        peer.send_headers(1, REQUEST)
        if case == "bad padding":  # PADDED, a pad length of 9 in a 3-byte body
            return peer.data_to_send() + _frame(0x0, 1, b"\x09ab", flags=0x8)
        if case == "settings and ping":
            peer.update_settings({SettingCodes.MAX_FRAME_SIZE: 20_000})
            peer.ping(b"12345678")
        else:
            peer.send_data(1, b"\x00\x00\x00\x00\x00", end_stream=True)
            peer.send_headers(3, REQUEST, end_stream=True)
        return peer.data_to_send()

    got = _received_alike(False, script)
    if case == "bad padding":
        assert got == "raised ProtocolError"
    else:
        assert isinstance(got, list) and len(got) >= 3
