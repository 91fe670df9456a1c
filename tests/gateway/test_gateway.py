"""The gateway's promises: outside tags are removed, rules color, trace ids exist, the lane leaves set.

Gateway and upstream run in the test's event loop over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from lane.core.config_load import parse_config
from lane.dataplane.runtime import Runtime
from lane.gateway.main import build_gateway_app
from lane.gateway.request import ensure_trace_headers, is_trusted
from tests.support.processes import serve_app

LANE = web.AppKey("lane", str)


async def _echo_lane(request: web.Request) -> web.Response:
    return web.json_response({"lane": request.app[LANE], "headers": {k.lower(): v for k, v in request.headers.items()}})


def lane_app(lane: str) -> web.Application:
    app = web.Application()
    app[LANE] = lane
    app.router.add_route("*", "/{tail:.*}", _echo_lane)
    return app


def config_text(base: int, gray: int, trusted: str = "[]", extra_lanes: str = "") -> str:
    return f"""
lanes:
  gray: {{}}
{extra_lanes}
proxy: {{trusted_cidrs: {trusted}, connect_timeout: 0.5}}
coloring:
  - name: xiaoming
    lane: gray
    match: {{headers: [{{name: User-Agent, exact: xiaoming}}]}}
  - name: beta-cookie
    lane: gray
    match: {{cookies: [{{name: beta, exact: "1"}}]}}
  - name: query
    lane: gray
    match: {{query: [{{name: lane, exact: gray}}]}}
entry: a
services:
  a:
    instances:
      base: ["127.0.0.1:{base}"]
      gray: ["127.0.0.1:{gray}"]
