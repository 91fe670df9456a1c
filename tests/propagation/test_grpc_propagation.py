"""The lane travels through real gRPC chains on 127.0.0.1: client → A → B.

Covers lane/propagation/grpc_server.py, lane/propagation/grpc_client.py and lane/propagation/grpc_metadata.py. Every service is a real
``grpcio`` server (sync ``grpc.server`` or ``grpc.aio.server``) with generic handlers and raw bytes
messages (no protoc). The outside client sends hand-written metadata through a channel that has no
interceptor of ours; A runs lane's server interceptor and calls B through lane's client
interceptors with the same RPC kind; B has no lane code and answers with the metadata it received,
so every assertion is about what really went over the wire. Each case runs alone and under
OpenTelemetry's gRPC instrumentation (``opentelemetry-instrumentation-grpc``, real SDK
TracerProvider), installed before the servers and A's channel are made and uninstalled after.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry import baggage
from opentelemetry.instrumentation.grpc import (
    GrpcAioInstrumentorClient,
    GrpcAioInstrumentorServer,
    GrpcInstrumentorClient,
    GrpcInstrumentorServer,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import lane
from lane.propagation.grpc_client import LaneClientInterceptor, lane_aio_client_interceptors
from lane.propagation.grpc_instrumentor import LaneGrpcInstrumentor
from lane.propagation.grpc_server import LaneAioServerInterceptor, LaneServerInterceptor
from lane.propagation.instrumentor import LaneInstrumentor

KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
Json = dict[str, Any]
Metadata = tuple[tuple[str, str], ...]


def _record(metadata: Any) -> bytes:
    """B's answer: the tag, baggage and traceparent entries it received, every value in order."""
    seen: dict[str, list[str]] = {"x-mse-tag": [], "baggage": [], "traceparent": []}
    for key, value in metadata or ():
        if key in seen:
            seen[key].append(value)
    return json.dumps(seen).encode()


def _pack(b_answer: bytes) -> bytes:
    """A's answer: what A's handler saw in its context, wrapped around B's answer."""
    return json.dumps({"a_lane": lane.current_lane(), "a_user": baggage.get_baggage("user"),
                       "b": json.loads(b_answer)}).encode()


# --- B: records its metadata (no lane code) --------------------------------------------------


