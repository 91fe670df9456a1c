"""Operating a lane proxy: metrics, SIGTERM drain, config reload, --workers.

The gateway runs as a real process (`lane gateway`); its upstream runs in the test's event loop.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import psutil
from aiohttp import web

from tests.support.processes import free_port, lane_process, serve_app, stop_process

RULE = """
lanes: {{gray: {{}}}}
proxy: {{trusted_cidrs: {trusted}, eject_after_failures: 1, connect_timeout: 0.5}}
coloring:
  - {{name: vip, lane: gray, match: {{headers: [{{name: user-agent, exact: {agent}}}]}}}}
entry: up
services:
  up:
    instances:
      base: ["127.0.0.1:{port}"]
      gray: ["127.0.0.1:{gray}"]
"""


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "2")))
    return web.Response(text="slow done")


async def _fast(request: web.Request) -> web.Response:
    return web.Response(text="fast")


def upstream() -> web.Application:
    app = web.Application()
    app.router.add_get("/slow", _slow)
    app.router.add_route("*", "/{tail:.*}", _fast)
    return app


def write_config(path: Path, port: int, agent: str = "xiaoming", gray: int | None = None,
                 trusted: str = "[]") -> None:
    path.write_text(RULE.format(port=port, gray=gray or port, agent=agent, trusted=trusted))


async def served_lane(client: aiohttp.ClientSession, url: str, agent: str) -> str:
    async with client.get(url + "/", headers={"User-Agent": agent}) as resp:
        assert resp.status == 200
        return resp.headers["x-lane-served"]


async def test_metrics_count_requests_rejected_tags_and_ejections(tmp_path: Path) -> None:
    async with serve_app(upstream()) as port:
        config = tmp_path / "lane.yaml"
        write_config(config, port, gray=free_port())  # nothing listens on the gray instance
        with lane_process(tmp_path, "gw", "gateway", "--config", str(config), "--listen", "127.0.0.1:0",
                          "--admin", "127.0.0.1:0") as gw:
            async with aiohttp.ClientSession() as client:
                for _ in range(3):
                    await served_lane(client, gw.url("gateway"), "someone")
                await (await client.get(gw.url("gateway") + "/", headers={"x-mse-tag": "gray"})).read()
                assert await served_lane(client, gw.url("gateway"), "xiaoming") == "base"  # gray is down
                async with client.get(gw.url("admin") + "/metrics") as resp:
                    text = await resp.text()
    assert 'lane_requests_total{destination_service="up",fallback="",proxy="gateway",requested_lane="base",' \
           'response_code="200",served_lane="base",source_lane="",source_service="gateway"} 4.0' in text
    assert 'lane_requests_total{destination_service="up",fallback="connect-failed",proxy="gateway",' \
           'requested_lane="gray",response_code="200",served_lane="base",source_lane="",source_service="gateway"} 1.0' \
           in text
    # the same requests in the duration histogram (every one within the +Inf bucket), and no _created series
    assert 'lane_request_duration_seconds_count{destination_service="up",proxy="gateway",requested_lane="base",' \
           'response_code="200",served_lane="base",source_lane="",source_service="gateway"} 4.0' in text
    assert "_created" not in text and 'lane_build_info{python="' in text
    assert 'lane_rejected_tags_total{source="header"} 1.0' in text
    assert 'lane_ejections_total{instance="127.0.0.1:' in text and 'lane="gray",service="up"} 1.0' in text


async def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    async with serve_app(upstream()) as port:
        config = tmp_path / "lane.yaml"
        write_config(config, port)
        with lane_process(tmp_path, "gw", "gateway", "--config", str(config), "--listen", "127.0.0.1:0",
                          "--admin", "127.0.0.1:0", "--drain-seconds", "10") as gw:
            async with aiohttp.ClientSession() as client:
                slow = [asyncio.create_task(client.get(gw.url("gateway") + "/slow?s=2")) for _ in range(3)]
                await asyncio.sleep(0.7)
                gw.popen.send_signal(signal.SIGTERM)
                answers = await asyncio.gather(*slow)
                assert [a.status for a in answers] == [200, 200, 200]
                assert [await a.text() for a in answers] == ["slow done"] * 3
                exit_code = await asyncio.get_running_loop().run_in_executor(None, gw.popen.wait, 15)
                assert exit_code == 0
                try:
                    await client.get(gw.url("gateway") + "/")
                    raise AssertionError("the stopped gateway still accepted a request")
                except aiohttp.ClientConnectionError:
                    pass


async def test_a_second_stop_signal_during_the_drain_changes_nothing(tmp_path: Path) -> None:
    async with serve_app(upstream()) as port:
        config = tmp_path / "lane.yaml"
        write_config(config, port)
        with lane_process(tmp_path, "gw", "gateway", "--config", str(config), "--listen", "127.0.0.1:0",
                          "--admin", "127.0.0.1:0", "--drain-seconds", "10") as gw:
            async with aiohttp.ClientSession() as client:
                slow = [asyncio.create_task(client.get(gw.url("gateway") + "/slow?s=2")) for _ in range(2)]
                await asyncio.sleep(0.7)
                gw.popen.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)  # draining now
                gw.popen.send_signal(signal.SIGINT)  # an impatient Ctrl-C
                answers = await asyncio.gather(*slow)
                assert [(a.status, await a.text()) for a in answers] == [(200, "slow done")] * 2
                exit_code = await asyncio.get_running_loop().run_in_executor(None, gw.popen.wait, 15)
                assert exit_code == 0
    assert "SIGINT while stopping: ignored" in gw.log_text()


async def test_the_access_log_is_off_unless_asked_for(tmp_path: Path) -> None:
    async with serve_app(upstream()) as port:
        config = tmp_path / "lane.yaml"
        write_config(config, port)
        logs = {}
        for name, flags in (("quiet", ()), ("logged", ("--access-log",))):
            # INFO without the flag, WARNING with it: the flag alone decides
            with lane_process(tmp_path, name, "gateway", "--config", str(config), "--listen", "127.0.0.1:0",
                              "--admin", "127.0.0.1:0", *flags, log_level="WARNING" if flags else "INFO") as gw:
                async with aiohttp.ClientSession() as client:
                    async with client.get(gw.url("gateway") + f"/seen-by-{name}?x=1") as resp:
                        assert resp.status == 200
                    async with client.get(gw.url("admin") + "/healthz") as resp:
                        assert resp.status == 200
            logs[name] = gw.log_text()
    assert "/seen-by-quiet" not in logs["quiet"] and "aiohttp.access" not in logs["quiet"]
    assert '"GET /seen-by-logged?x=1 HTTP/1.1" 200' in logs["logged"]
    assert "lane.access" in logs["logged"] and "aiohttp.access" not in logs["logged"]  # written by the one core
    assert "/healthz" not in logs["logged"]  # the admin listener is not logged


async def test_reload_swaps_a_rule_without_failing_in_flight_requests(tmp_path: Path) -> None:
    async with serve_app(upstream()) as port:
        config = tmp_path / "lane.yaml"
        write_config(config, port)
        with lane_process(tmp_path, "gw", "gateway", "--config", str(config), "--listen", "127.0.0.1:0",
                          "--admin", "127.0.0.1:0") as gw:
            url = gw.url("gateway")
            async with aiohttp.ClientSession() as client:
                assert await served_lane(client, url, "xiaoming") == "gray"
                in_flight = [asyncio.create_task(client.get(url + "/slow?s=1.5", headers={"User-Agent": "xiaoming"}))
                             for _ in range(3)]
                await asyncio.sleep(0.3)
                write_config(config, port, agent="xiaohong")
                async with client.post(gw.url("admin") + "/lane/reload") as resp:
                    assert resp.status == 200 and (await resp.json())["reloaded"] is True
                answers = await asyncio.gather(*in_flight)
                assert [(a.status, a.headers["x-lane-served"]) for a in answers] == [(200, "gray")] * 3
                assert await served_lane(client, url, "xiaoming") == "base"
                assert await served_lane(client, url, "xiaohong") == "gray"

                config.write_text("entry: [not, valid\n")
                async with client.post(gw.url("admin") + "/lane/reload") as resp:
                    assert resp.status == 400 and "keeping the previous config" in (await resp.json())["message"]
                gw.popen.send_signal(signal.SIGHUP)
                await asyncio.sleep(0.5)
                assert await served_lane(client, url, "xiaohong") == "gray"  # the old config still serves
                write_config(config, port, agent="xiaoming")
                gw.popen.send_signal(signal.SIGHUP)
                for _ in range(50):
                    if await served_lane(client, url, "xiaoming") == "gray":
                        break
                    await asyncio.sleep(0.1)
                assert await served_lane(client, url, "xiaoming") == "gray"
            log = gw.log_text()
    assert "config reload rejected, keeping the previous config" in log and "lane.yaml" in log


async def test_workers_share_the_port_and_the_supervisor_aggregates(tmp_path: Path) -> None:
    async with serve_app(upstream()) as port:
        config = tmp_path / "lane.yaml"
        write_config(config, port)
        listen = f"127.0.0.1:{free_port()}"
        with lane_process(tmp_path, "gw", "gateway", "--config", str(config), "--listen", listen,
                          "--admin", "127.0.0.1:0", "--workers", "2", ready_timeout=60) as gw:
            workers = psutil.Process(gw.popen.pid).children()
            assert len(workers) == 2
            serving = {c.pid for c in workers if any(conn.laddr.port == int(listen.split(":")[1])
                                                      for conn in c.net_connections("tcp"))}
            assert serving == {c.pid for c in workers}
            async with aiohttp.ClientSession() as client:
                for _ in range(20):
                    async with aiohttp.ClientSession() as fresh:  # new connections spread over the workers
                        assert await served_lane(fresh, f"http://{listen}", "xiaoming") == "gray"
                want = ('lane_requests_total{destination_service="up",fallback="",proxy="gateway",'
                        'requested_lane="gray",response_code="200",served_lane="gray",source_lane="",'
                        'source_service="gateway"} 20.0')
                for _ in range(50):  # workers hand their counts over within a second (lane.telemetry.metric_tally)
                    async with client.get(gw.url("admin") + "/metrics") as resp:
                        text = await resp.text()
                    if want in text:
                        break
                    await asyncio.sleep(0.1)
                async with client.get(gw.url("admin") + "/lane/instances") as resp:
                    view = await resp.json()
            assert want in text
            assert ('lane_request_duration_seconds_count{destination_service="up",proxy="gateway",'
                    'requested_lane="gray",response_code="200",served_lane="gray",source_lane="",'
                    'source_service="gateway"} 20.0') in text  # the histograms of both workers, summed
            assert view["workers"] == 2 and view["services"]["up"]["gray"][0]["healthy"] is True
            started = time.monotonic()
            assert stop_process(gw.popen) == 0 and time.monotonic() - started < 30
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