"""


@asynccontextmanager
async def gateway(trusted: str = "[]") -> AsyncIterator[str]:
    async with serve_app(lane_app("base")) as base, serve_app(lane_app("gray")) as gray:
        runtime = Runtime(parse_config(config_text(base, gray, trusted), "gw.yaml"), None)
        async with serve_app(build_gateway_app(runtime)) as port:
            yield f"http://127.0.0.1:{port}"


async def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, object]]:
    async with aiohttp.ClientSession() as client, client.get(url, headers=headers or {}) as resp:
        assert resp.status == 200
        return dict(resp.headers), await resp.json()


async def test_rules_color_by_header_cookie_and_query() -> None:
    async with gateway() as url:
        for headers, query, lane in (({"User-Agent": "xiaoming"}, "", "gray"), ({"Cookie": "x=1; beta=1"}, "", "gray"),
                                     ({}, "?lane=gray", "gray"), ({"User-Agent": "other"}, "", "base")):
            answer_headers, body = await fetch(url + "/" + query, headers)
            assert body["lane"] == lane, headers
            assert answer_headers["x-lane-served"] == lane
            seen = body["headers"]
            assert isinstance(seen, dict)
            assert seen["x-mse-tag"] == lane and seen["baggage"] == f"x-mse-tag={lane}"


async def test_an_outside_tag_is_removed_other_baggage_survives() -> None:
    async with gateway() as url:
        _, body = await fetch(url + "/", {"x-mse-tag": "gray", "baggage": "userid=alice;p=1, x-mse-tag=gray,tenant=t1",
                                          "x-lane-fallback": "no-instance"})
        assert body["lane"] == "base"
        seen = body["headers"]
        assert isinstance(seen, dict)
        assert seen["x-mse-tag"] == "base"
        assert seen["baggage"] == "x-mse-tag=base,userid=alice;p=1,tenant=t1"
        assert "x-lane-fallback" not in seen


async def test_an_outside_client_cannot_claim_https_or_another_host_a_trusted_proxy_can() -> None:
    claimed = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "bank.example", "X-Forwarded-For": "1.2.3.4"}
    for trusted, proto, host in (("[]", "http", None), ('["127.0.0.0/8"]', "https", "bank.example")):
        async with gateway(trusted=trusted) as url:
            _, body = await fetch(url + "/", claimed)
            seen = body["headers"]
            assert isinstance(seen, dict)
            assert seen["x-forwarded-proto"] == proto, trusted
            assert seen["x-forwarded-host"] == (host or url.removeprefix("http://")), trusted
            assert seen["x-forwarded-for"] == "1.2.3.4, 127.0.0.1", trusted  # the peer is appended either way


async def test_a_trusted_peer_keeps_its_tag_and_rules_still_apply_without_one() -> None:
    async with gateway(trusted='["127.0.0.0/8"]') as url:
        _, body = await fetch(url + "/", {"baggage": "x-mse-tag=gray"})
        assert body["lane"] == "gray"
        _, body = await fetch(url + "/", {"x-mse-tag": "not a lane!"})
        assert body["lane"] == "base"  # invalid tags are treated as absent
        _, body = await fetch(url + "/", {"User-Agent": "xiaoming"})
        assert body["lane"] == "gray"


async def test_every_request_leaves_with_a_traceparent_and_a_request_id() -> None:
    async with gateway() as url:
        _, body = await fetch(url + "/")
        seen = body["headers"]
        assert isinstance(seen, dict)
        assert len(seen["traceparent"].split("-")[1]) == 32 and seen["x-request-id"]
        sent = {"x-request-id": "mine", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
        _, body = await fetch(url + "/", sent)
        seen = body["headers"]
        assert isinstance(seen, dict)
        # an outside client's id is kept for reference but not trusted to be unique: the gateway mints its own
        assert seen["x-client-request-id"] == "mine" and uuid.UUID(seen["x-request-id"]).version == 4
        assert "0af7651916cd43dd8448eb211c80319c" in seen["traceparent"]  # tracing continuity
    async with gateway(trusted='["127.0.0.0/8"]') as url:
        _, body = await fetch(url + "/", sent)
        seen = body["headers"]
        assert isinstance(seen, dict)
        assert seen["x-request-id"] == "mine" and "x-client-request-id" not in seen


async def test_the_gray_instance_down_means_base_serves_and_the_answer_says_why() -> None:
    async with serve_app(lane_app("base")) as base:
        async with serve_app(lane_app("gray")) as gray:
            pass  # closed: the gray instance is down
        runtime = Runtime(parse_config(config_text(base, gray), "gw.yaml"), None)
        async with serve_app(build_gateway_app(runtime)) as port:
            headers, body = await fetch(f"http://127.0.0.1:{port}/", {"User-Agent": "xiaoming"})
    assert body["lane"] == "base"
    assert headers["x-lane-served"] == "base" and headers["x-lane-fallback"] == "connect-failed"
    assert headers["x-lane-path"].startswith("a@base;requested=gray;fallback=connect-failed")
    seen = body["headers"]
    assert isinstance(seen, dict)
    assert seen["x-mse-tag"] == "gray"  # the request stays in its lane for the hops after this one


def test_trust_is_by_cidr_and_trace_headers_are_only_added_when_missing() -> None:
    config = parse_config(config_text(1, 2, '["10.0.0.0/8", "::1/128"]'), "gw.yaml")
    assert is_trusted(config, "10.1.2.3") and is_trusted(config, "::1")
    assert not is_trusted(config, "11.0.0.1") and not is_trusted(config, None) and not is_trusted(config, "junk")
    # IPv4 clients of a dual-stack listener arrive IPv4-mapped
    assert is_trusted(config, "::ffff:10.1.2.3") and not is_trusted(config, "::ffff:11.0.0.1")
    headers = CIMultiDict({"X-Request-Id": "keep"})
    ensure_trace_headers(headers)
    assert headers["x-request-id"] == "keep" and headers["traceparent"].startswith("00-")


def test_generated_trace_ids_are_w3c_traceparents_and_version_4_uuids() -> None:
    seen = set()
    for _ in range(200):
        headers: CIMultiDict[str] = CIMultiDict()
        ensure_trace_headers(headers)
        version, trace_id, span_id, flags = headers["traceparent"].split("-")
        assert (version, len(trace_id), len(span_id), flags) == ("00", 32, 16, "01")
        assert int(trace_id, 16) and int(span_id, 16)  # all-zero ids are invalid
        request_id = uuid.UUID(headers["x-request-id"])
        assert str(request_id) == headers["x-request-id"]
        assert (request_id.version, request_id.variant) == (4, uuid.RFC_4122)
        seen.add((trace_id, str(request_id)))
    assert len(seen) == 200


async def test_query_rules_see_the_raw_query_decoded_once() -> None:
    # `lane=gr%2561y` means the value "gr%61y", not "gray": decoding the query string before parsing
    # it (aiohttp's request.query_string) would decode twice and wrongly color the request gray.
    from yarl import URL

    async with gateway() as url, aiohttp.ClientSession() as client:
        for query, lane in (("lane=gr%2561y", "base"), ("lane=gray%26x=1", "base"), ("lane=gr%61y", "gray"), ("x=1&lane=gray", "gray")):
            async with client.get(URL(f"{url}/?{query}", encoded=True)) as resp:
                assert (await resp.json())["lane"] == lane, query


async def test_a_hash_key_of_invalid_utf8_bytes_is_colored_not_a_500() -> None:
    import asyncio

    keyed = "coloring:\n  - name: pct\n    lane: gray\n    percentage: {percent: 100, key: {header: x-user-id}}\n"
    async with serve_app(lane_app("base")) as base, serve_app(lane_app("gray")) as gray:
        text = config_text(base, gray).replace("coloring:\n", keyed)
        async with serve_app(build_gateway_app(Runtime(parse_config(text, "gw.yaml"), None))) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: shop\r\nx-user-id: u\xff\xfe\r\nConnection: close\r\n\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
    assert answer.split(b"\r\n", 1)[0].startswith(b"HTTP/1.1 200"), answer[:300]
    assert b"x-lane-served: gray" in answer.lower()
