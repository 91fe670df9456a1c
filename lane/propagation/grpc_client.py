"""gRPC client side: every outgoing RPC carries the caller's context, its lane first.

`LaneClientInterceptor` (sync: ``grpc.intercept_channel(channel, LaneClientInterceptor())``) and
`lane_aio_client_interceptors` (``grpc.aio.insecure_channel(target, interceptors=[...])``) rewrite
each call's metadata with `lane.propagation.grpc_metadata.outgoing_metadata`, for all four RPC kinds: the
global propagators' fields (trace context, baggage) where the call has none yet, then the lane in
the tag key and first in one ``baggage`` entry. A valid tag the app set on the call itself wins
over the current context (it chose that lane deliberately); invalid values are removed.

Composing with OpenTelemetry's gRPC instrumentation: ``GrpcAioInstrumentorClient`` puts its
interceptors *before* the channel's own, so lane's run after it and have the last word on the
lane (its ``traceparent`` is kept). ``GrpcInstrumentorClient`` wraps the channel at creation, so a
sync lane interceptor added with ``intercept_channel`` runs before it; the continuation is then
called with the chosen lane attached, so the stock baggage propagator it runs writes the same lane.

The four aio objects exist because ``grpc.aio`` files each interceptor under the first of the four
interceptor kinds it is an instance of; the sync channel accepts one object for all four.
"""

from __future__ import annotations

import logging
from collections import namedtuple
from collections.abc import Callable
from types import GeneratorType
from typing import Any

import grpc
from opentelemetry.context import Context, attach, detach, get_current

from lane.propagation.grpc_metadata import iterate_in, outgoing_metadata
from lane.propagation.propagator import LanePropagator, global_lane_propagator, propagator_from_env

__all__ = [
    "LaneAioClientBase",
    "LaneAioStreamStreamInterceptor",
    "LaneAioStreamUnaryInterceptor",
    "LaneAioUnaryStreamInterceptor",
    "LaneAioUnaryUnaryInterceptor",
    "LaneClientInterceptor",
    "lane_aio_client_interceptors",
]

log = logging.getLogger(__name__)

_Fields = namedtuple("_Fields", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"))


class _CallDetails(_Fields, grpc.ClientCallDetails):  # type: ignore[misc]
    """The sync channel's call details with new metadata (grpc offers no public constructor)."""


class _Injector:
    """The propagator choice and metadata rewrite every lane client interceptor shares."""

    def __init__(self, propagator: LanePropagator | None, inject_global: bool) -> None:
        self._propagator = propagator
        self._fallback = propagator or propagator_from_env()
        self._inject_global = inject_global

    def prepare(self, details: Any, rebuild: Callable[[Any, tuple[tuple[str, Any], ...]], Any]) -> tuple[Any, Context]:
        """New call details carrying the lane, and the context to call the next step in. Never raises."""
        lanes = self._propagator or global_lane_propagator() or self._fallback
        try:
            carrier, ctx = outgoing_metadata(details.metadata, lanes, inject_global=self._inject_global)
            return rebuild(details, carrier.as_tuple()), ctx
        except Exception:  # a lane problem must never fail the app's call
            log.exception("could not set the lane on an RPC to %s", str(getattr(details, "method", ""))[:64])
            return details, get_current()


def _sync_details(details: Any, metadata: tuple[tuple[str, Any], ...]) -> _CallDetails:
    return _CallDetails(
        details.method,
        details.timeout,
        metadata,
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


def _aio_details(details: Any, metadata: tuple[tuple[str, Any], ...]) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, grpc.aio.Metadata(*metadata), details.credentials, details.wait_for_ready
    )


class LaneClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Makes every RPC of a sync channel carry the caller's context and lane.

    *propagator* names the tag key and baggage key; by default the ``lane`` member of the global
    propagators (``OTEL_PROPAGATORS``), else one named by ``LANE_TAG_HEADER`` / ``LANE_BAGGAGE_KEY``
    — the same choice the server interceptors make. *inject_global* also injects the other global
    propagators' fields the call does not carry yet.
    """

    def __init__(self, propagator: LanePropagator | None = None, *, inject_global: bool = True) -> None:
        self._injector = _Injector(propagator, inject_global)

    def _call(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any) -> Any:
        new, ctx = self._injector.prepare(details, _sync_details)
        token = attach(ctx)
        try:
            result = continuation(new, request)
        finally:
            detach(token)
        if isinstance(result, GeneratorType):  # an inner interceptor's stream (OpenTelemetry's injects
            return iterate_in(ctx, result)  # when first iterated): run it in the lane too
        return result

    def intercept_unary_unary(self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any) -> Any:
        return self._call(continuation, client_call_details, request)

    def intercept_unary_stream(self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any) -> Any:
        return self._call(continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._call(continuation, client_call_details, request_iterator)

    def intercept_stream_stream(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._call(continuation, client_call_details, request_iterator)


class LaneAioClientBase:
    """What the four ``grpc.aio`` lane interceptors share (an ``isinstance`` check finds any of them)."""

    def __init__(self, propagator: LanePropagator | None = None, *, inject_global: bool = True) -> None:
        self._injector = _Injector(propagator, inject_global)

    async def _call(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any) -> Any:
        new, ctx = self._injector.prepare(details, _aio_details)
        token = attach(ctx)
        try:
            return await continuation(new, request)
        finally:
            detach(token)


class LaneAioUnaryUnaryInterceptor(LaneAioClientBase, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._call(continuation, client_call_details, request)


class LaneAioUnaryStreamInterceptor(LaneAioClientBase, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._call(continuation, client_call_details, request)


class LaneAioStreamUnaryInterceptor(LaneAioClientBase, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await self._call(continuation, client_call_details, request_iterator)


class LaneAioStreamStreamInterceptor(LaneAioClientBase, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await self._call(continuation, client_call_details, request_iterator)


def lane_aio_client_interceptors(
    propagator: LanePropagator | None = None, *, inject_global: bool = True
) -> list[grpc.aio.ClientInterceptor]:
    """The four ``grpc.aio`` client interceptors (one per RPC kind), sharing one configuration."""
    return [
        kind(propagator, inject_global=inject_global)
        for kind in (
            LaneAioUnaryUnaryInterceptor,
            LaneAioUnaryStreamInterceptor,
            LaneAioStreamUnaryInterceptor,
            LaneAioStreamStreamInterceptor,
        )
    ]
