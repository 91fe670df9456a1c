"""`lane loadtest` against the real `lane demo` (gateway, sidecars and apps as real processes).

One demo per module (starting it is the expensive part), on a free 127.0.0.1 port, with the demo
config plus a short ejection time so the chaos run sees recovery within a few seconds. The demo is
stopped with SIGTERM in the fixture's `finally`, and the test checks none of its children survive.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from lane.core.config_load import demo_config_text
from tests.loadtest.test_loadtest_run import run_lane
from tests.support.processes import free_port

READY_TIMEOUT = 120


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("demo")
    config = tmp / "demo.yaml"
    config.write_text(demo_config_text() + "\nproxy:\n  eject_seconds: 1\n", encoding="utf-8")
    ready = tmp / "ready.json"
    log = (tmp / "demo.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lane", "demo", "--config", str(config), "--port", str(free_port()),
         "--ready-file", str(ready)], stdout=log, stderr=subprocess.STDOUT,
    )
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if not ready.exists():
            pytest.fail("lane demo did not become ready:\n" + (tmp / "demo.log").read_text(errors="replace")[-3000:])
        children = psutil.Process(proc.pid).children(recursive=True)
        yield json.loads(ready.read_text())
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            child.kill()
        assert not alive, f"demo children left running: {alive}"


def test_headless_run_against_the_demo_passes_and_shows_xiaomings_path(demo: dict[str, Any], tmp_path: Path) -> None:
    # The gateway's admin is passed too: it has no /lane/carriers (404), which must be skipped quietly.
    code, out, doc = run_lane(
        ["--config", demo["config"], "--host", demo["gateway"], "--admin", demo["admin"],
         "--admin", demo["gateway_admin"], "--headless", "--run-time", "4", "--users", "4"], tmp_path,
    )
    assert code == 0, out[-4000:]
    xiaoming_line = next(line for line in out.splitlines() if line.startswith("xiaoming "))
    assert "a@gray → b@base → c@gray → d@base → c@gray" in xiaoming_line
    assert doc["ok"] and doc["totals"]["requests"] == doc["locust"]["requests"] > 10
    rows = {(r["service"], r["lane"]): r for r in doc["matrix"]}
    assert rows[("b", "gray")]["served"] == {"base": rows[("b", "gray")]["requests"]}
    assert rows[("b", "gray")]["fallbacks"] == {"no-instance": rows[("b", "gray")]["requests"]}
    assert rows[("c", "gray")]["served"] == {"gray": rows[("c", "gray")]["requests"]}
    assert set(rows[("c", "base")]["served"]) == {"base"}  # no leak onto c@gray
    forged = [p for p in doc["personas"] if p["kind"] == "forged"]
    assert forged and all(p["lanes"] == {"base": p["requests"]} and p["failures"] == 0 for p in forged)
    # Propagation: d's demo app forwards only x-request-id, so its sidecar recovers every call's lane
    # from it; a and b forward every carrier; c calls nobody. Named in the text, listed in the JSON.
    lines = out.splitlines()
    start = lines.index("Propagation (what each app forwards of the lane; sidecar counts since each started)")
    d_line = next(line for line in lines[start:] if line.startswith("  service d's app"))
    assert d_line.startswith("  service d's app drops x-mse-tag, baggage, traceparent")
    assert "; it forwards only x-request-id — " in d_line and d_line.endswith("calls, lane recovered from x-request-id")
    assert "  a, b: apps forward every lane carrier" in lines[start:]
    assert "  Propagation breaks: none" in lines[start:]
    prop = doc["propagation"]
    services = {s["service"]: s for s in prop["services"]}
    assert set(services) == {"a", "b", "c", "d"} and prop["breaks"] == 0
    d = services["d"]
    assert d["forwarded"] == ["x-request-id"] and d["line"] == d_line.strip()
    assert d["calls"] > 10 and d["lane_sources"]["recovered"] == d["calls"]
    assert services["a"]["dropped"] == services["b"]["dropped"] == [] and services["c"]["calls"] == 0
    assert "cannot read" not in out  # the gateway admin's 404 is not an error


def test_chaos_against_the_demo_sees_fallback_then_recovery_and_no_misroute(
    demo: dict[str, Any], tmp_path: Path
) -> None:
    code, out, doc = run_lane(
        ["--config", demo["config"], "--host", demo["gateway"], "--admin", demo["admin"], "--headless",
         "--run-time", "14", "--users", "4", "--chaos", "c@gray", "--chaos-after", "2", "--chaos-down", "2"],
        tmp_path,
    )
    assert code == 0, out[-4000:]
    chaos = doc["chaos"]
    assert chaos["ok"] and chaos["fallbacks_while_down"] > 0 and chaos["in_lane_after_restart"] > 0
    assert doc["totals"]["lane_failures"] == 0 and doc["findings"] == {}
    reasons = doc["checks"]["fallback"]["by_reason"]
    assert reasons.get("unhealthy", 0) + reasons.get("connect-failed", 0) > 0
    with urllib.request.urlopen(demo["admin"] + "/demo/topology", timeout=10) as resp:
        with_up = json.loads(resp.read())
    assert all(i["up"] for lanes in with_up["instances"].values() for items in lanes.values() for i in items)
