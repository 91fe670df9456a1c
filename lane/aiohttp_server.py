"""aiohttp server middleware: each request's handler runs in the request's lane.

The middleware extracts the lane (and, through the global propagators, the trace context and
the rest of the baggage) from the inbound headers and attaches that context around the handler,
detaching it in ``finally`` in the same task. Everything the handler does inside it — outgoing
calls through `lane.aiohttp_client`, `lane.propagation.current_lane()`, spans — sees the lane.

If another instrumentation (e.g. an OpenTelemetry server instrumentation) has already started a
server span, the global extraction is skipped so that span stays the parent of the handler's
work; the lane itself is always extracted, last, so no stock baggage propagator overrules it.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import propagate, trace
from opentelemetry.context import attach, detach, get_current
from opentelemetry.propagators.textmap import TextMapPropagator

from .propagation import LanePropagator

__all__ = ["LANE_REQUEST_KEY", "lane_middleware", "request_lane"]

LANE_REQUEST_KEY: Final = web.RequestKey("lane", str)  # set only when the request names a valid lane


def lane_middleware(propagator: LanePropagator | None = None, *, extract_global: bool = True) -> Middleware:
    """A middleware running each handler in its request's lane.

    *propagator* names the tag header and baggage key (default ``x-mse-tag`` for both);
    *extract_global* also applies the globally configured OpenTelemetry propagators
    (``OTEL_PROPAGATORS``, by default trace context and baggage) before the lane's.
    """
    lanes = propagator or LanePropagator()

    @web.middleware
    async def lane_context(request: web.Request, handler: Handler) -> web.StreamResponse:
        ctx = get_current()
        if extract_global and not trace.get_current_span(ctx).get_span_context().is_valid:
            for other in _global_propagators(lanes):
                ctx = other.extract(request.headers, context=ctx)
        ctx = lanes.extract(request.headers, context=ctx)  # last, so stock baggage cannot overrule it
        lane = lanes.current_lane(ctx)
        if lane is not None:
            request[LANE_REQUEST_KEY] = lane
        token = attach(ctx)
        try:
            return await handler(request)
        finally:
            detach(token)

    return lane_context


def _global_propagators(lanes: LanePropagator) -> list[TextMapPropagator]:
    """The global propagators minus lane propagators for the same baggage key.

    ``OTEL_PROPAGATORS=...,lane`` adds one; running it here as well would log and count every bad
    tag twice, and running it before a stock baggage propagator would let that one overrule it.
    """
    configured = propagate.get_global_textmap()
    chain = getattr(configured, "_propagators", None)  # CompositePropagator's members, in order
    members: list[TextMapPropagator] = list(chain) if isinstance(chain, list) else [configured]
    return [p for p in members if not (isinstance(p, LanePropagator) and p.baggage_key == lanes.baggage_key)]


def request_lane(request: web.Request) -> str | None:
    """The lane the request was extracted into by `lane_middleware`, or None."""
    return request.get(LANE_REQUEST_KEY)
