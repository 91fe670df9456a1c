"""Send one request down its lane: route, connect, fall back live, learn health, record the hop.

The loop behind "fallback, live": `choose_upstream` (through `Registry.route`) names the instances
of the best lane that are not ejected; one is tried; if the connection fails (nothing was sent)
that instance counts a failure and the request is routed again without it — to another instance
of the same lane, or down the fallback chain with reason ``connect-failed``. Other failures are retried only for
idempotent methods whose body was not consumed, at most `ProxySpec.retries` times; a timeout never is
(it used the request's whole budget). Every attempt ends in `PassiveHealth` (success or a failure that
``counts``), which is what ejects a dead instance for everyone.

Time: each attempt waits at most what is left of the request's budget (`lane.core.deadline`: the
received ``x-lane-deadline-ms`` or ``request_timeout``) and tells the upstream that, minus the
margin, so an inner hop times out before this one. When nothing is left the attempt is not made
(`DeadlineSpent`, which blames nobody). A gRPC call's own deadline (``grpc-timeout``) bounds and
shortens the same way; a timeout at that bound is the caller's (`CallerDeadline`, blaming nobody).

Blame: only an instance's *own* failure counts against it -- its connection failed, broke or timed
out, or its sidecar says its app did (``x-lane-unavailable``, set only by a sidecar about its own
app and stripped from every answer relayed further, see `lane.dataplane.responses`). A 502/503/504 that a
proxy deeper in the chain answered is an answer like any other (its hop record names the hop that
failed), so it never counts against the instance that relayed it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, Generic, TypeVar

from multidict import CIMultiDict

from lane.core.config import LaneConfig
from lane.core.deadline import budget_of, grpc_bound, stamp
from lane.core.endpoint import Endpoint
from lane.core.errors import UpstreamUnavailable
from lane.core.headers import is_idempotent
from lane.core.hops import FALLBACK_HEADER, Hop, encode_path, parse_path
from lane.core.routing import Route
from lane.dataplane.failures import (
    CallerDeadline,
    ConnectFailed,
    DeadlineSpent,
    UpstreamBroken,
    UpstreamFailure,
    UpstreamTimeout,
    note_hop,
)
from lane.dataplane.registry import Registry
from lane.engine.exchange import BodySource

__all__ = [
    "MAX_ATTEMPTS",
    "UNAVAILABLE_HEADER",
    "Dispatched",
    "Opener",
    "dispatch",
    "marked_failure",
    "path_after",
    "retry_guard",
]

log = logging.getLogger(__name__)

MAX_ATTEMPTS: Final = 16  # a hard bound on connection attempts per request, whatever the config
# Set by an inbound sidecar whose own app failed: to the caller this instance is down. Its value
# says how: ``app-connect-failed`` (nothing reached the app: retry anywhere), ``app-broken`` (the app
# broke the exchange mid-request: retry only what is idempotent), ``app-timeout`` (it went silent).
UNAVAILABLE_HEADER: Final = "x-lane-unavailable"


T = TypeVar("T")
# Opens a connection to one instance with the attempt's headers, waiting at most the given seconds
# without progress; raises `UpstreamFailure` kinds.
Opener = Callable[[Endpoint, CIMultiDict[str], float], Awaitable[T]]


class Dispatched(Generic[T]):
    """Where a request went and what answered it: made per request, so slotted and not frozen.

    A plain class rather than ``@dataclass``: mypyc (`make compiled`) cannot compile a generic
    dataclass (its module fails at import), and nothing compares or hashes these.
    """

    __slots__ = ("endpoint", "hop", "response", "route")

    def __init__(self, route: Route, endpoint: Endpoint, response: T, hop: Hop) -> None:
        self.route = route
        self.endpoint = endpoint
        self.response = response
        self.hop = hop  # the hop this proxy contributes for the service it routed to

    def __repr__(self) -> str:
        return (f"Dispatched(route={self.route!r}, endpoint={self.endpoint!r}, response={self.response!r}, "
                f"hop={self.hop!r})")


async def dispatch(
    registry: Registry,
    config: LaneConfig,
    *,
    service: str,
    lane: str,
    headers: CIMultiDict[str],
    opener: Opener[T],
    may_retry: Callable[[], bool],
) -> Dispatched[T]:
    """Open a connection to the right instance of *service* for *lane*.

    Connection failures always move on (nothing was sent); other failures only while
    *may_retry()* (idempotent and body untouched) and retries are left. Raises
    `UpstreamUnavailable` (nothing may serve) or the last `UpstreamFailure`.
    """
    failed: set[Endpoint] = set()
    spec = config.proxy
    retries_left = spec.retries
    deadline = time.monotonic() + budget_of(headers, spec.request_timeout)
    last: UpstreamFailure | None = None
    for _ in range(MAX_ATTEMPTS):
        try:
            route = registry.route(config, service, lane, failed)
        except UpstreamUnavailable:
            if last is not None:
                raise last from None  # everything in reach failed during this request: say how
            raise
        endpoint = registry.pick(route.upstreams)
        attempt_headers = headers.copy()
        attempt_headers.popall(FALLBACK_HEADER, None)
        if route.reason is not None:
            attempt_headers[FALLBACK_HEADER] = route.reason.value
        reason = route.reason.value if route.reason else None
        wait = deadline - time.monotonic()
        if wait < 0.001 and last is not None:
            raise last  # the time ran out on an earlier attempt: that one is the story
        try:
            if wait < 0.001:
                raise DeadlineSpent(endpoint, "the request's time budget was spent before it could be sent")
            stamp(attempt_headers, wait, spec.deadline_margin)
            response = await opener(endpoint, attempt_headers, wait)
        except ConnectFailed as refused:  # a name per clause: compiled (mypyc), a name has one type
            note_hop(refused, Hop(service, route.lane, route.requested, reason, str(endpoint), str(refused.status)))
            _failed(registry, endpoint, refused)
            failed.add(endpoint)
            last = refused
            continue
        except UpstreamFailure as exc:
            if isinstance(exc, UpstreamTimeout) and exc.counts and grpc_bound(headers, spec.request_timeout):
                exc = CallerDeadline(exc.endpoint, exc.detail)
            note_hop(exc, Hop(service, route.lane, route.requested, reason, str(endpoint), str(exc.status)))
            _failed(registry, endpoint, exc)
            last = exc
            if retries_left > 0 and not isinstance(exc, UpstreamTimeout) and may_retry():
                retries_left -= 1
                continue
            raise
        registry.health.record_success(endpoint)
        hop = Hop(service, route.lane, route.requested, reason, str(endpoint))
        return Dispatched(route, endpoint, response, hop)
    assert last is not None
    raise last


def retry_guard(method: str, body: BodySource | None) -> Callable[[], bool]:
    """Whether a failed attempt may be repeated: idempotent method and a body nobody read yet."""
    return lambda: is_idempotent(method) and not (body is not None and body.started)


def marked_failure(endpoint: Endpoint, why: str, body_sent: bool) -> UpstreamFailure:
    """The failure of *endpoint*'s instance its sidecar reported with ``x-lane-unavailable: why``.

    ``app-timeout`` and ``app-broken``: the app got (part of) the request, so only an idempotent
    request may be tried again (and a timeout is not, its budget is spent); anything else: nothing
    reached the app, so the request may go elsewhere -- unless its body was already streamed
    (*body_sent*), which cannot be sent twice. All count against *endpoint*, the instance whose app
    failed: the marker never travels further than the sidecar's direct caller.
    """
    detail = f"the app behind it is unavailable ({why[:60]})"
    if why == "app-timeout":
        return UpstreamTimeout(endpoint, detail)
    if why == "app-broken" or body_sent:
        return UpstreamBroken(endpoint, detail)
    return ConnectFailed(endpoint, detail)


def _failed(registry: Registry, endpoint: Endpoint, exc: UpstreamFailure) -> None:
    if not exc.counts:
        log.info("upstream %s not tried: %s", endpoint, exc.detail)
        return
    ejected = registry.health.record_failure(endpoint)
    log.warning("upstream %s failed: %s%s", endpoint, exc.detail, " (ejected)" if ejected else "")


def path_after(hop: Hop, upstream_path: str | None) -> str:
    """The ``x-lane-path`` to answer with: *hop* first, then what the upstream reported.

    A lane sidecar upstream reports its own hop first; ours replaces it (we know the requested
    lane, the fallback reason and the address we dialed), so the hop is not listed twice — but
    keeps its ``error`` (the sidecar could not get an answer from its app).
    """
    below = list(parse_path(upstream_path))
    if below and below[0].service == hop.service and below[0].lane == hop.lane:
        if below[0].error and not hop.error:
            hop = dataclasses.replace(hop, error=below[0].error)
        below = below[1:]
    return encode_path([hop, *below])
