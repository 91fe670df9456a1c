"""The HTTP/1.1 engine's client side: keep-alive pools per upstream address and `Upstreams.send`.

Why not aiohttp's ``ClientSession``: on a proxy hop most of its cost is generality (URL objects,
request/response objects, a timer context per request, a connector lookup). Here one
`lane.engine.upstream_connection.UpstreamConnection` per TCP connection keeps one llhttp parser for
all its answers, a pool per address hands out idle connections last-in-first-out (the warmest socket),
and the request head is serialized in one join. Failures are `lane.engine.failures`'.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Final, Self

from multidict import CIMultiDict

from lane.engine.answer import UpstreamAnswer
from lane.engine.exchange import BodySource, Timeouts
from lane.engine.failures import Address, ConnectFailed, UpstreamBroken
from lane.engine.upstream_connection import BUSY, Pool, UpstreamConnection

__all__ = ["UpstreamAnswer", "Upstreams"]

_FRAMING: Final = ("Content-Length", "Transfer-Encoding")
_CHUNKED: Final = "Transfer-Encoding: chunked\r\n"


class Upstreams:
    """Keep-alive connection pools, one per upstream endpoint, for one event loop.

    Use as ``async with Upstreams() as upstreams:`` (or call `close`): closing drops idle and busy
    connections alike, and a later `send` raises `ConnectFailed`.
    """

    def __init__(self, *, max_idle_per_endpoint: int = 256, idle_seconds: float = 15.0) -> None:
        if max_idle_per_endpoint < 0:
            raise ValueError(f"max_idle_per_endpoint must be >= 0, not {max_idle_per_endpoint}")
        if not idle_seconds > 0:
            raise ValueError(f"idle_seconds must be > 0, not {idle_seconds}")
        self.max_idle = max_idle_per_endpoint
        self.idle_seconds = idle_seconds
        self.closed = False
        self._pools: dict[Address, Pool] = {}
        self._connections: set[UpstreamConnection] = set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connections(self) -> int:
        """Open connections, idle and busy."""
        return len(self._connections)

    def idle(self, endpoint: Address) -> int:
        """Idle pooled connections to *endpoint*."""
        pool = self._pools.get(endpoint)
        return 0 if pool is None else len(pool.idle)

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
        """Send the request to *endpoint*; return the answer once its head arrived.

        *timeout* bounds silence (default ``spec.request_timeout``; a hop passes what is left of
        the request's budget, `lane.core.deadline`). Raises `ConnectFailed` (nothing was sent), `UpstreamTimeout` or `UpstreamBroken`; an error
        of the body's source before the head arrived is raised as it is (the client's fault).
        """
        if self.closed:
            raise ConnectFailed(endpoint, "the upstream client is closed")
        if timeout is None:
            timeout = spec.request_timeout
        if body is not None and not body.present:
            body = None
        pool = self._pools.get(endpoint)
        if pool is None:
            pool = self._pools[endpoint] = Pool(endpoint)
        head = _request_head(method, pool.host_line, target, headers, body)
        head_only = method == "HEAD"
        idle = pool.idle
        if idle:
            conn = idle.pop()
            conn.state = BUSY
        else:
            conn = await self._connect(pool, spec)
        try:
            return await conn.exchange(head, head_only, body, timeout)
        except UpstreamBroken:
            # The stale keep-alive race: the upstream closed an idle connection as we reused it.
            if self.closed or not conn.reused or conn.got_bytes or (body is not None and body.started):
                raise
        conn = await self._connect(pool, spec)
        return await conn.exchange(head, head_only, body, timeout)

    async def _connect(self, pool: Pool, spec: Timeouts) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        endpoint = pool.endpoint
        try:
            async with asyncio.timeout(spec.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self, pool, loop), endpoint.host, endpoint.port)
        except TimeoutError:
            raise ConnectFailed(endpoint, f"connect timed out after {spec.connect_timeout:g}s") from None
        except OSError as exc:
            raise ConnectFailed(endpoint, f"connect failed: {exc.strerror or exc}") from None
        if self.closed:
            conn.close(abort=True)
            raise ConnectFailed(endpoint, "the upstream client is closed")
        self._connections.add(conn)
        return conn

    def forget(self, conn: UpstreamConnection, was_idle: bool) -> None:
        self._connections.discard(conn)
        if was_idle:
            try:
                conn.pool.idle.remove(conn)
            except ValueError:
                pass

    async def close(self) -> None:
        """Close every connection, idle or busy, and wait (briefly) until their sockets are closed."""
        self.closed = True
        loop = asyncio.get_running_loop()
        lost: list[asyncio.Future[None]] = []
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.lost = loop.create_future()
                lost.append(conn.lost)
            if conn.state == BUSY:
                conn.fail(UpstreamBroken(conn.pool.endpoint, "the upstream client was closed"))
            else:
                conn.close(abort=False)
        self._connections.clear()
        self._pools.clear()
        if lost:
            await asyncio.wait(lost, timeout=5.0)


def _request_head(
    method: str, host_line: str, target: str, headers: CIMultiDict[str], body: BodySource | None
) -> bytes:
    """Request line, headers as given (Host added if missing), and the framing of *body*."""
    framing = ""
    if "Content-Length" in headers or "Transfer-Encoding" in headers:
        if body is None and headers.get("Content-Length") == "0" and "Transfer-Encoding" not in headers:
            framing = "Content-Length: 0\r\n"  # an explicit empty body, as the caller said
        headers = headers.copy()
        for name in _FRAMING:
            headers.popall(name, None)
    if body is not None:
        framing = _CHUNKED if body.length is None else f"Content-Length: {body.length}\r\n"
    host = "" if "Host" in headers else host_line
    lines = 2 + len(headers) + (host != "") + (framing != "")
    fields = "\r\n".join(map(": ".join, headers.items()))
    if fields:
        fields += "\r\n"
    text = f"{method} {target} HTTP/1.1\r\n{host}{fields}{framing}\r\n"
    if text.count("\n") != lines or text.count("\r") != lines:
        raise ValueError(f"CR or LF in the method, target or a header of a request to send: {text[:200]!r}")
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise ValueError(f"a request head that cannot be encoded: {exc}") from None