def _b_handlers() -> grpc.GenericRpcHandler:
    def unary_unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return _record(context.invocation_metadata())

    def unary_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for _ in range(2):
            yield _record(context.invocation_metadata())

    def stream_unary(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        for _ in requests:
            pass
        return _record(context.invocation_metadata())

    def stream_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for _ in requests:
            yield _record(context.invocation_metadata())

    return grpc.method_handlers_generic_handler("lanetest.B", {
        "unary_unary": grpc.unary_unary_rpc_method_handler(unary_unary),
        "unary_stream": grpc.unary_stream_rpc_method_handler(unary_stream),
        "stream_unary": grpc.stream_unary_rpc_method_handler(stream_unary),
        "stream_stream": grpc.stream_stream_rpc_method_handler(stream_stream),
    })


def _b_aio_handlers() -> grpc.GenericRpcHandler:
    """B for ``grpc.aio`` (OpenTelemetry's aio server interceptor awaits every handler: async only)."""

    async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return _record(context.invocation_metadata())

    async def unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for _ in range(2):
            yield _record(context.invocation_metadata())

    async def stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        async for _ in requests:
            pass
        return _record(context.invocation_metadata())

    async def stream_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield _record(context.invocation_metadata())

    return grpc.method_handlers_generic_handler("lanetest.B", {
        "unary_unary": grpc.unary_unary_rpc_method_handler(unary_unary),
        "unary_stream": grpc.unary_stream_rpc_method_handler(unary_stream),
        "stream_unary": grpc.stream_unary_rpc_method_handler(stream_unary),
        "stream_stream": grpc.stream_stream_rpc_method_handler(stream_stream),
    })


# --- A: lane server interceptor; calls B through lane client interceptors ----------------------


def _a_sync_handlers(to_b: grpc.Channel) -> grpc.GenericRpcHandler:
    def unary_unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return _pack(to_b.unary_unary("/lanetest.B/unary_unary")(request, timeout=10))

    def unary_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for answer in to_b.unary_stream("/lanetest.B/unary_stream")(request, timeout=10):
            yield _pack(answer)  # the context is checked at every message of the stream

    def stream_unary(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return _pack(to_b.stream_unary("/lanetest.B/stream_unary")(iter(list(requests)), timeout=10))

    def stream_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for answer in to_b.stream_stream("/lanetest.B/stream_stream")(iter(list(requests)), timeout=10):
            yield _pack(answer)

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata((("x-why", str(lane.current_lane())),))
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    return grpc.method_handlers_generic_handler("lanetest.A", {
        "unary_unary": grpc.unary_unary_rpc_method_handler(unary_unary),
        "unary_stream": grpc.unary_stream_rpc_method_handler(unary_stream),
        "stream_unary": grpc.stream_unary_rpc_method_handler(stream_unary),
        "stream_stream": grpc.stream_stream_rpc_method_handler(stream_stream),
        "fail": grpc.unary_unary_rpc_method_handler(fail),
    })


def _a_aio_handlers(to_b: grpc.aio.Channel) -> grpc.GenericRpcHandler:
    async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return _pack(await to_b.unary_unary("/lanetest.B/unary_unary")(request, timeout=10))

    async def unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for answer in to_b.unary_stream("/lanetest.B/unary_stream")(request, timeout=10):
            yield _pack(answer)

    async def stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        received = [r async for r in requests]
        return _pack(await to_b.stream_unary("/lanetest.B/stream_unary")(iter(received), timeout=10))

    async def stream_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        received = [r async for r in requests]
        async for answer in to_b.stream_stream("/lanetest.B/stream_stream")(iter(received), timeout=10):
            yield _pack(answer)

    async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        context.set_trailing_metadata((("x-why", str(lane.current_lane())),))
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    return grpc.method_handlers_generic_handler("lanetest.A", {
        "unary_unary": grpc.unary_unary_rpc_method_handler(unary_unary),
        "unary_stream": grpc.unary_stream_rpc_method_handler(unary_stream),
        "stream_unary": grpc.stream_unary_rpc_method_handler(stream_unary),
        "stream_stream": grpc.stream_stream_rpc_method_handler(stream_stream),
        "fail": grpc.unary_unary_rpc_method_handler(fail),
    })


# --- chains ----------------------------------------------------------------------------------


@dataclass
class Otel:
    """OpenTelemetry's gRPC instrumentation with a real SDK provider, or None for lane alone."""

    exporter: InMemorySpanExporter
    provider: TracerProvider

    def span_ids(self) -> set[str]:
        return {f"{s.context.span_id:016x}" for s in self.exporter.get_finished_spans()}


def _otel(enabled: bool) -> Otel | None:
    if not enabled:
        return None
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Otel(exporter, provider)


def _instrument(instrumentor: Any, otel: Otel) -> Any:
    instrumentor.instrument(tracer_provider=otel.provider)
    return instrumentor


@contextmanager
def sync_chain(otel: Otel | None, explicit: bool = True) -> Iterator[grpc.Channel]:
    """B and A as sync servers; yields a plain channel to A. Everything is stopped on exit.

    *explicit*: A lists lane's interceptors itself (else an instrumentor must add them)."""
    servers: list[grpc.Server] = []
    undo: list[Any] = []
    try:
        if otel:
            undo.append(_instrument(GrpcInstrumentorServer(), otel))
        b = grpc.server(ThreadPoolExecutor(max_workers=16))
        servers.append(b)
        b.add_generic_rpc_handlers((_b_handlers(),))
        b_port = b.add_insecure_port("127.0.0.1:0")
        b.start()
        if otel:
            undo.append(_instrument(GrpcInstrumentorClient(), otel))
        to_b = grpc.insecure_channel(f"127.0.0.1:{b_port}")
        if explicit:
            to_b = grpc.intercept_channel(to_b, LaneClientInterceptor())
        a = grpc.server(ThreadPoolExecutor(max_workers=16), interceptors=[LaneServerInterceptor()] if explicit else None)
        servers.append(a)
        a.add_generic_rpc_handlers((_a_sync_handlers(to_b),))
        a_port = a.add_insecure_port("127.0.0.1:0")
        a.start()
        for instrumentor in undo:  # the test's own channel carries only what the test wrote
            instrumentor.uninstrument()
        undo.clear()
        with grpc.insecure_channel(f"127.0.0.1:{a_port}") as to_a:
            yield to_a
        to_b.close()
    finally:
        for instrumentor in undo:
            instrumentor.uninstrument()
        for server in servers:
            server.stop(None).wait(5)



@asynccontextmanager
async def aio_chain(otel: Otel | None, explicit: bool = True) -> AsyncIterator[grpc.aio.Channel]:
    """B and A as ``grpc.aio`` servers; yields a plain channel to A. Everything is stopped on exit."""
    servers: list[grpc.aio.Server] = []
    channels: list[grpc.aio.Channel] = []
    undo: list[Any] = []
    try:
        b = grpc.aio.server()
        servers.append(b)
        b.add_generic_rpc_handlers((_b_aio_handlers(),))
        b_port = b.add_insecure_port("127.0.0.1:0")
        await b.start()
        if otel:
            undo.append(_instrument(GrpcAioInstrumentorServer(), otel))
            undo.append(_instrument(GrpcAioInstrumentorClient(), otel))
        to_b = grpc.aio.insecure_channel(f"127.0.0.1:{b_port}", interceptors=lane_aio_client_interceptors() if explicit else None)
        channels.append(to_b)
        a = grpc.aio.server(interceptors=[LaneAioServerInterceptor()] if explicit else None)
        servers.append(a)
        a.add_generic_rpc_handlers((_a_aio_handlers(to_b),))
        a_port = a.add_insecure_port("127.0.0.1:0")
        await a.start()
        for instrumentor in undo:  # the test's own channel carries only what the test wrote
            instrumentor.uninstrument()
        undo.clear()
        to_a = grpc.aio.insecure_channel(f"127.0.0.1:{a_port}")
        channels.append(to_a)
        yield to_a
    finally:
        for instrumentor in undo:
            instrumentor.uninstrument()
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.stop(None)


def _sync_call(to_a: grpc.Channel, kind: str, metadata: Metadata) -> list[Json]:
    method = getattr(to_a, kind)(f"/lanetest.A/{kind}")
    requests = iter([b"one", b"two"])
    if kind == "unary_unary":
        answers = [method(b"one", metadata=metadata, timeout=10)]
    elif kind == "unary_stream":
        answers = list(method(b"one", metadata=metadata, timeout=10))
    elif kind == "stream_unary":
        answers = [method(requests, metadata=metadata, timeout=10)]
    else:
        answers = list(method(requests, metadata=metadata, timeout=10))
    return [json.loads(a) for a in answers]


async def _aio_call(to_a: grpc.aio.Channel, kind: str, metadata: Metadata) -> list[Json]:
    method = getattr(to_a, kind)(f"/lanetest.A/{kind}")
    requests = iter([b"one", b"two"])
    if kind == "unary_unary":
        answers = [await method(b"one", metadata=metadata, timeout=10)]
    elif kind == "unary_stream":
        answers = [a async for a in method(b"one", metadata=metadata, timeout=10)]
    elif kind == "stream_unary":
        answers = [await method(requests, metadata=metadata, timeout=10)]
    else:
        answers = [a async for a in method(requests, metadata=metadata, timeout=10)]
    return [json.loads(a) for a in answers]


async def _call(mode: str, otel: Otel | None, kind: str, metadata: Metadata) -> list[Json]:
    """One RPC of *kind* through a fresh chain of *mode* (sync servers are driven from a thread)."""
    if mode == "aio":
        async with aio_chain(otel) as to_a:
            return await _aio_call(to_a, kind, metadata)

    def run() -> list[Json]:
        with sync_chain(otel) as to_a:
            return _sync_call(to_a, kind, metadata)

    return await asyncio.to_thread(run)


def _assert_lane(answers: list[Json], lane_: str | None, user: str | None = "alice") -> None:
    assert answers
    for answer in answers:
        b = answer["b"]
        assert answer["a_lane"] == lane_
        assert answer["a_user"] == user
        assert b["x-mse-tag"] == ([lane_] if lane_ else [])
        assert len(b["baggage"]) <= 1  # one merged entry
        members = [m.strip() for m in b["baggage"][0].split(",")] if b["baggage"] else []
        if lane_:
            assert members[0] == f"x-mse-tag={lane_}"  # lane first
        else:
            assert not any(m.startswith("x-mse-tag") for m in members)
        if user:
            assert f"user={user}" in members


# --- the lane and the other baggage members reach B ---------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("with_otel", [False, True], ids=["lane-alone", "with-otel-grpc"])
@pytest.mark.parametrize("mode", ["aio", "sync"])
@pytest.mark.parametrize("kind", KINDS)
async def test_tag_and_baggage_reach_the_next_service(kind: str, mode: str, with_otel: bool) -> None:
    otel = _otel(with_otel)
    metadata = (("x-mse-tag", "gray"), ("baggage", "user=alice,x-mse-tag=gray"), ("traceparent", TRACEPARENT))
    answers = await _call(mode, otel, kind, metadata)
    assert len(answers) == (1 if kind.endswith("unary") else 2)
    _assert_lane(answers, "gray")
    for answer in answers:
        (traceparent,) = answer["b"]["traceparent"]
        _, trace_id, parent, _ = traceparent.split("-")
        assert trace_id == TRACE_ID  # one trace from the client to B
        if otel is None:
            assert parent == CLIENT_SPAN  # A's handler ran in the client's remote span
    if otel is not None:  # B's parent is one of A's spans: lane kept what OpenTelemetry injected
        deadline = time.monotonic() + 5
        while answers[0]["b"]["traceparent"][0].split("-")[2] not in otel.span_ids():
            assert time.monotonic() < deadline, "B's parent span is none of the exported spans"
            await asyncio.sleep(0.05)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("with_otel", [False, True], ids=["lane-alone", "with-otel-grpc"])
@pytest.mark.parametrize("mode", ["aio", "sync"])
async def test_status_details_and_trailers_pass_the_server_interceptor(mode: str, with_otel: bool) -> None:
    metadata = (("x-mse-tag", "gray"),)
    otel = _otel(with_otel)
    if mode == "aio":
        async with aio_chain(otel) as to_a:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await to_a.unary_unary("/lanetest.A/fail")(b"", metadata=metadata, timeout=10)
            error: Any = caught.value
            trailers = tuple(error.trailing_metadata())
    else:
        def run() -> tuple[Any, Any]:
            with sync_chain(otel) as to_a:
                with pytest.raises(grpc.RpcError) as caught:
                    to_a.unary_unary("/lanetest.A/fail")(b"", metadata=metadata, timeout=10)
                return caught.value, tuple(caught.value.trailing_metadata())

        error, trailers = await asyncio.to_thread(run)
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details() == "no such thing"
    assert ("x-why", "gray") in trailers  # set by the handler, in its lane


# --- what the lane is when the metadata is odd -----------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["aio", "sync"])
@pytest.mark.parametrize("kind", ["unary_unary", "stream_stream"])
@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((("baggage", "user=alice,x-mse-tag=gray"),), "gray"),  # a middle service dropped the tag
        ((("x-mse-tag", "Gray_2!"), ("baggage", "user=alice")), None),  # the seed's downgrade
        ((("x-mse-tag", "Gray_2!"), ("baggage", "x-mse-tag=blue,user=alice")), "blue"),
        ((("baggage", "x-mse-tag=not%20a%20lane,user=alice"),), None),
        ((("x-mse-tag", "gray"), ("baggage", "x-mse-tag=blue,user=alice")), "gray"),  # the tag wins
        ((("baggage", "user=alice"), ("baggage", "x-mse-tag=gray")), "gray"),  # split over two entries
    ],
    ids=["baggage-only", "invalid-tag-is-default", "invalid-tag-valid-baggage", "invalid-baggage",
         "tag-wins", "split-baggage"],
)
async def test_lane_from_odd_metadata(metadata: Metadata, expected: str | None, kind: str, mode: str) -> None:
    answers = await _call(mode, None, kind, metadata)
    _assert_lane(answers, expected)


