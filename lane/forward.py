"""One HTTP request sent down its lane, as the gateway and a sidecar's outbound both do it.

`forward_http` routes and sends the request (`lane.dispatch`: live fallback, bounded retries) and
records the outcome once — the ``lane_requests_total`` sample and the span's routing attributes.
A request that could not be sent is already answered: 503 when no lane may serve it, 502/504 when
the instances failed, with the failed hop in ``x-lane-path`` (`lane.responses`); the caller only
has to relay a `Dispatched` answer.
"""

from __future__ import annotations

from aiohttp import ClientResponse, ClientSession, web
from multidict import CIMultiDict

from . import responses
from .config import Endpoint, LaneConfig, ProxySpec
from .dispatch import UNAVAILABLE_HEADER, Dispatched, Opener, dispatch, retry_guard
from .errors import UpstreamUnavailable
from .failures import ConnectFailed
from .metrics import observe_request
from .proxy import SESSION, Body, UpstreamFailure, request_target, send
from .registry import Registry
from .tracing import RequestSpan

__all__ = ["forward_http", "http_opener"]


async def forward_http(
    request: web.Request, registry: Registry, config: LaneConfig, *, proxy: str, service: str, lane: str,
    headers: CIMultiDict[str], span: RequestSpan,
) -> Dispatched[ClientResponse] | web.Response:
    """Send *request* to *service* for *lane*; the upstream answer, or the error answer to give instead."""
    body = Body(request)
    try:
        sent = await dispatch(
            registry, config, service=service, lane=lane, headers=headers,
            opener=http_opener(request.app[SESSION], request.method, request_target(request), body, config.proxy),
            may_retry=retry_guard(request.method, body),
        )
    except UpstreamUnavailable as exc:
        observe_request(config, proxy, service, lane, None, None, 503)
        span.answered(503, type(exc).__name__)
        return responses.unavailable(exc, service, lane)
    except UpstreamFailure as exc:
        observe_request(config, proxy, service, lane, None, None, exc.status)
        span.answered(exc.status, type(exc).__name__)
        return responses.failure(exc)
    observe_request(config, proxy, service, lane, sent.route.lane, sent.hop.fallback, sent.response.status)
    span.routed(sent.route.lane, sent.hop.fallback, sent.hop.instance)
    span.answered(sent.response.status)
    return sent


def http_opener(
    session: ClientSession, method: str, target: str, body: Body | None, spec: ProxySpec
) -> Opener[ClientResponse]:
    """The opener of a plain HTTP request; an instance whose sidecar cannot reach its app counts as down."""

    async def open_http(endpoint: Endpoint, headers: CIMultiDict[str]) -> ClientResponse:
        response = await send(session, method, endpoint, target, headers, body, spec)
        why = response.headers.get(UNAVAILABLE_HEADER)
        if why is not None and not (body is not None and body.started):
            response.close()
            raise ConnectFailed(endpoint, f"the app behind it is unavailable ({why[:60]})")
        return response

    return open_http
