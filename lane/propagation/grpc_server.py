"""gRPC server side: each RPC's handler runs in its caller's whole context, lane included.

`LaneServerInterceptor` (``grpc.server(..., interceptors=[...])``) and `LaneAioServerInterceptor`
(``grpc.aio.server(interceptors=[...])``) extract the context from the RPC's invocation metadata with
the global propagators (trace context, *all* the baggage) and then the lane, last
(`lane.propagation.grpc_metadata.incoming_context`), and make it current for the handler — unary and streaming,
sync and async. Everything the handler does in it (calls through `lane.propagation.grpc_client`'s interceptors,
`lane.propagation.propagator.current_lane()`, spans) sees the lane and the caller's other baggage members.

Why lane has its own: OpenTelemetry's gRPC server interceptor attaches what the global propagators
extract, but without ``lane`` in ``OTEL_PROPAGATORS`` it never reads the tag key, keeps an invalid
lane from ``baggage``, and keeps only the last of repeated ``baggage`` entries. The two compose in
either order: outside this one, its server span stays the parent of the handler's work.

Streaming handlers are iterated one step at a time inside the context (attach, ``next``, detach),
so the context never stays attached while gRPC holds the iterator between messages, and a stream
cancelled half-way detaches in the task or thread that attached.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from opentelemetry.context import Context, attach, detach, get_current

from lane.propagation.grpc_metadata import incoming_context, iterate_in
from lane.propagation.propagator import LanePropagator, global_lane_propagator, propagator_from_env

__all__ = ["LaneAioServerInterceptor", "LaneServerInterceptor", "wrap_handler"]

log = logging.getLogger(__name__)

Behavior = Callable[..., Any]


class _Extractor:
    """The propagator choice both interceptors share (as `lane.propagation.aiohttp_server.lane_middleware`)."""

    def __init__(self, propagator: LanePropagator | None, extract_global: bool) -> None:
        self._propagator = propagator
        self._fallback = propagator or propagator_from_env()
        self._extract_global = extract_global

    def context_of(self, details: grpc.HandlerCallDetails) -> Context:
        lanes = self._propagator or global_lane_propagator() or self._fallback
        try:
            return incoming_context(getattr(details, "invocation_metadata", None), lanes,
                                    extract_global=self._extract_global)
        except Exception:  # a broken third-party propagator must not fail the RPC
            log.exception("could not extract the context of an RPC to %s", str(getattr(details, "method", ""))[:64])
            return get_current()


class LaneServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Runs every handler of a sync ``grpc.server`` in its RPC's context and lane.

    *propagator* names the tag key and baggage key; by default the ``lane`` member of the global
    propagators (``OTEL_PROPAGATORS``), else one named by ``LANE_TAG_HEADER`` / ``LANE_BAGGAGE_KEY``.
    *extract_global* also applies the other global propagators before the lane's.
    """

    def __init__(self, propagator: LanePropagator | None = None, *, extract_global: bool = True) -> None:
        self._extractor = _Extractor(propagator, extract_global)

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(handler_call_details)
        return wrap_handler(handler, lambda: self._extractor.context_of(handler_call_details))


class LaneAioServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """`LaneServerInterceptor` for ``grpc.aio.server``; same arguments."""

    def __init__(self, propagator: LanePropagator | None = None, *, extract_global: bool = True) -> None:
        self._extractor = _Extractor(propagator, extract_global)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        return wrap_handler(handler, lambda: self._extractor.context_of(handler_call_details))


def wrap_handler(handler: Any, context_of: Callable[[], Context]) -> Any:
    """*handler* (an ``RpcMethodHandler``, or None for an unknown method) with its behavior run in
    ``context_of()``, computed when the RPC starts (inside any outer interceptor's context)."""
    if handler is None:
        return None
    if handler.request_streaming and handler.response_streaming:
        behavior, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        behavior, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        behavior, factory = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        behavior, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler
    return factory(
        _in_context(behavior, context_of, handler.response_streaming),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _in_context(behavior: Behavior, context_of: Callable[[], Context], streams: bool) -> Behavior:
    """A behavior of the same kind (gRPC dispatches on it) that runs *behavior* in ``context_of()``."""
    if inspect.isasyncgenfunction(behavior):

        async def stream_async(request: Any, servicer_context: Any) -> AsyncIterator[Any]:
            ctx = context_of()
            responses = behavior(request, servicer_context)
            try:
                while True:
                    token = attach(ctx)
                    try:
                        item = await anext(responses)
                    except StopAsyncIteration:
                        return
                    finally:
                        detach(token)
                    yield item
            finally:
                token = attach(ctx)
                try:
                    await responses.aclose()  # the handler's own finally blocks still see its context
                finally:
                    detach(token)

        return stream_async

    if inspect.iscoroutinefunction(behavior):

        async def call_async(request: Any, servicer_context: Any) -> Any:
            token = attach(context_of())
            try:
                return await behavior(request, servicer_context)
            finally:
                detach(token)

        return call_async

    def call(request: Any, servicer_context: Any) -> Any:
        ctx = context_of()
        token = attach(ctx)
        try:
            result = behavior(request, servicer_context)
        finally:
            detach(token)
        if streams and isinstance(result, Iterator):  # a sync response stream (a generator's body runs on next())
            return iterate_in(ctx, result)
        return result

    return call

