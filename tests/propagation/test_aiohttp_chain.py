"""The lane travels through real chains of aiohttp services on 127.0.0.1.

Covers lane/propagation/aiohttp_server.py (middleware), lane/propagation/aiohttp_client.py (client middleware and the
global `LaneClientInstrumentor`, alone and together with OpenTelemetry's aiohttp instrumentation
and a real SDK TracerProvider) and lane/propagation/executor.py. Every service is a real aiohttp app on a free
loopback port, stopped by the test that started it; the outside client speaks raw HTTP over a
socket so that no instrumentation of ours touches what the test sends. Global instrumentation is
installed by fixtures and undone in ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import REGISTRY
from yarl import URL

from lane.core.baggage import get_member
from lane.propagation.aiohttp_client import LaneClientInstrumentor, apply_lane, lane_client_middleware
from lane.propagation.aiohttp_server import lane_middleware, request_lane
from lane.propagation.executor import carry_context, install_context_executor, run_in_executor
from lane.propagation.propagator import LanePropagator, current_lane, use_lane

SESSION = web.AppKey("session", aiohttp.ClientSession)
BIG_HEADERS = {"max_field_size": 65536}
LANES = LanePropagator()
Json = dict[str, Any]


# --- plumbing -----------------------------------------------------------------------------------


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Run *app* on a free 127.0.0.1 port; yields its base URL and always stops it."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def raw_get(url: str, headers: Sequence[tuple[str, str]] = ()) -> Json:
    """GET *url* over a plain socket (exactly these headers, duplicates allowed); returns the JSON body."""
    target = URL(url)
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    try:
        head = [f"GET {target.raw_path_qs} HTTP/1.1", f"Host: 127.0.0.1:{target.port}", "Connection: close"]
        head += [f"{name}: {value}" for name, value in headers]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = data.partition(b"\r\n")
    assert b" 200 " in status_line, data[:600]
    body: Json = json.loads(rest.partition(b"\r\n\r\n")[2])
    return body


def seen(request: web.Request) -> Json:
    """What a service observed about its inbound request and its context."""
    return {
        "lane": current_lane(),
        "request_lane": request_lane(request),
        "tag": request.headers.getall("x-mse-tag", []),
        "x-lane": request.headers.getall("x-lane", []),
        "baggage": request.headers.getall("baggage", []),
        "traceparent": request.headers.get("traceparent"),
    }


def leaf() -> web.Application:
    """A lane-aware service that calls nobody and reports what it saw."""

    async def handle(request: web.Request) -> web.Response:
        return web.json_response(seen(request))

    app = web.Application(middlewares=[lane_middleware()], handler_args=BIG_HEADERS)
    app.router.add_get("/", handle)
    return app


def caller(
    target: str,
    *,
    client_middlewares: Sequence[aiohttp.ClientMiddlewareType] = (),
    tracer: trace.Tracer | None = None,
) -> web.Application:
    """A lane-aware service whose handler calls *target* with plain ``session.get`` (no lane code).

    Query ``?tag=L`` makes it set ``x-mse-tag: L`` on its call explicitly; ``?bag=N`` makes it send
    its own ``baggage`` header of N members of 100 bytes.
    """

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(middlewares=tuple(client_middlewares)) as session:
            app[SESSION] = session
            yield

    async def call(request: web.Request) -> Json:
        headers = {}
        if "tag" in request.query:
            headers["x-mse-tag"] = request.query["tag"]
        if "bag" in request.query:
            headers["baggage"] = ",".join(f"m{i}={'v' * 100}" for i in range(int(request.query["bag"])))
        async with request.app[SESSION].get(target, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            body: Json = await resp.json()
            return body

    async def handle(request: web.Request) -> web.Response:
        if tracer is None:
            downstream = await call(request)
        else:
            with tracer.start_as_current_span("caller-handler"):
                downstream = await call(request)
        return web.json_response({**seen(request), "downstream": downstream})

    app = web.Application(middlewares=[lane_middleware()], handler_args=BIG_HEADERS)
    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/", handle)
    return app


def baggage_forwarder(target: str) -> web.Application:
    """A lane-unaware service that forwards only the ``baggage`` header(s) and drops ``x-mse-tag``."""

    async def handle(request: web.Request) -> web.Response:
        forwarded = [("baggage", value) for value in request.headers.getall("baggage", [])]
        async with aiohttp.ClientSession() as session, session.get(target, headers=forwarded) as resp:
            downstream = await resp.json()
        return web.json_response({**seen(request), "downstream": downstream})

    app = web.Application(handler_args=BIG_HEADERS)
    app.router.add_get("/", handle)
    return app


@pytest.fixture
def lane_instrumented() -> Iterator[None]:
    LaneClientInstrumentor().instrument()
    try:
        yield
    finally:
        LaneClientInstrumentor().uninstrument()


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield provider, exporter
    finally:
        provider.shutdown()


@pytest.fixture
def otel_instrumented(spans: tuple[TracerProvider, InMemorySpanExporter]) -> Iterator[TracerProvider]:
    provider, _ = spans
    AioHttpClientInstrumentor().instrument(tracer_provider=provider)
    try:
        yield provider
    finally:
        AioHttpClientInstrumentor().uninstrument()


def first_member(baggage_headers: list[str]) -> str:
    return baggage_headers[0].split(",", 1)[0]


# --- two-service chain: baggage only, no tracing SDK --------------------------------------------


async def test_lane_reaches_next_service_as_header_and_baggage(lane_instrumented: None) -> None:
    async with serving(leaf()) as y, serving(caller(y)) as x:
        got = await raw_get(x, [("x-mse-tag", "gray")])
    assert (got["lane"], got["request_lane"]) == ("gray", "gray")
    y_saw = got["downstream"]
    assert y_saw["tag"] == ["gray"]
    assert y_saw["baggage"] == ["x-mse-tag=gray"]
    assert y_saw["lane"] == "gray"


async def test_lane_from_inbound_baggage_is_forwarded_as_both(lane_instrumented: None) -> None:
    async with serving(leaf()) as y, serving(caller(y)) as x:
        got = await raw_get(x, [("baggage", "user=alice"), ("baggage", "x-mse-tag=gray;src=app")])
    assert got["lane"] == "gray"
    assert got["downstream"]["tag"] == ["gray"]
    assert get_member(got["downstream"]["baggage"], "x-mse-tag") == "gray"


async def test_untagged_request_stays_untagged(lane_instrumented: None) -> None:
    async with serving(leaf()) as y, serving(caller(y)) as x:
        got = await raw_get(x)
    assert got["lane"] is None and got["request_lane"] is None
    assert (got["downstream"]["tag"], got["downstream"]["baggage"]) == ([], [])


async def test_invalid_inbound_tag_is_counted_and_never_forwarded(lane_instrumented: None) -> None:
    before = REGISTRY.get_sample_value("lane_invalid_tags_total", {"source": "header"}) or 0.0
    async with serving(leaf()) as y, serving(caller(y)) as x:
        got = await raw_get(x, [("x-mse-tag", "GRAY;rm -rf /"), ("baggage", "x-mse-tag=Not%20A%20Lane,u=1")])
    assert got["lane"] is None
    assert got["downstream"]["tag"] == [] and got["downstream"]["baggage"] == []
    assert (REGISTRY.get_sample_value("lane_invalid_tags_total", {"source": "header"}) or 0.0) >= before + 1


async def test_explicit_tag_on_a_call_wins_over_the_context(lane_instrumented: None) -> None:
    async with serving(leaf()) as y, serving(caller(y)) as x:
        got = await raw_get(x + "?tag=base", [("x-mse-tag", "gray")])
    assert got["lane"] == "gray"
    assert got["downstream"]["tag"] == ["base"]
    assert got["downstream"]["baggage"] == ["x-mse-tag=base"]


async def test_per_session_middleware_without_global_instrumentation() -> None:
    async with serving(leaf()) as y, serving(caller(y, client_middlewares=[lane_client_middleware()])) as x:
        got = await raw_get(x, [("x-mse-tag", "gray")])
    assert got["downstream"]["tag"] == ["gray"]


@pytest.mark.parametrize("order", ["baggage,lane", "lane,baggage"])
async def test_lane_in_global_propagators_is_extracted_once_and_wins(order: str) -> None:
    by_name = {"baggage": W3CBaggagePropagator(), "lane": LanePropagator()}
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(
        CompositePropagator([TraceContextTextMapPropagator(), *(by_name[n] for n in order.split(","))])
    )
    try:
        before = REGISTRY.get_sample_value("lane_invalid_tags_total", {"source": "baggage"}) or 0.0
        async with serving(leaf()) as y:
            bad = await raw_get(y, [("baggage", "x-mse-tag=NOT_A_LANE")])
            after = REGISTRY.get_sample_value("lane_invalid_tags_total", {"source": "baggage"}) or 0.0
            stale = await raw_get(y, [("x-mse-tag", "gray"), ("baggage", "x-mse-tag=base")])
    finally:
        propagate.set_global_textmap(previous)
    assert bad["lane"] is None
    assert after == before + 1
    assert stale["lane"] == "gray"  # the tag header wins even when stock baggage extracts after us


# --- a middle service that forwards only baggage -------------------------------------------------


@pytest.mark.parametrize("own_baggage_members", [0, 120], ids=["small", "oversized-baggage"])
async def test_baggage_only_middle_service_still_delivers_lane(own_baggage_members: int) -> None:
    lanes = [lane_client_middleware()]
    async with (
        serving(leaf()) as z,
        serving(caller(z, client_middlewares=lanes)) as y,
        serving(baggage_forwarder(y)) as m,
        serving(caller(m, client_middlewares=lanes)) as x,
    ):
        got = await raw_get(f"{x}?bag={own_baggage_members}", [("x-mse-tag", "gray")])
    m_saw = got["downstream"]
    y_saw = m_saw["downstream"]
    z_saw = y_saw["downstream"]
    assert m_saw["tag"] == ["gray"] and first_member(m_saw["baggage"]) == "x-mse-tag=gray"
    assert y_saw["tag"] == []  # the middle service dropped the tag header ...
    assert y_saw["lane"] == "gray"  # ... and the lane still arrived, in baggage
    if own_baggage_members:
        assert len(y_saw["baggage"][0]) > 8192  # what the stock propagator would drop entirely
        assert get_member(y_saw["baggage"], f"m{own_baggage_members - 1}") == "v" * 100
    assert z_saw["tag"] == ["gray"]  # the next lane-aware hop restores the header
    assert first_member(z_saw["baggage"]) == "x-mse-tag=gray"


# --- run_in_executor -----------------------------------------------------------------------------


def blocking_call(url: str) -> str | None:
    """Sync code in a worker thread calling *url* with whatever lane its context has; Y's lane."""
    headers: dict[str, str] = {}
    LANES.inject(headers)
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
        lane: str | None = json.load(resp)["lane"]
        return lane


