"""Overload protection of a data listener (`lane.engine.limits`, ``proxy:`` limits), over real sockets.

The gateway runs as a real `lane gateway` process with low limits; its upstream runs in the test's
event loop. Normal requests keep being served (their latency is measured and printed; the bound is a
generous "each within 5 s") during an idle-connection flood and a slow-loris, over-cap requests get
a fast 503 with Retry-After, and every shed is counted in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
from aiohttp import web

from tests.support.processes import lane_process, serve_app

CONFIG = """entry: up
proxy: {{{proxy}}}
services:
  up:
    instances:
      base: ["127.0.0.1:{port}"]
"""

HELD: web.AppKey[asyncio.Event] = web.AppKey("held", asyncio.Event)
ARRIVED: web.AppKey[list[int]] = web.AppKey("arrived", list)


async def _held(request: web.Request) -> web.Response:
    request.app[ARRIVED].append(1)
    await request.app[HELD].wait()
    return web.Response(text="released")


async def _stall(request: web.Request) -> web.Response:
    """Reads none of an upload for a while: a slow upstream behind big uploads."""
    await asyncio.sleep(float(request.query.get("s", "4")))
    return web.Response(text="stalled")


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def upstream() -> web.Application:
    app = web.Application()
    app[HELD] = asyncio.Event()
    app[ARRIVED] = []
    app.router.add_get("/held", _held)
    app.router.add_post("/stall", _stall)
    app.router.add_route("*", "/{tail:.*}", _ok)
    return app


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, proxy: str) -> AsyncIterator[tuple[str, str, web.Application, int]]:
    """(gateway url, admin url, upstream app, gateway pid) for a gateway with `proxy: {<proxy>}`."""
    app = upstream()
    async with serve_app(app) as port:
        config = tmp_path / "lane.yaml"
        config.write_text(CONFIG.format(proxy=proxy, port=port))
        with lane_process(tmp_path, "gw", "gateway", "--config", str(config), "--listen", "127.0.0.1:0",
                          "--admin", "127.0.0.1:0") as gw:
            yield gw.url("gateway"), gw.url("admin"), app, gw.popen.pid


async def shed_counts(admin: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as client, client.get(admin + "/metrics") as resp:
        text = await resp.text()
    return {m[1]: float(m[2]) for m in re.finditer(
        r'^lane_overload_shed_total\{listener="gateway",reason="(\w+)"\} (\S+)$', text, re.MULTILINE)} | {
        "open": float(re.search(r'^lane_downstream_connections\{listener="gateway"\} (\S+)$', text,
                                re.MULTILINE)[1])}  # type: ignore[index]


async def timed_requests(url: str, count: int, pause: float = 0.02) -> list[float]:
    """*count* GETs, each on a new connection, one after another: their latencies (each must be a 200)."""
    latencies = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as client:
        for _ in range(count):
            started = time.monotonic()
            async with client.get(url + "/normal") as resp:
                assert resp.status == 200, resp.status
                assert await resp.text() == "ok"
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(pause)
    return latencies


def report(what: str, latencies: list[float]) -> None:
    ordered = sorted(latencies)
    print(f"{what}: {len(ordered)} requests, median {ordered[len(ordered) // 2] * 1000:.1f} ms, "
          f"max {ordered[-1] * 1000:.1f} ms")


async def test_over_the_request_cap_a_fast_503_with_retry_after_counted_in_metrics(tmp_path: Path) -> None:
    async with gateway(tmp_path, "max_concurrent_requests: 4") as (url, admin, app, _):
        async with aiohttp.ClientSession() as client:
            held = [asyncio.create_task(client.get(url + "/held")) for _ in range(4)]
            for _ in range(300):
                if len(app[ARRIVED]) == 4:
                    break
                await asyncio.sleep(0.05)
            assert len(app[ARRIVED]) == 4
            for _ in range(10):
                started = time.monotonic()
                async with client.get(url + "/over") as resp:
                    assert resp.status == 503
                    assert resp.headers["Retry-After"] == "1"
                    assert resp.headers["x-lane-overloaded"] == "requests"
                    assert "too many requests at once" in await resp.text()
                assert time.monotonic() - started < 5
            assert len(app[ARRIVED]) == 4  # the shed ones never reached the upstream
            app[HELD].set()
            for answer in await asyncio.gather(*held):
                assert answer.status == 200
                answer.release()
            async with client.get(url + "/after") as resp:
                assert resp.status == 200
        counts = await shed_counts(admin)
        assert counts["requests"] == 10 and counts["connections"] == 0


async def test_an_idle_connection_flood_does_not_stop_normal_requests(tmp_path: Path) -> None:
    async with gateway(tmp_path, "max_connections: 50") as (url, admin, _, _):
        port = int(url.rsplit(":", 1)[1])
        flood: list[asyncio.StreamWriter] = []

        async def open_flood(count: int) -> None:
            for _ in range(count):
                with contextlib.suppress(OSError):
                    flood.append((await asyncio.open_connection("127.0.0.1", port))[1])

        try:
            flooding = asyncio.create_task(open_flood(300))
            latencies = await timed_requests(url, 40)
            await flooding
            latencies += await timed_requests(url, 20)  # with 300 idle sockets opened
        finally:
            for writer in flood:
                writer.close()
        report("during an idle-connection flood of 300 against max_connections 50", latencies)
        counts = await shed_counts(admin)
        # Every flood socket past the cap cost an older waiting one its slot; none of the requests failed.
        assert counts["evicted"] >= 250 - 60
        assert counts["open"] <= 50
        for _ in range(50):  # the flood is gone: the gauge comes back to zero
            if (await shed_counts(admin))["open"] <= 1:  # (the /metrics read itself is on the admin listener)
                break
            await asyncio.sleep(0.1)
        assert (await shed_counts(admin))["open"] == 0


async def test_a_slow_loris_does_not_stop_normal_requests(tmp_path: Path) -> None:
    async with gateway(tmp_path, "max_connections: 30") as (url, admin, _, _):
        port = int(url.rsplit(":", 1)[1])
        stop = asyncio.Event()
        cut = 0

        async def loris(i: int) -> None:
            """Sends a head a line every 0.2 s, never ending it, until stopped or cut off."""
            nonlocal cut
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /loris HTTP/1.1\r\nHost: up\r\n")
                line = 0
                while not stop.is_set():
                    writer.write(b"x-loris-%d: %d\r\n" % (i, line))
                    await writer.drain()
                    line += 1
                    await asyncio.sleep(0.2)
                writer.close()
            except OSError:
                cut += 1

        lorises = [asyncio.create_task(loris(i)) for i in range(80)]
        try:
            await asyncio.sleep(0.5)
            latencies = await timed_requests(url, 40, pause=0.05)
        finally:
            stop.set()
            await asyncio.gather(*lorises)
        report("during a slow-loris of 80 connections against max_connections 30", latencies)
        counts = await shed_counts(admin)
        assert counts["evicted"] >= 50 and cut >= 40


async def test_at_the_cap_with_every_connection_busy_a_new_one_is_closed_at_once(tmp_path: Path) -> None:
    async with gateway(tmp_path, "max_connections: 3") as (url, admin, app, _):
        port = int(url.rsplit(":", 1)[1])
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as client:
            held = [asyncio.create_task(client.get(url + "/held")) for _ in range(3)]
            for _ in range(300):
                if len(app[ARRIVED]) == 3:
                    break
                await asyncio.sleep(0.05)
            assert len(app[ARRIVED]) == 3  # all three connections are busy
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: up\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, no answer (Envoy does the same)
            writer.close()
            app[HELD].set()
            for answer in await asyncio.gather(*held):
                assert answer.status == 200  # the busy ones were never cut
                answer.release()
        counts = await shed_counts(admin)
        assert counts["connections"] >= 1 and counts["evicted"] == 0


async def test_over_the_memory_watermark_requests_get_503_until_a_reload_lifts_it(tmp_path: Path) -> None:
    async with gateway(tmp_path, "memory_watermark_mb: 1") as (url, admin, _, _):
        async with aiohttp.ClientSession() as client:
            async with client.get(url + "/x") as resp:
                assert resp.status == 503 and resp.headers["x-lane-overloaded"] == "memory"
                assert resp.headers["Retry-After"] == "1" and resp.headers.get("Connection") == "close"
            config = tmp_path / "lane.yaml"
            config.write_text(config.read_text().replace("memory_watermark_mb: 1", "memory_watermark_mb: 0"))
            async with client.post(admin + "/lane/reload") as resp:
                assert resp.status == 200
            async with client.get(url + "/x") as resp:
                assert resp.status == 200
        assert (await shed_counts(admin))["memory"] == 1


async def _endless(block: bytes, stop: asyncio.Event) -> AsyncIterator[bytes]:
    while not stop.is_set():
        yield block


async def test_uploads_to_a_stalled_upstream_hold_bounded_memory(tmp_path: Path) -> None:
    """Eight uploads pushed as fast as the client can into an upstream that reads nothing for 4 s."""
    async with gateway(tmp_path, "connection_buffer_bytes: 65536, request_timeout: 30") as (url, _, _, pid):
        process = psutil.Process(pid)
        stop = asyncio.Event()
        block = b"u" * (1024 * 1024)
        async with aiohttp.ClientSession() as client:
            async with client.get(url + "/warm") as resp:
                assert resp.status == 200
            baseline = process.memory_info().rss

            async def upload() -> None:
                with contextlib.suppress(aiohttp.ClientError):
                    async with client.post(url + "/stall?s=4", data=_endless(block, stop)) as resp:
                        await resp.read()

            uploads = [asyncio.create_task(upload()) for _ in range(8)]
            peak = baseline
            for _ in range(30):
                await asyncio.sleep(0.1)
                peak = max(peak, process.memory_info().rss)
            stop.set()
            await asyncio.gather(*uploads)
        growth = (peak - baseline) / (1024 * 1024)
        print(f"gateway RSS growth with 8 uploads into a stalled upstream: {growth:.1f} MiB")
        assert growth < 48, f"the gateway grew by {growth:.1f} MiB"
