"""`LeanStreams` keeps ``h2``'s books on streams: the same limits read, the same streams counted and forgotten.

Each case drives an ``H2Connection`` and a `LeanH2Connection` (lane's configuration) through the same steps
and compares what ``h2`` reads or keeps: the ``MAX_CONCURRENT_STREAMS`` in force, the open streams counted,
which closed streams are forgotten and what is remembered of them (``_closed_streams``, bounded), the
window a stream may send on, and the errors for a head that cannot be decoded (h2's ``_decode_headers``).
"""

from __future__ import annotations

import random

import pytest
from h2.connection import AllowedStreamIDs, H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings
from h2.stream import H2Stream, H2StreamStateMachine

from lane.engine.h2_lean import LeanH2Connection
from lane.engine.h2_lean_streams import max_streams
from tests.support.h2_pairs import GRPC_REQUEST, connected_pair

ANSWER = [(b":status", b"200")]


def _headers(stream_id: int, block: bytes) -> bytes:
    """A HEADERS frame (END_STREAM, END_HEADERS) holding the whole *block* (RFC 9113 §4.1, §6.2)."""
    return len(block).to_bytes(3, "big") + b"\x01\x05" + stream_id.to_bytes(4, "big") + block


def _books(conn: H2Connection) -> tuple[object, ...]:
    return (sorted(conn.streams), list(conn._closed_streams.items()), conn.highest_inbound_stream_id,
            conn.highest_outbound_stream_id)


@pytest.mark.parametrize("value", [None, 0, 1, 7, 2**31 - 1])
def test_the_stream_limit_is_read_as_h2_reads_it(value: int | None) -> None:
    initial = {} if value is None else {SettingCodes.MAX_CONCURRENT_STREAMS: value}
    settings = Settings(client=False, initial_values=initial)
    assert max_streams(settings) == settings.max_concurrent_streams
    settings.update({SettingCodes.MAX_CONCURRENT_STREAMS: 5})  # proposed, not acknowledged: not in force yet
    assert max_streams(settings) == settings.max_concurrent_streams
    settings.acknowledge()
    assert max_streams(settings) == settings.max_concurrent_streams == 5
    fresh = Settings(client=True)
    fresh.update({SettingCodes.MAX_CONCURRENT_STREAMS: 9})  # a setting that only has a proposed value
    assert max_streams(fresh) == fresh.max_concurrent_streams


@pytest.mark.parametrize("seed", range(12))
def test_streams_are_counted_and_forgotten_as_h2_does(seed: int) -> None:
    # Streams of both ends in every state (open, half closed either way, reset, ended both ways), counted at
    # random points, with h2's record of closed streams bounded small so that its oldest entries drop out.
    outcomes = []
    for kind in (H2Connection, LeanH2Connection):
        rnd = random.Random(seed)
        conn, peer = connected_pair(kind, client_side=False)
        conn._closed_streams._size_limit = 3  # type: ignore[attr-defined]  # a SizeLimitDict
        seen: list[object] = []
        for sid in range(1, 40, 2):
            peer.send_headers(sid, GRPC_REQUEST, end_stream=rnd.random() < 0.5)
            conn.receive_data(peer.data_to_send())
            step = rnd.choice(["answer", "end", "reset", "open"])
            if step == "answer":
                conn.send_headers(sid, ANSWER, end_stream=True)
            elif step == "end":
                conn.send_headers(sid, ANSWER)
            elif step == "reset":
                conn.reset_stream(sid, ErrorCodes.CANCEL)
            peer.receive_data(conn.data_to_send())
            if rnd.random() < 0.3:  # the peer resets one of the streams it opened earlier
                earlier = rnd.randrange(1, sid + 1, 2)
                if earlier in peer.streams and not peer.streams[earlier].closed:
                    peer.reset_stream(earlier)
                    conn.receive_data(peer.data_to_send())
            if rnd.random() < 0.4:
                seen.append((conn._open_streams(1), conn._open_streams(0), _books(conn)))
        seen.append(("inbound", conn.open_inbound_streams, "outbound", conn.open_outbound_streams, _books(conn)))
        outcomes.append(seen)
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("acked", [True, False])
@pytest.mark.parametrize("limit", [1, 2, 5])
def test_the_peers_streams_over_this_ends_limit_are_refused_alike(limit: int, acked: bool) -> None:
    """The limit in force is the acknowledged one: a lower one only proposed (not acknowledged) is not."""
    outcomes = []
    for kind in (H2Connection, LeanH2Connection):
        conn, peer = connected_pair(kind, client_side=False)
        conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: limit})
        peer.receive_data(conn.data_to_send())
        if acked:
            conn.receive_data(peer.data_to_send())  # the peer acknowledged: the limit is in force
        seen: list[object] = []
        for sid in range(1, 4 * limit + 8, 2):  # every other one closes: the limit is reached on the way
            block = peer.encoder.encode(GRPC_REQUEST)  # written by hand: the peer's h2 would keep to the limit itself
            try:
                events = conn.receive_data(_headers(sid, block))
            except H2Error as exc:
                seen.append((sid, type(exc).__name__, str(exc)))
                break
            seen.append((sid, [type(e).__name__ for e in events], _books(conn)))
            if sid % 4 == 1:
                conn.send_headers(sid, ANSWER, end_stream=True)  # this one closes: room for one more
        outcomes.append(seen)
    assert outcomes[0] == outcomes[1]
    assert ("TooManyStreamsError" in str(outcomes[1][-1])) is acked


