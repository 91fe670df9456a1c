"""A fast-core listener: its socket, its connections, its upstream pools, and a clean stop.

`FastPath` is what a proxy hands the server: given the listener's keep-alive pools, the handler
of its requests. What the fast core does not handle itself (upgrades) goes to `AiohttpFallback`,
the listener's aiohttp app, built and started only when the first such request arrives.
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

    from lane.engine.upstream import Upstreams

__all__ = ["AiohttpFallback", "FastPath", "RunningListener", "listen_h1"]

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


@dataclass(slots=True)
class RunningListener:
    server: asyncio.Server
    protocol: H1Server
    upstreams: Upstreams

    @property
    def address(self) -> tuple[str, int]:
        sockname = self.server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def close(self, drain_seconds: float) -> None:
        """Stop accepting, let answers in progress finish (bounded), then close the pools."""
        self.server.close()
        await self.protocol.shutdown(drain_seconds)
        await self.upstreams.close()


async def listen_h1(fast: FastPath, host: str, port: int, *, fallback: Fallback | None = None,
                    reuse_port: bool | None = None, backlog: int = 1024, limits: Limits | None = None) -> RunningListener:
    from lane.engine.upstream import Upstreams

    upstreams = Upstreams()
    protocol = H1Server(fast(upstreams), fallback, limits=limits)
    try:
        server = await asyncio.get_running_loop().create_server(protocol, host, port, reuse_port=reuse_port,
                                                                backlog=backlog)
    except BaseException:
        await protocol.shutdown(0)
        await upstreams.close()
        raise
    return RunningListener(server, protocol, upstreams)
