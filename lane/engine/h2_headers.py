"""HTTP/2 header blocks <-> the engine's heads: pseudo-headers, Host, and what HTTP/2 forbids.

The request logic above the codec reads an HTTP/2 request exactly as an HTTP/1.1 one: ``:authority``
becomes the ``Host`` header (first, as a client writes it), ``:path`` the target; on the way out
``Host`` becomes ``:authority`` again. Connection-specific fields are never sent (RFC 9113 §8.2.2).
Every request this client sends says ``te: trailers``, the one value HTTP/2 allows: it passes
trailers on, and a gRPC server refuses a request without it (the request logic removed the caller's
``TE`` with the other hop-by-hop fields, as it does on HTTP/1.1). Text round-trips the way the HTTP/1.1 codec
decodes it (names ASCII, values UTF-8 with surrogate escapes), so bytes a peer sent leave as they came.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from hpack import NeverIndexedHeaderTuple
from multidict import CIMultiDict

__all__ = ["PREFACE", "RequestHead", "request_block", "request_head", "response_block", "response_head",
           "trailer_block", "trailers_of"]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # what an h2c client with prior knowledge sends first
_NOT_SENT: Final = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
                              b"host", b"te", b"http2-settings"})
_SECRET: Final = frozenset({b"authorization", b"proxy-authorization"})
Block = list[tuple[bytes, bytes]]
_REMEMBERED: Final = 256  # fields whose HTTP/2 (or text) form is kept: `_fields`, `_received`
_SKIPPED: Final = (b"", b"")  # what `_field` makes of a field HTTP/2 does not send
_SENT: Final[dict[tuple[str, str], tuple[bytes, bytes]]] = {}
_TEXTS: Final[dict[tuple[bytes, bytes], tuple[str, str]]] = {}  # received fields as text (`_received`)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _fields(headers: CIMultiDict[str], block: Block) -> Block:
    """*headers* appended to *block* as HTTP/2 sends them: names lowercase, values without surrounding whitespace,
    connection-specific fields and pseudo-headers dropped, credentials marked never to be indexed (RFC 7541 §7.1.3).

    This is all of the normalising h2 would otherwise do per header (``normalize_outbound_headers``, off in
    `lane.engine.h2_peer`), done here once. Most fields repeat call after call (a gRPC content type, a user
    agent, the answer's status fields), so what a field becomes is remembered (a bounded dictionary, emptied
    when full, credentials and cookies never kept): a repeated field costs one lookup. The bound is small:
    fields with a new value every call (trace ids) pass through it, and a stable field is back after one miss."""
    known = _SENT
    for field in headers.items():
        sent = known.get(field)
        if sent is None:
            sent = _field(*field)
            if not isinstance(sent, NeverIndexedHeaderTuple) and sent[0] != b"cookie":
                if len(known) >= _REMEMBERED:
                    known.clear()
                known[field] = sent
        if sent is not _SKIPPED:
            block.append(sent)
    return block


def _field(name: str, value: str) -> tuple[bytes, bytes]:
    """One field as HTTP/2 sends it (see `_fields`), `_SKIPPED` when it is not sent."""
    key = name.lower().encode("latin-1")
    if key in _NOT_SENT or key.startswith(b":"):  # pseudo-headers are the codec's, never from a header dict
        return _SKIPPED
    data = value.encode("utf-8", "surrogateescape").strip()
    if key in _SECRET or (key == b"cookie" and len(data) < 20):  # as h2's _secure_headers
        return NeverIndexedHeaderTuple(key, data)
    return (key, data)


class RequestHead:
    """A request's pseudo-headers and its other fields (``Host`` from ``:authority``)."""

    __slots__ = ("headers", "method", "path", "scheme")

    def __init__(self, method: str, scheme: str, path: str, headers: CIMultiDict[str]) -> None:
        self.method = method
        self.scheme = scheme
        self.path = path
        self.headers = headers


def request_head(block: Iterable[tuple[bytes, bytes]]) -> RequestHead:
    """The head of a received request (h2 validated the block: one of each pseudo-header, first)."""
    method = scheme = path = authority = ""
    fields: list[tuple[str, str]] = []
    host_seen = False
    for name, value in block:
        if name[:1] == b":":
            if name == b":method":
                method = value.decode("ascii", "replace")
            elif name == b":path":
                path = _text(value)
            elif name == b":authority":
                authority = _text(value)
            elif name == b":scheme":
                scheme = value.decode("ascii", "replace")
            continue
        host_seen = host_seen or name == b"host"
        fields.append(_TEXTS.get((name, value)) or _received(name, value))  # `_received`'s cache read inline
    if authority and not host_seen:
        fields.insert(0, ("Host", authority))
    return RequestHead(method, scheme or "http", path or "/", CIMultiDict(fields))


def request_block(method: str, authority: str, target: str, headers: CIMultiDict[str]) -> Block:
    """The block to send for a request: ``Host`` (if any) is the ``:authority``, else *authority*."""
    host = headers.get("Host")
    block: Block = [
        (b":method", method.encode("ascii")),
        (b":scheme", b"http"),
        (b":authority", (host if host else authority).encode("utf-8", "surrogateescape")),
        (b":path", (target or "/").encode("utf-8", "surrogateescape")),
        (b"te", b"trailers"),
    ]
    return _fields(headers, block)


def response_block(status: int, headers: CIMultiDict[str]) -> Block:
    return _fields(headers, [(b":status", str(status).encode("ascii"))])


def trailer_block(trailers: CIMultiDict[str]) -> Block:
    return _fields(trailers, [])


def response_head(block: Iterable[tuple[bytes, bytes]]) -> tuple[int, CIMultiDict[str]]:
    """The status and fields of a received answer head."""
    status = 0
    fields: list[tuple[str, str]] = []
    for name, value in block:
        if name == b":status":
            status = int(value)
        elif name[:1] != b":":
            fields.append(_TEXTS.get((name, value)) or _received(name, value))  # `_received`'s cache read inline
    return status, CIMultiDict(fields)


def trailers_of(block: Iterable[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    known = _TEXTS
    return CIMultiDict([known.get((name, value)) or _received(name, value) for name, value in block if name[:1] != b":"])


def _received(name: bytes, value: bytes) -> tuple[str, str]:
    """A received field as text; remembered like the fields sent (`_fields`), credentials and cookies never."""
    known = _TEXTS
    text = known.get((name, value))
    if text is None:
        text = (name.decode("latin-1"), _text(value))
        if name not in _SECRET and name != b"cookie":
            if len(known) >= _REMEMBERED:
                known.clear()
            known[(name, value)] = text
    return text
