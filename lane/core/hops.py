"""The per-request hop record: which instance of which lane served each hop, in call order.

Every lane proxy (gateway or sidecar) answers with ``x-lane-path``: its own hop first, then the
hops reported by the calls its app made while serving the request, depth first — so the caller
sees the whole path (``a@gray, b@base, c@gray``) even when the apps themselves forward nothing.
This is what `lane loadtest` verifies against the expected path of real apps, not just the demo.

Wire format (one header, comma-separated entries, ``;key=value`` parameters)::

    x-lane-path: a@gray;requested=gray;instance=10.0.0.7:8080, b@base;requested=gray;fallback=no-instance

``fallback`` is present only when the served lane differs from the requested one, and names why:
see `FallbackReason`. ``error`` marks a hop that failed: the status the proxy answered instead
(``c@gray;requested=gray;instance=…;error=504``; ``c@none;requested=gray;error=503`` when no lane
could serve), so a verifier can tell "c failed" from "c was never called". ``recovered`` names the
trace header the calling sidecar recovered the lane from, because the calling app forwarded neither
the tag nor the baggage member (``c@gray;requested=gray;recovered=x-request-id``). Unknown parameters are ignored (forward compatible); malformed entries are
skipped, never raised. The record is bounded (`MAX_HOPS`, `MAX_PATH_BYTES`); past the bound the
last entry is ``...@truncated`` so a verifier can tell a cut record from a short path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Final

__all__ = [
    "FALLBACK_HEADER",
    "MAX_HOPS",
    "MAX_PATH_BYTES",
    "PATH_HEADER",
    "SERVED_HEADER",
    "TRUNCATED",
    "FallbackReason",
    "Hop",
    "encode_path",
    "parse_path",
]

PATH_HEADER: Final = "x-lane-path"
SERVED_HEADER: Final = "x-lane-served"  # the lane that served this hop
FALLBACK_HEADER: Final = "x-lane-fallback"  # why it fell back; absent when it did not
MAX_HOPS: Final = 64
MAX_PATH_BYTES: Final = 8192

_TOKEN = re.compile(r"[A-Za-z0-9._:\[\]-]+")


class FallbackReason(str, Enum):
    NO_INSTANCE = "no-instance"  # the service has no instance of the requested lane at all
    UNHEALTHY = "unhealthy"  # it has some, but all are ejected by passive health checking
    CONNECT_FAILED = "connect-failed"  # they refused or timed out the connection just now


@dataclass(frozen=True, slots=True)
class Hop:
    service: str
    lane: str  # the lane that served
    requested: str  # the lane the request was in
    fallback: str | None = None  # a FallbackReason value, when lane != requested
    instance: str | None = None  # host:port that served
    error: str | None = None  # the status the proxy answered when this hop failed (e.g. "503")
    # The trace header the caller's sidecar recovered the lane from, when the calling app forwarded
    # neither the tag nor the baggage member (``recovered=x-request-id``): the app is breaking the lane.
    recovered: str | None = None

    @property
    def fell_back(self) -> bool:
        return self.lane != self.requested

    def label(self) -> str:
        return f"{self.service}@{self.lane}"

    def encode(self) -> str:
        parts = [self.label(), f"requested={self.requested}"]
        if self.fallback:
            parts.append(f"fallback={self.fallback}")
        if self.instance:
            parts.append(f"instance={self.instance}")
        if self.error:
            parts.append(f"error={self.error}")
        if self.recovered:
            parts.append(f"recovered={self.recovered}")
        return ";".join(parts)

    @classmethod
    def parse(cls, text: str) -> Hop | None:
        head, *params = [p.strip() for p in text.strip().split(";")]
        service, at, lane = head.partition("@")
        if not at or not _TOKEN.fullmatch(service) or not _TOKEN.fullmatch(lane):
            return None
        values: dict[str, str] = {}
        for param in params:
            key, eq, value = param.partition("=")
            if eq and _TOKEN.fullmatch(value):
                values.setdefault(key, value)
        return cls(service, lane, values.get("requested", lane), values.get("fallback"), values.get("instance"),
                   values.get("error"), values.get("recovered"))


TRUNCATED: Final = Hop("...", "truncated", "truncated")


def encode_path(hops: Iterable[Hop]) -> str:
    """The header value for *hops*, cut to the bounds with a trailing truncation marker."""
    out: list[str] = []
    size = 0
    for hop in hops:
        entry = hop.encode()
        if len(out) >= MAX_HOPS - 1 or size + len(entry) + 2 > MAX_PATH_BYTES - 32:
            out.append(TRUNCATED.encode())
            break
        out.append(entry)
        size += len(entry) + 2
    return ", ".join(out)


_PARSED: dict[str, tuple[Hop, ...]] = {}  # x-lane-path value -> its hops (`parse_path`), bounded
_MAX_PARSED: Final = 512
_MAX_PARSED_CHARS: Final = 1024  # longer records are parsed every time: the cache stays under ~0.5 MiB


def parse_path(values: str | Iterable[str] | None) -> tuple[Hop, ...]:
    """The hops in one or several ``x-lane-path`` values; malformed entries are skipped.

    One value's hops are remembered (hops are immutable; at most `_MAX_PARSED` values, then forgotten
    at once): an upstream instance answers the same record for every request of a lane, so a proxy
    parses each record it relays once rather than once per request.
    """
    if values is None:
        return ()
    if isinstance(values, str) and len(values) <= _MAX_PARSED_CHARS:
        known = _PARSED.get(values)
        if known is None:
            if len(_PARSED) >= _MAX_PARSED:
                _PARSED.clear()
            known = _PARSED[values] = _parse_values((values,))
        return known
    return _parse_values((values,) if isinstance(values, str) else values)


def _parse_values(values: Iterable[str]) -> tuple[Hop, ...]:
    hops: list[Hop] = []
    for value in values:
        for entry in value[:MAX_PATH_BYTES].split(","):
            hop = Hop.parse(entry)
            if hop is not None and len(hops) < MAX_HOPS:
                hops.append(hop)
    return tuple(hops)
