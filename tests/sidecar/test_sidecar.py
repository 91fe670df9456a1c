"""The sidecar: an outbound proxy only to configured services, trace-id recovery, the hop record, WebSockets.

Sidecars, apps and the gateway run in the test's event loop on real 127.0.0.1 sockets; the
forward-proxy clients (curl, requests) run as real subprocesses.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from lane.core.config_load import parse_config
from lane.core.endpoint import Endpoint
from lane.core.hops import Hop, parse_path
from lane.dataplane.runtime import Runtime
from lane.demo.app import DemoApp, build_demo_app
from lane.gateway.main import build_gateway_app
from lane.sidecar.inbound import build_inbound_app
from lane.sidecar.main import Sidecar
from lane.sidecar.outbound import build_outbound_app
from tests.support.processes import free_port, serve_app

LANE = web.AppKey("lane", str)
OUTBOUND = web.AppKey("outbound", list[str])  # filled once the sidecar listens


TRACE_FORMATS = ("traceparent", "x-request-id", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "b3",
                 "uber-trace-id", "sw8")


def _trace_headers(request: web.Request) -> dict[str, list[str]]:
    return {name: request.headers.getall(name) for name in TRACE_FORMATS if name in request.headers}


async def _c(request: web.Request) -> web.Response:
    return web.json_response({"lane": request.app[LANE], "tag": request.headers.get("x-mse-tag"),
                              "baggage": request.headers.get("baggage"), "trace": _trace_headers(request)})


def c_app(lane: str) -> web.Application:
    app = web.Application()
    app[LANE] = lane
    app.router.add_route("*", "/{tail:.*}", _c)
    return app


async def _front(request: web.Request) -> web.Response:
    """An app that calls c through its sidecar forwarding only the header named by ?forward=.

    ``?keep=last`` forwards the last value of that header, as an app whose framework keeps the last
    of repeated headers does.
    """
    forward = request.query.get("forward", "")
    values = request.headers.getall(forward, [])
    headers = {forward: values[-1 if request.query.get("keep") == "last" else 0]} if values else {}
    async with aiohttp.ClientSession() as session, session.get(
        "http://c/", headers=headers, proxy=request.app[OUTBOUND][0]
    ) as resp:
        return web.json_response({"c": await resp.json(), "c_path": resp.headers.get("x-lane-path"),
                                  "received": _trace_headers(request),
                                  "baggage": request.headers.getall("baggage", [])})


async def _front_tolerant(request: web.Request) -> web.Response:
    """Calls c through its sidecar and reports what it got, whatever the status."""
    headers = {"x-request-id": request.headers["x-request-id"]}
    async with aiohttp.ClientSession() as session, session.get(
        "http://c/", headers=headers, proxy=request.app[OUTBOUND][0]
    ) as resp:
        return web.json_response({"c_status": resp.status, "c_path": resp.headers.get("x-lane-path"),
                                  "c_served": resp.headers.get("x-lane-served")})


@dataclass
class Mesh:
    gateway: str
    inbound: str
    outbound: str
    c_base: int
    c_gray: int
    sidecar: Sidecar



@asynccontextmanager
async def mesh(front_app: web.Application | None = None, c_alive: bool = True) -> AsyncIterator[Mesh]:
    """gateway -> front (sidecar + app) -> c (base and gray, plain apps; closed ports unless *c_alive*)."""
    async with AsyncExitStack() as stack:
        if c_alive:
            c_base = await stack.enter_async_context(serve_app(c_app("base")))
            c_gray = await stack.enter_async_context(serve_app(c_app("gray")))
        else:
            async with serve_app(c_app("base")) as c_base, serve_app(c_app("gray")) as c_gray:
                pass  # both ports are closed again: nothing listens there
        front = front_app or web.Application()
        if front_app is None:
            front.router.add_get("/", _front)
        outbound_url: list[str] = []
        front[OUTBOUND] = outbound_url
        app_port = await stack.enter_async_context(serve_app(front))
        # the sidecar's inbound port must be in the config before it listens: reserve via a placeholder
        text = """
