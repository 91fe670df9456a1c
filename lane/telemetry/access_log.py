"""``--access-log``: one line per request a data listener served, written by the one core.

Off by default: a formatted line per request is a cost every hop would pay. When asked for, each
answered request logs to ``lane.access`` at INFO (shown whatever ``--log-level`` says: asking for
it is explicit) as ``PEER "METHOD TARGET HTTP/VERSION" STATUS MILLISECONDS LISTENER``; a request
whose client went away before any answer logs status ``-``.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from lane.engine.exchange import Exchange, Handler, Sender
    from lane.engine.listen import FastPath

__all__ = ["ACCESS_LOG", "enable", "logged"]

ACCESS_LOG: Final = logging.getLogger("lane.access")


def enable() -> None:
    """Make the access log show at INFO even when ``--log-level`` is higher."""
    if ACCESS_LOG.getEffectiveLevel() > logging.INFO:
        ACCESS_LOG.setLevel(logging.INFO)


def logged(fast: FastPath, listener: str) -> FastPath:
    """*fast* with a line logged after each request it served."""

    def with_pools(upstreams: Sender) -> Handler:
        handler = fast(upstreams)

        async def handle(request: Exchange) -> None:
            started = perf_counter()
            try:
                await handler(request)
            finally:
                ACCESS_LOG.info('%s "%s %s HTTP/%s" %s %.1fms %s', request.remote or "-", request.method,
                                request.target, request.version, request.status or "-",
                                (perf_counter() - started) * 1000, listener)

        return handle

    return with_pools
