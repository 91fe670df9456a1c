"""`lane demo`: the classic topology, started for real (apps, sidecars, gateway as processes).

The module shares one running demo for the read-only checks; the chaos and shutdown checks start
their own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.processes import DemoRun, lane_demo, stop_process


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            body = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.loads(body)
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """The shared demo, its gateway on ``--port 0`` (the later ``--port`` wins over the helper's)."""
    with lane_demo(tmp_path_factory.mktemp("demo"), "--port", "0") as run:
        yield run


def test_port_0_reports_the_port_the_gateway_really_bound(demo: DemoRun) -> None:
    host, _, port = demo.gateway.removeprefix("http://").rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0
    status, _, topo = get(demo.admin + "/demo/topology")
    assert status == 200 and topo["gateway"] == demo.gateway
    status, headers, _ = get(demo.gateway + "/")
    assert status == 200 and headers["x-lane-served"] == "base"
    banner = demo.log.read_text(errors="replace")
    assert f"gateway {demo.gateway}/ " in banner and f"curl -s {demo.gateway}/ " in banner
    assert ":0/" not in banner
    # every admin URL the banner prints serves what it says it does (the gateway's and each sidecar's)
    admins = re.findall(r"(?:gateway admin|[a-z]@[a-z]+) +(http://127\.0\.0\.1:\d+)", banner)
    sidecars = sum(len(addresses) for lanes in demo.ready["instances"].values() for addresses in lanes.values())
    assert len(admins) == 1 + sidecars == 7  # the gateway and a@base, a@gray, b@base, c@base, c@gray, d@base
    for admin in admins:
        with urllib.request.urlopen(admin + "/metrics", timeout=20) as resp:
            assert resp.status == 200 and b"lane_requests_total" in resp.read()


def test_xiaoming_takes_the_gray_lane_and_returns_to_it_after_b(demo: DemoRun) -> None:
    status, headers, body = get(demo.gateway + "/", {"User-Agent": "xiaoming"})
    assert status == 200
    assert body["path"] == ["a@gray", "b@base", "c@gray", "d@base", "c@gray"]
    b_hop = body["hops"][1]
    assert b_hop["requested"] == "gray" and b_hop["fallback"] == "no-instance"
    assert headers["x-lane-served"] == "gray" and "x-lane-fallback" not in headers
    instances = demo.ready["instances"]
    assert body["hops"][0]["instance"] == instances["a"]["gray"][0]
    assert body["hops"][2]["instance"] == instances["c"]["gray"][0]
    # the apps agree with the data plane about who answered
    assert body["service"] == "a" and body["lane"] == "gray"
    assert body["calls"][1]["answer"]["calls"][0]["answer"]["lane"] == "gray"  # c behind d


def test_everyone_else_stays_on_base(demo: DemoRun) -> None:
    status, _, body = get(demo.gateway + "/", {"User-Agent": "curl/8"})
    assert status == 200
    assert body["path"] == ["a@base", "b@base", "c@base", "d@base", "c@base"]
    assert all(h["fallback"] is None for h in body["hops"])


@pytest.mark.parametrize("headers", [
    {"x-mse-tag": "gray"},
    {"baggage": "x-mse-tag=gray"},
    {"x-mse-tag": "gray", "baggage": "userid=42,x-mse-tag=gray"},
])
def test_outside_clients_cannot_pick_their_lane(demo: DemoRun, headers: dict[str, str]) -> None:
    status, _, body = get(demo.gateway + "/", headers)
    assert status == 200
    assert body["path"] == ["a@base", "b@base", "c@base", "d@base", "c@base"]


def test_d_forwards_only_x_request_id_and_c_still_sees_gray(demo: DemoRun) -> None:
    _, _, body = get(demo.gateway + "/", {"User-Agent": "xiaoming", "x-request-id": "demo-trace-1"})
    d_call = body["calls"][1]
    assert d_call["service"] == "d"
    assert d_call["answer"]["calls"][0]["answer"]["lane"] == "gray"
    assert body["path"][3:] == ["d@base", "c@gray"]


def test_requests_sharing_client_trace_ids_keep_their_own_lanes_and_paths(demo: DemoRun) -> None:
    # Clients choose x-request-id and traceparent; 10 at a time, half gray, all sending the same
    # ones. The gateway mints its own x-request-id (the client's travels as x-client-request-id),
    # and sidecars ignore the traceparent two lanes claim, so no request leaks into another's lane
    # or hop record.
    shared = {"x-request-id": "shared-id", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    expected = {"gray": ["a@gray", "b@base", "c@gray", "d@base", "c@gray"],
                "base": ["a@base", "b@base", "c@base", "d@base", "c@base"]}

    def one(i: int) -> tuple[str, int, Any]:
        lane = "gray" if i % 2 else "base"
        status, _, body = get(demo.gateway + "/", {**shared, "User-Agent": "xiaoming" if lane == "gray" else "curl/8"})
        return lane, status, body

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(one, range(60)))
    for lane, status, body in results:
        assert status == 200
        assert body["path"] == expected[lane]
        assert body["calls"][1]["answer"]["calls"][0]["answer"]["lane"] == lane  # c behind d


def test_the_demo_gateway_runs_on_the_one_core_with_explain_json(demo: DemoRun) -> None:
    """Issue "One data-plane core": `lane demo` runs exactly what a user deploys.

    `--explain-json` used to switch the gateway to the aiohttp core; now the answer is explained
    (``"path"``) and the connection was served by the one core, whose overload accounting
    (``lane_downstream_connections``, `lane.engine.limits`) only it keeps.
    """
    status, _, body = get(demo.gateway + "/", {"User-Agent": "xiaoming"})
    assert status == 200 and body["path"][0] == "a@gray"
    _, _, topo = get(demo.admin + "/demo/topology")
    with urllib.request.urlopen(topo["gateway_admin"] + "/metrics", timeout=20) as resp:
        metrics = resp.read().decode()
    assert 'lane_downstream_connections{listener="gateway"}' in metrics


def test_topology_and_union_health_view(demo: DemoRun) -> None:
    status, _, topo = get(demo.admin + "/demo/topology")
    assert status == 200
    assert topo["gateway"] == demo.gateway
    assert topo["instances"]["c"]["gray"][0]["up"] is True
    assert set(topo["instances"]) == {"a", "b", "c", "d"}
    status, _, view = get(demo.admin + "/lane/instances")
    assert status == 200
    rows = view["services"]["c"]["gray"]
    assert rows == [{"instance": demo.ready["instances"]["c"]["gray"][0], "healthy": True}]
    effective = Path(demo.ready["config"]).read_text()
    assert demo.ready["instances"]["c"]["gray"][0] in effective


def test_carriers_view_names_d_as_the_app_that_forwards_only_x_request_id(demo: DemoRun) -> None:
    def views() -> dict[str, Any]:
        status, _, body = get(demo.admin + "/lane/carriers")
        assert status == 200 and isinstance(body, list)
        assert len(body) == len({v["service"] for v in body})  # one entry per service, not per sidecar
        return {v["service"]: v for v in body}

    before = views()
    for agent in ("xiaoming", "curl/8", "xiaoming", "curl/8"):
        assert get(demo.gateway + "/", {"User-Agent": agent})[0] == 200
    after = views()
    assert set(after) == {"a", "b", "c", "d"}
    calls = {s: after[s]["calls"] - before.get(s, {"calls": 0})["calls"] for s in after}
    # a (both its instances summed: gray served 2, base 2) calls b and d; b and d each call c; c calls nobody
    assert calls == {"a": 8, "b": 4, "c": 0, "d": 4}
    d = after["d"]
    assert d["forwarded"] == ["x-request-id"] and d["sometimes"] == []
    assert {"x-mse-tag", "baggage", "traceparent"} <= set(d["dropped"])
    assert d["verdict"].startswith("service d's app drops x-mse-tag, baggage, traceparent")
    assert d["verdict"].endswith("; it forwards only x-request-id")
    assert d["lane_sources"]["recovered"] - before["d"]["lane_sources"]["recovered"] == 4
    assert d["lane_sources"]["lost"] == 0
    for service in ("a", "b"):  # the demo app's default forwards every carrier
        assert after[service]["dropped"] == [] and after[service]["sometimes"] == []
        assert after[service]["verdict"] == f"service {service}'s app forwards every lane carrier"
    assert after["c"]["verdict"] == "service c's app made no outbound call through its sidecar yet"


def test_ctrl_c_stops_every_child(tmp_path: Path) -> None:
    with lane_demo(tmp_path) as run:
        children = psutil.Process(run.popen.pid).children(recursive=True)
        assert len(children) == 13  # an app and a sidecar per instance (a, a, b, c, c, d) and the gateway
        get(run.gateway + "/")
        run.popen.send_signal(signal.SIGINT)
        assert stop_process(run.popen, signal.SIGINT, timeout=40) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
        time.sleep(0.1)
    assert not [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert os.path.exists(run.ready["config"]) is False  # the work directory is removed too
