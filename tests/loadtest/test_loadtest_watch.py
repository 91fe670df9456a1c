"""Polling admin endpoints, the chaos driver and the settle-before-judging loop, over real loopback sockets."""

from __future__ import annotations

import json
import sys

import pytest
from aiohttp import web

from lane.core.config_load import demo_config_text, parse_config
from lane.core.hops import parse_path
from loadtest.chaos import choose_target, parse_target, run_chaos
from loadtest.health import HealthHistory
from loadtest.personas import build_personas
from loadtest.runner import LOCUSTFILE, RunSpec, locust_argv
from loadtest.session import LaneOptions, LaneSession
from loadtest.watch import AdminPoller
from tests.loadtest.test_loadtest_dataplane import fake_data_plane
from tests.support.processes import free_port

CONFIG = parse_config(demo_config_text(), "demo")


def test_poller_reads_instances_and_demo_topology_into_history() -> None:
    history = HealthHistory()
    with fake_data_plane() as plane:
        poller = AdminPoller([plane.admin_url + "/"], history, clock=lambda: 50.0)
        assert poller.poll_once()[("c", "gray")] is True
        plane.down.add(("c", "gray"))
        view = poller.poll_once()
    assert view[("c", "gray")] is False and view[("c", "base")] is True
    assert history.unhealthy_near(("c", "gray"), 50.0, 50.0, 0.1)
    assert history.known_lanes("c") == {"base", "gray"}


def test_poller_survives_an_unreachable_admin_and_records_nothing() -> None:
    history = HealthHistory()
    poller = AdminPoller([f"http://127.0.0.1:{free_port()}"], history, clock=lambda: 1.0)
    assert poller.poll_once() == {}
    assert history.known_lanes("c") == set() and poller.polls == 1


def test_poller_stops_asking_a_non_demo_admin_for_its_topology() -> None:
    asked: list[str] = []

    def fetch(url: str) -> object:
        asked.append(url)
        if url.endswith("/demo/topology"):
            import urllib.error

            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)  # type: ignore[arg-type]
        return {"services": {"c": {"gray": [{"instance": "x", "healthy": True}]}}}

    poller = AdminPoller(["http://admin"], HealthHistory(), fetch=fetch)
    poller.poll_once()
    poller.poll_once()
    assert asked == ["http://admin/lane/instances", "http://admin/demo/topology", "http://admin/lane/instances"]


def test_refresh_does_not_flood_the_admin() -> None:
    now = [0.0]
    poller = AdminPoller([], HealthHistory(), clock=lambda: now[0])
    for _ in range(5):
        poller.refresh(min_age=0.1)
    now[0] = 0.2
    poller.refresh(min_age=0.1)
    assert poller.polls == 2


def test_poll_loop_is_bounded_by_its_stop_condition() -> None:
    calls: list[float] = []
    poller = AdminPoller([], HealthHistory())
    poller.run(0.01, lambda: len(calls) >= 3, calls.append)
    assert poller.polls == 3


def test_chaos_driver_stops_and_restarts_through_the_admin_and_marks_health() -> None:
    history = HealthHistory()
    clock = iter([10.0, 10.1, 14.0])
    with fake_data_plane() as plane:
        seen_down: list[set[tuple[str, str]]] = []
        run = run_chaos(plane.admin_url, ("c", "gray"), after=0, down=0, eject_seconds=1.0, history=history,
                        sleep=lambda s: seen_down.append(set(plane.down)), clock=lambda: next(clock))
        assert plane.down == set()
    assert seen_down == [set(), {("c", "gray")}]  # before the stop, and while down
    assert (run.service, run.lane, run.stopped_at, run.started_at, run.error) == ("c", "gray", 10.1, 14.0, None)
    assert history.unhealthy_near(("c", "gray"), 14.8, 14.8, 0.0)  # ejection may outlive the restart
    assert not history.unhealthy_near(("c", "gray"), 15.5, 15.5, 0.0)


