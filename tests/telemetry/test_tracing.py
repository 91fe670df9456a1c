"""Optional OTel spans: one per proxied request, with lane attributes, linked into one trace, flushed on stop.

The end-to-end test runs the gateway and two sidecars as real ``lane`` processes exporting over
OTLP/HTTP to a receiver in the test's event loop, which decodes the real
``ExportTraceServiceRequest`` protobuf. The apps run in the test's event loop too. The batch delay
is a minute, so the spans can only arrive through the flush on SIGTERM.
"""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from lane.core.config_load import parse_config
from lane.dataplane.runtime import Runtime
from lane.gateway.main import build_gateway_app
from lane.telemetry.tracing import Tracing, otlp_traces_url
from tests.support.processes import LaneProcess, free_port, lane_process, serve_app

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
KINDS = {1: "internal", 2: "server", 3: "client"}


@dataclass
class Received:
    spans: list[dict[str, Any]] = field(default_factory=list)
    posts: int = 0


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


RECEIVED = web.AppKey("received", Received)


async def _traces(request: web.Request) -> web.Response:
    body = await request.read()
    if request.headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    export = ExportTraceServiceRequest.FromString(body)
    received = request.app[RECEIVED]
    received.posts += 1
    for resource_spans in export.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                received.spans.append({
                    "name": span.name, "kind": KINDS.get(span.kind), "trace": span.trace_id.hex(),
                    "id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                    "error": span.status.code == 2, "resource": resource,
                })
    return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                        content_type="application/x-protobuf")


@asynccontextmanager
async def otlp_receiver() -> AsyncIterator[tuple[str, Received]]:
    app = web.Application()
    app[RECEIVED] = Received()
    app.router.add_post("/v1/traces", _traces)
    async with serve_app(app) as port:
        yield f"http://127.0.0.1:{port}", app[RECEIVED]


OUTBOUND = web.AppKey("outbound", str)


async def _app_a(request: web.Request) -> web.Response:
    """Calls b twice through its sidecar: forwarding traceparent first, then only x-request-id."""
    rid = request.headers["x-request-id"]
    answers = []
    async with aiohttp.ClientSession() as session:
        for path, headers in (("/one", {"traceparent": request.headers["traceparent"], "x-request-id": rid}),
                              ("/two", {"x-request-id": rid})):
            async with session.get(f"http://b{path}", headers=headers, proxy=request.app[OUTBOUND]) as resp:
                answers.append({"status": resp.status, "body": await resp.json()})
    return web.json_response({"traceparent": request.headers["traceparent"], "calls": answers})


async def _app_b(request: web.Request) -> web.Response:
    return web.json_response({"traceparent": request.headers.get("traceparent")})


CONFIG = """
lanes: {{gray: {{}}}}
entry: a
coloring:
  - {{name: xiaoming-gray, lane: gray, match: {{headers: [{{name: user-agent, exact: xiaoming}}]}}}}
services:
  a: {{instances: {{base: ["127.0.0.1:{a_base}"], gray: ["127.0.0.1:{a_gray}"]}}}}
  b: {{instances: {{base: ["127.0.0.1:{b_base}"]}}}}
"""


def _span_id(traceparent: str) -> str:
    return traceparent.split("-")[2]


async def _stop(process: LaneProcess) -> int:
    """SIGTERM and wait off the event loop: the flush posts to the receiver running in this loop."""
    process.popen.terminate()
    return await asyncio.get_running_loop().run_in_executor(None, process.popen.wait, 30)


@pytest.fixture
def processes() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