def executor_service(target: str, pool: ThreadPoolExecutor) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        return web.json_response({
            "plain": await loop.run_in_executor(pool, blocking_call, target),
            "helper": await run_in_executor(pool, blocking_call, target),
            "carried": await loop.run_in_executor(pool, carry_context(blocking_call), target),
            "default_executor": await loop.run_in_executor(None, blocking_call, target),
        })

    app = web.Application(middlewares=[lane_middleware()])
    app.router.add_get("/", handle)
    return app


async def test_run_in_executor_keeps_lane_with_helper() -> None:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=2) as pool:
        default = install_context_executor(loop, max_workers=2)
        try:
            async with serving(leaf()) as y, serving(executor_service(y, pool)) as x:
                got = await raw_get(x, [("x-mse-tag", "gray")])
        finally:
            default.shutdown(wait=True)
    assert got["plain"] is None  # run_in_executor alone loses the context
    assert got["helper"] == "gray"
    assert got["carried"] == "gray"
    assert got["default_executor"] == "gray"


# --- with the OpenTelemetry SDK, real spans and the stock aiohttp instrumentation ----------------


async def test_chain_with_sdk_spans_and_stock_instrumentation(
    lane_instrumented: None, otel_instrumented: TracerProvider, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("test")
    async with serving(leaf()) as y, serving(caller(y, tracer=tracer)) as x:
        got = await raw_get(x, [("x-mse-tag", "gray"), ("baggage", "user=alice")])
    y_saw = got["downstream"]
    assert y_saw["tag"] == ["gray"]
    # The stock propagator wrote user=alice,x-mse-tag=gray; the lane middleware moved the lane first.
    assert y_saw["baggage"] == ["x-mse-tag=gray,user=alice"]
    assert y_saw["lane"] == "gray"
    finished = {span.name: span for span in exporter.get_finished_spans()}
    handler, client = finished["caller-handler"], finished["GET"]
    assert client.kind is trace.SpanKind.CLIENT
    assert client.parent is not None and client.parent.span_id == handler.context.span_id
    trace_id, parent_id = y_saw["traceparent"].split("-")[1:3]
    assert int(trace_id, 16) == handler.context.trace_id
    assert int(parent_id, 16) == client.context.span_id


async def test_excluded_urls_still_get_the_lane(
    monkeypatch: pytest.MonkeyPatch, lane_instrumented: None, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_AIOHTTP_CLIENT_EXCLUDED_URLS", "127.0.0.1")
    provider, exporter = spans
    AioHttpClientInstrumentor().instrument(tracer_provider=provider)
    try:
        async with serving(leaf()) as y, serving(caller(y, tracer=provider.get_tracer("test"))) as x:
            got = await raw_get(x, [("x-mse-tag", "gray")])
    finally:
        AioHttpClientInstrumentor().uninstrument()
    assert got["downstream"]["traceparent"] is None  # OpenTelemetry injected nothing ...
    assert [s.name for s in exporter.get_finished_spans()] == ["caller-handler"]
    assert got["downstream"]["tag"] == ["gray"]  # ... the lane was still set
    assert got["downstream"]["baggage"] == ["x-mse-tag=gray"]


# --- the global instrumentation: idempotent, undoable, composable --------------------------------


async def observe(session: aiohttp.ClientSession, url: str) -> Json:
    with use_lane("gray"):
        async with session.get(url) as resp:
            body: Json = await resp.json()
            return body


async def test_global_instrumentation_is_idempotent_undoable_and_composes(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, _ = spans
    original_init = aiohttp.ClientSession.__init__
    original_request: Callable[..., Any] = aiohttp.ClientSession.__dict__["_request"]
    lanes, stock = LaneClientInstrumentor(), AioHttpClientInstrumentor()
    async with serving(leaf()) as y:
        try:
            async with aiohttp.ClientSession() as early:  # created before instrumenting
                assert (await observe(early, y))["tag"] == []
                lanes.instrument()
                lanes.instrument()  # idempotent: one layer
                assert aiohttp.ClientSession.__dict__["_request"].__wrapped__ is original_request
                assert (await observe(early, y))["tag"] == ["gray"]

            stock.instrument(tracer_provider=provider)
            async with aiohttp.ClientSession() as both:
                saw = await observe(both, y)
            assert saw["tag"] == ["gray"] and saw["traceparent"] is not None

            stock.uninstrument()  # undoing the stock instrumentation leaves the lane in place
            assert aiohttp.ClientSession.__init__ is original_init
            async with aiohttp.ClientSession() as lane_only:
                saw = await observe(lane_only, y)
            assert saw["tag"] == ["gray"] and saw["traceparent"] is None

            stock.instrument(tracer_provider=provider)
            lanes.uninstrument()  # and the other way round
            assert aiohttp.ClientSession.__dict__["_request"] is original_request
            async with aiohttp.ClientSession() as stock_only:
                saw = await observe(stock_only, y)
            assert saw["tag"] == [] and saw["traceparent"] is not None
        finally:
            lanes.uninstrument()
            stock.uninstrument()
    assert aiohttp.ClientSession.__init__ is original_init
    assert aiohttp.ClientSession.__dict__["_request"] is original_request


async def test_instrumentor_takes_a_configured_propagator() -> None:
    custom = LanePropagator(header="x-lane", baggage_key="lane")
    LaneClientInstrumentor().instrument(propagator=custom)
    try:
        async with serving(leaf()) as y, aiohttp.ClientSession() as session:
            with use_lane("gray", key="lane"), use_lane("base"):
                async with session.get(y) as resp:
                    saw = await resp.json()
    finally:
        LaneClientInstrumentor().uninstrument()
    assert (saw["x-lane"], saw["tag"], saw["baggage"]) == (["gray"], [], ["lane=gray"])


# --- apply_lane: the header fix-up every outgoing request gets -----------------------------------


def test_apply_lane_uses_configured_names_and_keeps_other_baggage() -> None:
    custom = LanePropagator(header="x-lane", baggage_key="lane")
    headers = CIMultiDict([("Baggage", "user=alice;p=1"), ("baggage", "lane=base,x-mse-tag=gray")])
    assert apply_lane(headers, custom, context=custom.with_lane("canary", Context())) == "canary"
    assert headers.getall("x-lane") == ["canary"]
    assert headers.getall("baggage") == ["lane=canary,user=alice;p=1,x-mse-tag=gray"]
    assert "x-mse-tag" not in headers


def test_apply_lane_removes_invalid_values_when_there_is_no_lane() -> None:
    headers = CIMultiDict([("x-mse-tag", "BAD VALUE"), ("baggage", "x-mse-tag=%F0%9F%92%A9,user=alice")])
    assert apply_lane(headers, LANES, context=Context()) is None
    assert dict(headers) == {"baggage": "user=alice"}


def test_apply_lane_falls_back_to_a_valid_baggage_entry_on_the_call() -> None:
    headers = CIMultiDict([("baggage", "a=1,x-mse-tag=gray")])
    assert apply_lane(headers, LANES, context=Context()) == "gray"
    assert (headers.getall("x-mse-tag"), headers.getall("baggage")) == (["gray"], ["x-mse-tag=gray,a=1"])


def test_apply_lane_prefers_context_over_stale_baggage_on_the_call() -> None:
    headers = CIMultiDict([("baggage", "x-mse-tag=base")])
    assert apply_lane(headers, LANES, context=LANES.with_lane("gray", Context())) == "gray"
    assert headers.getall("baggage") == ["x-mse-tag=gray"]
