"""aiohttp server side: each request's handler runs in the request's whole context, lane included.

`lane_middleware` extracts the inbound context with the global propagators (``OTEL_PROPAGATORS``:
trace context, *all* of the baggage, ...) and then the lane, last, and attaches it around the
handler, detaching it in ``finally`` in the same task. Everything the handler does inside it —
outgoing calls, `lane.propagation.propagator.current_lane()`, spans — sees the lane and the caller's other
baggage members.

Why lane has its own server hook: OpenTelemetry's aiohttp server instrumentation extracts the full
context but uses it only to find the parent of its server span, so the baggage (the lane with it)
never reaches the handler and its outgoing calls leave with neither; and without that
instrumentation nothing extracts at all. This middleware composes with it in either position.
Outside it (where `LaneServerInstrumentor` puts it) the server span is started inside the context
attached here; inside it, the server span already current is kept as the parent of the handler's
work and only the rest of the context is taken from the headers.

The lane is always extracted last, by the lane propagator, so a stock baggage propagator can never
overrule it whatever order ``OTEL_PROPAGATORS`` lists. `LaneServerInstrumentor` adds the middleware
to every ``web.Application``; ``opentelemetry-instrument`` does that through `lane.propagation.instrumentor`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

import wrapt
from aiohttp import web, web_app
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import trace
from opentelemetry.context import Context, attach, detach, get_current
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.propagators.textmap import TextMapPropagator

from lane.propagation.propagator import (
    LanePropagator,
    global_lane_propagator,
    other_global_propagators,
    propagator_from_env,
)

__all__ = ["LANE_REQUEST_KEY", "LaneServerInstrumentor", "lane_middleware", "request_lane"]

log = logging.getLogger(__name__)

LANE_REQUEST_KEY: Final = web.RequestKey("lane", str)  # set only when the request names a valid lane
_EXTRACTED: Final = web.RequestKey("lane_context_extracted", bool)
_MARK: Final = "_lane_server_middleware"


def lane_middleware(propagator: LanePropagator | None = None, *, extract_global: bool = True) -> Middleware:
    """A middleware running each handler in its request's context and lane.

    *propagator* names the tag header and baggage key; by default the ``lane`` member of the global
    propagators (``OTEL_PROPAGATORS``), else one named by ``LANE_TAG_HEADER`` / ``LANE_BAGGAGE_KEY``.
    *extract_global* also applies the other global propagators (by default trace context and
    baggage) before the lane's.
    """
    fallback = propagator or propagator_from_env()

    @web.middleware
    async def lane_context(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.get(_EXTRACTED):  # a sub-application's copy: the parent app's already attached it
            return await handler(request)
        request[_EXTRACTED] = True
        lanes = propagator or global_lane_propagator() or fallback
        try:
            ctx = _extract(request.headers, lanes, extract_global)
        except Exception:  # a broken third-party propagator must not fail the request
            log.exception("could not extract the context of a request to %s", request.path[:64])
            ctx = get_current()
        lane = lanes.current_lane(ctx)
        if lane is not None:
            request[LANE_REQUEST_KEY] = lane
        token = attach(ctx)
        try:
            return await handler(request)
        finally:
            detach(token)

    setattr(lane_context, _MARK, True)
    return lane_context


def _extract(headers: Mapping[str, str], lanes: LanePropagator, extract_global: bool) -> Context:
    ctx = get_current()
    if extract_global:
        server_span = trace.get_current_span(ctx)
        for other in _global_propagators(lanes):
            ctx = other.extract(headers, context=ctx)
        if server_span.get_span_context().is_valid:  # started by an instrumentation outside this middleware
            ctx = trace.set_span_in_context(server_span, ctx)
    return lanes.extract(headers, context=ctx)  # last, so stock baggage cannot overrule it


def _global_propagators(lanes: LanePropagator) -> list[TextMapPropagator]:
    """The global propagators minus lane propagators for the same baggage key.

    ``OTEL_PROPAGATORS=...,lane`` adds one; running it here as well would log and count every bad
    tag twice, and running it before a stock baggage propagator would let that one overrule it.
    """
    return other_global_propagators(lanes)


def request_lane(request: web.Request) -> str | None:
    """The lane the request was extracted into by `lane_middleware`, or None."""
    return request.get(LANE_REQUEST_KEY)


class LaneServerInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Puts `lane_middleware` first in every ``web.Application`` created after instrumenting.

    It wraps ``aiohttp.web_app.Application.__init__`` (the class itself, not the ``web.Application``
    name, which OpenTelemetry's server instrumentation replaces with a subclass), so it works with
    that instrumentation installed before or after, and with ``from aiohttp.web import Application``
    done early. An application whose middlewares already list a lane middleware is left alone.
    Opt-in, idempotent, undone by ``uninstrument()`` (applications created meanwhile keep theirs).
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("aiohttp >= 3.12, < 4",)

    def _instrument(self, **kwargs: Any) -> None:
        middleware = lane_middleware(kwargs.get("propagator"))

        def _init(
            wrapped: Callable[..., None], instance: web.Application, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> None:
            chain = list(kwargs.get("middlewares") or ())
            if not any(hasattr(m, _MARK) for m in chain):
                kwargs["middlewares"] = [middleware, *chain]  # outermost: user middlewares see the lane too
            wrapped(*args, **kwargs)

        setattr(_init, _MARK, True)
        wrapt.wrap_function_wrapper(web_app.Application, "__init__", _init)

    def _uninstrument(self, **kwargs: Any) -> None:
        current = web_app.Application.__dict__.get("__init__")
        if not hasattr(getattr(current, "_self_wrapper", None), _MARK):
            log.warning("Application.__init__ was re-wrapped after lane instrumentation; not unwrapping")
            return
        unwrap(web_app.Application, "__init__")