async def test_a_xiaoming_request_leaves_one_linked_trace_with_lane_attributes(
    tmp_path: Path, processes: ExitStack
) -> None:
    outbound_a = free_port()
    a_gray, b_base = free_port(), free_port()
    app_a = web.Application()
    app_a[OUTBOUND] = f"http://127.0.0.1:{outbound_a}"
    app_a.router.add_get("/", _app_a)
    app_b = web.Application()
    app_b.router.add_get("/{tail:.*}", _app_b)
    async with otlp_receiver() as (otlp, received), serve_app(app_a) as a_port, serve_app(app_b) as b_port:
        config = tmp_path / "lane.yaml"
        config.write_text(CONFIG.format(a_base=free_port(), a_gray=a_gray, b_base=b_base))
        batch_only_on_stop = {"OTEL_BSP_SCHEDULE_DELAY": "60000"}
        # Three ways to name the endpoint: the flag, the base variable, the per-signal variable.
        sidecar_a = processes.enter_context(lane_process(
            tmp_path, "sidecar-a", "sidecar", "--config", str(config), "--service", "a", "--lane", "gray",
            "--app", f"127.0.0.1:{a_port}", "--listen", f"127.0.0.1:{a_gray}",
            "--outbound", f"127.0.0.1:{outbound_a}", "--admin", "127.0.0.1:0",
            env={**batch_only_on_stop, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp}))
        sidecar_b = processes.enter_context(lane_process(
            tmp_path, "sidecar-b", "sidecar", "--config", str(config), "--service", "b", "--lane", "base",
            "--app", f"127.0.0.1:{b_port}", "--listen", f"127.0.0.1:{b_base}",
            "--outbound", "127.0.0.1:0", "--admin", "127.0.0.1:0",
            env={**batch_only_on_stop, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otlp + "/v1/traces"}))
        gateway = processes.enter_context(lane_process(
            tmp_path, "gateway", "gateway", "--config", str(config), "--listen", "127.0.0.1:0",
            "--admin", "127.0.0.1:0", "--otlp-endpoint", otlp, env=batch_only_on_stop))

        headers = {"User-Agent": "xiaoming", "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
                   "x-request-id": "tracing-test-1"}
        async with aiohttp.ClientSession() as client:
            async with client.get(gateway.url("gateway") + "/", headers=headers) as resp:
                assert resp.status == 200
                answer = await resp.json()
                path = resp.headers["x-lane-path"]
        assert path.startswith("a@gray;requested=gray") and "b@base;requested=gray;fallback=no-instance" in path
        assert received.posts == 0  # batched: nothing is exported before the proxies stop
        assert [await _stop(p) for p in (gateway, sidecar_a, sidecar_b)] == [0, 0, 0]

    spans = received.spans
    assert sorted(s["name"] for s in spans) == ["gateway a", "inbound a", "inbound b", "inbound b",
                                                 "outbound b", "outbound b"]
    assert {s["trace"] for s in spans} == {CLIENT_TRACE}
    by_id = {s["id"]: s for s in spans}
    (gw,) = [s for s in spans if s["name"] == "gateway a"]
    (a_in,) = [s for s in spans if s["name"] == "inbound a"]
    out_one, out_two = sorted((s for s in spans if s["name"] == "outbound b"), key=lambda s: s["attributes"]["url.path"])

    # parent/child: client -> gateway -> a's inbound -> a's outbound calls -> b's inbound
    assert gw["parent"] == CLIENT_SPAN and gw["kind"] == "server"
    assert a_in["parent"] == gw["id"] and a_in["kind"] == "server"
    assert out_one["parent"] == a_in["id"] and out_one["kind"] == "client"
    assert out_two["parent"] == a_in["id"]  # a forwarded only x-request-id: the parent is recovered
    b_parents = sorted(by_id[s["parent"]]["attributes"]["url.path"] for s in spans if s["name"] == "inbound b")
    assert b_parents == ["/one", "/two"]
    # what the apps saw: traceparent names the span of the proxy that handed them the request
    assert _span_id(answer["traceparent"]) == a_in["id"]
    b_in_one = next(s for s in spans if s["name"] == "inbound b" and s["parent"] == out_one["id"])
    assert _span_id(answer["calls"][0]["body"]["traceparent"]) == b_in_one["id"]

    assert gw["attributes"] == {
        "lane.proxy": "gateway", "lane.service": "a", "lane.requested": "gray", "lane.served": "gray",
        "lane.instance": f"127.0.0.1:{a_gray}", "lane.rule": "xiaoming-gray", "http.request.method": "GET",
        "url.path": "/", "http.response.status_code": 200,
    }
    assert a_in["attributes"]["lane.served"] == "gray" and "lane.fallback" not in a_in["attributes"]
    for out in (out_one, out_two):
        assert out["attributes"]["lane.requested"] == "gray" and out["attributes"]["lane.served"] == "base"
        assert out["attributes"]["lane.fallback"] == "no-instance"
        assert out["attributes"]["lane.instance"] == f"127.0.0.1:{b_base}"
        assert out["attributes"]["http.response.status_code"] == 200
    for b_in in (s for s in spans if s["name"] == "inbound b"):
        assert b_in["attributes"]["lane.fallback"] == "no-instance" and b_in["attributes"]["lane.served"] == "base"
    assert not any(s["error"] for s in spans)
    assert gw["resource"]["service.name"] == "lane-gateway"
    assert a_in["resource"]["service.name"] == "lane-sidecar"
    assert a_in["resource"]["lane.sidecar.service"] == "a" and a_in["resource"]["lane.sidecar.lane"] == "gray"


