"""`LaneInstrumentor`: what ``opentelemetry-instrument`` loads so a plain aiohttp app keeps its lane.

``OTEL_PROPAGATORS=tracecontext,baggage,lane opentelemetry-instrument python app.py`` finds every
``opentelemetry_instrumentor`` entry point of the installed distributions and calls
``instrument()`` on each; lane's is ``lane`` → this class (disable it with
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=lane``). Four steps, each one closing a gap the stock
instrumentations leave:

* **server** — `lane.propagation.aiohttp_server.LaneServerInstrumentor`: every ``web.Application`` runs its
  handlers in the request's extracted context, baggage included (OpenTelemetry's aiohttp server
  instrumentation, when installed, keeps only the trace parent; without it nothing is extracted);
* **client** — `lane.propagation.aiohttp_client.LaneClientInstrumentor`: every ``ClientSession`` request gets
  the lane in the tag header and first in ``baggage`` after every trace hook has run (the stock
  aiohttp client instrumentation injects the rest of the context through the global propagators);
* **gRPC** (when ``grpcio`` is installed) — `lane.propagation.grpc_instrumentor.LaneGrpcInstrumentor`: every
  ``grpc``/``grpc.aio`` server runs its handlers in the RPC's context, every channel sends the lane;
* **order** — `lane.propagation.propagator.lane_last`: the global propagators run the lane propagator last,
  so ``lane,baggage,tracecontext`` and ``tracecontext,baggage,lane`` give the same lane for every
  library that propagates through the global propagators (requests, httpx, ...), not only aiohttp.

All of them use the same lane propagator: the ``lane`` member of ``OTEL_PROPAGATORS`` if listed,
else one named by ``LANE_TAG_HEADER`` / ``LANE_BAGGAGE_KEY``. ``uninstrument()`` undoes what this
instrumentor did and nothing else (an instrumentor the app had already enabled stays enabled).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from importlib.util import find_spec
from typing import Any

from opentelemetry import propagate
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.propagators.textmap import TextMapPropagator

from lane.propagation.aiohttp_client import LaneClientInstrumentor
from lane.propagation.aiohttp_server import LaneServerInstrumentor
from lane.propagation.propagator import LanePropagator, global_lane_propagator, lane_last, propagator_from_env

__all__ = ["LaneInstrumentor"]

log = logging.getLogger(__name__)


class LaneInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """aiohttp server and client lane propagation, and lane-last global propagators, in one switch.

    ``instrument(propagator=LanePropagator(...))`` overrides the propagator that is used.
    """

    _replaced: tuple[TextMapPropagator, TextMapPropagator] | None = None  # (before, ours)
    _enabled: tuple[BaseInstrumentor, ...] = ()

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("aiohttp >= 3.12, < 4",)

    def _instrument(self, **kwargs: Any) -> None:
        before = propagate.get_global_textmap()
        ordered = lane_last(before)
        if ordered is not before:
            propagate.set_global_textmap(ordered)
            self._replaced = (before, ordered)
        lanes: LanePropagator = kwargs.get("propagator") or global_lane_propagator() or propagator_from_env()
        enabled = []
        for part in (LaneServerInstrumentor(), LaneClientInstrumentor(), *_grpc_parts()):
            if not part.is_instrumented_by_opentelemetry:
                part.instrument(propagator=lanes, skip_dep_check=True)
                enabled.append(part)
        self._enabled = tuple(enabled)

    def _uninstrument(self, **kwargs: Any) -> None:
        for part in reversed(self._enabled):
            part.uninstrument()
        self._enabled = ()
        if self._replaced is not None:
            before, ours = self._replaced
            if propagate.get_global_textmap() is ours:
                propagate.set_global_textmap(before)
            else:
                log.warning("the global propagators were replaced after lane instrumentation; leaving them")
            self._replaced = None


def _grpc_parts() -> tuple[BaseInstrumentor, ...]:
    """The gRPC step, only where ``grpcio`` is installed (an aiohttp-only app never imports it)."""
    if find_spec("grpc") is None:
        return ()
    from lane.propagation.grpc_instrumentor import LaneGrpcInstrumentor

    return (LaneGrpcInstrumentor(),)
