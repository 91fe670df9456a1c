"""One trace identity, written in every format an app might forward.

Apps forward whatever trace headers their framework knows: an OpenTelemetry SDK forwards
``traceparent`` and ``baggage``, an Istio-bookinfo-style app ``x-request-id`` and B3, a Jaeger
client ``uber-trace-id``, SkyWalking ``sw8``. A sidecar recovers a request's lane (and collects its
hops) by whichever of them comes back out of the app, so before it hands a request to its app it
makes the request carry *all* the formats configured in ``proxy.trace_headers``, derived from the
one identity that came in, the way Envoy in Istio always sets ``x-request-id`` and writes the trace
headers. On the way out it writes the ones the app dropped again, so the next app gets the full set
even when this one forwarded a single header.

Rules, as Envoy and the OpenTelemetry B3/Jaeger propagators keep them:

* an incoming trace id is kept; only what is missing is minted. The trace id is read from the first
  usable of ``traceparent``, B3 (``x-b3-traceid`` or single ``b3``), ``uber-trace-id``; the 128-bit id
  is the same in every format (64-bit B3/Jaeger ids are zero-padded, as OpenTelemetry does);
* ``x-request-id`` is its own identity (a UUID, never derived from the trace id);
* a header sent several times with different values is no identity at all: it is replaced, so an app
  never sees two (a client could otherwise smuggle another request's trace id past the first value);
* ``sw8`` (SkyWalking) carries the trace id as text: minted from the hex trace id when missing.

Ids only have to be unique, not secret: `random.getrandbits`, like OpenTelemetry's `RandomIdGenerator`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass
from random import getrandbits
from typing import Final

from multidict import CIMultiDict

__all__ = [
    "B3_FAMILY",
    "MINTED",
    "TraceIdentity",
    "complete_trace_headers",
    "identity_of",
    "new_request_id",
    "single_value",
]

# Multi-header B3: asking for "x-b3-traceid" means the whole family (Envoy writes all three).
B3_FAMILY: Final = ("x-b3-traceid", "x-b3-spanid", "x-b3-sampled")
_B3_EXTRA: Final = ("x-b3-parentspanid", "x-b3-flags")
# The formats this module can write; other configured trace headers are only read (as keys).
MINTED: Final = frozenset({"traceparent", "x-request-id", "x-b3-traceid", "b3", "uber-trace-id", "sw8"})

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?")
_HEX_ID = re.compile(r"[0-9a-f]{16}|[0-9a-f]{32}")
_UUID_CLEAR: Final = ~((0xF000 << 64) | (0xC000 << 48))  # RFC 9562 version 4: version nibble 4,
_UUID_V4: Final = (0x4000 << 64) | (0x8000 << 48)  # variant bits 10


@dataclass(frozen=True, slots=True)
class TraceIdentity:
    """The trace a request belongs to and the span the next hop descends from."""

    trace_id: int  # 128 bits, never 0
    span_id: int  # 64 bits, never 0
    sampled: bool

    @classmethod
    def new(cls) -> TraceIdentity:
        return cls(getrandbits(128) or 1, getrandbits(64) or 1, True)

    @property
    def trace_hex(self) -> str:
        return f"{self.trace_id:032x}"

    @property
    def span_hex(self) -> str:
        return f"{self.span_id:016x}"


def new_request_id() -> str:
    """A version 4 UUID, as Envoy mints ``x-request-id``."""
    h = f"{getrandbits(128) & _UUID_CLEAR | _UUID_V4:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def single_value(headers: CIMultiDict[str], name: str) -> str | None:
    """The value of *name* when it is sent once (or repeated identically); None when absent or conflicting."""
    values = headers.getall(name, None)
    if values is None:
        return None
    first = values[0].strip()
    for other in values[1:]:
        if other.strip() != first:
            return None
    return first


def _hex_id(text: str, bits: int) -> int | None:
    text = text.lower()
    if not _HEX_ID.fullmatch(text) or len(text) * 4 > bits:
        return None
    value = int(text, 16)
    return value or None


def identity_of(headers: CIMultiDict[str]) -> TraceIdentity | None:
    """The trace identity *headers* carry (``traceparent``, then B3, then ``uber-trace-id``), or None."""
    value = single_value(headers, "traceparent")
    if value is not None:
        m = _TRACEPARENT.fullmatch(value.lower())
        if m and m.group(1) != "ff":
            trace, span = int(m.group(2), 16), int(m.group(3), 16)
            if trace and span:
                return TraceIdentity(trace, span, bool(int(m.group(4), 16) & 1))
    value = single_value(headers, "x-b3-traceid")
    if value is not None:
        trace_id = _hex_id(value, 128)
        span_id = _hex_id(single_value(headers, "x-b3-spanid") or "", 64)
        if trace_id is not None:
            sampled = (single_value(headers, "x-b3-sampled") or "1") not in ("0", "false")
            return TraceIdentity(trace_id, span_id or getrandbits(64) or 1, sampled)
    value = single_value(headers, "b3")
    if value is not None:
        parts = value.split("-")
        if len(parts) >= 2:
            trace_id, span_id = _hex_id(parts[0], 128), _hex_id(parts[1], 64)
            if trace_id is not None and span_id is not None:
                return TraceIdentity(trace_id, span_id, len(parts) < 3 or parts[2] not in ("0",))
    value = single_value(headers, "uber-trace-id")
    if value is not None:
        parts = value.replace("%3A", ":").replace("%3a", ":").split(":")
        if len(parts) == 4 and 0 < len(parts[0]) <= 32 and 0 < len(parts[1]) <= 16:
            trace_id, span_id = _hex_id(parts[0].zfill(32), 128), _hex_id(parts[1].zfill(16), 64)
            if trace_id is not None and span_id is not None:
                flags = int(parts[3], 16) if re.fullmatch(r"[0-9a-fA-F]{1,2}", parts[3]) else 1
                return TraceIdentity(trace_id, span_id, bool(flags & 1))
    return None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _write(headers: CIMultiDict[str], name: str, identity: TraceIdentity, service: str) -> None:
    sampled = "1" if identity.sampled else "0"
    if name == "traceparent":
        headers["traceparent"] = f"00-{identity.trace_hex}-{identity.span_hex}-0{sampled}"
    elif name == "x-b3-traceid":
        for extra in _B3_EXTRA:  # a parent or flags left from another trace would contradict the new ids
            headers.popall(extra, None)
        headers["x-b3-traceid"] = identity.trace_hex
        headers["x-b3-spanid"] = identity.span_hex
        headers["x-b3-sampled"] = sampled
    elif name == "b3":
        headers["b3"] = f"{identity.trace_hex}-{identity.span_hex}-{sampled}"
    elif name == "uber-trace-id":
        headers["uber-trace-id"] = f"{identity.trace_hex}:{identity.span_hex}:0:{sampled}"
    elif name == "sw8":
        # sample-traceId-segmentId-spanId-parentService-parentInstance-parentEndpoint-targetAddress
        headers["sw8"] = "-".join((sampled, _b64(identity.trace_hex), _b64(f"{getrandbits(128):032x}"), "0",
                                   _b64(service or "-"), _b64("lane-sidecar"), _b64("/"), _b64("-")))


def _present(headers: CIMultiDict[str], name: str) -> bool:
    if name == "x-b3-traceid":
        return all(single_value(headers, n) is not None for n in ("x-b3-traceid", "x-b3-spanid"))
    return single_value(headers, name) is not None


def complete_trace_headers(headers: CIMultiDict[str], names: Iterable[str], *, service: str = "",
                           fallback: TraceIdentity | None = None, request_id: str | None = None) -> TraceIdentity:
    """Make *headers* carry every writable format in *names*, one value each; the identity used.

    Formats already present once are kept as they are. The identity is the one *headers* carry,
    else *fallback* (the identity of the request this call serves), else a new one; a missing
    ``x-request-id`` becomes *request_id* when given, else a new one. A format sent with conflicting
    values is replaced.
    """
    identity = identity_of(headers) or fallback or TraceIdentity.new()
    for name in names:
        if name not in MINTED or _present(headers, name):
            continue
        if name == "x-request-id":
            headers.popall("x-request-id", None)
            headers["x-request-id"] = request_id or new_request_id()
        else:
            if name == "x-b3-traceid":
                for member in B3_FAMILY:
                    headers.popall(member, None)
            else:
                headers.popall(name, None)
            _write(headers, name, identity, service)
    return identity
