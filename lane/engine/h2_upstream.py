"""The HTTP/2 engine's client side: shared connections per upstream address and `H2Upstreams.send`.

A request that came over HTTP/2 (gRPC) leaves over HTTP/2 (h2c with prior knowledge), through this
`lane.engine.exchange.Sender`; the request logic cannot tell it from the HTTP/1.1 one
(`lane.engine.upstream.Upstreams`). Unlike HTTP/1.1, one connection carries many requests at once:
a new connection is opened only when every open one to the address is at the upstream's
``MAX_CONCURRENT_STREAMS`` or going away, and concurrent requests wait for one connect instead of
each opening its own. A connection with no stream for ``idle_seconds`` is closed.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from h2.exceptions import H2Error
from multidict import CIMultiDict

from lane.engine.answer import UpstreamAnswer
from lane.engine.exchange import BodySource, Timeouts
from lane.engine.failures import Address, ConnectFailed, UpstreamBroken
from lane.engine.h2_upstream_connection import H2ClientConnection

__all__ = ["H2Upstreams"]


class H2Upstreams:
    """HTTP/2 connections, shared by concurrent requests, per upstream endpoint, for one event loop.

    Use as ``async with H2Upstreams() as upstreams:`` (or call `close`): closing drops every
    connection, and a later `send` raises `ConnectFailed`.
    """

    def __init__(self, *, idle_seconds: float = 15.0) -> None:
        if not idle_seconds > 0:
            raise ValueError(f"idle_seconds must be > 0, not {idle_seconds}")
        self.idle_seconds = idle_seconds
        self.closed = False
        self._pools: dict[Address, list[H2ClientConnection]] = {}
        self._connecting: dict[Address, asyncio.Future[H2ClientConnection]] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connections(self) -> int:
        """Open connections."""
        return sum(len(pool) for pool in self._pools.values())

    async def send(
        self,
        method: str,
        endpoint: Address,
        target: str,
        headers: CIMultiDict[str],
        body: BodySource | None,
        spec: Timeouts,
        timeout: float | None = None,
    ) -> UpstreamAnswer:
        """Send the request on a stream to *endpoint*; return the answer once its head arrived.

        *timeout* bounds silence (default ``spec.request_timeout``). Raises `ConnectFailed` (nothing
        was processed), `UpstreamTimeout` or `UpstreamBroken`; an error of the body's source before
        the head arrived is raised as it is (the client's fault). Cancelling the call resets the stream.
        """
        if timeout is None:
            timeout = spec.request_timeout
        if body is not None and not body.present:
            body = None
        for attempt in range(2):
            conn = await self._connection(endpoint, spec)
            reused = conn.served > 0
            try:
                stream = conn.open(method, target, headers, body, timeout)
            except H2Error:  # the connection is going away: h2 will not open a stream on it
                conn.close_now("the connection is going away")
                continue
            try:
                await stream.head()
            except UpstreamBroken:
                # The stale-connection race: the upstream closed a connection we reused as we sent on it.
                if attempt or not reused or stream.received or (body is not None and body.started) or not conn.gone:
                    raise
                continue
            return UpstreamAnswer(stream)
        raise ConnectFailed(endpoint, "no HTTP/2 connection could carry the request")

    async def _connection(self, endpoint: Address, spec: Timeouts) -> H2ClientConnection:
        while True:
            if self.closed:
                raise ConnectFailed(endpoint, "the upstream client is closed")
            for conn in self._pools.get(endpoint, ()):
                if conn.usable:
                    return conn
            pending = self._connecting.get(endpoint)
            if pending is None:
                pending = self._connecting[endpoint] = asyncio.get_running_loop().create_future()
                try:
                    conn = await self._connect(endpoint, spec)
                except BaseException as exc:
                    if not pending.done():
                        pending.set_exception(exc if isinstance(exc, Exception) else ConnectFailed(
                            endpoint, "the connect was cancelled"))
                        pending.exception()  # retrieved: a connect nobody else waited for is not "never retrieved"
                    raise
                finally:
                    del self._connecting[endpoint]
                if not pending.done():
                    pending.set_result(conn)
                return conn
            conn = await asyncio.shield(pending)
            if conn.usable:
                return conn

    async def _connect(self, endpoint: Address, spec: Timeouts) -> H2ClientConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(spec.connect_timeout):
                _, conn = await loop.create_connection(lambda: H2ClientConnection(self, endpoint, loop),
                                                       endpoint.host, endpoint.port)
        except TimeoutError:
            raise ConnectFailed(endpoint, f"connect timed out after {spec.connect_timeout:g}s") from None
        except OSError as exc:
            raise ConnectFailed(endpoint, f"connect failed: {exc.strerror or exc}") from None
        if self.closed:
            conn.abort()
            raise ConnectFailed(endpoint, "the upstream client is closed")
        self._pools.setdefault(endpoint, []).append(conn)
        return conn

    def forget(self, conn: H2ClientConnection) -> None:
        pool = self._pools.get(conn.endpoint)
        if pool is not None and conn in pool:
            pool.remove(conn)
            if not pool:
                del self._pools[conn.endpoint]

    async def close(self) -> None:
        """Close every connection, failing what is in flight, and wait (briefly) until their sockets are closed."""
        self.closed = True
        loop = asyncio.get_running_loop()
        lost: list[asyncio.Future[None]] = []
        for pool in list(self._pools.values()):
            for conn in list(pool):
                if conn.transport is not None:
                    conn.lost = loop.create_future()
                    lost.append(conn.lost)
                conn.close_now("the upstream client was closed")
        self._pools.clear()
        if lost:
            await asyncio.wait(lost, timeout=5.0)

