"""One port for a demo app's HTTP/1.1 and its gRPC, as a pod's one port is (Go's ``cmux`` shape).

A sidecar sends each request to its app the way it came (`lane.engine`: HTTP/2 in, HTTP/2 out) and
to one address (``--app``), so an app that serves both must tell them apart on that port. The first
bytes decide: the HTTP/2 preface (``PRI * HTTP/2.0``, h2c with prior knowledge, what gRPC sends) is
spliced to the app's grpcio server on a Unix socket of its own (no second TCP port to collide with the
ports the demo planned); anything else is handed, socket and
bytes already read, to the aiohttp server's own protocol, so HTTP/1.1 is served exactly as before
(same transport, same ``sockname``, no second hop).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, cast

__all__ = ["H2_PREFACE", "FrontProtocol"]

log = logging.getLogger(__name__)

H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _Pipe(asyncio.Protocol):
    """One direction of a splice: what arrives here is written to *peer*; backpressure pauses the other side."""

    def __init__(self, peer: asyncio.Transport) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self.peer.write(data)

    def eof_received(self) -> bool:
        if self.peer.can_write_eof():
            self.peer.write_eof()
        return True  # keep our write side open until the peer closes too

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer.close()

    def pause_writing(self) -> None:
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.peer.resume_reading()


class FrontProtocol(asyncio.Protocol):
    """The listening port's protocol until the first bytes say which server gets the connection."""

    def __init__(self, http_factory: Callable[[], asyncio.Protocol], grpc_socket: str) -> None:
        self.http_factory = http_factory
        self.grpc_socket = grpc_socket
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        seen = min(len(self.buffer), len(H2_PREFACE))
        if self.buffer[:seen] != H2_PREFACE[:seen]:
            self._to_http()
        elif len(self.buffer) >= len(H2_PREFACE):
            assert self.transport is not None
            self.transport.pause_reading()
            asyncio.get_running_loop().create_task(self._to_grpc())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # closed before it was handed on (or while the splice was connecting)

    def _to_http(self) -> None:
        assert self.transport is not None
        protocol = self.http_factory()
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(self.buffer)

    async def _to_grpc(self) -> None:
        client = self.transport
        if client is None:
            return
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_unix_connection(lambda: _Pipe(client), self.grpc_socket)
        except OSError as exc:
            log.warning("the app's gRPC server on %s did not answer: %s", self.grpc_socket, exc)
            client.close()
            return
        if self.transport is None:  # the client left while we connected
            upstream.close()
            return
        client.set_protocol(_Pipe(upstream))
        upstream.write(self.buffer)
        client.resume_reading()
