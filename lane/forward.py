"""One HTTP request sent down its lane, as the gateway and a sidecar's outbound both do it.

`forward_http` routes and sends the request (`lane.dispatch`: live fallback, bounded retries) and
records the outcome once (`lane.recorded_dispatch`, shared with the fast core's `lane.h1.forward`).
A request that could not be sent is already answered: 503 when no lane may serve it, 502/504 when
the instances failed, with the failed hop in ``x-lane-path`` (`lane.responses`); the caller only
has to relay a `Dispatched` answer.
"""

from __future__ import annotations

from aiohttp import ClientResponse, ClientSession, web
from multidict import CIMultiDict

from .config import Endpoint, LaneConfig, ProxySpec
from .dispatch import UNAVAILABLE_HEADER, Dispatched, Opener, marked_failure, retry_guard
from .metrics import GATEWAY_SOURCE, Source
from .proxy import SESSION, Body, request_target, send
from .recorded_dispatch import dispatch_recorded
from .registry import Registry
from .responses import PlainAnswer
from .tracing import RequestSpan

__all__ = ["forward_http", "http_opener"]


async def forward_http(
    request: web.Request, registry: Registry, config: LaneConfig, *, proxy: str, service: str, lane: str,
    headers: CIMultiDict[str], span: RequestSpan, source: Source = GATEWAY_SOURCE,
) -> Dispatched[ClientResponse] | web.Response:
    """Send *request* to *service* for *lane*; the upstream answer, or the error answer to give instead."""
    body = Body(request)
    sent = await dispatch_recorded(
        registry, config, proxy=proxy, service=service, lane=lane, headers=headers,
        opener=http_opener(request.app[SESSION], request.method, request_target(request), body, config.proxy),
        may_retry=retry_guard(request.method, body), span=span, source=source,
    )
    return sent.as_response() if isinstance(sent, PlainAnswer) else sent


def http_opener(
    session: ClientSession, method: str, target: str, body: Body | None, spec: ProxySpec
) -> Opener[ClientResponse]:
    """The opener of a plain HTTP request; an instance whose sidecar says its app failed counts as failed."""

    async def open_http(endpoint: Endpoint, headers: CIMultiDict[str], wait: float) -> ClientResponse:
        response = await send(session, method, endpoint, target, headers, body, spec, wait)
        why = response.headers.get(UNAVAILABLE_HEADER)
        if why is not None:
            response.close()
            raise marked_failure(endpoint, why, body is not None and body.started)
        return response

    return open_http
