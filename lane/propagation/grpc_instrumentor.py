"""`LaneGrpcInstrumentor`: lane's gRPC interceptors on every server and channel, with no app change.

It wraps the six factories an app makes servers and channels with — ``grpc.server``,
``grpc.insecure_channel``, ``grpc.secure_channel`` and their ``grpc.aio`` namesakes — so that each
server gets `lane.propagation.grpc_server`'s interceptor and each channel `lane.propagation.grpc_client`'s. Lane's are added
*last* to the list of interceptors: on a server OpenTelemetry's (which it puts first) then runs
outside and its server span stays the parent; on an aio channel lane's run after OpenTelemetry's
and have the last word on the lane. A sync channel is wrapped with ``grpc.intercept_channel``
(what OpenTelemetry does too); whichever runs first, both write the same lane (see
`lane.propagation.grpc_client`). A server or channel whose interceptors already include lane's is left alone.

Only factories looked up at call time are covered: ``from grpc import server`` done before
instrumenting keeps the plain function (OpenTelemetry's gRPC instrumentation has the same limit).
Opt-in, idempotent, undone by ``uninstrument()``; `lane.propagation.instrumentor.LaneInstrumentor` enables it
when ``grpcio`` is installed, so ``opentelemetry-instrument`` covers gRPC apps too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any, Final

import grpc
import grpc.aio
import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap

from lane.propagation.grpc_client import (
    LaneAioClientBase,
    LaneClientInterceptor,
    lane_aio_client_interceptors,
)
from lane.propagation.grpc_server import LaneAioServerInterceptor, LaneServerInterceptor
from lane.propagation.propagator import LanePropagator

__all__ = ["LaneGrpcInstrumentor"]

log = logging.getLogger(__name__)

_MARK: Final = "_lane_grpc_wrapper"
_LANE_KINDS: Final = (LaneServerInterceptor, LaneAioServerInterceptor, LaneClientInterceptor, LaneAioClientBase)

_SERVER: Final = "server"  # grpc.server and grpc.aio.server take ``interceptors`` third
_AIO_CHANNELS: Final = (("insecure_channel", 3), ("secure_channel", 4))  # (factory, its ``interceptors`` index)
_SYNC_CHANNELS: Final = ("insecure_channel", "secure_channel")


def _with_interceptors(args: tuple[Any, ...], kwargs: dict[str, Any], position: int, added: list[Any]) -> tuple[
        tuple[Any, ...], dict[str, Any]]:
    """*args*/*kwargs* with *added* appended to the ``interceptors`` argument (given by name or position)."""
    current = args[position] if len(args) > position else kwargs.get("interceptors")
    chain = list(current or ())
    if any(isinstance(i, _LANE_KINDS) for i in chain):
        return args, kwargs
    chain.extend(added)
    if len(args) > position:
        return (*args[:position], chain, *args[position + 1:]), kwargs
    return args, {**kwargs, "interceptors": chain}


class LaneGrpcInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Adds lane's interceptors to every gRPC server and channel made after instrumenting.

    ``instrument(propagator=LanePropagator(...))`` names the tag key and baggage key; by default the
    interceptors use the ``lane`` member of the global propagators, else ``LANE_TAG_HEADER`` /
    ``LANE_BAGGAGE_KEY``.
    """

    _wrapped: tuple[tuple[Any, str], ...] = ()

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("grpcio >= 1.60",)

    def _instrument(self, **kwargs: Any) -> None:
        lanes: LanePropagator | None = kwargs.get("propagator")

        def sync_server(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
            args, kw = _with_interceptors(args, kw, 2, [LaneServerInterceptor(lanes)])
            return wrapped(*args, **kw)

        def aio_server(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
            args, kw = _with_interceptors(args, kw, 2, [LaneAioServerInterceptor(lanes)])
            return wrapped(*args, **kw)

        def aio_channel(position: int) -> Callable[..., Any]:
            def make(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
                args, kw = _with_interceptors(args, kw, position, lane_aio_client_interceptors(lanes))
                return wrapped(*args, **kw)

            return make

        def sync_channel(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
            return grpc.intercept_channel(wrapped(*args, **kw), LaneClientInterceptor(lanes))

        plan: list[tuple[Any, str, Callable[..., Any]]] = [(grpc, _SERVER, sync_server), (grpc.aio, _SERVER, aio_server)]
        plan += [(grpc, name, sync_channel) for name in _SYNC_CHANNELS]
        plan += [(grpc.aio, name, aio_channel(position)) for name, position in _AIO_CHANNELS]
        for module, name, wrapper in plan:
            setattr(wrapper, _MARK, True)
            wrapt.wrap_function_wrapper(module, name, wrapper)
        self._wrapped = tuple((module, name) for module, name, _ in plan)

    def _uninstrument(self, **kwargs: Any) -> None:
        for module, name in self._wrapped:
            current = getattr(module, name)
            if not hasattr(getattr(current, "_self_wrapper", None), _MARK):
                log.warning("%s.%s was replaced after lane instrumentation; not unwrapping", module.__name__, name)
                continue
            unwrap(module, name)
        self._wrapped = ()
