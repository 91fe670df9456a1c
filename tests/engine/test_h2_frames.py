"""What one unary gRPC call through lane's HTTP/2 engine costs on the wire, on both sides, on 127.0.0.1.

Every frame is parse and serialise work at both ends and every write a syscall (issue 17). Measured
against Envoy (strace of both proxies under h2load, 16 connections), lane and Envoy exchange the same
frames per call: the request as HEADERS + DATA, the answer as HEADERS + DATA + trailers, each in one
write; no WINDOW_UPDATE per DATA, no PING or SETTINGS per call. These tests hold the engine to that:
a raw ``h2`` client makes sequential unary calls on one connection through an engine listener relaying
(`tests.engine.test_h2.forwarder`) to a raw ``h2`` upstream that answers as nginx's gRPC stubs do
(answer, trailers, then RST_STREAM(NO_ERROR)); both ends record the frames of every read.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import pytest

from lane.core.endpoint import Endpoint
from lane.engine.exchange import Sender
from tests.engine.test_h2 import forwarder
from tests.support.loopback import serving
from tests.support.processes import serve_handler

pytestmark = pytest.mark.timeout(60)

CALLS = 20
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/t.S/Unary"),
           (b"content-type", b"application/grpc"), (b"te", b"trailers")]
MESSAGE = b"\x00\x00\x00\x00\x07\x0a\x05hello"  # one length-prefixed gRPC message
NAMES = {0x0: "DATA", 0x1: "HEADERS", 0x3: "RST_STREAM", 0x4: "SETTINGS", 0x6: "PING", 0x8: "WINDOW_UPDATE"}

Read = list[tuple[str, int]]  # the frames of one read: (type, flags)


def frames_of(chunk: bytes) -> Read:
    """The frames in *chunk* (which must hold whole frames): their types and flags."""
    out, at = [], 0
    while at < len(chunk):
        length = int.from_bytes(chunk[at:at + 3], "big")
        out.append((NAMES.get(chunk[at + 3], hex(chunk[at + 3])), chunk[at + 4]))
        at += 9 + length
    assert at == len(chunk), "a read ended inside a frame"
    return out


@contextlib.asynccontextmanager
async def nginx_like(reads: list[Read]) -> AsyncIterator[Endpoint]:
    """An h2c upstream answering every call as nginx's gRPC stub does: HEADERS, DATA, trailers, RST_STREAM
    (NO_ERROR), all in one write; the frames of every read it makes after the preface go to *reads*."""

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.preface = True
            self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
            self.conn.initiate_connection()
            transport.write(self.conn.data_to_send())  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            if self.preface:  # the client's preface and SETTINGS: not a call's
                self.preface = False
            else:
                reads.append(frames_of(data))
            resets = b""
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.StreamEnded):
                    sid = event.stream_id
                    self.conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
                    self.conn.send_data(sid, MESSAGE)
                    self.conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
                    # RST_STREAM(NO_ERROR) on the stream just closed: h2 refuses to send it, nginx sends it
                    resets += b"\x00\x00\x04\x03\x00" + sid.to_bytes(4, "big") + bytes(4)
            self.transport.write(self.conn.data_to_send() + resets)  # type: ignore[attr-defined]

    async with serving(Server) as at:
        yield at


def _calls(port: int) -> list[Read]:
    """CALLS unary calls, one after the other, on one connection; the frames of each read of each answer."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    answers: list[Read] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(conn.data_to_send())
        for call in range(CALLS):
            sid = 1 + 2 * call
            conn.send_headers(sid, REQUEST)
            conn.send_data(sid, MESSAGE, end_stream=True)
            sock.sendall(conn.data_to_send())
            ended = False
            while not ended:
                chunk = sock.recv(65536)
                assert chunk, "the connection closed"
                events = conn.receive_data(chunk)
                ended = any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in events)
                if call:  # the first call's reads carry the connection's SETTINGS and their acks too
                    answers.append(frames_of(chunk))
                sock.sendall(conn.data_to_send())
    return answers


async def test_a_unary_call_is_the_same_frames_as_envoys_each_way_in_one_write() -> None:
    upstream_reads: list[Read] = []
    senders: list[Sender] = []
    async with nginx_like(upstream_reads) as at, serve_handler(forwarder(at, senders)) as port:
        answers = await asyncio.to_thread(_calls, port)
        upstream_reads = upstream_reads[:]  # before the listener's GOAWAY on closing
    # to the client: the answer head, the message, the trailers ending the stream, in one read per call
    assert answers == [[("HEADERS", 0x4), ("DATA", 0x0), ("HEADERS", 0x5)]] * (CALLS - 1)
    # to the upstream: the request head and the message ending the stream, in one read per call; nothing
    # else on any call but the first (which acknowledges the upstream's SETTINGS)
    assert upstream_reads[-(CALLS - 1):] == [[("HEADERS", 0x4), ("DATA", 0x1)]] * (CALLS - 1)
    assert len(upstream_reads) <= CALLS + 1
