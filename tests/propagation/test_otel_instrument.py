"""The library path as documented: ``OTEL_PROPAGATORS=... opentelemetry-instrument python app.py``.

Covers lane/propagation/instrumentor.py (the ``opentelemetry_instrumentor`` entry point), the server hook it
installs (lane/propagation/aiohttp_server.py) and the ``lane`` propagator entry point's environment variables
(lane/propagation/propagator.py). Everything runs for real: the ``opentelemetry-instrument`` console script of
opentelemetry-instrumentation starts plain aiohttp apps (they never import lane) as subprocesses on
127.0.0.1, with the stock aiohttp client instrumentation and, where installed, the stock aiohttp
server one (opentelemetry-instrumentation-aiohttp-server). The chain is

    test client ──> app a ──> app b ──HTTP_PROXY──> recorder

and the recorder (a real aiohttp server, in its own process) answers with what b's outgoing call
carried; b reaches it only through ``HTTP_PROXY`` (``ClientSession(trust_env=True)``, as the README
writes it) because the name it calls does not resolve. Every process is stopped by the fixture
that started it. The last tests run the instrumentors in-process with a real SDK TracerProvider
to check how lane's server hook composes with the stock server span.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web, web_app
from opentelemetry import baggage as otel_baggage
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lane.core.baggage import members
from lane.propagation.aiohttp_server import lane_middleware
from lane.propagation.instrumentor import LaneInstrumentor
from lane.propagation.propagator import LanePropagator, current_lane
from tests.support.processes import free_port, serve_app, started_process

INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")
HAS_STOCK_SERVER = find_spec("opentelemetry.instrumentation.aiohttp_server") is not None
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

# A plain aiohttp app, written the way the README's example is: it knows nothing of lanes.
APP = textwrap.dedent("""
    import os
    from aiohttp import ClientSession, web

    async def handle(request):
        async with ClientSession(trust_env=True) as session:  # trust_env: HTTP_PROXY (the sidecar) is used
            async with session.get(os.environ["DOWNSTREAM"]) as resp:
                return web.json_response(await resp.json())

    async def global_inject(request):
        # What any library that propagates through the global propagators (requests, httpx, ...) sends.
        from opentelemetry import propagate
        carrier = {}
        propagate.inject(carrier)
        return web.json_response(carrier)

    app = web.Application()
    app.router.add_get("/", handle)
    app.router.add_get("/global-inject", global_inject)
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None)
""")

RECORDER = textwrap.dedent("""
    import os
    from aiohttp import web

    async def record(request):
        return web.json_response({"host": request.host, "path": request.path,
                                  "headers": [[k.lower(), v] for k, v in request.headers.items()]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None)
""")


@dataclass(frozen=True)
class Seen:
    """What the recorder saw on b's outgoing call."""

    host: str
    headers: list[tuple[str, str]]

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    def baggage(self) -> list[str]:
        return list(members(self.all("baggage")))


@dataclass(frozen=True)
class Chain:
    url: str
    log_dir: Path
    env: dict[str, str]

    def get(self, headers: Sequence[tuple[str, str]], path: str = "/") -> Any:
        request = urllib.request.Request(self.url + path)
        for name, value in headers:
            request.add_header(name, value)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never the test's own proxy
        with opener.open(request, timeout=30) as resp:
            return json.loads(resp.read())

    def call(self, *headers: tuple[str, str]) -> Seen:
        body = self.get(headers)
        return Seen(body["host"], [(k, v) for k, v in body["headers"]])

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.log_dir.glob("*.log")))


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in PROXY_VARS and not k.startswith(("OTEL_", "LANE_"))}
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    env.update(extra)
    return env


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"not listening after {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


def start(script: Path, log: Path, env: dict[str, str], instrumented: bool) -> Iterator[int]:
    port = free_port()
    argv = [str(INSTRUMENT), sys.executable, str(script)] if instrumented else [sys.executable, str(script)]
    with started_process(argv, log, env={**env, "PORT": str(port)}, cwd=script.parent) as proc:
        wait_listening(port, proc, log)
        yield port