def test_chaos_driver_reports_a_refused_stop() -> None:
    with fake_data_plane() as plane:
        run = run_chaos(plane.admin_url, ("b", "gray"), after=0, down=0, eject_seconds=1, history=HealthHistory(),
                        sleep=lambda s: None, clock=lambda: 1.0)
    assert run.error == "stopping b@gray answered HTTP 404"


def test_chaos_targets_are_checked_and_chosen_from_what_personas_need() -> None:
    assert choose_target(CONFIG, build_personas(CONFIG)) == ("c", "gray")
    assert parse_target("a@gray", CONFIG) == ("a", "gray")
    with pytest.raises(ValueError, match="c@gray"):
        parse_target("b@gray", CONFIG)


def test_settling_lets_a_fresh_health_sighting_justify_a_fallback() -> None:
    session = LaneSession(CONFIG, LaneOptions(admins=("http://admin",), grace=1.0))
    persona = session.personas[0]
    hops = parse_path("a@base;requested=gray;fallback=unhealthy")
    now = [100.0]
    refreshed: list[float] = []

    def refresh() -> None:
        refreshed.append(now[0])
        if len(refreshed) == 2:
            session.health.observe("admin", now[0], {("a", "gray"): False})

    def sleep(seconds: float) -> None:
        now[0] += seconds

    verdict = session.verify_settled(persona, hops, 100.0, 100.0, refresh, sleep, clock=lambda: now[0])
    assert verdict.ok and len(refreshed) == 2
    never = LaneSession(CONFIG, LaneOptions(admins=("http://admin",), grace=0.5))
    now[0] = 200.0
    verdict = never.verify_settled(persona, hops, 200.0, 200.0, lambda: None, sleep, clock=lambda: now[0])
    assert [f.kind for f in verdict.findings] == ["unjustified-fallback"] and now[0] >= 200.5


def test_locust_command_line_carries_every_lane_option() -> None:
    argv = locust_argv(RunSpec(host="http://127.0.0.1:1", config="c.yaml", run_time=7, admins=("http://a", "http://b"),
                               json_path="s.json", html_path="r.html", chaos="c@gray", chaos_after=1, chaos_down=2,
                               forged=False, master=True, expect_workers=2, master_bind_port=6000, extra=("--x",)))
    assert argv[:5] == [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    joined = " ".join(argv)
    for part in ["--host http://127.0.0.1:1", "--run-time 7s", "--headless", "--html r.html", "--master",
                 "--expect-workers 2", "--master-bind-host 127.0.0.1", "--master-bind-port 6000",
                 "--lane-config c.yaml", "--lane-admin http://a,http://b", "--lane-json s.json",
                 "--lane-chaos c@gray", "--lane-chaos-after 1", "--lane-chaos-down 2", "--lane-no-forged"]:
        assert part in joined, part
    assert argv[-1] == "--x"
    worker = locust_argv(RunSpec(host=None, worker=True, master_port=6000))
    assert "--worker" in worker and "--run-time" not in worker and "--host" not in worker


async def test_admin_poll_over_a_real_aiohttp_admin() -> None:
    """The poller's stdlib HTTP speaks to an aiohttp admin exactly like the data plane's."""
    import asyncio

    async def instances(request: web.Request) -> web.Response:
        return web.json_response({"services": {"a": {"gray": [{"instance": "127.0.0.1:1", "healthy": False}]}}})

    app = web.Application()
    app.router.add_get("/lane/instances", instances)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        history = HealthHistory()
        poller = AdminPoller([f"http://127.0.0.1:{port}"], history, clock=lambda: 5.0)
        view = await asyncio.to_thread(poller.poll_once)
    finally:
        await runner.cleanup()
    assert view == {("a", "gray"): False}
    assert json.dumps(sorted(history.unhealthy_now())) == '[["a", "gray"]]'
