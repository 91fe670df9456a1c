"""A fast-core listener: its socket, its connections, its upstream pools, and a clean stop.

`FastPath` is what a proxy hands the server: given a `Sender`, the handler of its requests. A
listener builds it twice: with the HTTP/1.1 keep-alive pools (`lane.engine.upstream.Upstreams`) for
requests that came over HTTP/1.1, and, at the first HTTP/2 connection, with the HTTP/2 client
(`lane.engine.h2_upstream.H2Upstreams`) for requests that came over HTTP/2 -- so a gRPC call leaves
as it came, through the same request logic. What the fast core does not handle itself (upgrades)
goes to `AiohttpFallback`, the listener's aiohttp app, built and started only when the first such
request arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lane.engine.exchange import Handler, Sender
from lane.engine.limits import Limits
from lane.engine.server import Fallback, H1Server

if TYPE_CHECKING:
    from aiohttp import web

    from lane.engine.h2_upstream import H2Upstreams
    from lane.engine.upstream import Upstreams

__all__ = ["AiohttpFallback", "FastPath", "RunningListener", "listen_http"]

FastPath = Callable[[Sender], Handler]


class AiohttpFallback:
    """The listener's aiohttp app as the protocol upgrades are handed to; set up on first use."""

    def __init__(self, build_app: Callable[[], web.Application], **runner_kwargs: Any) -> None:
        self._build = build_app
        self._kwargs = runner_kwargs
        self._runner: web.AppRunner | None = None
        self._setup: asyncio.Task[Callable[[], asyncio.Protocol]] | None = None

    def __call__(self) -> Awaitable[Callable[[], asyncio.Protocol]]:
        if self._setup is None:  # one setup, however many upgrades arrive at once
            self._setup = asyncio.get_running_loop().create_task(self._start())
        return self._setup

    async def _start(self) -> Callable[[], asyncio.Protocol]:
        from aiohttp import web

        runner = web.AppRunner(self._build(), handle_signals=False, **self._kwargs)
        await runner.setup()
        self._runner = runner
        assert runner.server is not None
        return runner.server

    async def cleanup(self) -> None:
        if self._setup is not None and not self._setup.done():
            await asyncio.wait([self._setup])
        if self._runner is not None:
            await self._runner.cleanup()


class _H2Side:
    """The HTTP/2 client and the handler built on it, made at the listener's first HTTP/2 connection."""

    def __init__(self, fast: FastPath) -> None:
        self._fast = fast
        self.upstreams: H2Upstreams | None = None

    def handler(self) -> Handler:
        from lane.engine.h2_upstream import H2Upstreams

        self.upstreams = H2Upstreams()
        return self._fast(self.upstreams)

    async def close(self) -> None:
        if self.upstreams is not None:
            await self.upstreams.close()


@dataclass(slots=True)
class RunningListener:
    server: asyncio.Server
    protocol: H1Server
    upstreams: Upstreams
    h2: _H2Side

    @property
    def address(self) -> tuple[str, int]:
        sockname = self.server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def close(self, drain_seconds: float) -> None:
        """Stop accepting, let answers in progress finish (bounded), then close the pools."""
        self.server.close()
        await self.protocol.shutdown(drain_seconds)
        await self.upstreams.close()
        await self.h2.close()


async def listen_http(fast: FastPath, host: str, port: int, *, fallback: Fallback | None = None,
                      reuse_port: bool | None = None, backlog: int = 1024,
                      limits: Limits | None = None) -> RunningListener:
    """Listen on *host*:*port* for HTTP/1.1 and HTTP/2 with prior knowledge (h2c), told apart by the first bytes."""
    from lane.engine.upstream import Upstreams

    upstreams = Upstreams()
    h2 = _H2Side(fast)
    protocol = H1Server(fast(upstreams), fallback, limits=limits, h2=h2.handler)
    try:
        server = await asyncio.get_running_loop().create_server(protocol, host, port, reuse_port=reuse_port,
                                                                backlog=backlog)
    except BaseException:
        await protocol.shutdown(0)
        await upstreams.close()
        raise
    return RunningListener(server, protocol, upstreams, h2)
