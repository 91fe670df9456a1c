"""`LeanH2Connection` takes a received RST_STREAM as ``h2``'s own connection does.

A gRPC upstream (nginx among them) resets every stream once it has answered, so a lane proxy receives one
RST_STREAM per call. Each case feeds the same peer bytes to an ``H2Connection`` and a `LeanH2Connection`
(lane's configuration, either side) and compares the events (error codes included), the errors and their
messages, the reply bytes, and what is kept of every stream: its state, how it closed, whether it is still
held or remembered as closed. (The frames themselves: ``test_h2_lean.py``'s frame buffer comparison.)
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error

from lane.engine.h2_lean import LeanH2Connection, QuietLogger
from tests.support.h2_pairs import GRPC_REQUEST, connected_pair

ANSWER = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0")]

Script = Callable[[H2Connection, H2Connection, bool], bytes]


def _rst(stream_id: int, code: int = ErrorCodes.NO_ERROR, length: int = 4, flags: int = 0) -> bytes:
    body = code.to_bytes(4, "big")[:length].ljust(length, b"\0")
    return length.to_bytes(3, "big") + bytes((0x3, flags)) + stream_id.to_bytes(4, "big") + body


def _kept(conn: H2Connection) -> list[object]:
    return [sorted((sid, s.state_machine.state, s.state_machine.stream_closed_by) for sid, s in conn.streams.items()),
            sorted(conn._closed_streams.items()), conn.state_machine.state]


def _alike(client_side: bool, script: Script) -> tuple[object, ...]:
    """What *script* (conn, peer, client_side -> the bytes to feed last) leads to, asserted equal for both kinds."""
    outcomes = []
    for kind in (H2Connection, LeanH2Connection):
        conn, peer = connected_pair(kind, client_side, logger=QuietLogger())
        last = script(conn, peer, client_side)
        try:
            events: object = [(type(e).__name__, getattr(e, "stream_id", None), repr(getattr(e, "error_code", None)))
                              for e in conn.receive_data(last)]
            message = ""
        except H2Error as exc:
            events, message = f"raised {type(exc).__name__}", str(exc)
        sent = conn.data_to_send()
        outcomes.append((events, message, sent, _kept(conn)))
    assert outcomes[0] == outcomes[1]
    return outcomes[1]


def _open(conn: H2Connection, peer: H2Connection, client_side: bool, stream_id: int = 1) -> None:
    """Stream *stream_id* open both ways: the client's request head sent, not ended."""
    client, server = (conn, peer) if client_side else (peer, conn)
    client.send_headers(stream_id, GRPC_REQUEST)
    server.receive_data(client.data_to_send())


def _answered(conn: H2Connection, peer: H2Connection, client_side: bool, stream_id: int = 1) -> None:
    """A whole unary call on *stream_id*: request and answer, both ended (the stream closed, still held)."""
    client, server = (conn, peer) if client_side else (peer, conn)
    client.send_headers(stream_id, GRPC_REQUEST)
    client.send_data(stream_id, b"\0\0\0\0\0", end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(stream_id, ANSWER)
    server.send_data(stream_id, b"\0\0\0\0\0")
    server.send_headers(stream_id, TRAILERS, end_stream=True)
    client.receive_data(server.data_to_send())


SIDES = pytest.mark.parametrize("client_side", [True, False], ids=["upstream side", "client side"])


@SIDES
@pytest.mark.parametrize("code", [ErrorCodes.CANCEL, ErrorCodes.NO_ERROR, 0x1234])
def test_a_reset_on_an_open_stream_ends_it_with_its_error_code(client_side: bool, code: int) -> None:
    def script(conn: H2Connection, peer: H2Connection, side: bool) -> bytes:
        _open(conn, peer, side)
        return _rst(1, code)

    events, _, sent, kept = _alike(client_side, script)
    assert events == [("StreamReset", 1, repr(ErrorCodes(code) if code in iter(ErrorCodes) else code))]
    assert sent == b"" and "RECV_RST_STREAM" in repr(kept)


@SIDES
def test_the_reset_after_a_whole_answer_changes_nothing(client_side: bool) -> None:
    """nginx's RST_STREAM(NO_ERROR) after every answer: no event, nothing sent, the stream closed as it ended."""
    events, _, sent, kept = _alike(client_side, lambda c, p, side: (_answered(c, p, side), _rst(1))[1])
    assert events == [] and sent == b""
    assert "RECV_END_STREAM" in repr(kept) or "SEND_END_STREAM" in repr(kept)


@SIDES
def test_a_reset_on_a_stream_never_opened_or_already_forgotten_is_ignored(client_side: bool) -> None:
    def forgotten(conn: H2Connection, peer: H2Connection, side: bool) -> bytes:
        _answered(conn, peer, side)
        _answered(conn, peer, side, 3)  # opening stream 3 forgets closed stream 1
        conn.open_outbound_streams if side else conn.open_inbound_streams  # noqa: B018 - h2 forgets as it counts
        return _rst(1, ErrorCodes.CANCEL) + _rst(9, ErrorCodes.CANCEL)

    events, _, sent, kept = _alike(client_side, forgotten)
    assert events == [] and sent == b"" and kept[1]  # stream 1 is remembered as closed, no longer held


@SIDES
@pytest.mark.parametrize("case", ["stream 0", "three bytes", "five bytes", "flag bits", "split", "after goaway"])
def test_odd_resets_are_handled_as_h2_handles_them(client_side: bool, case: str) -> None:
    def script(conn: H2Connection, peer: H2Connection, side: bool) -> bytes:
        _open(conn, peer, side)
        if case == "split":  # half a frame first: nothing yet, the rest below
            assert conn.receive_data(_rst(1, ErrorCodes.CANCEL)[:7]) == []
            return _rst(1, ErrorCodes.CANCEL)[7:]
        if case == "after goaway":  # this end closed the connection: h2's connection machine refuses the frame
            conn.close_connection()
            return _rst(1, ErrorCodes.CANCEL)
        return {"stream 0": _rst(0), "three bytes": _rst(1, length=3), "five bytes": _rst(1, length=5),
                "flag bits": _rst(1, ErrorCodes.CANCEL, flags=0xFF)}[case]

    events, message, _, _ = _alike(client_side, script)
    if case in ("flag bits", "split"):
        assert events == [("StreamReset", 1, repr(ErrorCodes.CANCEL))]
    else:
        assert isinstance(events, str) and events.startswith("raised") and message


@SIDES
def test_data_after_a_received_reset_is_answered_as_h2_answers_it(client_side: bool) -> None:
    """How the stream closed (by the peer's reset) decides what a late frame gets: h2 reads it back."""
    def script(conn: H2Connection, peer: H2Connection, side: bool) -> bytes:
        _open(conn, peer, side)
        conn.receive_data(_rst(1, ErrorCodes.CANCEL))
        return (5).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big") + b"\0" * 5  # DATA on stream 1

    _alike(client_side, script)