# --- concurrency -------------------------------------------------------------------------------

PERSONAS: list[tuple[str | None, Metadata]] = [
    ("gray", (("x-mse-tag", "gray"), ("baggage", "user=alice"))),
    ("blue", (("baggage", "x-mse-tag=blue,user=alice"),)),
    (None, (("baggage", "user=alice"),)),
    (None, (("x-mse-tag", "-bad-"), ("baggage", "user=alice"))),
    ("green", (("x-mse-tag", "green"), ("baggage", "user=alice,x-mse-tag=green"))),
]


def _mix(n: int) -> list[tuple[str, str | None, Metadata]]:
    return [(KINDS[i % len(KINDS)], *PERSONAS[(i * 3) % len(PERSONAS)]) for i in range(n)]


@pytest.mark.timeout(90)
async def test_fifty_concurrent_aio_calls_never_cross_lanes() -> None:
    calls = _mix(50)
    async with aio_chain(None) as to_a:
        results = await asyncio.gather(*(_aio_call(to_a, kind, md) for kind, _, md in calls))
    for (_, expected, _), answers in zip(calls, results, strict=True):
        _assert_lane(answers, expected)


@pytest.mark.timeout(90)
def test_fifty_concurrent_sync_calls_never_cross_lanes() -> None:
    calls = _mix(50)
    with sync_chain(None) as to_a, ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda call: _sync_call(to_a, call[0], call[2]), calls))
    for (_, expected, _), answers in zip(calls, results, strict=True):
        _assert_lane(answers, expected)


