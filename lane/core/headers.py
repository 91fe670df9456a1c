"""Request and answer headers as every lane proxy rewrites them, whichever core serves the request.

Kept free of aiohttp on purpose: the fast core (`lane.engine`) uses these on every request, and a
sidecar that never sees a WebSocket should not have aiohttp in memory at all. Both cores' request
objects provide what `ForwardedFrom` asks for.
"""

from __future__ import annotations

from typing import Final, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "HOP_BY_HOP",
    "IDEMPOTENT",
    "ForwardedFrom",
    "is_idempotent",
    "is_websocket",
    "strip_hop_by_hop",
    "upstream_headers",
]

# RFC 9110 §7.6.1 and the usual suspects; `Expect` too, the proxy answers 100-continue itself.
HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade", "expect",
})
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class ForwardedFrom(Protocol):
    """What `upstream_headers` reads of a request (an aiohttp request, or a `lane.engine.request.Request`)."""

    @property
    def headers(self) -> CIMultiDictProxy[str] | CIMultiDict[str]: ...

    @property
    def remote(self) -> str | None: ...

    @property
    def scheme(self) -> str: ...


def strip_hop_by_hop(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """A copy of *headers* without hop-by-hop fields, including the ones ``Connection`` names."""
    out = CIMultiDict(headers)  # one C-level copy, then a few case-insensitive deletes
    for name in HOP_BY_HOP:
        if name in out:
            del out[name]
    for value in headers.getall("Connection", ()):
        for token in value.split(","):
            token = token.strip()
            if token and token in out:
                del out[token]
    return out


def upstream_headers(request: ForwardedFrom, *, trust_forwarded: bool = True) -> CIMultiDict[str]:
    """The headers to send upstream: end-to-end ones plus ``X-Forwarded-*``.

    The peer is always appended to ``X-Forwarded-For``. ``X-Forwarded-Proto``/``-Host`` from the
    peer are kept only when *trust_forwarded* (a sidecar's peers are mesh proxies that set them;
    the gateway trusts only ``proxy.trusted_cidrs``): an outside client must not make an app
    believe it was reached over https or under another host name.
    """
    headers = strip_hop_by_hop(request.headers)
    peer = request.remote or ""
    prior = headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    original_host = request.headers.get("Host")
    if trust_forwarded:
        headers.setdefault("X-Forwarded-Proto", request.scheme)
        if original_host is not None:
            headers.setdefault("X-Forwarded-Host", original_host)
    else:
        headers["X-Forwarded-Proto"] = request.scheme
        headers.popall("X-Forwarded-Host", None)
        if original_host is not None:
            headers["X-Forwarded-Host"] = original_host
    return headers


def is_idempotent(method: str) -> bool:
    return method.upper() in IDEMPOTENT


def is_websocket(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> bool:
    return headers.get("Upgrade", "").lower() == "websocket" and "upgrade" in {
        t.strip().lower() for t in headers.get("Connection", "").split(",")
    }
