"""A protocol served on a free port of 127.0.0.1 for the length of a block: the fake peers tests talk to."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from lane.core.endpoint import Endpoint

__all__ = ["serving"]


@contextlib.asynccontextmanager
async def serving(factory: Callable[[], asyncio.BaseProtocol]) -> AsyncIterator[Endpoint]:
    """*factory*'s protocol listening on 127.0.0.1 (a free port); the listener closed, and waited for, after."""
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        yield Endpoint("127.0.0.1", server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
