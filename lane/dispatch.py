"""Send one request down its lane: route, connect, fall back live, learn health, record the hop.

The loop behind "fallback, live": `choose_upstream` (through `Registry.route`) names the instances
of the best lane that are not ejected; one is tried; if the connection fails (nothing was sent)
that instance counts a failure and the request is routed again without it — to another instance
of the same lane, or down the fallback chain with reason ``connect-failed``. Other failures are retried only for
idempotent methods whose body was not consumed, at most `ProxySpec.retries` times. Every attempt
ends in `PassiveHealth` (success or failure), which is what ejects a dead instance for everyone.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from multidict import CIMultiDict

from .config import Endpoint, LaneConfig
from .errors import UpstreamUnavailable
from .failures import ConnectFailed, UpstreamFailure
from .h1.body import BodySource
from .headers import is_idempotent
from .hops import FALLBACK_HEADER, Hop, encode_path, parse_path
from .registry import Registry
from .routing import Route

__all__ = [
    "MAX_ATTEMPTS",
    "UNAVAILABLE_HEADER",
    "Dispatched",
    "Opener",
    "dispatch",
    "path_after",
    "retry_guard",
]

log = logging.getLogger(__name__)

MAX_ATTEMPTS: Final = 16  # a hard bound on connection attempts per request, whatever the config
# Set by an inbound sidecar that could not reach its own app: to the caller this instance is down.
UNAVAILABLE_HEADER: Final = "x-lane-unavailable"


T = TypeVar("T")
# Opens a connection to one instance with the attempt's headers; raises `UpstreamFailure` kinds.
Opener = Callable[[Endpoint, CIMultiDict[str]], Awaitable[T]]


@dataclass(slots=True)  # not frozen: made per request, and a frozen __init__ costs a setattr call per field
class Dispatched(Generic[T]):
    route: Route
    endpoint: Endpoint
    response: T
    hop: Hop  # the hop this proxy contributes for the service it routed to


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
    retries_left = config.proxy.retries
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
        try:
            response = await opener(endpoint, attempt_headers)
        except ConnectFailed as exc:
            exc.hop = Hop(service, route.lane, route.requested, reason, str(endpoint), str(exc.status))
            _failed(registry, endpoint, exc)
            failed.add(endpoint)
            last = exc
            continue
        except UpstreamFailure as exc:
            exc.hop = Hop(service, route.lane, route.requested, reason, str(endpoint), str(exc.status))
            _failed(registry, endpoint, exc)
            last = exc
            if retries_left > 0 and may_retry():
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


def _failed(registry: Registry, endpoint: Endpoint, exc: UpstreamFailure) -> None:
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
