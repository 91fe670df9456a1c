"""A ready proxy does not run Python's cyclic collector every few hundred requests (issue 17, CPU per hop).

A real ``lane sidecar`` on 127.0.0.1 with a real aiohttp app behind it; 3,000 requests go through
its outbound and inbound sides (the hop pair), and its own ``/metrics`` (prometheus-client's
``python_gc_collections_total``) says how many young-generation collections ran meanwhile. With
CPython's default threshold (700) that was 19 in one run; settled (`lane.process.collector`), none
(at most a few are allowed).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.support.processes import free_port, lane_process, serve_app

REQUESTS = 3000
CONCURRENCY = 16


async def collections(client: aiohttp.ClientSession, admin: str) -> dict[str, float]:
    async with client.get(admin + "/metrics") as resp:
        text = await resp.text()
    found = dict(re.findall(r'^python_gc_collections_total\{generation="(\d)"\} (\S+)$', text, re.MULTILINE))
    assert set(found) == {"0", "1", "2"}, text[:500]
    return {gen: float(value) for gen, value in found.items()}


async def test_a_sidecar_under_load_runs_the_young_collection_rarely(tmp_path: Path) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", hello)
    async with serve_app(app) as app_port:
        inbound = free_port()
        config = tmp_path / "lane.yaml"
        config.write_text(f"entry: a\nservices:\n  a: {{instances: {{base: ['127.0.0.1:{inbound}']}}}}\n")
        with lane_process(tmp_path, "sc", "sidecar", "--config", str(config), "--service", "a", "--lane", "base",
                          "--app", f"127.0.0.1:{app_port}", "--listen", f"127.0.0.1:{inbound}",
                          "--outbound", "127.0.0.1:0", "--admin", "127.0.0.1:0", log_level="WARNING") as sc:
            outbound, admin = sc.url("outbound"), sc.url("admin")
            connector = aiohttp.TCPConnector(limit=CONCURRENCY)
            async with aiohttp.ClientSession(connector=connector) as client:
                before = await collections(client, admin)
                answered: list[int] = []

                async def caller(n: int) -> None:
                    for i in range(n):
                        async with client.get(outbound + "/", headers={"Host": "a", "x-request-id": f"r{n}-{i}"}) as r:
                            await r.read()
                            answered.append(r.status)

                await asyncio.gather(*(caller(REQUESTS // CONCURRENCY) for _ in range(CONCURRENCY)))
                after = await collections(client, admin)
    assert len(answered) == REQUESTS // CONCURRENCY * CONCURRENCY and set(answered) == {200}
    young = after["0"] - before["0"]
    assert young <= 5, f"{young:.0f} young-generation collections in {len(answered)} requests"
    assert after["2"] - before["2"] <= 1