async def test_no_endpoint_means_no_tracing_and_none_overrides_the_environment(tmp_path: Path) -> None:
    async with otlp_receiver() as (otlp, received), serve_app(web.Application()) as up:
        config = tmp_path / "lane.yaml"
        config.write_text(f"entry: up\nservices: {{up: {{instances: {{base: ['127.0.0.1:{up}']}}}}}}\n")
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp, "OTEL_BSP_SCHEDULE_DELAY": "10"}
        with lane_process(tmp_path, "gw", "gateway", "--config", str(config), "--listen", "127.0.0.1:0",
                          "--admin", "127.0.0.1:0", "--otlp-endpoint", "none", env=env) as gw:
            async with aiohttp.ClientSession() as client, client.get(gw.url("gateway") + "/") as resp:
                assert resp.status == 404  # the empty upstream app answered
                assert resp.headers["x-lane-served"] == "base"
            assert await _stop(gw) == 0
    assert received.posts == 0 and "exporting" not in gw.log_text()


async def test_a_request_nothing_may_serve_is_an_error_span() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.exporting(exporter, "lane-gateway")  # a private provider: no global state
    config = parse_config("lanes: {gray: {strict: true}}\nentry: up\n"
                          "services: {up: {instances: {base: ['127.0.0.1:1']}}}\n"
                          "coloring: [{lane: gray, match: {headers: [{name: user-agent, exact: x}]}}]\n", "t.yaml")
    app = build_gateway_app(Runtime(config, None), tracing=tracing)
    try:
        async with serve_app(app) as port, aiohttp.ClientSession() as client:
            async with client.post(f"http://127.0.0.1:{port}/buy", headers={"User-Agent": "x"}) as resp:
                assert resp.status == 503
    finally:
        await tracing.shutdown()
    (span,) = exporter.get_finished_spans()
    assert span.parent is None  # a root span: the client sent no traceparent
    assert span.kind is SpanKind.SERVER and span.status.status_code is StatusCode.ERROR
    attributes = dict(span.attributes or {})
    assert attributes["http.response.status_code"] == 503 and attributes["error.type"] == "UpstreamUnavailable"
    assert attributes["lane.requested"] == "gray" and "lane.served" not in attributes
    assert attributes["http.request.method"] == "POST" and attributes["url.path"] == "/buy"


@pytest.mark.parametrize(("flag", "environ", "url"), [
    (None, {}, None),
    ("http://127.0.0.1:4318", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4318"}, "http://127.0.0.1:4318/v1/traces"),
    ("http://collector:4318/custom/traces", {}, "http://collector:4318/custom/traces"),
    ("none", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}, "http://collector:4318/v1/traces"),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/base"}, "http://c:4318/base/v1/traces"),
    (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/x", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
     "http://t:4318/x"),
])
def test_the_endpoint_follows_the_flag_then_the_otlp_variables(
    flag: str | None, environ: dict[str, str], url: str | None
) -> None:
    assert otlp_traces_url(flag, environ) == url


def test_a_bad_endpoint_is_a_clear_command_line_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "lane", "gateway", "--demo", "--otlp-endpoint", "collector:4318"],
                          capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert done.returncode == 2
    assert "expected an http(s) URL such as http://127.0.0.1:4318, got 'collector:4318'" in done.stderr


def test_untraced_proxies_import_no_sdk_exporter_or_yarl() -> None:
    """The no-op path (no endpoint) must not pay the SDK's memory: a fresh interpreter proves it."""
    code = (
        "import sys\n"
        "from lane.telemetry.tracing import Tracing, otlp_traces_url\n"
        "assert otlp_traces_url(None, {}) is None\n"
        "tracing = Tracing()\n"
        "with tracing.span('inbound', 'b', 'GET', '/', {}, requested='gray', kind='client') as span:\n"
        "    span.routed('base', 'no-instance', '127.0.0.1:1'); span.answered(502, 'x'); span.inject({})\n"
        "    assert span.context is None\n"
        "heavy = ('opentelemetry.sdk', 'opentelemetry.exporter', 'opentelemetry.trace', 'yarl')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_span_kind_may_be_given_by_name() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.exporting(exporter, "lane-sidecar")
    with tracing.span("outbound", "c", "GET", "/", {}, requested="base", kind="client") as span:
        span.answered(200)
    with tracing.span("inbound", "c", "GET", "/", {}, requested="base") as span:
        span.answered(200)
    tracing.provider.shutdown()  # type: ignore[union-attr]
    assert [s.kind for s in exporter.get_finished_spans()] == [SpanKind.CLIENT, SpanKind.SERVER]
