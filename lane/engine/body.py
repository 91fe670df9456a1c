"""The request body as the upstream client sees it: a stream that may be read at most once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

__all__ = ["BodySource", "NoBody"]


class BodySource(Protocol):
    """A request body being received from the client.

    ``present``: the request has a body at all (Content-Length > 0 or chunked). ``length``: its
    size when the client declared one (Content-Length), None for chunked. ``started``: some of it
    was consumed, so the request can no longer be sent elsewhere (retries and fallback check it).
    ``chunks()`` yields it in bounded pieces as it arrives; it may be iterated only once.
    """

    @property
    def present(self) -> bool: ...

    @property
    def length(self) -> int | None: ...

    @property
    def started(self) -> bool: ...

    def chunks(self) -> AsyncIterator[bytes]: ...


class NoBody:
    """The body of a request that has none."""

    present = False
    length: int | None = 0
    started = False

    async def chunks(self) -> AsyncIterator[bytes]:
        return
        yield b""  # pragma: no cover - makes this an async generator