def run_chain(tmp: Path, **app_env: str) -> Iterator[Chain]:
    """Recorder, b (through HTTP_PROXY to the recorder) and a (straight to b); stopped on the way out."""
    assert INSTRUMENT.exists(), f"the opentelemetry-instrument console script is missing: {INSTRUMENT}"
    (tmp / "app.py").write_text(APP)
    (tmp / "recorder.py").write_text(RECORDER)
    for rec_port in start(tmp / "recorder.py", tmp / "recorder.log", clean_env(), instrumented=False):
        b_env = clean_env(DOWNSTREAM="http://c.lane.test/hello", HTTP_PROXY=f"http://127.0.0.1:{rec_port}", **app_env)
        for b_port in start(tmp / "app.py", tmp / "b.log", b_env, instrumented=True):
            a_env = clean_env(DOWNSTREAM=f"http://127.0.0.1:{b_port}/", **app_env)
            for a_port in start(tmp / "app.py", tmp / "a.log", a_env, instrumented=True):
                yield Chain(f"http://127.0.0.1:{a_port}", tmp, app_env)


VARIANTS = {
    "w3c-first": {"OTEL_PROPAGATORS": "tracecontext,baggage,lane"},
    "lane-first": {"OTEL_PROPAGATORS": "lane,baggage,tracecontext"},
    "lane-between": {"OTEL_PROPAGATORS": "baggage,lane,tracecontext"},
    "lane-not-listed": {"OTEL_PROPAGATORS": "tracecontext,baggage"},
    "no-stock-server": {"OTEL_PROPAGATORS": "lane,baggage,tracecontext",
                        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "aiohttp-server"},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def chain(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    yield from run_chain(tmp_path_factory.mktemp(request.param), **VARIANTS[request.param])


# --- the lane and the rest of the baggage reach the next app, whatever the propagator order ----


def test_tag_and_baggage_reach_the_next_hop_with_other_members_intact(chain: Chain) -> None:
    seen = chain.call(("x-mse-tag", "gray"), ("baggage", "x-mse-tag=gray,user=42"), ("traceparent", TRACEPARENT))
    assert seen.host == "c.lane.test", "b's call did not go through HTTP_PROXY"
    assert seen.all("x-mse-tag") == ["gray"], chain.logs()
    assert seen.baggage() == ["x-mse-tag=gray", "user=42"]
    assert seen.all("traceparent")[0].split("-")[1] == TRACEPARENT.split("-")[1]  # one trace across both apps


def test_baggage_alone_carries_the_lane_and_the_tag_header_is_restored(chain: Chain) -> None:
    seen = chain.call(("baggage", "user=42,x-mse-tag=gray"))
    assert seen.all("x-mse-tag") == ["gray"], chain.logs()
    assert seen.baggage() == ["x-mse-tag=gray", "user=42"]  # the lane first, the app's member kept


def test_valid_tag_header_wins_over_stale_baggage_in_every_order(chain: Chain) -> None:
    seen = chain.call(("x-mse-tag", "gray"), ("baggage", "user=42,x-mse-tag=blue"))
    assert seen.all("x-mse-tag") == ["gray"], chain.logs()
    assert seen.baggage() == ["x-mse-tag=gray", "user=42"]


def test_invalid_tag_header_falls_through_to_the_baggage_lane(chain: Chain) -> None:
    seen = chain.call(("x-mse-tag", "Gray Lane!"), ("baggage", "x-mse-tag=gray,user=42"))
    assert seen.all("x-mse-tag") == ["gray"]
    assert seen.baggage() == ["x-mse-tag=gray", "user=42"]


def test_no_lane_is_invented_and_other_baggage_still_travels(chain: Chain) -> None:
    seen = chain.call(("baggage", "user=42"))
    assert seen.all("x-mse-tag") == []
    assert seen.baggage() == ["user=42"]


def test_global_propagators_inject_the_lane_first_for_other_client_libraries(chain: Chain) -> None:
    if "lane" not in chain.env["OTEL_PROPAGATORS"].split(","):
        pytest.skip("lane is not among the global propagators in this variant; only aiohttp is covered")
    injected = chain.get([("x-mse-tag", "gray"), ("baggage", "user=42,x-mse-tag=blue")], "/global-inject")
    assert injected["x-mse-tag"] == "gray"
    assert list(members([injected["baggage"]])) == ["x-mse-tag=gray", "user=42"]


# --- the lane propagator's environment ------------------------------------------------------------


def test_lane_tag_header_env_names_another_header(tmp_path: Path) -> None:
    for chain in run_chain(tmp_path, OTEL_PROPAGATORS="tracecontext,baggage,lane", LANE_TAG_HEADER="X-Lane"):
        seen = chain.call(("x-lane", "gray"), ("baggage", "user=42"))
        assert seen.all("x-lane") == ["gray"], chain.logs()
        assert seen.all("x-mse-tag") == []
        assert seen.baggage() == ["x-mse-tag=gray", "user=42"]  # the baggage key stays x-mse-tag


def test_lane_baggage_key_env_names_another_key(tmp_path: Path) -> None:
    for chain in run_chain(tmp_path, OTEL_PROPAGATORS="lane,baggage,tracecontext", LANE_BAGGAGE_KEY="lane"):
        seen = chain.call(("baggage", "user=42,lane=gray"))
        assert seen.all("x-mse-tag") == ["gray"], chain.logs()
        assert seen.baggage() == ["lane=gray", "user=42"]


def test_invalid_env_is_one_clear_error_and_the_default(tmp_path: Path) -> None:
    for chain in run_chain(tmp_path, OTEL_PROPAGATORS="tracecontext,baggage,lane", LANE_TAG_HEADER="x lane"):
        seen = chain.call(("x-mse-tag", "gray"))
        assert seen.all("x-mse-tag") == ["gray"]
        a_log = (tmp_path / "a.log").read_text()
        errors = [line for line in a_log.splitlines() if "LANE_TAG_HEADER" in line]
        # One line per process that loads the propagators: the opentelemetry-instrument launcher
        # imports opentelemetry.propagate itself before it execs the app.
        assert set(errors) == {("LANE_TAG_HEADER='x lane' is not an HTTP header name (an RFC 9110 token); "
                                "using the default 'x-mse-tag'")}, a_log
        assert len(errors) <= 2, a_log
        assert "Traceback" not in a_log


# --- without opentelemetry-instrument nothing is patched -------------------------------------------


def test_plain_python_run_of_the_same_app_carries_nothing(tmp_path: Path) -> None:
    """The control: the behaviour above comes from the instrumentors, not from the app or aiohttp."""
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "recorder.py").write_text(RECORDER)
    for rec_port in start(tmp_path / "recorder.py", tmp_path / "recorder.log", clean_env(), instrumented=False):
        env = clean_env(DOWNSTREAM="http://c.lane.test/", HTTP_PROXY=f"http://127.0.0.1:{rec_port}")
        for port in start(tmp_path / "app.py", tmp_path / "app.log", env, instrumented=False):
            seen = Chain(f"http://127.0.0.1:{port}", tmp_path, {}).call(("x-mse-tag", "gray"), ("baggage", "user=42"))
            assert seen.host == "c.lane.test"
            assert seen.all("x-mse-tag") == [] and seen.all("baggage") == []


@pytest.mark.skipif(not HAS_STOCK_SERVER, reason="opentelemetry-instrumentation-aiohttp-server is not installed")
def test_stock_server_instrumentation_is_active_in_the_chain(tmp_path: Path) -> None:
    """Guards the matrix: with the package installed, the variants above really ran with it."""
    probe = textwrap.dedent("""
        import aiohttp.web, json
        app = aiohttp.web.Application()
        print(json.dumps([getattr(m, "__qualname__", "") for m in app.middlewares]))
    """)
    done = subprocess.run([str(INSTRUMENT), sys.executable, "-c", probe], env=clean_env(), capture_output=True,
                          text=True, timeout=60, check=True)
    names = json.loads(done.stdout.strip().splitlines()[-1])
    assert names[0] == "lane_middleware.<locals>.lane_context"  # outermost: the span starts inside our context
    assert any("create_aiohttp_middleware" in n for n in names[1:]), names


# --- in-process: composition with the stock server span (real SDK) ------------------------------


async def raw_get(port: int, headers: Sequence[tuple[str, str]]) -> bytes:
    """GET / with exactly *headers* over a plain socket (no client instrumentation touches it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = ["GET / HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close", *(f"{k}: {v}" for k, v in headers)]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.skipif(not HAS_STOCK_SERVER, reason="opentelemetry-instrumentation-aiohttp-server is not installed")
@pytest.mark.parametrize("lane_instrumented_first", [True, False], ids=["lane-first", "stock-first"])
@pytest.mark.parametrize("placement", ["automatic", "manual-inside-stock"])
async def test_handler_sees_the_stock_server_span_and_the_whole_baggage(
    lane_instrumented_first: bool, placement: str
) -> None:
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

    provider = TracerProvider()
    configured = CompositePropagator([LanePropagator(), W3CBaggagePropagator(), TraceContextTextMapPropagator()])
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(configured)
    stock, lanes = AioHttpServerInstrumentor(), LaneInstrumentor()
    parts: list[Any] = [lanes, stock] if lane_instrumented_first else [stock, lanes]
    seen: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.Response:
        seen.update(span=trace.get_current_span(), lane=current_lane(), user=otel_baggage.get_baggage("user"))
        return web.Response(text="ok")

    try:
        for part in parts:
            part.instrument(tracer_provider=provider)
        assert propagate.get_global_textmap() is not configured  # lane moved last
        app = web.Application(middlewares=[lane_middleware()] if placement == "manual-inside-stock" else [])
        app.router.add_get("/", handle)
        names = [getattr(m, "__qualname__", "") for m in app.middlewares]
        lane_at = names.index("lane_middleware.<locals>.lane_context")
        assert lane_at == (1 if placement == "manual-inside-stock" else 0), names
        assert names.count("lane_middleware.<locals>.lane_context") == 1
        async with serve_app(app) as port:
            answer = await raw_get(port, [("traceparent", TRACEPARENT), ("x-mse-tag", "gray"),
                                          ("baggage", "user=42,x-mse-tag=blue")])
        assert b" 200 " in answer.split(b"\r\n")[0], answer[:300]
    finally:
        lanes.uninstrument()
        stock.uninstrument()
        restored = propagate.get_global_textmap()
        propagate.set_global_textmap(before)
    assert restored is configured
    span = seen["span"]
    assert isinstance(span, ReadableSpan) and span.kind is trace.SpanKind.SERVER  # the stock span, recording
    assert span.parent is not None and span.parent.span_id == int(TRACEPARENT.split("-")[2], 16)
    assert span.context.trace_id == int(TRACEPARENT.split("-")[1], 16)
    assert (seen["lane"], seen["user"]) == ("gray", "42")


def test_lane_instrumentor_is_idempotent_and_undoable() -> None:
    lanes = LaneInstrumentor()
    lanes.instrument()
    lanes.instrument()  # a second call changes nothing
    try:
        names = [getattr(m, "__qualname__", "") for m in web_app.Application().middlewares]
        assert names == ["lane_middleware.<locals>.lane_context"]
        assert hasattr(getattr(vars(aiohttp.ClientSession)["_request"], "_self_wrapper", None), "_lane_client_middleware")
    finally:
        lanes.uninstrument()
    assert list(web_app.Application().middlewares) == []
    assert not hasattr(vars(aiohttp.ClientSession)["_request"], "_self_wrapper")
