"""`lane.dataplane.dispatch` plus what a forwarding proxy records about it (HTTP and WebSocket alike).

Each request gets one ``lane_requests_total`` sample, one ``lane_request_duration_seconds``
observation (from here to the answer's headers) and the span's routing attributes, whichever
way it went. A request that could not be sent comes back as its error answer -- 503 when no lane
may serve it, 502/504 when the instances failed, with the failed hop in ``x-lane-path`` -- for the
caller to write its own way (onto the `Exchange`, or as an aiohttp response for a WebSocket).
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Protocol, TypeVar

from multidict import CIMultiDict

from lane.core.config import LaneConfig
from lane.core.errors import UpstreamUnavailable
from lane.dataplane.dispatch import Dispatched, Opener, dispatch
from lane.dataplane.failures import UpstreamFailure
from lane.dataplane.registry import Registry
from lane.dataplane.responses import PlainAnswer, failure_answer, unavailable_answer
from lane.telemetry.metrics import GATEWAY_SOURCE, Source, observe_request

if TYPE_CHECKING:
    from lane.telemetry.tracing import RequestSpan

__all__ = ["STRICT_REFUSAL", "dispatch_recorded"]



class _Answer(Protocol):
    """An upstream answer of either core (aiohttp's `ClientResponse`, `lane.engine.answer.UpstreamAnswer`)."""

    @property
    def status(self) -> int: ...


T = TypeVar("T", bound=_Answer)
STRICT_REFUSAL = "strict"  # the fallback label of a 503 because the request's lane is strict (no fallback allowed)


def _strict(config: LaneConfig, lane: str) -> str | None:
    spec = config.lanes.get(config.chain(lane)[0])
    return STRICT_REFUSAL if spec is not None and spec.strict else None


async def dispatch_recorded(
    registry: Registry, config: LaneConfig, *, proxy: str, service: str, lane: str, headers: CIMultiDict[str],
    opener: Opener[T], may_retry: Callable[[], bool], span: RequestSpan, source: Source = GATEWAY_SOURCE,
) -> Dispatched[T] | PlainAnswer:
    """`dispatch`, recorded; the upstream answer, or the error answer to give instead.

    *source* is who makes the call: the gateway, or the sidecar's own service and lane on its outbound side.
    """
    started = perf_counter()
    try:
        sent = await dispatch(registry, config, service=service, lane=lane, headers=headers, opener=opener,
                              may_retry=may_retry)
    except UpstreamUnavailable as unavailable:  # a name per clause: compiled (mypyc), a name has one type
        observe_request(config, proxy, service, lane, None, _strict(config, lane), 503, started=started, source=source)
        span.answered(503, type(unavailable).__name__)
        return unavailable_answer(unavailable, service, lane)
    except UpstreamFailure as exc:
        observe_request(config, proxy, service, lane, None, None, exc.status, started=started, source=source)
        span.answered(exc.status, type(exc).__name__)
        return failure_answer(exc)
    observe_request(config, proxy, service, lane, sent.route.lane, sent.hop.fallback, sent.response.status,
                    started=started, source=source)
    span.routed(sent.route.lane, sent.hop.fallback, sent.hop.instance)
    span.answered(sent.response.status)
    return sent
