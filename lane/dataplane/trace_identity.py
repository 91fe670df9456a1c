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

Cost matters: this runs on both sides of every sidecar hop. Ids are kept as the hex text every format
writes, each identity renders a format once (the outbound side reuses the inbound request's renders),
and the keys of what was written are known without parsing it back. Ids only have to be unique, not
secret: `random.getrandbits`, like OpenTelemetry's `RandomIdGenerator`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from functools import lru_cache
from random import getrandbits
from typing import Final

from multidict import CIMultiDict

from lane.dataplane.trace_cache import REQUEST, TRACE, TraceKey, trace_key_of

__all__ = [
    "MINTED",
    "Completed",
    "TraceIdentity",
    "complete_trace_headers",
    "identity_of",
    "new_request_id",
    "single_value",
]

# The formats this module can write; other configured trace headers are only read (as keys).
# Asking for "x-b3-traceid" means the whole multi-header B3 family (Envoy writes all three).
MINTED: Final = frozenset({"traceparent", "x-request-id", "x-b3-traceid", "b3", "uber-trace-id", "sw8"})
_B3_FAMILY: Final = ("x-b3-traceid", "x-b3-spanid", "x-b3-sampled")
_B3_STALE: Final = ("x-b3-parentspanid", "x-b3-flags")  # a parent or flags of another trace would contradict

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?")
_HEX = re.compile(r"[0-9a-f]+")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
_UUID_CLEAR: Final = ~((0xF000 << 64) | (0xC000 << 48))  # RFC 9562 version 4: version nibble 4,
_UUID_V4: Final = (0x4000 << 64) | (0x8000 << 48)  # variant bits 10


class TraceIdentity:
    """The trace a request belongs to and the span the next hop descends from, as lower-case hex."""

    __slots__ = ("_rendered", "sampled", "span_hex", "trace_hex")

    def __init__(self, trace_hex: str, span_hex: str, sampled: bool) -> None:
        self.trace_hex = trace_hex  # 32 hex digits, not all zero
        self.span_hex = span_hex  # 16 hex digits, not all zero
        self.sampled = sampled
        self._rendered: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}

    @classmethod
    def new(cls) -> TraceIdentity:
        return cls(f"{getrandbits(128) or 1:032x}", f"{getrandbits(64) or 1:016x}", True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TraceIdentity) and (self.trace_hex, self.span_hex, self.sampled) == (
            other.trace_hex, other.span_hex, other.sampled)

    def __hash__(self) -> int:
        return hash((self.trace_hex, self.span_hex, self.sampled))

    def __repr__(self) -> str:
        return f"TraceIdentity({self.trace_hex!r}, {self.span_hex!r}, {self.sampled!r})"

    def render(self, name: str, service: str) -> tuple[tuple[str, str], ...]:
        """The header lines of format *name* for this identity (made once, then reused)."""
        cached = self._rendered.get((name, service))
        if cached is None:
            cached = self._rendered[(name, service)] = _render(self, name, service)
        return cached

    def key(self, name: str) -> TraceKey | None:
        """The trace key a header of format *name* written by `render` gives (`lane.dataplane.trace_cache.trace_key_of`)."""
        return (TRACE, self.trace_hex) if name in MINTED else None


def _render(identity: TraceIdentity, name: str, service: str) -> tuple[tuple[str, str], ...]:
    sampled = "1" if identity.sampled else "0"
    trace, span = identity.trace_hex, identity.span_hex
    if name == "traceparent":
        return (("traceparent", f"00-{trace}-{span}-0{sampled}"),)
    if name == "x-b3-traceid":
        return (("x-b3-traceid", trace), ("x-b3-spanid", span), ("x-b3-sampled", sampled))
    if name == "b3":
        return (("b3", f"{trace}-{span}-{sampled}"),)
    if name == "uber-trace-id":
        return (("uber-trace-id", f"{trace}:{span}:0:{sampled}"),)
    if name == "sw8":
        # sample-traceId-segmentId-spanId-parentService-parentInstance-parentEndpoint-targetAddress
        return (("sw8", f"{sampled}-{_b64(trace)}-{_b64(span)}-0-{_b64(service or '-')}-{_SW8_TAIL}"),)
    return ()


@lru_cache(maxsize=4096)
def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


_SW8_TAIL: Final = f"{_b64('lane-sidecar')}-{_b64('/')}-{_b64('-')}"


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


def _hex(text: str, width: int) -> str | None:
    """*text* as *width* lower-case hex digits (zero-padded), or None when it is not a non-zero id of that size."""
    text = text.lower()
    if not text or len(text) > width or not _HEX.fullmatch(text):
        return None
    text = text.zfill(width)
    return None if text == "0" * width else text


def _carries(name: str, value: str, trace_hex: str) -> bool:
    """Whether *value* of format *name* starts with exactly *trace_hex* as its trace id, so its key is that
    id's without a parse (`lane.dataplane.trace_cache.trace_key_of` would read the same): the B3 and Jaeger
    headers a lane sidecar wrote from the same identity as the ``traceparent`` beside them."""
    if name == "b3":
        return value.startswith(trace_hex) and value[32:33] == "-"
    if name == "x-b3-traceid":
        return value == trace_hex
    if name == "uber-trace-id":
        return value.startswith(trace_hex) and value[32:33] == ":"
    return False


