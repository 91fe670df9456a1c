"""An upstream's answer as the engine hands it to the caller: status, head, the body as it arrives, trailers.

It reads its body through `AnswerSource` (the HTTP/1.1 connection it came on,
`lane.engine.upstream_connection`, or the HTTP/2 stream, `lane.engine.h2_upstream_connection`), so
this module depends on neither state machine and both codecs hand out the same answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from multidict import CIMultiDict

__all__ = ["AnswerSource", "UpstreamAnswer"]


class AnswerSource(Protocol):
    """What an answer needs of the connection its head arrived on."""

    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def headers(self) -> CIMultiDict[str] | None: ...
    @property
    def length(self) -> int | None: ...
    @property
    def complete(self) -> bool: ...
    @property
    def buffer(self) -> list[bytes]: ...
    @property
    def error(self) -> BaseException | None: ...
    @property
    def trailers(self) -> CIMultiDict[str] | None: ...

    def take(self) -> bytes: ...
    async def wait_body(self) -> None: ...
    def finish(self, reuse: bool) -> None: ...


class UpstreamAnswer:
    """An upstream's answer whose head arrived; the body follows through `read_nowait`/`chunks`.

    ``length`` is the body's Content-Length (0 for HEAD, 1xx, 204 and 304 answers), None when it
    is chunked (decoded here) or delimited by the end of the connection. ``trailers``: the fields
    that followed the body (HTTP/2; gRPC's status), once it was read to the end. The caller must end
    every answer with `release` (body read to the end) or `close`, or its connection stays busy.
    """

    __slots__ = ("_conn", "_eof", "_trailers", "headers", "length", "reason", "status")

    def __init__(self, conn: AnswerSource) -> None:
        self._conn: AnswerSource | None = conn
        self._eof = False
        self._trailers: CIMultiDict[str] | None = None
        self.status = conn.status
        self.reason = conn.reason
        assert conn.headers is not None
        self.headers: CIMultiDict[str] = conn.headers
        self.length = conn.length

    def __repr__(self) -> str:
        return f"<UpstreamAnswer {self.status} {self.reason!r} length={self.length}>"

    def read_nowait(self) -> bytes:
        """The body bytes received and not yet taken (maybe b""); they are consumed."""
        conn = self._conn
        return b"" if conn is None else conn.take()

    @property
    def at_eof(self) -> bool:
        """The whole body was received and taken."""
        conn = self._conn
        return self._eof if conn is None else conn.complete and not conn.buffer

    @property
    def trailers(self) -> CIMultiDict[str] | None:
        conn = self._conn
        return self._trailers if conn is None else conn.trailers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The rest of the body as it arrives; raises `UpstreamTimeout`/`UpstreamBroken` if it stalls or breaks."""
        conn = self._conn
        if conn is None:
            if self._eof:
                return
            raise RuntimeError("the answer was already closed")
        while self._conn is conn:
            if conn.buffer:
                yield conn.take()
            elif conn.complete:
                return
            elif conn.error is not None:
                raise conn.error
            else:
                await conn.wait_body()
        if not self._eof:
            raise RuntimeError("the answer was closed while its body was being read")

    def release(self) -> None:
        """The body was read to the end: the connection goes back to its pool if it can be reused."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._eof = conn.complete and not conn.buffer
            self._trailers = conn.trailers
            conn.finish(True)

    def close(self) -> None:
        """Drop the connection (body not wanted, client gone, ...)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._eof = conn.complete and not conn.buffer
            conn.finish(False)