def test_the_window_a_stream_may_send_on_is_h2s() -> None:
    outcomes = []
    for kind in (H2Connection, LeanH2Connection):
        conn, peer = connected_pair(kind, client_side=True)
        conn.send_headers(1, GRPC_REQUEST)
        conn.send_data(1, b"x" * 1000)
        peer.receive_data(conn.data_to_send())
        peer.increment_flow_control_window(10, stream_id=1)
        conn.receive_data(peer.data_to_send())
        seen: list[object] = [conn.local_flow_control_window(1)]
        for sid in (3, 0):  # never opened, and the connection itself: h2's errors
            try:
                seen.append(conn.local_flow_control_window(sid))
            except H2Error as exc:
                seen.append(type(exc).__name__)
        outcomes.append(seen)
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][0] == 65535 - 1000


@pytest.mark.parametrize("case", ["bad index", "truncated", "oversized"])
def test_a_head_that_cannot_be_decoded_is_refused_alike(case: str) -> None:
    outcomes = []
    for kind in (H2Connection, LeanH2Connection):
        conn, peer = connected_pair(kind, client_side=False)
        if case == "oversized":
            conn.decoder.max_header_list_size = 100
            block = peer.encoder.encode([*GRPC_REQUEST, (b"x-big", b"v" * 200)])
        else:
            block = b"\xff\x7f" if case == "bad index" else b"\x00\x85ab"
        try:
            conn.receive_data(_headers(1, block))
            outcomes.append(("no error", conn.data_to_send()))
        except H2Error as exc:
            outcomes.append((type(exc).__name__, str(exc), conn.data_to_send()))
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][0] == ("DenialOfServiceError" if case == "oversized" else "ProtocolError")


def _built(stream: H2Stream, conn: H2Connection) -> list[object]:
    """Everything a new stream holds, in the order it was set: its own attributes, its machine's and its
    window manager's (their classes aside: lane's machine is a `LeanStreamStateMachine`), the config shared."""
    held = dict(vars(stream))
    machine, window = held.pop("state_machine"), held.pop("_inbound_window_manager")
    assert held.pop("config") is conn.config
    return [list(vars(stream)), held, list(vars(machine).items()), type(window), list(vars(window).items()),
            isinstance(machine, H2StreamStateMachine)]


@pytest.mark.parametrize("client_side", [True, False])
def test_new_streams_are_built_as_h2_builds_them(client_side: bool) -> None:
    """A stream this end opens (client) or the peer opens (server), before and after each end changes its
    initial window (to different sizes) and the frame size: built alike, attribute for attribute; also as
    built, before any head (h2's ``_begin_new_stream`` called directly)."""
    outcomes = []
    for kind in (H2Connection, LeanH2Connection):
        fresh, _ = connected_pair(kind, client_side)  # stream 1: the client's own, or the peer's to the server
        seen: list[object] = [_built(fresh._begin_new_stream(1, AllowedStreamIDs.ODD), fresh)]
        conn, peer = connected_pair(kind, client_side)
        for sid, ours, theirs in ((1, {}, {}), (3, {SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1},
                                                {SettingCodes.INITIAL_WINDOW_SIZE: 7}),
                                  (5, {SettingCodes.INITIAL_WINDOW_SIZE: 0, SettingCodes.MAX_FRAME_SIZE: 20_000},
                                   {SettingCodes.MAX_FRAME_SIZE: 30_000})):
            conn.update_settings(ours)
            peer.update_settings(theirs)
            peer.receive_data(conn.data_to_send())
            conn.receive_data(peer.data_to_send())
            peer.receive_data(conn.data_to_send())
            client, server = (conn, peer) if client_side else (peer, conn)
            client.send_headers(sid, GRPC_REQUEST)
            server.receive_data(client.data_to_send())
            seen.append(_built(conn.streams[sid], conn))
        outcomes.append(seen)
    assert outcomes[0] == outcomes[1]
    windows = [(held[1]["outbound_flow_control_window"], held[4]) for held in outcomes[1] if isinstance(held, list)]
    assert len({str(w) for w in windows[1:]}) == 3  # the three streams' windows differ
