"""The HTTP/1.1 engine's listener: the protocol factory of one listening socket.

`H1Server` owns its connections (`lane.engine.connection.H1Connection`, and the HTTP/2 ones a
connection hands over when it starts with the HTTP/2 preface: `lane.engine.h2_connection`), the
handlers they hand requests to, the listener's `Limits` (connections, concurrent requests, buffered bytes per connection,
memory; `lane.engine.limits`) and what it sheds when over them. Idle keep-alive connections are
closed after `keepalive_seconds`, a head that takes longer than that to arrive too.

What is not a plain request-answer exchange is handed, with the bytes read so far, to the
listener's aiohttp server on the same transport (`Fallback`): WebSocket and other upgrades,
``CONNECT``. aiohttp is imported only then, so a proxy that never sees one never loads it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from multidict import CIMultiDict

from lane.engine.connection import H1Connection
from lane.engine.exchange import Handler
from lane.engine.head import serialize_head
from lane.engine.limits import Limits, ShedReason, resident_bytes, trim_heap

__all__ = ["Fallback", "H1Server", "Served"]

log = logging.getLogger(__name__)

# At the connection cap: the longest-waiting of the first waiting connections found is closed; the
# search is bounded, so a flood against a listener whose connections are all busy costs little per accept.
_EVICT_SAMPLE: Final = 64
_EVICT_SCAN: Final = 1024
_MEMORY_EVERY: Final = 1.0  # seconds between two reads of the resident size, when a watermark is set

# Builds (once, lazily) the aiohttp protocol factory upgrades are handed to.
Fallback = Callable[[], Awaitable[Callable[[], asyncio.Protocol]]]


class Served(Protocol):
    """A connection as its listener sees it, HTTP/1.1 (`H1Connection`) or HTTP/2 (`H2ServerConnection`)."""

    gone: bool
    closing: bool
    in_head: bool
    idle_since: float

    @property
    def idle(self) -> bool: ...
    @property
    def waiting(self) -> bool: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class H1Server:
    """A listener's protocol factory: its connections, its handler, and what upgrades go to."""

    def __init__(self, handler: Handler, fallback: Fallback | None = None, *, keepalive_seconds: float = 75.0,
                 limits: Limits | None = None, h2: Callable[[], Handler] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.handler = handler
        self._h2 = h2
        self._h2_handler: Handler | None = None
        self.connections: set[Served] = set()
        self.active = 0  # requests being answered
        self.over_memory = False
        self._fallback = fallback
        self._fallback_factory: Callable[[], asyncio.Protocol] | None = None
        self._keepalive = keepalive_seconds
        self._sweeper = self.loop.call_later(min(5.0, keepalive_seconds), self._sweep)
        self._memory_timer: asyncio.TimerHandle | None = None
        self.set_limits(limits or Limits())

    def __call__(self) -> H1Connection:
        return H1Connection(self)

    def set_limits(self, limits: Limits) -> None:
        """Apply *limits* from now on (a config reload re-tunes a running listener; nothing is cut)."""
        self.limits = limits
        self.max_connections = limits.max_connections
        self.max_requests = limits.max_requests
        self.buffer_bytes = limits.buffer_bytes
        self.retry_after = str(limits.retry_after)
        if self._memory_timer is not None:
            self._memory_timer.cancel()
            self._memory_timer = None
        self.over_memory = False
        if limits.memory_bytes > 0:
            self._watch_memory()

    def _watch_memory(self) -> None:
        watermark = self.limits.memory_bytes
        rss = resident_bytes()
        if rss > watermark and not self.over_memory:
            trim_heap()
            rss = resident_bytes()
            self.over_memory = rss > watermark
            if self.over_memory:
                log.warning("memory use %d MiB is over the watermark of %d MiB: new requests get 503 until it is "
                            "back under 90%%", rss >> 20, watermark >> 20)
        elif self.over_memory and rss < watermark * 0.9:
            self.over_memory = False
            log.warning("memory use %d MiB is back under the watermark: serving again", rss >> 20)
        elif self.over_memory:
            trim_heap()
        self._memory_timer = self.loop.call_later(_MEMORY_EVERY, self._watch_memory)

    def admit(self) -> bool:
        """Room for one more connection: at the cap, the longest-waiting one not being answered makes room."""
        if len(self.connections) >= self.max_connections and not self._evict_one():
            self.count_shed("connections")
            return False
        on_connections = self.limits.on_connections
        if on_connections is not None:
            on_connections(1)
        return True

    def closed_one(self) -> None:
        on_connections = self.limits.on_connections
        if on_connections is not None:
            on_connections(-1)

    def _evict_one(self) -> bool:
        oldest: Served | None = None
        for looked, conn in enumerate(self.connections):
            if looked >= _EVICT_SCAN or (looked >= _EVICT_SAMPLE and oldest is not None):
                break
            if conn.waiting and not conn.gone and (oldest is None or conn.idle_since < oldest.idle_since):
                oldest = conn
        if oldest is None:
            return False
        self.connections.discard(oldest)  # its slot is the new one's now; its close follows
        oldest.close()
        self.count_shed("evicted")
        return True

    def count_shed(self, reason: ShedReason) -> None:
        on_shed = self.limits.on_shed
        if on_shed is not None:
            on_shed(reason)

    def _sweep(self) -> None:
        """Close connections idle (or stuck in a head) longer than the keep-alive timeout; one timer for all."""
        deadline = self.loop.time() - self._keepalive
        for conn in [c for c in self.connections if c.idle_since < deadline and (c.idle or c.in_head)]:
            conn.close()
        self._sweeper = self.loop.call_later(min(5.0, self._keepalive), self._sweep)

    def h2_handler(self) -> Handler:
        """The handler of HTTP/2 streams, built at the first HTTP/2 connection (h2 is loaded only then)."""
        if self._h2_handler is None:
            self._h2_handler = self._h2() if self._h2 is not None else self.handler
        return self._h2_handler

    def hand_to_h2(self, conn: H1Connection, transport: asyncio.Transport, data: bytes) -> None:
        """*conn* began with the HTTP/2 preface: an `H2ServerConnection` takes the socket over, with *data*."""
        from lane.engine.h2_connection import H2ServerConnection

        self.connections.discard(conn)
        h2 = H2ServerConnection(self)
        self.connections.add(h2)
        transport.set_protocol(h2)
        h2.connection_made(transport)
        h2.data_received(data)

    async def hand_over(self, transport: asyncio.Transport, data: bytes, paused: bool) -> None:
        if self._fallback is None:
            transport.write(serialize_head(501, "Not Implemented", CIMultiDict(), "Content-Length: 0\r\nConnection: "
                                           "close\r\n"))
            transport.close()
            return
        if self._fallback_factory is None:
            self._fallback_factory = await self._fallback()
        if transport.is_closing():
            return
        protocol = self._fallback_factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(data)
        if paused:
            transport.resume_reading()

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections now, let the others finish their answer (up to *timeout*), then cut them."""
        self._sweeper.cancel()
        if self._memory_timer is not None:
            self._memory_timer.cancel()
        for conn in list(self.connections):
            conn.closing = True
            if conn.idle:
                conn.close()
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