def _traceparent_identity(value: str) -> TraceIdentity | None:
    """The identity of one (stripped) ``traceparent`` value, or None when it is not a usable one."""
    m = _TRACEPARENT.fullmatch(value.lower())
    if m and m.group(1) != "ff" and m.group(2) != _ZERO_TRACE and m.group(3) != _ZERO_SPAN:
        return TraceIdentity(m.group(2), m.group(3), bool(int(m.group(4), 16) & 1))
    return None


def identity_of(headers: CIMultiDict[str]) -> TraceIdentity | None:
    """The trace identity *headers* carry (``traceparent``, then B3, then ``uber-trace-id``), or None."""
    value = single_value(headers, "traceparent")
    if value is not None:
        found = _traceparent_identity(value)
        if found is not None:
            return found
    value = single_value(headers, "x-b3-traceid")
    if value is not None and len(value) in (16, 32):
        trace = _hex(value, 32)
        if trace is not None:
            span = _hex(single_value(headers, "x-b3-spanid") or "", 16) or f"{getrandbits(64) or 1:016x}"
            return TraceIdentity(trace, span, (single_value(headers, "x-b3-sampled") or "1") not in ("0", "false"))
    value = single_value(headers, "b3")
    if value is not None:
        parts = value.split("-")
        if len(parts) >= 2 and len(parts[0]) in (16, 32):
            b3_trace, b3_span = _hex(parts[0], 32), _hex(parts[1], 16)
            if b3_trace is not None and b3_span is not None:
                return TraceIdentity(b3_trace, b3_span, len(parts) < 3 or parts[2] != "0")
    value = single_value(headers, "uber-trace-id")
    if value is not None:
        parts = value.replace("%3A", ":").replace("%3a", ":").split(":")
        if len(parts) == 4:
            uber_trace, uber_span = _hex(parts[0], 32), _hex(parts[1], 16)
            if uber_trace is not None and uber_span is not None:
                flags = parts[3]
                sampled = int(flags, 16) & 1 if len(flags) <= 2 and _HEX.fullmatch(flags.lower()) else 1
                return TraceIdentity(uber_trace, uber_span, bool(sampled))
    return None


class Completed:
    """What `complete_trace_headers` did: the identity used and the trace keys of every format now present.

    When nothing had to be written, the identity is read from the headers only if asked for (the
    outbound side never asks): read it before the headers change again.
    """

    __slots__ = ("_fallback", "_headers", "_identity", "keys")

    def __init__(self, identity: TraceIdentity | None, keys: list[TraceKey], headers: CIMultiDict[str],
                 fallback: TraceIdentity | None) -> None:
        self._identity = identity
        self.keys = keys
        self._headers = headers
        self._fallback = fallback

    @property
    def identity(self) -> TraceIdentity:
        identity = self._identity
        if identity is None:
            identity = self._identity = identity_of(self._headers) or self._fallback or TraceIdentity.new()
        return identity


def complete_trace_headers(headers: CIMultiDict[str], names: Iterable[str], *, service: str = "",
                           fallback: TraceIdentity | None = None, request_id: str | None = None,
                           known: dict[str, TraceKey] | None = None) -> Completed:
    """Make *headers* carry every writable format in *names*, one value each.

    Formats already present once are kept as they are. The identity is the one *headers* carry,
    else *fallback* (the identity of the request this call serves), else a new one; a missing
    ``x-request-id`` becomes *request_id* when given, else a new one. A format sent with conflicting
    values is replaced. The keys are those `lane.dataplane.trace_cache.trace_keys` would read back, in *names* order.
    *known* maps header names to the key `lane.dataplane.trace_cache.trace_key_sources` already read from
    *headers* (the outbound side has it), so a header present and usable is not parsed twice.
    """
    identity: TraceIdentity | None = None
    read: TraceIdentity | None = None  # a usable traceparent's: what `identity_of` would read first
    keys: list[TraceKey] = []
    getall = headers.getall
    for name in names:
        if known is not None and name in known and name != "x-b3-traceid":  # B3 also needs its span id
            recalled = known[name]
            if recalled not in keys:
                keys.append(recalled)
            continue
        values = getall(name, None)
        value = None if values is None else values[0] if len(values) == 1 else single_value(headers, name)
        if name == "x-b3-traceid" and value is not None and _hex(single_value(headers, "x-b3-spanid") or "", 16) is None:
            value = None  # half a B3 context (no usable span id): written whole
        if value is not None:
            if name == "traceparent" and read is None:  # the identity too, from the one parse
                read = _traceparent_identity(value.strip())
            if read is not None and (name == "traceparent" or _carries(name, value, read.trace_hex)):
                found: TraceKey | None = (TRACE, read.trace_hex)
            else:
                found = trace_key_of(name, value)
            if found is not None:
                if found not in keys:
                    keys.append(found)
                continue
            if name not in MINTED:
                continue
        elif name not in MINTED:
            continue
        # missing, conflicting or unusable: write it
        if name == "x-request-id":
            rid = request_id or new_request_id()
            headers["x-request-id"] = rid
            keys.append((REQUEST, rid))
            continue
        if identity is None:
            identity = identity_of(headers) or fallback or TraceIdentity.new()
        if name == "x-b3-traceid":
            for stale in _B3_STALE:
                headers.popall(stale, None)
            for member in _B3_FAMILY:
                headers.popall(member, None)
        for header, text in identity.render(name, service):
            headers[header] = text
        key = identity.key(name)
        if key is not None and key not in keys:
            keys.append(key)
    return Completed(identity if identity is not None else read, keys, headers, fallback)
