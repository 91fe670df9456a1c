"""HTTP/1.1 heads as bytes: the limits a request head is held to, status lines, serialization.

Shared by the server side (`lane.engine.connection`) and whatever writes a head (answers, upgrades
handed over). Header text round-trips what the parser decoded (UTF-8 with surrogate escapes), so
bytes a peer sent leave as they came.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Final

from multidict import CIMultiDict

__all__ = ["MAX_FIELD", "MAX_FIELDS", "MAX_HEAD", "NO_BODY_STATUS", "origin_form", "reason_phrase",
           "request_head", "serialize_head"]

MAX_FIELD: Final = 8190  # request line / one header field, aiohttp's default too
MAX_HEAD: Final = 64 * 1024
MAX_FIELDS: Final = 128
NO_BODY_STATUS: Final = frozenset({204, 304})
_REASONS: Final = {s.value: s.phrase for s in HTTPStatus}


def origin_form(target: str) -> str:
    """The path and query of *target*, also when it came in absolute form (``http://host/path``)."""
    if target.startswith("/") or target == "*":
        return target
    scheme_end = target.find("://")
    if scheme_end < 0:
        return "/"
    slash = target.find("/", scheme_end + 3)
    query = target.find("?", scheme_end + 3)
    if slash < 0 or (0 <= query < slash):
        return "/" + target[query:] if query >= 0 else "/"
    return target[slash:]


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def serialize_head(status: int, reason: str, headers: CIMultiDict[str], extra: str = "") -> bytes:
    """``HTTP/1.1`` status line and header block; *extra* is pre-formatted framing lines.

    Header text round-trips what the parser decoded (UTF-8 with surrogate escapes), so bytes an
    upstream sent leave as they came.
    """
    fields = "\r\n".join(map(": ".join, headers.items()))  # C-level joins: no Python frame per field
    text = f"HTTP/1.1 {status} {reason}\r\n{fields}\r\n{extra}\r\n" if fields else \
        f"HTTP/1.1 {status} {reason}\r\n{extra}\r\n"
    return text.encode("utf-8", "surrogateescape")


def request_head(method: str, target: str, version: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A request head as bytes (same fields, same order), e.g. for the parser an upgrade is handed to."""
    lines = [f"{method} {target} HTTP/{version}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")
