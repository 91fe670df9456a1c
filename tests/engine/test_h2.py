"""The engine's HTTP/2 codec over real sockets on 127.0.0.1: h2c beside HTTP/1.1 on one listener, and
the HTTP/2 client (`lane.engine.h2_upstream.H2Upstreams`).

The listener runs `forwarder`, a few lines of request logic written against `lane.engine.exchange`
only (what the gateway and the sidecars do, minus lanes): send through the `Sender` the listener
hands it, relay with `lane.dataplane.relay`. Upstreams are real ``grpc.aio`` servers; clients are real
``grpc.aio`` channels, urllib for HTTP/1.1, and for the byte-level cases (a preface cut into pieces,
a malformed one) the ``h2`` state machine driving a raw socket. Nothing is faked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from multidict import CIMultiDict

from lane.core.config import ProxySpec
from lane.core.endpoint import Endpoint
from lane.dataplane.relay import relay
from lane.engine.exchange import Exchange, Handler, Sender
from lane.engine.failures import ConnectFailed, UpstreamTimeout
from lane.engine.h2_connection import H2ServerConnection
from lane.engine.h2_headers import PREFACE
from lane.engine.h2_upstream import H2Upstreams
from lane.engine.limits import Limits
from lane.engine.listen import FastPath, listen_http
from lane.process.server import Listener, start_listener
from tests.support.loopback import serving
from tests.support.processes import serve_handler

pytestmark = pytest.mark.timeout(60)

SPEC = ProxySpec(connect_timeout=1.0, request_timeout=5.0)
SERVICE = "/t.S/"


class Upstream:
    """A real grpc.aio server: echo, streams, a failing method, a slow one and an endless one."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.napping = asyncio.Event()
        self.release = asyncio.Event()
        self.yielded = 0
        self.seen_metadata: list[dict[str, str]] = []
        self.server: grpc.aio.Server | None = None

    def handlers(self) -> grpc.GenericRpcHandler:
        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.seen_metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
            return request[::-1]

        async def server_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            for i in range(int(request or b"3")):
                self.yielded += 1
                yield b"%d:" % i + b"x" * 1024 * 1024

        async def hold(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
            await self.release.wait()  # reads nothing until the test says so
            return str(sum([len(r) async for r in requests])).encode()

        async def client_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
            return json.dumps([len(r) async for r in requests]).encode()

        async def bidi(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            async for request in requests:
                yield request.upper()

        async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            context.set_trailing_metadata((("x-why", "because"), ("x-raw-bin", b"\x00\x01\xfe")))
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: ü")
            return b""

        async def endless(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"tick"
                    await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise

        async def nap(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.napping.set()
            await asyncio.sleep(float(request))
            return b"rested"

        async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return b""

        return grpc.method_handlers_generic_handler("t.S", {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Endless": grpc.unary_stream_rpc_method_handler(endless),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
            "Nap": grpc.unary_unary_rpc_method_handler(nap),
            "Hold": grpc.stream_unary_rpc_method_handler(hold),
        })


@contextlib.asynccontextmanager
async def grpc_upstream() -> AsyncIterator[tuple[Upstream, Endpoint]]:
    upstream = Upstream()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    server.add_generic_rpc_handlers((upstream.handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    upstream.server = server
    try:
        yield upstream, Endpoint("127.0.0.1", port)
    finally:
        await server.stop(0)


def forwarder(to: Endpoint, senders: list[Sender]) -> FastPath:
    """Request logic on the codec-neutral interface: every request to *to*, the answer relayed back."""

    def with_pools(sender: Sender) -> Handler:
        senders.append(sender)

        async def handle(exchange: Exchange) -> None:
            if exchange.path == "/version":
                exchange.respond(200, CIMultiDict({"content-type": "application/json"}), json.dumps({
                    "version": exchange.version, "host": exchange.headers.get("Host")}).encode())
                return
            headers = CIMultiDict(exchange.headers)
            answer = await sender.send(exchange.method, to, exchange.target, headers, exchange.body, SPEC)
            await relay(exchange, answer, answer.headers.copy())

        return handle

    return with_pools


@contextlib.asynccontextmanager
async def proxied() -> AsyncIterator[tuple[Upstream, str, list[Sender]]]:
    """A grpc upstream behind an engine listener running `forwarder`; yields the listener's host:port."""
    senders: list[Sender] = []
    async with grpc_upstream() as (upstream, at), serve_handler(forwarder(at, senders)) as port:
        yield upstream, f"127.0.0.1:{port}", senders


def _channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])


async def test_all_four_rpc_kinds_stream_through_the_codec() -> None:
    async with proxied() as (_, target, _senders), _channel(target) as ch:
        assert await ch.unary_unary(SERVICE + "Unary")(b"abc", timeout=5) == b"cba"
        got = [m async for m in ch.unary_stream(SERVICE + "ServerStream")(b"3", timeout=10)]
        assert [m[:2] for m in got] == [b"0:", b"1:", b"2:"] and all(len(m) == 2 + 1024 * 1024 for m in got)

        async def parts() -> AsyncIterator[bytes]:
            for size in (1, 70_000, 3 * 1024 * 1024):  # beyond every default window
                yield b"p" * size

        assert json.loads(await ch.stream_unary(SERVICE + "ClientStream")(parts(), timeout=10)) == [
            1, 70_000, 3 * 1024 * 1024]
        call = ch.stream_stream(SERVICE + "Bidi")(timeout=5)
        for word in (b"one", b"two"):  # each answer comes back before the next message is sent
            await call.write(word)
            assert await call.read() == word.upper()
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF


async def test_status_details_and_trailing_metadata_pass_unchanged() -> None:
    async with proxied() as (_, target, _senders), _channel(target) as ch:
        call = ch.unary_unary(SERVICE + "Fail")(b"", timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == "no such thing: ü"
        trailing = dict(caught.value.trailing_metadata())
        assert trailing["x-why"] == "because" and trailing["x-raw-bin"] == b"\x00\x01\xfe"


def _grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


class RawClient:
    """An HTTP/2 client on a blocking socket (the h2 state machine) that decides itself when to read and ack."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.conn = h2.connection.H2Connection()
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.received = 0
        self.ended = False
        self.offset = 0  # body bytes sent so far on stream 1
        self.unacked = 0  # received and not handed back to the window

    def start(self, method: str, end: bool) -> None:
        self.conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "up"),
                                   (":path", SERVICE + method), ("content-type", "application/grpc"),
                                   ("te", "trailers")], end_stream=end)
        self.sock.sendall(self.conn.data_to_send())

    def pump(self, ack: bool, seconds: float) -> None:
        """Read for *seconds* (or to the stream's end), handing the window back only when *ack*."""
        deadline = time.monotonic() + seconds
        if ack and self.unacked:  # what was held back so far is taken now
            self.conn.acknowledge_received_data(self.unacked, 1)
            self.unacked = 0
            self.sock.sendall(self.conn.data_to_send())
        while not self.ended and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    self.received += len(event.data)
                    if ack:
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    else:
                        self.unacked += event.flow_controlled_length
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    self.ended = True
            self.sock.sendall(self.conn.data_to_send())

    def send_until_blocked(self, total: int, seconds: float) -> int:
        """Send up to *total* body bytes as the window allows, for *seconds*; what was sent."""
        sent, chunk = 0, _grpc_frame(b"u" * (1024 * 1024 - 5))  # 1 MiB messages, framed
        deadline = time.monotonic() + seconds
        while sent < total and time.monotonic() < deadline:
            window = min(self.conn.local_flow_control_window(1), self.conn.max_outbound_frame_size, total - sent)
            if window <= 0:
                self.pump(ack=True, seconds=0.05)  # take the window updates (and settings) that arrive
                continue
            at = self.offset % len(chunk)
            piece = chunk[at:at + window]
            self.conn.send_data(1, piece)
            self.sock.sendall(self.conn.data_to_send())
            sent += len(piece)
            self.offset += len(piece)
        return sent

    def close(self) -> None:
        self.sock.close()


async def test_a_client_that_stops_reading_holds_back_the_upstream() -> None:
    # 32 MiB answer, a client that reads nothing: what the upstream could produce is bounded by the
    # windows on the way (the proxy reads only what its client took), not by the answer's size.
    async with proxied() as (upstream, target, _senders):
        client = RawClient(int(target.split(":")[1]))
        try:
            client.start("ServerStream", end=False)
            client.conn.send_data(1, _grpc_frame(b"32"), end_stream=True)
            client.sock.sendall(client.conn.data_to_send())
            await asyncio.to_thread(client.pump, False, 1.5)
            assert client.received <= 65535 and not client.ended
            assert upstream.yielded < 10, f"the upstream produced {upstream.yielded} MiB for a client that read 64 KiB"
            await asyncio.to_thread(client.pump, True, 20.0)  # now read: all of it arrives, in order
            assert client.ended and client.received == sum(5 + len(b"%d:" % i) + 1024 * 1024 for i in range(32))
        finally:
            client.close()


async def test_an_upstream_that_stops_reading_holds_back_the_client() -> None:
    async with proxied() as (upstream, target, _senders):
        client = RawClient(int(target.split(":")[1]))
        try:
            client.start("Hold", end=False)
            sent = await asyncio.to_thread(client.send_until_blocked, 64 * 1024 * 1024, 1.5)
            assert sent < 8 * 1024 * 1024, f"{sent} bytes taken from a client while the upstream read nothing"
            upstream.release.set()
            more = await asyncio.to_thread(client.send_until_blocked, 16 * 1024 * 1024 - sent, 10.0)
            assert sent + more == 16 * 1024 * 1024  # once the upstream reads, the rest flows
        finally:
            client.close()


class Refuser(asyncio.Protocol):
    """An HTTP/2 server (the h2 state machine) that refuses every stream once its first body bytes came
    (RST_STREAM REFUSED_STREAM): the proxy has taken part of the body from its client by then."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.refused = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived) and not self.conn.streams[event.stream_id].closed:
                self.refused += 1
                self.conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        self.transport.write(self.conn.data_to_send())  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def refused_first() -> AsyncIterator[tuple[list[Refuser], grpc.aio.Channel]]:
    """A gRPC channel to a proxy that tries an upstream refusing every stream first, then the real one."""
    refusers: list[Refuser] = []

    def refuser() -> Refuser:
        refusers.append(Refuser())
        return refusers[-1]

    def two_tries(to: Endpoint) -> FastPath:
        def with_pools(sender: Sender) -> Handler:
            async def handle(exchange: Exchange) -> None:
                headers = CIMultiDict(exchange.headers)
                try:
                    answer = await sender.send(exchange.method, refusing, exchange.target, headers, exchange.body, SPEC)
                except ConnectFailed:
                    assert not exchange.body.started
                    answer = await sender.send(exchange.method, to, exchange.target, headers, exchange.body, SPEC)
                await relay(exchange, answer, answer.headers.copy())

            return handle

        return with_pools

    async with serving(refuser) as refusing, grpc_upstream() as (_, at), serve_handler(two_tries(at)) as port, \
            _channel(f"127.0.0.1:{port}") as ch:
        yield refusers, ch


async def test_a_stream_refused_upstream_is_sent_elsewhere_whole_while_its_body_still_arrives() -> None:
    # Like Envoy's retry buffer: what was taken from the client is kept (small bodies), so a request
    # nobody processed can go to the next instance from its start, even before the client finished it.
    async with refused_first() as (refusers, ch):
        async def slowly() -> AsyncIterator[bytes]:
            for size in (10, 20, 30):
                yield b"s" * size
                await asyncio.sleep(0.2)  # the refusal comes while the rest is still to be sent

        assert json.loads(await ch.stream_unary(SERVICE + "ClientStream")(slowly(), timeout=10)) == [10, 20, 30]
        assert sum(r.refused for r in refusers) == 1


async def test_a_unary_call_refused_upstream_is_sent_elsewhere_whole() -> None:
    # A unary call's body has all arrived when it is sent on: it leaves with its head (no pump task), and the
    # copy kept for a second try is what the next instance gets.
    async with refused_first() as (refusers, ch):
        message = b"unary " * 5000  # 30 kB: more than one DATA frame
        assert await ch.unary_unary(SERVICE + "Unary")(message, timeout=10) == message[::-1]
        assert sum(r.refused for r in refusers) == 1


async def test_http11_and_h2c_are_served_on_the_same_port() -> None:
    async with proxied() as (_, target, _senders), _channel(target) as ch:
        def http11() -> dict[str, Any]:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"http://{target}/version", timeout=5) as resp:
                return dict(json.loads(resp.read()))

        assert (await asyncio.to_thread(http11))["version"] == "1.1"
        assert await ch.unary_unary(SERVICE + "Unary")(b"ab", timeout=5) == b"ba"
        async with H2Upstreams() as client:
            host, port = target.split(":")
            answer = await client.send("GET", Endpoint(host, int(port)), "/version",
                                       CIMultiDict({"Host": "b.example"}), None, SPEC)
            body = answer.read_nowait() + b"".join([c async for c in answer.chunks()])
            answer.release()
        assert json.loads(body) == {"version": "2", "host": "b.example"}  # :authority is the Host header
        assert (await asyncio.to_thread(http11))["version"] == "1.1"


async def test_many_concurrent_calls_share_one_upstream_connection() -> None:
    async with proxied() as (upstream, target, senders), _channel(target) as ch:
        method = ch.unary_unary(SERVICE + "Unary")
        answers = await asyncio.gather(*(method(b"%d" % i, metadata=(("x-n", str(i)),), timeout=10)
                                         for i in range(100)))
        assert answers == [(b"%d" % i)[::-1] for i in range(100)]
        h2_sender = senders[-1]
        assert isinstance(h2_sender, H2Upstreams) and h2_sender.connections == 1
        assert sorted(int(m["x-n"]) for m in upstream.seen_metadata) == list(range(100))
        assert all(m.get("te") is None for m in upstream.seen_metadata)  # gRPC's te: trailers is no metadata


async def test_a_client_cancel_resets_the_stream_upstream() -> None:
    async with proxied() as (upstream, target, _senders), _channel(target) as ch:
        call = ch.unary_stream(SERVICE + "Endless")(b"", timeout=10)
        assert await call.read() == b"tick"
        call.cancel()
        await asyncio.wait_for(upstream.cancelled.wait(), 3)


async def test_an_upstream_that_breaks_mid_stream_resets_the_clients_stream() -> None:
    # The other way: the upstream goes away in the middle of an answer; the client must see the call
    # fail at once (its stream is reset), not wait for the rest or get a complete-looking end.
    async with proxied() as (upstream, target, _senders), _channel(target) as ch:
        call = ch.unary_stream(SERVICE + "Endless")(b"", timeout=30)
        assert await call.read() == b"tick"
        assert upstream.server is not None
        await upstream.server.stop(None)  # no grace: the upstream cancels the call and closes
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while True:
                if await call.read() == grpc.aio.EOF:
                    break
        assert caught.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED,
                                       grpc.StatusCode.UNAVAILABLE), caught.value
        assert time.monotonic() - started < 3


async def test_a_deadline_ends_in_time_and_the_upstream_stops_waiting() -> None:
    async with proxied() as (upstream, target, _senders), _channel(target) as ch:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ch.unary_unary(SERVICE + "Slow")(b"", timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 0.9
        await asyncio.wait_for(upstream.cancelled.wait(), 3)


async def test_a_call_in_flight_finishes_when_the_upstream_stops_gracefully() -> None:
    # The upstream says GOAWAY (NO_ERROR) and finishes what it started: so must the proxy's stream to it.
    async with proxied() as (upstream, target, _senders), _channel(target) as ch:
        call = ch.unary_unary(SERVICE + "Nap")(b"0.8", timeout=10)
        await asyncio.wait_for(upstream.napping.wait(), 5)
        assert upstream.server is not None
        stopping = asyncio.ensure_future(upstream.server.stop(grace=5))
        assert await call == b"rested"
        await stopping


async def test_a_call_in_flight_finishes_when_the_listener_stops() -> None:
    senders: list[Sender] = []
    async with grpc_upstream() as (upstream, at):
        started = await start_listener(Listener("t", Endpoint("127.0.0.1", 0), None, fast=forwarder(at, senders)))
        async with _channel(f"127.0.0.1:{started.address.port}") as ch:
            call = ch.unary_unary(SERVICE + "Nap")(b"0.8", timeout=10)
            await asyncio.wait_for(upstream.napping.wait(), 5)
            closing = asyncio.ensure_future(started.close(5.0))  # GOAWAY, answer what is in flight, close
            assert await call == b"rested"
            await asyncio.wait_for(closing, 5)


async def test_answered_calls_leave_their_connection_idle_and_a_stop_does_not_wait_for_them() -> None:
    # A stream is forgotten once its answer ended and its handler returned: the connection is idle again
    # (what the listener's sweeper and its drain look at), so a stop right after the calls closes at once.
    async with grpc_upstream() as (_, at):
        running = await listen_http(forwarder(at, []), "127.0.0.1", 0)
        try:
            async with _channel(f"127.0.0.1:{running.address[1]}") as ch:
                for _ in range(3):
                    assert await ch.unary_unary(SERVICE + "Unary")(b"abc", timeout=5) == b"cba"
                h2_conns = [c for c in running.protocol.connections if isinstance(c, H2ServerConnection)]
                assert len(h2_conns) == 1
                for _ in range(100):  # the answer may reach the client a step before its handler returns
                    if h2_conns[0].idle:
                        break
                    await asyncio.sleep(0.01)
                assert h2_conns[0].idle and not h2_conns[0].streams
                begun = time.monotonic()
                await running.close(5.0)
                assert time.monotonic() - begun < 1.0
        finally:
            await running.close(0.1)


async def test_streams_over_the_listeners_request_cap_are_shed_fast() -> None:
    # The listener's overload limits count HTTP/2 streams as HTTP/1.1 requests: over the cap, a fast 503
    # (a gRPC client reads UNAVAILABLE, and retries elsewhere) without reaching the handler.
    shed: list[str] = []
    async with grpc_upstream() as (upstream, at):
        started = await start_listener(Listener("t", Endpoint("127.0.0.1", 0), None, fast=forwarder(at, [])),
                                       limits=Limits(max_requests=1, on_shed=shed.append))
        try:
            async with _channel(f"127.0.0.1:{started.address.port}") as ch:
                nap = ch.unary_unary(SERVICE + "Nap")
                first = asyncio.ensure_future(nap(b"0.5", timeout=10))
                await asyncio.wait_for(upstream.napping.wait(), 5)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await nap(b"0", timeout=10)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
                assert await first == b"rested"
                assert shed == ["requests"]
        finally:
            await started.close(1.0)


async def test_the_client_times_out_a_silent_upstream_and_resets_its_stream() -> None:
    async with grpc_upstream() as (upstream, at), H2Upstreams() as client:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await client.send("POST", at, SERVICE + "Slow", CIMultiDict({
                "content-type": "application/grpc", "te": "trailers"}), OneMessage(),
                ProxySpec(connect_timeout=1.0, request_timeout=0.3))
        assert 0.25 < time.monotonic() - started < 1.5
        await asyncio.wait_for(upstream.cancelled.wait(), 3)


class OneMessage:
    """A request body (`BodySource`): one empty gRPC message (flag byte and a zero length)."""

    present = True
    length = 5
    started = False

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        yield b"\x00\x00\x00\x00\x00"


async def test_nothing_listening_is_connect_failed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with H2Upstreams() as client:
            with pytest.raises(ConnectFailed):
                await client.send("GET", Endpoint("127.0.0.1", port), "/", CIMultiDict(), None, SPEC)


def _h2_request(conn: h2.connection.H2Connection, authority: str) -> bytes:
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":authority", authority), (":path", "/version")],
                      end_stream=True)
    return conn.data_to_send()


async def _exchange_raw(port: int, send: Callable[[socket.socket, bytes], None], data: bytes,
                        conn: h2.connection.H2Connection) -> list[h2.events.Event]:
    def run() -> list[h2.events.Event]:
        events: list[h2.events.Event] = []
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            send(sock, data)
            while not any(isinstance(e, h2.events.StreamEnded | h2.events.ConnectionTerminated) for e in events):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                events.extend(conn.receive_data(chunk))
                sock.sendall(conn.data_to_send())
        return events

    return await asyncio.to_thread(run)


async def test_a_preface_cut_into_pieces_is_still_http2() -> None:
    async with serve_handler(forwarder(Endpoint("127.0.0.1", 9), [])) as port:
        conn = h2.connection.H2Connection()

        def trickle(sock: socket.socket, data: bytes) -> None:
            for i in range(30):  # the 24-byte preface and the start of SETTINGS, a byte at a time
                sock.sendall(data[i:i + 1])
                time.sleep(0.005)
            sock.sendall(data[30:])

        events = await _exchange_raw(port, trickle, _h2_request(conn, "x.test"), conn)
        data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        assert json.loads(data) == {"version": "2", "host": "x.test"}


async def test_a_request_ended_by_trailers_after_a_pause_reaches_the_upstream_whole() -> None:
    # A client may end its request with trailers (a HEADERS frame) instead of a DATA frame; by then the proxy
    # sent the message on and waits for more of the body, and must learn from the trailers that it ended.
    async with proxied() as (_, target, _senders):
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "t"),
                              (":path", SERVICE + "ClientStream"), ("content-type", "application/grpc"),
                              ("te", "trailers")])
        conn.send_data(1, b"\x00\x00\x00\x00\x03abc")

        def then_trailers(sock: socket.socket, data: bytes) -> None:
            sock.sendall(data)
            time.sleep(0.3)  # the message went on upstream; the proxy waits for the rest of the body
            conn.send_headers(1, [("x-end", "1")], end_stream=True)
            sock.sendall(conn.data_to_send())

        events = await _exchange_raw(int(target.rsplit(":", 1)[1]), then_trailers, conn.data_to_send(), conn)
        message = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        trailers = [dict(e.headers) for e in events if isinstance(e, h2.events.TrailersReceived)]
        assert json.loads(message[5:]) == [3] and trailers and trailers[0][b"grpc-status"] == b"0", events


async def test_a_broken_preface_closes_the_connection_and_the_listener_serves_on() -> None:
    async with serve_handler(forwarder(Endpoint("127.0.0.1", 9), [])) as port:
        def broken() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(PREFACE + b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0: forbidden
                out = b""
                while chunk := sock.recv(65536):
                    out += chunk
                return out

        answer = await asyncio.to_thread(broken)  # read to the end: the listener closed the connection
        reader = h2.connection.H2Connection()
        reader.initiate_connection()
        ended = [e for e in reader.receive_data(answer) if isinstance(e, h2.events.ConnectionTerminated)]
        assert ended and ended[0].error_code != 0, f"no GOAWAY with an error: {answer!r}"
        conn = h2.connection.H2Connection()
        events = await _exchange_raw(port, lambda s, d: s.sendall(d), _h2_request(conn, "ok.test"), conn)
        data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        assert json.loads(data)["version"] == "2"
