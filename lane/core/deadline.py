"""The per-request time budget every lane hop passes on, so the innermost proxy times out first.

Why: ``proxy.request_timeout`` bounds the wait for an answer at every hop. With one value for all
hops the *outermost* proxy gives up first (its wait started earliest) and blames its direct
upstream, a healthy instance, while the one that hung sits several hops deeper. So each hop tells
its upstream how long it will wait, minus ``proxy.deadline_margin``: ``x-lane-deadline-ms: N``.
A hop that received N waits ``min(N ms, request_timeout)`` and passes on that wait minus the
margin; the innermost proxy then times out first, names the instance that hung (its hop record
marks ``error=504``), and its answer reaches every outer hop before their own timers fire.

The shape is Envoy's ``x-envoy-expected-rq-timeout-ms`` and gRPC's ``grpc-timeout`` (minus an
offset like Envoy's ``grpc_timeout_header_offset``), under a name of our own: Envoy sets its header
itself on every request it routes (the route's configured timeout, not what is left), so in a mesh
with Envoy sidecars the value would be Envoy's, and its meaning is a cap on a whole exchange while
lane's bound is on *silence* (no byte either way), so a long upload or stream is never cut.

The value is a plain decimal count of milliseconds. A missing, malformed or absurd value means "no
budget given" (the hop's own ``request_timeout``); a value can only shorten the wait, never extend
it. The gateway drops the header from untrusted peers (a client must not make the gateway time
out a healthy instance at will), a sidecar honours it (its callers are mesh proxies and apps).

gRPC: a call's own deadline travels as ``grpc-timeout`` (digits and a unit, gRPC's HTTP/2 spec). It
bounds the hop's wait like the header above, and every hop that passes a budget on shortens it too,
so the app at the end of the chain sees the deadline that is left and answers ``DEADLINE_EXCEEDED``
before the proxies in front of it give up. It is the caller's own choice, also from outside the
mesh, so a timeout at that bound is nobody's fault (`grpc_bound`: it never counts against an instance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from typing import Final

__all__ = ["DEADLINE_HEADER", "GRPC_TIMEOUT", "MAX_DIGITS", "budget_of", "grpc_bound", "grpc_timeout",
           "less_margin", "pass_on", "stamp", "tighten", "to_grpc_timeout", "to_header"]

DEADLINE_HEADER: Final = "x-lane-deadline-ms"
GRPC_TIMEOUT: Final = "grpc-timeout"
MAX_DIGITS: Final = 9  # about 11.5 days in ms: longer than any request_timeout lane accepts
_GRPC_DIGITS: Final = 8  # gRPC's limit on the TimeoutValue
_GRPC_UNITS: Final = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def budget_of(headers: Mapping[str, str], limit: float) -> float:
    """Seconds this hop may wait: the received budget (lane's, or the gRPC call's) when shorter than *limit*.

    Costs two lookups and, when lane's header is there, one ``isdigit`` and one ``int``.
    """
    value = headers.get(DEADLINE_HEADER)  # `_lane_budget`, inlined: every request of every hop comes here
    if value is not None:
        value = value.strip()
        if value and len(value) <= MAX_DIGITS and value.isascii() and value.isdigit():
            limit = min(int(value) / 1000.0, limit)
    call = headers.get(GRPC_TIMEOUT)
    if call is not None:
        seconds = grpc_timeout(call)
        if seconds is not None and seconds < limit:
            return seconds
    return limit


def _lane_budget(headers: Mapping[str, str], limit: float) -> float:
    value = headers.get(DEADLINE_HEADER)
    if value is None:
        return limit
    value = value.strip()
    if not value or len(value) > MAX_DIGITS or not value.isascii() or not value.isdigit():
        return limit
    return min(int(value) / 1000.0, limit)


def grpc_timeout(value: str) -> float | None:
    """Seconds in a ``grpc-timeout`` value (``100m``, ``5S``, ...); None when it is not one."""
    value = value.strip()
    scale = _GRPC_UNITS.get(value[-1:])
    digits = value[:-1]
    if scale is None or not digits or len(digits) > _GRPC_DIGITS or not digits.isascii() or not digits.isdigit():
        return None
    return int(digits) * scale


def to_grpc_timeout(seconds: float) -> str:
    """The ``grpc-timeout`` value for *seconds*: milliseconds, microseconds below one (at least 1u: it is positive)."""
    millis = int(seconds * 1000.0)
    if millis >= 10**_GRPC_DIGITS:
        return f"{min(int(seconds), 10**_GRPC_DIGITS - 1)}S"
    return f"{millis}m" if millis > 0 else f"{max(1, int(seconds * 1e6))}u"


def grpc_bound(headers: Mapping[str, str], limit: float) -> bool:
    """Whether the caller's own ``grpc-timeout`` is what bounds this hop's wait (not lane's budget or *limit*)."""
    value = headers.get(GRPC_TIMEOUT)
    call = grpc_timeout(value) if value is not None else None
    return call is not None and call < _lane_budget(headers, limit)


def stamp(headers: MutableMapping[str, str], wait: float, margin: float) -> None:
    """Tell the next hop its budget: this hop's *wait* less the margin, in lane's header and in ``grpc-timeout``
    when the request is a gRPC call with a deadline."""
    left = less_margin(wait, margin)
    headers[DEADLINE_HEADER] = to_header(left)
    if GRPC_TIMEOUT in headers:
        headers[GRPC_TIMEOUT] = to_grpc_timeout(left)


def less_margin(wait: float, margin: float) -> float:
    """What a hop that waits *wait* seconds gives its upstream: less by the margin.

    The margin is never more than a quarter of *wait*, so on a long chain with a short timeout
    the budget shrinks geometrically instead of running out.
    """
    return wait - min(margin, wait / 4) if wait > 0 else 0.0


def pass_on(wait: float, margin: float) -> str:
    """The header value a hop that waits *wait* seconds sends upstream."""
    return to_header(less_margin(wait, margin))


def to_header(seconds: float) -> str:
    """The header value for a budget of *seconds* (whole milliseconds, never negative)."""
    return str(max(0, int(seconds * 1000.0)))


def tighten(headers: MutableMapping[str, str], until: float, now: float, margin: float) -> None:
    """Cap the budget in *headers* to what is left until *until* (a `time.monotonic` instant) less the margin.

    A sidecar's outbound side does this to an app's call with the deadline of the inbound request
    it serves: the call must be answered while the inbound side still waits for the app.
    """
    left = less_margin(until - now, margin)
    if budget_of(headers, math.inf) > left:
        headers[DEADLINE_HEADER] = to_header(left)