lanes: {{gray: {{}}}}
entry: front
services:
  front: {{instances: {{base: ["127.0.0.1:{inbound}"]}}}}
  c: {{instances: {{base: ["127.0.0.1:{c_base}"], gray: ["127.0.0.1:{c_gray}"]}}}}
coloring:
  - {{lane: gray, match: {{headers: [{{name: user-agent, exact: xiaoming}}]}}}}
"""
        runtime = Runtime(parse_config(text.format(inbound=1, c_base=c_base, c_gray=c_gray), "m.yaml"), None)
        sidecar = Sidecar.create(runtime, "front", "base", Endpoint("127.0.0.1", app_port))
        inbound = await stack.enter_async_context(serve_app(build_inbound_app(sidecar)))
        outbound = await stack.enter_async_context(serve_app(build_outbound_app(sidecar)))
        runtime.registry.swap(parse_config(text.format(inbound=inbound, c_base=c_base, c_gray=c_gray), "m.yaml"))
        outbound_url.append(f"http://127.0.0.1:{outbound}")
        gw_runtime = Runtime(runtime.config, None)
        gateway = await stack.enter_async_context(serve_app(build_gateway_app(gw_runtime)))
        yield Mesh(f"http://127.0.0.1:{gateway}", f"http://127.0.0.1:{inbound}", f"http://127.0.0.1:{outbound}",
                   c_base, c_gray, sidecar)


@pytest.mark.parametrize("forward", ["x-request-id", "traceparent", "x-b3-traceid"])
async def test_an_app_forwarding_only_a_trace_header_stays_in_its_lane(forward: str) -> None:
    async with mesh() as m, aiohttp.ClientSession() as client:
        headers = {"User-Agent": "xiaoming", "x-b3-traceid": "463ac35c9f6413ad48485a3953bb6124"}
        async with client.get(f"{m.gateway}/?forward={forward}", headers=headers) as resp:
            assert resp.status == 200
            body = await resp.json()
            path = [h.label() for h in parse_path(resp.headers["x-lane-path"])]
    assert body["c"]["lane"] == "gray" and body["c"]["tag"] == "gray"
    assert body["c"]["baggage"].startswith("x-mse-tag=gray,lane-request-id=")  # the lane first
    assert path == ["front@base", "c@gray"]  # the hop record crosses the app without its help
    assert body["c_path"].startswith(f"c@gray;requested=gray;instance=127.0.0.1:{m.c_gray}")


async def test_an_app_that_forwards_nothing_gets_the_default_lane() -> None:
    async with mesh() as m, aiohttp.ClientSession() as client:
        async with client.get(f"{m.gateway}/?forward=none", headers={"User-Agent": "xiaoming"}) as resp:
            body = await resp.json()
            path = [h.label() for h in parse_path(resp.headers["x-lane-path"])]
    assert body["c"]["lane"] == "base" and path == ["front@base"]


async def test_a_failed_downstream_call_stays_in_the_hop_record_marked_with_its_error() -> None:
    front = web.Application()
    front.router.add_get("/", _front_tolerant)
    async with mesh(front, c_alive=False) as m, aiohttp.ClientSession() as client:
        async with client.get(f"{m.gateway}/", headers={"User-Agent": "xiaoming"}) as resp:
            assert resp.status == 200
            body = await resp.json()
            hops = parse_path(resp.headers["x-lane-path"])
    # what the app got from its sidecar: a 502 that says which hop failed, served by no lane
    assert body["c_status"] == 502 and body["c_served"] == "none"
    c_hop = parse_path(body["c_path"])[0]
    assert (c_hop.service, c_hop.requested, c_hop.error) == ("c", "gray", "502")
    # and the caller's record shows that c was called and failed, not that it was never called
    assert [h.label() for h in hops] == ["front@base", f"c@{c_hop.lane}"]
    assert hops[0].error is None and hops[1] == c_hop


async def test_an_error_answer_of_the_gateway_carries_the_failed_hop() -> None:
    async with mesh(c_alive=False) as m, aiohttp.ClientSession() as client:
        async with client.get(m.outbound + "/", headers={"Host": "c", "x-mse-tag": "gray"}) as resp:
            assert resp.status == 502 and resp.headers["x-lane-served"] == "none"
            hop = parse_path(resp.headers["x-lane-path"])[0]
            assert (hop.service, hop.requested, hop.error) == ("c", "gray", "502") and hop.instance
    text = """
