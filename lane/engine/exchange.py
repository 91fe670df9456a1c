"""The protocol-neutral interface between a codec and the request logic above it.

A codec turns bytes into an `Exchange` handed to a `Handler`, and sends requests upstream through a
`Sender` that returns an `Answer`: HTTP/1.1 (`lane.engine.connection`, `lane.engine.upstream`) and
HTTP/2 (`lane.engine.h2_connection`, `lane.engine.h2_upstream`). The gateway's and the sidecar's
request logic (`lane.dataplane`, `lane.gateway`, `lane.sidecar`) is written once against these
types and never sees a codec, as Envoy's HTTP filters never see the codec.

Trailers (fields after the body: gRPC's ``grpc-status``) are `Answer.trailers` and
`Exchange.end(trailers)`; a codec that cannot carry them (HTTP/1.1 here) drops them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

from multidict import CIMultiDict

from lane.engine.failures import Address

__all__ = ["Answer", "BodySource", "ClientGone", "Exchange", "Handler", "NoBody", "Sender", "Timeouts"]


_C = TypeVar("_C")

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # the pure-Python install: the decorator only tells mypyc something (`make compiled`)
    def mypyc_attr(*attrs: str, **kwattrs: object) -> Callable[[_C], _C]:
        def keep(cls: _C) -> _C:
            return cls
        return keep


# Not a mypyc native class: those cannot derive from ConnectionError (OSError's layout); the rest of
# this module compiles, and `except ClientGone` / `except ConnectionError` behave the same either way.
@mypyc_attr(native_class=False)
class ClientGone(ConnectionError):
    """The client closed the connection (mid-body, or before the answer could be written)."""


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


class Exchange(Protocol):
    """One request as a codec hands it over, and the ways to answer it (exactly once).

    ``target`` is as sent (origin form, or absolute form for a forward proxy); ``version`` is
    ``"1.1"``, ``"1.0"`` or ``"2"``; ``status`` is the answer's once it started. `respond` writes a
    complete answer; `start`/`write`/`end` a streamed one (*length* the body's size when known, `end`
    with the trailers when there are); `abort` cuts the exchange so the client sees it broke.
    """

    method: str
    target: str
    version: str
    headers: CIMultiDict[str]
    status: int

    @property
    def scheme(self) -> str: ...
    @property
    def body(self) -> BodySource: ...
    @property
    def remote(self) -> str | None: ...
    @property
    def sockname(self) -> tuple[str, int] | None: ...
    @property
    def path(self) -> str: ...
    @property
    def query_string(self) -> str: ...
    @property
    def answered(self) -> bool: ...

    def close_after(self) -> None: ...
    def respond(self, status: int, headers: CIMultiDict[str], body: bytes = b"", reason: str | None = None) -> None: ...
    def start(self, status: int, reason: str, headers: CIMultiDict[str], length: int | None, first: bytes,
              end: bool) -> None: ...
    async def write(self, chunk: bytes) -> None: ...
    def end(self, trailers: CIMultiDict[str] | None = None) -> None: ...
    def abort(self) -> None: ...


Handler = Callable[[Exchange], Awaitable[None]]


class Answer(Protocol):
    """An upstream's answer whose head arrived; the body follows, then its trailers (None: none).

    End it with `release` or `close`.
    """

    status: int
    reason: str
    headers: CIMultiDict[str]
    length: int | None

    @property
    def at_eof(self) -> bool: ...
    @property
    def trailers(self) -> CIMultiDict[str] | None: ...

    def read_nowait(self) -> bytes: ...
    def chunks(self) -> AsyncIterator[bytes]: ...
    def release(self) -> None: ...
    def close(self) -> None: ...


class Timeouts(Protocol):
    """The bounds of one send (the config's `ProxySpec` is one): to connect, and on silence."""

    @property
    def connect_timeout(self) -> float: ...
    @property
    def request_timeout(self) -> float: ...


class Sender(Protocol):
    """Sends a request upstream and returns the answer once its head arrived.

    `lane.engine.upstream.Upstreams` (HTTP/1.1) and `lane.engine.h2_upstream.H2Upstreams` (HTTP/2).
    """

    async def send(self, method: str, endpoint: Address, target: str, headers: CIMultiDict[str],
                   body: BodySource | None, spec: Timeouts, timeout: float | None = None) -> Answer: ...
