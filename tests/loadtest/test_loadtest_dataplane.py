"""A small data plane the load-test tests aim at, with switchable, deliberate bugs.

Why a fixture and not only `lane demo`: the issue asks for runs against a *wrong* data plane (one
that misroutes 1 request in 50, one that trusts client tags), which the real one must never be.
The fixture is faithful where it is correct: one aiohttp gateway on 127.0.0.1 that colors with
`lane.core.rules.color` (ignoring client tags), walks the call graph like the demo (a -> b -> c,
a -> d -> c), routes each hop with `LaneConfig.lane_for` over its live instance state and answers
with the ``x-lane-path`` hop record (lane/core/hops.py) — the same contract the real proxies follow.
Its admin listener serves ``GET /lane/instances``, ``GET /demo/topology`` and the demo's
``POST /demo/instances/{s}/{l}/stop|start``, so chaos runs can be tested without the demo.

The module also tests that the fixture itself is faithful, so the other tests can trust it.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

from lane.core.config import LaneConfig
from lane.core.config_load import demo_config_text, parse_config
from lane.core.hops import PATH_HEADER, SERVED_HEADER, Hop, encode_path, parse_path
from lane.core.rules import RequestView, color

DEMO_GRAPH: dict[str, tuple[str, ...]] = {"a": ("b", "d"), "b": ("c",), "d": ("c",)}


@dataclass
class Bugs:
    misroute_every: int = 0  # every Nth request's entry hop goes to the wrong lane, no fallback reason
    trust_client_tags: bool = False  # honour x-mse-tag from outside (the classic leak)
    unjustified_fallback: set[tuple[str, str]] = field(default_factory=set)  # fall back though healthy
    drop_lane_after: str | None = None  # the lane is lost below this service (hops requested default)


class FakeDataPlane:
    """Gateway + admin on free 127.0.0.1 ports, run in a background thread with its own loop."""

    def __init__(self, config: LaneConfig, graph: dict[str, tuple[str, ...]] | None = None, bugs: Bugs | None = None):
        self.config = config
        self.graph = graph if graph is not None else DEMO_GRAPH
        self.bugs = bugs or Bugs()
        self.down: set[tuple[str, str]] = set()
        self.requests = 0
        self.misrouted = 0
        self.url = ""
        self.admin_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []

    # --- routing, the faithful part -------------------------------------------------------------
    def _has(self, service: str, lane: str) -> bool:
        return self.config.services[service].has_lane(lane) and (service, lane) not in self.down

    def _hop(self, service: str, lane: str) -> Hop:
        served = self.config.lane_for(service, lane, has=self._has) or self.config.default_lane
        if (service, lane) in self.bugs.unjustified_fallback and served == lane:
            served = self.config.default_lane
            return Hop(service, served, lane, "unhealthy", "127.0.0.1:1")
        reason = None
        if served != lane:
            chain = self.config.chain(lane)
            skipped = chain[: chain.index(served)] if served in chain else chain
            exists = any(self.config.services[service].has_lane(c) for c in skipped)
            reason = "unhealthy" if exists else "no-instance"
        return Hop(service, served, lane, reason, "127.0.0.1:1")

    def _walk(self, service: str, lane: str, out: list[Hop], depth: int = 0) -> None:
        out.append(self._hop(service, lane))
        if self.bugs.drop_lane_after == service:
            lane = self.config.default_lane
        for callee in self.graph.get(service, ()):
            if callee in self.config.services and depth < 8:
                self._walk(callee, lane, out, depth + 1)

    def path_for(self, headers: list[tuple[str, str]], query: str) -> list[Hop]:
        view = RequestView.from_parts(headers, query)
        lane = color(self.config.rules, view, self.config.default_lane).lane
        if self.bugs.trust_client_tags:
            tag = view.headers.get(self.config.tag.header)
            if tag in self.config.lanes:
                lane = tag
        hops: list[Hop] = []
        self._walk(self.config.entry, lane, hops)
        self.requests += 1
        if self.bugs.misroute_every and self.requests % self.bugs.misroute_every == 0:
            first = hops[0]
            entry = self.config.services[first.service]
            wrong = next((ln for ln in entry.lanes if ln != first.lane), first.lane)
            hops[0] = Hop(first.service, wrong, first.requested, None, first.instance)
            self.misrouted += 1
        return hops

    # --- HTTP -------------------------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.Response:
        hops = self.path_for(list(request.headers.items()), request.query_string)
        return web.json_response(
            {"lane": hops[0].requested, "path": [h.label() for h in hops]},
            headers={PATH_HEADER: encode_path(hops), SERVED_HEADER: hops[0].lane},
        )

    def _instances(self) -> dict[str, Any]:
        return {"services": {
            svc.name: {lane: [{"instance": str(ep), "healthy": (svc.name, lane) not in self.down} for ep in eps]
                       for lane, eps in svc.instances.items()}
            for svc in self.config.services.values()
        }}

    async def _lane_instances(self, request: web.Request) -> web.Response:
        return web.json_response(self._instances())

    async def _topology(self, request: web.Request) -> web.Response:
        return web.json_response({"gateway": self.url, "instances": {
            svc.name: {lane: [{"instance": str(ep), "up": (svc.name, lane) not in self.down} for ep in eps]
                       for lane, eps in svc.instances.items()}
            for svc in self.config.services.values()
        }})

    async def _action(self, request: web.Request) -> web.Response:
        key = (request.match_info["service"], request.match_info["lane"])
        if key[0] not in self.config.services or not self.config.services[key[0]].has_lane(key[1]):
            return web.json_response({"error": "no such instance"}, status=404)
        if request.match_info["action"] == "stop":
            self.down.add(key)
        else:
            self.down.discard(key)
        return web.json_response({"down": sorted(f"{s}@{ln}" for s, ln in self.down)})

    async def _start(self) -> None:
        gateway = web.Application()
        gateway.router.add_route("*", "/{tail:.*}", self._gateway)
        admin = web.Application()
        admin.router.add_get("/lane/instances", self._lane_instances)
        admin.router.add_get("/demo/topology", self._topology)
        admin.router.add_post("/demo/instances/{service}/{lane}/{action:stop|start}", self._action)
        ports = []
        for app in (gateway, admin):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._runners.append(runner)
            ports.append(runner.addresses[0][1])
        self.url = f"http://127.0.0.1:{ports[0]}"
        self.admin_url = f"http://127.0.0.1:{ports[1]}"

    def __enter__(self) -> Self:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def serve() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()
            for runner in self._runners:
                self._loop.run_until_complete(runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="fake-data-plane", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake data plane did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@contextmanager
def fake_data_plane(config: LaneConfig | None = None, **kwargs: Any) -> Iterator[FakeDataPlane]:
    with FakeDataPlane(config or parse_config(demo_config_text(), "<demo>"), **kwargs) as plane:
        yield plane


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[list[Hop], Any]:
    import json

    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return list(parse_path(resp.headers.get(PATH_HEADER))), json.loads(resp.read())


# --- the fixture is faithful -------------------------------------------------------------------------


def test_fixture_routes_xiaoming_like_the_demo_contract() -> None:
    with fake_data_plane() as plane:
        hops, body = _get(plane.url + "/", {"User-Agent": "xiaoming"})
    assert [h.label() for h in hops] == ["a@gray", "b@base", "c@gray", "d@base", "c@gray"]
    assert [h.fallback for h in hops] == [None, "no-instance", None, "no-instance", None]
    assert all(h.requested == "gray" for h in hops) and body["lane"] == "gray"


def test_fixture_ignores_client_tags_unless_told_to_trust_them() -> None:
    with fake_data_plane() as plane:
        honest, _ = _get(plane.url + "/", {"x-mse-tag": "gray"})
    with fake_data_plane(bugs=Bugs(trust_client_tags=True)) as plane:
        trusting, _ = _get(plane.url + "/", {"x-mse-tag": "gray"})
    assert honest[0].label() == "a@base"
    assert trusting[0].label() == "a@gray"


def test_fixture_stopped_instance_falls_back_as_unhealthy_and_admin_shows_it() -> None:
    import json

    with fake_data_plane() as plane:
        urllib.request.urlopen(urllib.request.Request(plane.admin_url + "/demo/instances/c/gray/stop", method="POST"))
        hops, _ = _get(plane.url + "/", {"User-Agent": "xiaoming"})
        with urllib.request.urlopen(plane.admin_url + "/lane/instances") as resp:
            view = json.loads(resp.read())
    assert hops[2].label() == "c@base" and hops[2].fallback == "unhealthy"
    assert view["services"]["c"]["gray"][0]["healthy"] is False


def test_fixture_misroutes_exactly_every_nth_request() -> None:
    with fake_data_plane(bugs=Bugs(misroute_every=3)) as plane:
        entries = [_get(plane.url + "/", {"User-Agent": "xiaoming"})[0][0].lane for _ in range(6)]
    assert entries == ["gray", "gray", "base", "gray", "gray", "base"]