entry: x
lanes: {gray: {strict: true}}
coloring: [{lane: gray, match: {headers: [{name: user-agent, exact: t}]}}]
services: {x: {instances: {base: ["127.0.0.1:1"]}}}
"""
    async with serve_app(build_gateway_app(Runtime(parse_config(text, "x.yaml"), None))) as gw, \
            aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{gw}/", headers={"User-Agent": "t"}) as resp:
            assert resp.status == 503 and resp.headers["x-lane-served"] == "none"
            assert parse_path(resp.headers["x-lane-path"]) == (Hop("x", "none", "gray", error="503"),)


async def test_unknown_hosts_and_tunnels_are_refused_with_403() -> None:
    async with mesh() as m, aiohttp.ClientSession() as client:
        async with client.get("http://evil.example/steal", proxy=m.outbound) as resp:
            text = await resp.text()
            assert resp.status == 403 and "'evil.example' is not a service in the lane config" in text
            assert "c, front" in text
        async with client.get(m.outbound + "/", headers={"Host": "127.0.0.1:22"}) as resp:
            assert resp.status == 403
        reader, writer = await asyncio.open_connection("127.0.0.1", int(m.outbound.rsplit(":", 1)[1]))
        writer.write(b"CONNECT c:443 HTTP/1.1\r\nHost: c:443\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 403") and b"CONNECT tunnels are not supported" in answer
        async with client.get(m.outbound + "/", headers={"Host": "c"}) as resp:  # Host-header mode
            assert resp.status == 200 and (await resp.json())["lane"] == "base"


async def test_curl_and_requests_work_with_http_proxy_pointing_at_the_sidecar() -> None:
    async with mesh() as m:
        env = {"HTTP_PROXY": m.outbound, "http_proxy": m.outbound, "NO_PROXY": "", "no_proxy": "",
               "PATH": "/usr/bin:/bin"}
        curl = await asyncio.create_subprocess_exec(
            "curl", "-s", "-H", "x-mse-tag: gray", "http://c/", env=env, stdout=subprocess.PIPE)
        out, _ = await curl.communicate()
        assert b'"lane": "gray"' in out
        script = "import requests; r = requests.get('http://c:80/x', headers={'baggage': 'x-mse-tag=gray'}); " \
                 "print(r.status_code, r.json()['lane'], r.headers['x-lane-served'])"
        py = await asyncio.create_subprocess_exec(sys.executable, "-c", script, env=env, stdout=subprocess.PIPE)
        out, _ = await py.communicate()
        assert out.split() == [b"200", b"gray", b"gray"]


async def test_an_unreachable_app_marks_the_instance_unavailable_for_the_caller() -> None:
    async with serve_app(web.Application()) as dead:
        pass
    runtime = Runtime(parse_config("entry: x\nservices: {x: {instances: {base: ['127.0.0.1:1']}}}", "x.yaml"), None)
    sidecar = Sidecar.create(runtime, "x", "base", Endpoint("127.0.0.1", dead))
    async with serve_app(build_inbound_app(sidecar)) as port, aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{port}/") as resp:
            assert resp.status == 502 and resp.headers["x-lane-unavailable"] == "app-connect-failed"


async def test_websocket_echo_through_gateway_and_sidecar() -> None:
    front = build_demo_app(DemoApp("front", "base", (), ()))
    async with mesh(front) as m, aiohttp.ClientSession() as client:
        async with client.ws_connect(m.gateway + "/ws", headers={"User-Agent": "xiaoming"}) as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=10)).data == "hello"
            await ws.send_bytes(b"\x00\x01" * 1000)
            assert (await ws.receive(timeout=10)).data == b"\x00\x01" * 1000


def test_sidecar_refuses_more_than_one_worker_and_says_why() -> None:
    # Fixed free ports: with port 0 the old supervisor also exited 2, for another reason.
    argv = [sys.executable, "-m", "lane", "sidecar", "--demo", "--service", "a", "--lane", "gray", "--app", "127.0.0.1:9",
            "--listen", f"127.0.0.1:{free_port()}", "--outbound", f"127.0.0.1:{free_port()}",
            "--admin", "127.0.0.1:0", "--workers", "2"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--workers 2 is refused" in done.stderr
    assert "trace-id cache" in done.stderr and "another worker" in done.stderr
    assert "ready" not in done.stderr  # it never started listening


def _source_count(source: str, via: str = "") -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value("lane_outbound_lane_source_total",
                                      {"service": "front", "source": source, "via": via})
    return value or 0.0


async def test_the_app_gets_one_trace_identity_in_every_format_and_its_calls_get_them_back() -> None:
    """Issue "Lanes survive real apps": an app forwarding only x-request-id still hands c the full set."""
    before = _source_count("recovered", "x-request-id")
    async with mesh() as m, aiohttp.ClientSession() as client:
        async with client.get(f"{m.gateway}/?forward=x-request-id", headers={"User-Agent": "xiaoming"}) as resp:
            assert resp.status == 200
            body = await resp.json()
            hops = parse_path(resp.headers["x-lane-path"])
        carriers = m.sidecar.carriers.view()
    received = {name: values[0] for name, values in body["received"].items()}
    assert all(len(values) == 1 for values in body["received"].values())
    trace = received["traceparent"].split("-")[1]  # the gateway's trace, in every format the front app got
    assert received["x-b3-traceid"] == trace and received["b3"].startswith(trace + "-")
    assert received["uber-trace-id"].startswith(trace + ":") and received["x-request-id"]
    assert "sw8" in received
    # the app forwarded x-request-id alone; c got the lane, the baggage member and the same trace back
    sent = {name: values[0] for name, values in body["c"]["trace"].items()}
    assert body["c"]["lane"] == "gray" and body["c"]["tag"] == "gray"
    assert body["c"]["baggage"] == f"x-mse-tag=gray,lane-request-id={received['x-request-id']}"
    assert sent["x-request-id"] == received["x-request-id"]
    assert sent["traceparent"].split("-")[1] == trace and sent["x-b3-traceid"] == trace
    # the record says the hop's lane was recovered, and by which header
    assert [h.label() for h in hops] == ["front@base", "c@gray"]
    assert hops[1].recovered == "x-request-id" and hops[0].recovered is None
    assert parse_path(body["c_path"])[0].recovered == "x-request-id"  # the app sees what the record says
    assert _source_count("recovered", "x-request-id") == before + 1
    assert carriers["forwarded"] == ["x-request-id"] and carriers["calls"] == 1
    assert carriers["recovered_from"] == {"x-request-id": 1} and carriers["lane_sources"]["recovered"] == 1
    assert set(carriers["dropped"]) == {"x-mse-tag", "baggage", "traceparent", "x-b3-traceid", "b3",
                                        "uber-trace-id", "sw8"}
    assert carriers["verdict"] == ("service front's app drops x-mse-tag, baggage, traceparent, x-b3-traceid, b3, "
                                   "uber-trace-id and sw8; it forwards only x-request-id")


@pytest.mark.parametrize(("forward", "source", "via"), [
    ("baggage", "baggage", ""), ("b3", "recovered", "b3"), ("uber-trace-id", "recovered", "uber-trace-id"),
    ("sw8", "recovered", "sw8"), ("x-mse-tag", "header", ""),
])
async def test_whatever_single_carrier_the_app_forwards_keeps_the_lane(forward: str, source: str, via: str) -> None:
    before = _source_count(source, via)
    async with mesh() as m, aiohttp.ClientSession() as client:
        async with client.get(f"{m.gateway}/?forward={forward}", headers={"User-Agent": "xiaoming"}) as resp:
            body = await resp.json()
            hops = parse_path(resp.headers["x-lane-path"])
    assert body["c"]["lane"] == "gray"
    if forward == "x-mse-tag":
        # the tag alone names a lane, not a request: the call keeps its lane, but no record can take its hops
        assert [h.label() for h in hops] == ["front@base"]
    else:  # baggage carries lane's request id too (`lane.core.wire.REQUEST_MEMBER`), so the record is complete
        assert [h.label() for h in hops] == ["front@base", "c@gray"] and hops[1].recovered == (via or None)
    assert _source_count(source, via) == before + 1


async def test_an_app_that_forwards_nothing_is_a_counted_break_and_named() -> None:
    before = _source_count("lost")
    async with mesh() as m, aiohttp.ClientSession() as client:
        for _ in range(3):
            async with client.get(f"{m.gateway}/?forward=none", headers={"User-Agent": "xiaoming"}) as resp:
                assert (await resp.json())["c"]["lane"] == "base"
        carriers = m.sidecar.carriers.view()
    assert _source_count("lost") == before + 3
    assert carriers["lane_sources"]["lost"] == 3 and carriers["forwarded"] == []
    assert carriers["verdict"].endswith("it forwards none of them: its calls leave in the default lane")


async def test_a_repeated_trace_header_cannot_pull_a_request_into_another_lane() -> None:
    """Issue "Hardening" 1: a client appends the traceparent of a gray request it saw to its own."""
    gray_trace = "0af7651916cd43dd8448eb211c80319c"
    async with mesh() as m, aiohttp.ClientSession() as client:
        gray = {"User-Agent": "xiaoming", "traceparent": f"00-{gray_trace}-b7ad6b7169203331-01"}
        async with client.get(f"{m.gateway}/?forward=traceparent", headers=gray) as resp:
            assert (await resp.json())["c"]["lane"] == "gray"
        for target in (m.gateway, m.inbound):  # through the gateway, and straight at the sidecar
            headers = [("traceparent", f"00-{'1' * 32}-b7ad6b7169203331-01"),
                       ("traceparent", f"00-{gray_trace}-b7ad6b7169203331-01")]
            async with client.get(f"{target}/?forward=traceparent&keep=last", headers=headers) as resp:
                body = await resp.json()
                hops = parse_path(resp.headers["x-lane-path"])
            assert len(body["received"]["traceparent"]) == 1  # the app sees exactly one value
            assert gray_trace not in body["received"]["traceparent"][0]
            assert body["c"]["lane"] == "base"
            assert [h.label() for h in hops] == ["front@base", "c@base"]  # every hop in the record


async def test_baggage_split_over_headers_stays_within_the_field_limit() -> None:
    """Issue "Hardening" 4: three baggage headers of ~3 KB each must not become one 9 KB header (431)."""
    parts = [",".join(f"k{i}_{j}={'v' * 40}" for j in range(60)) for i in range(3)]
    assert all(len(p) < 8000 for p in parts) and sum(map(len, parts)) > 8192
    async with mesh() as m, aiohttp.ClientSession() as client:
        headers = [("User-Agent", "xiaoming"), *(("baggage", p) for p in parts)]
        async with client.get(f"{m.gateway}/?forward=x-request-id", headers=headers) as resp:
            assert resp.status == 200
            body = await resp.json()
    got = body["baggage"]
    assert got[0].startswith("x-mse-tag=gray,lane-request-id=") and got[1:] == parts  # lane's first, the rest as sent
    assert all(len(v) <= 8190 for v in got)


def test_the_sidecar_refuses_the_app_port_as_an_instance_and_a_lane_the_service_lacks(tmp_path: Path) -> None:
    config = tmp_path / "lane.yaml"
    config.write_text("""
lanes: {gray: {}}
entry: a
services:
  a: {instances: {base: ["127.0.0.1:18101"], gray: ["127.0.0.1:18102"]}}
  b: {instances: {base: ["127.0.0.1:18201"]}}
""")
    cases = [
        (["--service", "a", "--lane", "gray", "--app", "127.0.0.1:18102"],
         "--app 127.0.0.1:18102 is listed in", "write this sidecar's --listen"),
        (["--service", "b", "--lane", "gray", "--app", "127.0.0.1:9"],
         "--lane gray: service b has no gray instance", "add this sidecar's --listen"),
    ]
    for args, first, then in cases:
        done = subprocess.run([sys.executable, "-m", "lane", "sidecar", "--config", str(config), *args,
                               "--listen", "127.0.0.1:0", "--outbound", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and first in lines[0] and then in lines[0] and "Traceback" not in done.stderr