def test_import_lane_does_not_import_grpc() -> None:
    probe = "import sys, lane; print(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc'))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


# --- instrumentors ------------------------------------------------------------------------------

FACTORIES = [(grpc, "server"), (grpc, "insecure_channel"), (grpc, "secure_channel"),
             (grpc.aio, "server"), (grpc.aio, "insecure_channel"), (grpc.aio, "secure_channel")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("order", ["lane-only", "otel-then-lane", "lane-then-otel", "lane-instrumentor"])
@pytest.mark.parametrize("mode", ["aio", "sync"])
@pytest.mark.parametrize("kind", ["unary_unary", "unary_stream", "stream_stream"])
async def test_instrumentors_add_the_interceptors_to_plain_servers_and_channels(
    kind: str, mode: str, order: str
) -> None:
    originals = [getattr(module, name) for module, name in FACTORIES]
    otel = _otel(True)
    assert otel is not None
    stock = [GrpcAioInstrumentorServer(), GrpcAioInstrumentorClient()] if mode == "aio" else [
        GrpcInstrumentorServer(), GrpcInstrumentorClient()]
    lanes: list[Any] = [LaneInstrumentor() if order == "lane-instrumentor" else LaneGrpcInstrumentor()]
    steps = {"lane-only": lanes, "otel-then-lane": stock + lanes, "lane-then-otel": lanes + stock,
             "lane-instrumentor": lanes}[order]
    done: list[Any] = []
    try:
        for instrumentor in steps:
            instrumentor.instrument(tracer_provider=otel.provider)
            done.append(instrumentor)
        metadata = (("x-mse-tag", "gray"), ("baggage", "user=alice,x-mse-tag=gray"), ("traceparent", TRACEPARENT))
        if mode == "aio":
            async with aio_chain(None, explicit=False) as to_a:
                answers = await _aio_call(to_a, kind, metadata)
        else:
            def run() -> list[Json]:
                with sync_chain(None, explicit=False) as to_a:
                    return _sync_call(to_a, kind, metadata)

            answers = await asyncio.to_thread(run)
    finally:
        for instrumentor in reversed(done):
            instrumentor.uninstrument()
    _assert_lane(answers, "gray")
    assert all(len(a["b"]["traceparent"]) == 1 for a in answers)  # (the test's own channel may be traced)
    assert [getattr(module, name) for module, name in FACTORIES] == originals  # undone


def test_lane_instrumentor_is_idempotent_and_undone() -> None:
    originals = [getattr(module, name) for module, name in FACTORIES]
    instrumentor = LaneGrpcInstrumentor()
    instrumentor.instrument()
    try:
        instrumentor.instrument()  # a second call wraps nothing more
        assert all(getattr(getattr(m, n), "__wrapped__", None) is o for (m, n), o in zip(FACTORIES, originals,
                                                                                          strict=True))
        server = grpc.server(ThreadPoolExecutor(max_workers=1), interceptors=[LaneServerInterceptor()])
        try:  # one that lists lane's interceptor already keeps one
            interceptors = server._state.interceptor_pipeline.interceptors
            assert sum(isinstance(i, LaneServerInterceptor) for i in interceptors) == 1
        finally:
            server.stop(None)
    finally:
        instrumentor.uninstrument()
    assert [getattr(module, name) for module, name in FACTORIES] == originals
