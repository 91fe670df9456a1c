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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from typing import Final

__all__ = ["DEADLINE_HEADER", "MAX_DIGITS", "budget_of", "less_margin", "pass_on", "tighten", "to_header"]

DEADLINE_HEADER: Final = "x-lane-deadline-ms"
MAX_DIGITS: Final = 9  # about 11.5 days in ms: longer than any request_timeout lane accepts


def budget_of(headers: Mapping[str, str], limit: float) -> float:
    """Seconds this hop may wait: the received budget when it is shorter than *limit*, else *limit*.

    Costs one lookup and, when the header is there, one ``isdigit`` and one ``int``.
    """
    value = headers.get(DEADLINE_HEADER)
    if value is None:
        return limit
    value = value.strip()
    if not value or len(value) > MAX_DIGITS or not value.isascii() or not value.isdigit():
        return limit
    return min(int(value) / 1000.0, limit)


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
