"""Fallback, live: a gray instance dies under load, traffic falls back; it returns, traffic returns.

The chaos test runs `lane demo` for real (every app and sidecar a process) and SIGKILLs c@gray's
app and sidecar mid-run, like a pod that vanishes. The strict-lane test runs in-process.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import REGISTRY

from lane.core.config_load import parse_config
from lane.dataplane.runtime import Runtime
from lane.gateway.main import build_gateway_app
from tests.support.processes import lane_demo, serve_app

GRAY_PATH = ["a@gray", "b@base", "c@gray", "d@base", "c@gray"]
FELL_BACK_PATH = ["a@gray", "b@base", "c@base", "d@base", "c@base"]


async def gray_request(client: aiohttp.ClientSession, gateway: str) -> tuple[int, list[str], list[str | None]]:
    async with client.get(gateway + "/", headers={"User-Agent": "xiaoming"}) as resp:
        if resp.status != 200:
            return resp.status, [], []
        body = await resp.json()
        return resp.status, body["path"], [h["fallback"] for h in body["hops"]]


async def test_killing_the_gray_instance_falls_back_then_traffic_returns(tmp_path: Path) -> None:
    with lane_demo(tmp_path) as demo:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as client:
            topo = await (await client.get(demo.admin + "/demo/topology")).json()
            pids = topo["instances"]["c"]["gray"][0]["pids"]
            statuses: Counter[int] = Counter()
            paths: list[tuple[list[str], list[str | None]]] = []
            stop = asyncio.Event()

            async def load() -> None:
                for _ in range(2000):  # bounded; normally ends on `stop`
                    if stop.is_set():
                        return
                    status, path, reasons = await gray_request(client, demo.gateway)
                    statuses[status] += 1
                    paths.append((path, reasons))

            workers = [asyncio.create_task(load()) for _ in range(4)]
            await asyncio.sleep(1.0)
            assert paths and all(p == GRAY_PATH for p, _ in paths)
            for pid in (pids["sidecar"], pids["app"]):
                os.kill(pid, signal.SIGKILL)
            killed_at = len(paths)
            await asyncio.sleep(2.5)
            stop.set()
            await asyncio.gather(*workers)
            after = paths[killed_at + 8:]  # past the requests in flight at the kill
            assert after and all(p == FELL_BACK_PATH for p, _ in after), after[:3]
            assert {reasons[2] for _, reasons in after} <= {"unhealthy", "connect-failed"}
            assert "unhealthy" in {reasons[2] for _, reasons in after}  # ejected, not just failing
            assert sum(n for s, n in statuses.items() if s >= 500) <= 4, statuses  # at most those in flight
            view = await (await client.get(demo.admin + "/lane/instances")).json()
            assert view["services"]["c"]["gray"][0]["healthy"] is False

            started = await client.post(demo.admin + "/demo/instances/c/gray/start")
            assert started.status == 200
            returned = False
            for _ in range(100):  # eject_seconds is 5: within ~10 s gray traffic is back on c@gray
                status, path, _ = await gray_request(client, demo.gateway)
                assert status == 200
                if path == GRAY_PATH:
                    returned = True
                    break
                await asyncio.sleep(0.2)
            assert returned, "gray traffic did not return to c@gray after it came back"


STRICT = """
lanes:
  gray: {{}}
  locked: {{strict: true}}
proxy: {{trusted_cidrs: ["127.0.0.0/8"]}}
entry: a
services:
  a:
    instances:
      base: ["127.0.0.1:{port}"]
      gray: ["127.0.0.1:{port}"]
"""


async def test_a_strict_lane_without_an_instance_answers_503_with_the_reason() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="served")

    upstream = web.Application()
    upstream.router.add_get("/", ok)
    async with serve_app(upstream) as port:
        runtime = Runtime(parse_config(STRICT.format(port=port), "strict.yaml"), None)
        async with serve_app(build_gateway_app(runtime)) as gw, aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{gw}/", headers={"x-mse-tag": "locked"}) as resp:
                text = await resp.text()
                assert resp.status == 503
                assert "no instance of a may serve lane locked" in text and "strict" in text
            refused = {"proxy": "gateway", "source_service": "gateway", "source_lane": "", "destination_service": "a",
                       "requested_lane": "locked", "served_lane": "", "fallback": "strict", "response_code": "503"}
            assert (REGISTRY.get_sample_value("lane_requests_total", refused) or 0) >= 1  # what `lane graph` draws
            async with client.get(f"http://127.0.0.1:{gw}/", headers={"x-mse-tag": "gray"}) as resp:
                assert resp.status == 200 and resp.headers["x-lane-served"] == "gray"
