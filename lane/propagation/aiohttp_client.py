"""aiohttp client side: every outgoing request carries the caller's lane, with no app change.

The work is done by a *client middleware* (aiohttp >= 3.12) rather than a `TraceConfig`, because
it must have the last word on the headers: aiohttp runs all ``on_request_start`` trace hooks
before building the request, and OpenTelemetry's aiohttp instrumentation appends its own trace
config last and ``inject``s from it (its ``request_hook`` runs before that inject), so a lane
written by a trace hook could be overwritten by the stock baggage propagator. Middlewares run
after every trace hook, right before the request is sent — and they run for URLs the
instrumentation excludes too, which get nothing injected by OpenTelemetry at all.

Which lane an outgoing request gets: a valid tag header the app set on the call itself (it chose
that lane deliberately), else the lane of the current context, else a valid baggage entry already
on the call. Invalid values are removed, never forwarded.

Use it per session (``ClientSession(middlewares=[lane_client_middleware()])``) or install it for
every session with `LaneClientInstrumentor` — opt-in, idempotent, undoable, and independent of
``AioHttpClientInstrumentor`` (it patches ``ClientSession._request``, which that one never touches,
so each can be instrumented and uninstrumented in any order).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final

import aiohttp
import wrapt
from aiohttp import ClientHandlerType, ClientMiddlewareType, ClientRequest, ClientResponse
from multidict import CIMultiDict
from opentelemetry.context import Context
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap

from lane.core.baggage import BAGGAGE_HEADER, get_member, remove_member, set_member
from lane.core.tags import carried_lane
from lane.propagation.propagator import LanePropagator, global_lane_propagator, propagator_from_env

__all__ = ["LaneClientInstrumentor", "apply_lane", "lane_client_middleware"]

log = logging.getLogger(__name__)

_MARK: Final = "_lane_client_middleware"


def apply_lane(headers: CIMultiDict[str], propagator: LanePropagator, context: Context | None = None) -> str | None:
    """Make *headers* of an outgoing request carry its lane; returns that lane (or None).

    Writes the tag header and puts the lane first in one merged ``baggage`` header (other members
    kept in order); with no lane, removes invalid tag values and baggage entries instead.
    """
    tags = headers.getall(propagator.header, [])
    bags = headers.getall(BAGGAGE_HEADER, [])
    lane = carried_lane(tags, bags, propagator.baggage_key, lambda: propagator.current_lane(context))[0]
    if lane is None:
        if tags:
            del headers[propagator.header]
        if bags and get_member(bags, propagator.baggage_key) is not None:
            rest = remove_member(bags, propagator.baggage_key)
            del headers[BAGGAGE_HEADER]
            if rest is not None:
                headers[BAGGAGE_HEADER] = rest
        return None
    headers[propagator.header] = lane
    headers[BAGGAGE_HEADER] = set_member(bags, propagator.baggage_key, lane)
    return lane


def lane_client_middleware(propagator: LanePropagator | None = None) -> ClientMiddlewareType:
    """A client middleware that makes each request carry the caller's lane (see `apply_lane`).

    *propagator* names the tag header and baggage key; by default the ``lane`` member of the global
    propagators (``OTEL_PROPAGATORS``), else one named by ``LANE_TAG_HEADER`` / ``LANE_BAGGAGE_KEY``
    — the same choice `lane.propagation.aiohttp_server.lane_middleware` makes, so both sides agree.
    """
    fallback = propagator or propagator_from_env()

    async def lane_headers(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        try:
            apply_lane(request.headers, propagator or global_lane_propagator() or fallback)
        except Exception:  # a lane problem must never fail the app's call
            log.exception("could not set the lane on an outgoing request to %s", request.url.host)
        return await handler(request)

    setattr(lane_headers, _MARK, fallback)
    return lane_headers


def _has_lane_middleware(middlewares: Sequence[ClientMiddlewareType]) -> bool:
    return any(hasattr(m, _MARK) for m in middlewares)


class LaneClientInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Adds the lane middleware to every request of every ``aiohttp.ClientSession``.

    ``LaneClientInstrumentor().instrument(propagator=...)`` is idempotent and undone by
    ``uninstrument()``. Sessions created before instrumenting are covered too. A session or call
    that already lists a lane middleware is left alone; per-call ``middlewares=`` keep working.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("aiohttp >= 3.12, < 4",)

    def _instrument(self, **kwargs: Any) -> None:
        middleware = lane_client_middleware(kwargs.get("propagator"))

        def _request(
            wrapped: Callable[..., Any], instance: aiohttp.ClientSession, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            given = kwargs.get("middlewares")
            chain = tuple(instance._middlewares if given is None else given)
            if not _has_lane_middleware(chain):
                kwargs["middlewares"] = (*chain, middleware)  # innermost: runs last, right before sending
            return wrapped(*args, **kwargs)

        setattr(_request, _MARK, True)
        wrapt.wrap_function_wrapper(aiohttp.ClientSession, "_request", _request)

    def _uninstrument(self, **kwargs: Any) -> None:
        current = aiohttp.ClientSession.__dict__.get("_request")
        if not hasattr(getattr(current, "_self_wrapper", None), _MARK):
            log.warning("ClientSession._request was re-wrapped after lane instrumentation; not unwrapping")
            return
        unwrap(aiohttp.ClientSession, "_request")
