"""One request sent down its lane, as the gateway and a sidecar's outbound do it.

The decision and its record are `lane.dataplane.recorded_dispatch` (live fallback, bounded retries,
one ``lane_requests_total`` sample and the span's routing attributes); sending goes through the
codec's `lane.engine.exchange.Sender`. A request that could not be sent gets its error answer back
(503/502/504 with the failed hop), ready to write.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict

from lane.core.config import LaneConfig
from lane.core.endpoint import Endpoint
from lane.dataplane import responses
from lane.dataplane.dispatch import UNAVAILABLE_HEADER, Dispatched, marked_failure, retry_guard
from lane.dataplane.recorded_dispatch import dispatch_recorded
from lane.dataplane.registry import Registry
from lane.engine.exchange import BodySource, Exchange
from lane.engine.head import origin_form
from lane.telemetry.metrics import GATEWAY_SOURCE, Source

if TYPE_CHECKING:
    from lane.engine.exchange import Answer, Sender
    from lane.telemetry.tracing import RequestSpan

__all__ = ["forward", "origin_form"]


class _Opener:
    """Opens the request at one instance; an instance whose sidecar says its app failed counts as failed."""

    __slots__ = ("_body", "_method", "_spec", "_target", "_upstreams")

    def __init__(self, upstreams: Sender, request: Exchange, target: str, body: BodySource,
                 config: LaneConfig) -> None:
        self._upstreams = upstreams
        self._method = request.method
        self._target = target
        self._body = body
        self._spec = config.proxy

    async def __call__(self, endpoint: Endpoint, headers: CIMultiDict[str], wait: float) -> Answer:
        answer = await self._upstreams.send(self._method, endpoint, self._target, headers, self._body, self._spec,
                                            wait)
        why = answer.headers.get(UNAVAILABLE_HEADER)
        if why is not None:
            answer.close()
            raise marked_failure(endpoint, why, self._body.started)
        return answer


def forward(
    request: Exchange, upstreams: Sender, registry: Registry, config: LaneConfig, *, proxy: str, service: str,
    lane: str, headers: CIMultiDict[str], span: RequestSpan, source: Source = GATEWAY_SOURCE,
) -> Coroutine[Any, Any, Dispatched[Answer] | responses.PlainAnswer]:
    """Send *request* to *service* for *lane*: await the upstream answer, or the error answer to give instead.

    A plain function returning `dispatch_recorded`'s coroutine, not a coroutine of its own: one level
    less for every resumption of the request while it waits for its upstream.
    """
    body = request.body
    return dispatch_recorded(
        registry, config, proxy=proxy, service=service, lane=lane, headers=headers,
        opener=_Opener(upstreams, request, origin_form(request.target), body, config),
        may_retry=retry_guard(request.method, body), span=span, source=source,
    )
