"""A lane proxy's own answers as a gRPC client understands them: HTTP 200, trailers-only, a gRPC status.

A gRPC client reads the outcome of a call from ``grpc-status`` and ``grpc-message``, not from the
HTTP status: an HTTP 503 would surface as a bare ``UNAVAILABLE`` ("Received http2 header with status:
503") without the reason, and a 504 as ``UNAVAILABLE`` instead of ``DEADLINE_EXCEEDED``. So when the
proxy answers a gRPC request itself (a strict lane with no instance, an instance that cannot be
reached or timed out, a host outside the config), the answer is the gRPC error form: status 200 and
one header block that ends the stream ("trailers-only"), with the code, the proxy's text in
``grpc-message`` (percent-encoded as the gRPC spec says) and the lane headers (``x-lane-path`` with the
failed hop, ``x-lane-served: none``, and ``x-lane-unavailable`` for the caller's dispatch) as metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from multidict import CIMultiDict

__all__ = ["GRPC_CODES", "grpc_error_headers", "is_grpc", "percent_encode"]

# The codes of gRPC's status.proto this proxy answers with, by the HTTP status it would answer.
UNKNOWN, DEADLINE_EXCEEDED, PERMISSION_DENIED, RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE = 2, 4, 7, 8, 13, 14
GRPC_CODES: Final = {
    502: UNAVAILABLE,  # the upstream failed or broke: the call may be tried again
    503: UNAVAILABLE,  # no instance may serve it (strict lane, nothing left in the chain), or overloaded
    504: DEADLINE_EXCEEDED,  # the upstream timed out, or the call's budget was spent
    403: PERMISSION_DENIED,  # a host outside the lane config
    429: RESOURCE_EXHAUSTED,
    500: INTERNAL,
}
_PLAIN: Final = frozenset(range(0x20, 0x7F)) - {0x25}  # printable ASCII except '%' stays as it is


def is_grpc(headers: Mapping[str, str]) -> bool:
    """A gRPC request (``application/grpc``, ``application/grpc+proto``, ...; not gRPC-Web, which is HTTP/1.1-shaped)."""
    kind = headers.get("content-type", "")
    return kind.startswith("application/grpc") and not kind.startswith("application/grpc-web")


def percent_encode(text: str) -> str:
    """``grpc-message`` encoding: UTF-8, every byte outside printable ASCII (and '%') as ``%XX``."""
    return "".join(chr(b) if b in _PLAIN else f"%{b:02X}" for b in text.encode("utf-8", "replace"))


def grpc_error_headers(status: int, text: str, headers: CIMultiDict[str]) -> CIMultiDict[str]:
    """The header block of the trailers-only gRPC answer for an HTTP *status* with *text* and lane *headers*."""
    out = CIMultiDict(headers)
    out.popall("content-type", None)
    out.popall("content-length", None)
    out["content-type"] = "application/grpc"
    out["grpc-status"] = str(GRPC_CODES.get(status, UNKNOWN))
    out["grpc-message"] = percent_encode(text.strip()[:1024])
    return out
