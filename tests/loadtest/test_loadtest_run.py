"""`lane loadtest` end to end: real locust subprocesses against the fixture data plane on 127.0.0.1.

The data plane here is the fixture from test_loadtest_dataplane.py (faithful to the hop-record
contract, with switchable bugs), because the issue asks for runs against deliberately wrong data
planes; runs against the real `lane demo` are in test_loadtest_demo.py. Every locust process a
test starts is bounded by --run-time, waited for with a timeout, and killed in `finally`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from lane.core.config_load import parse_config
from tests.loadtest.test_loadtest_dataplane import Bugs, fake_data_plane
from tests.support.processes import free_port, started_process

LANE = [sys.executable, "-m", "lane"]
TIMEOUT = 150


def started(args: Sequence[str], log: Path) -> AbstractContextManager[subprocess.Popen[bytes]]:
    return started_process([*LANE, *args], log)


def run_lane(args: Sequence[str], tmp: Path, name: str = "run") -> tuple[int, str, dict[str, Any]]:
    """Run `lane loadtest ARGS --lane-json ...` to completion; returns exit code, output and the JSON summary."""
    summary = tmp / f"{name}.json"
    log = tmp / f"{name}.log"
    with started(["loadtest", *args, "--lane-json", str(summary)], log) as proc:
        code = proc.wait(TIMEOUT)
    output = log.read_text(errors="replace")
    doc = json.loads(summary.read_text()) if summary.exists() else {}
    return code, output, doc


def headless(plane_url: str, admin: str, seconds: int = 3, users: int = 4) -> list[str]:
    return ["--host", plane_url, "--admin", admin, "--headless", "--run-time", str(seconds), "--users", str(users)]


def test_honest_data_plane_passes_with_every_check_ok(tmp_path: Path) -> None:
    with fake_data_plane() as plane:
        code, out, doc = run_lane([*headless(plane.url, plane.admin_url), "--html", str(tmp_path / "r.html")], tmp_path)
    assert code == 0, out[-3000:]
    assert doc["ok"] is True and doc["reasons"] == []
    assert all(check["ok"] for check in doc["checks"].values())
    assert doc["totals"]["requests"] > 20
    assert doc["totals"]["requests"] == doc["locust"]["requests"]  # lane counts agree with locust's
    xiaoming = next(p for p in doc["personas"] if p["name"] == "xiaoming")
    assert xiaoming["path"] == "a@gray → b@base → c@gray → d@base → c@gray"
    assert set(xiaoming["paths"]) == {xiaoming["path"]}
    # the terminal ends with the verdict, after locust's own tables
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[-1] == "RESULT: PASS" and lines[-2].startswith("Checks: purity ok |"), lines[-8:]
    assert out.rindex("Aggregated") < out.rindex("Lane verdict") < out.rindex("RESULT: PASS")
    html = (tmp_path / "r.html").read_text()
    assert 'id="lane-report"' in html and "a@gray → b@base → c@gray" in html and "<svg" in html
    # the HTML report opens with the verdict and the checks, before locust's charts (its React root)
    assert html.index("Lane verification:") < html.index("Checks:") < html.index('<div id="root">')


def test_gateway_that_misroutes_one_request_in_fifty_fails_and_names_it(tmp_path: Path) -> None:
    with fake_data_plane(bugs=Bugs(misroute_every=50)) as plane:
        code, out, doc = run_lane(headless(plane.url, plane.admin_url), tmp_path)
        misrouted = plane.misrouted
    assert code == 1, out[-3000:]
    assert misrouted >= 1
    wrong = {msg: n for msg, n in doc["findings"].items()}
    assert set(wrong) <= {"misroute a: expected gray, served base", "leak: base request served by a@gray"}
    assert 1 <= sum(wrong.values()) <= misrouted  # every wrong answer the client saw, and nothing else
    assert doc["totals"]["lane_failures"] == sum(wrong.values())
    assert any(msg in out for msg in wrong)  # the locust failure carries the name
    ending = out[out.rindex("Aggregated"):]  # after locust's tables: the verdict and its reasons, last
    lines = [line for line in ending.splitlines() if line.strip()]
    assert "RESULT: FAIL" in lines and all(line.startswith("  - ") for line in lines[lines.index("RESULT: FAIL") + 1:])
    assert "request(s) took the wrong lane" in lines[-1] or any("wrong lane" in ln for ln in lines[-3:])


def test_gateway_that_trusts_client_tags_leaks_and_fails(tmp_path: Path) -> None:
    with fake_data_plane(bugs=Bugs(trust_client_tags=True)) as plane:
        code, out, doc = run_lane(headless(plane.url, plane.admin_url), tmp_path)
    assert code == 1, out[-3000:]
    assert doc["findings"].get("leak: base request served by a@gray", 0) > 0
    assert doc["checks"]["leakage"]["ok"] is False and doc["checks"]["purity"]["ok"] is False
    forged = next(p for p in doc["personas"] if p["name"] == "forged x-mse-tag=gray")
    assert forged["failures"] == forged["requests"] > 0
    baggage = next(p for p in doc["personas"] if p["name"] == "forged baggage x-mse-tag=gray")
    assert baggage["failures"] == 0  # this fixture only trusts the header


def test_fallback_while_the_lane_is_healthy_is_a_misroute(tmp_path: Path) -> None:
    with fake_data_plane(bugs=Bugs(unjustified_fallback={("c", "gray")})) as plane:
        code, out, doc = run_lane([*headless(plane.url, plane.admin_url), "--grace", "0.3"], tmp_path)
    assert code == 1, out[-3000:]
    assert "misroute c: expected gray, served base (unhealthy, but c@gray was healthy)" in doc["findings"]
    assert doc["checks"]["fallback"]["ok"] is False and doc["checks"]["fallback"]["unjustified"] > 0


def test_lane_lost_below_a_service_fails(tmp_path: Path) -> None:
    with fake_data_plane(bugs=Bugs(drop_lane_after="d")) as plane:
        code, _, doc = run_lane(headless(plane.url, plane.admin_url), tmp_path)
    assert code == 1
    assert "lane lost at c: requested base, expected gray" in doc["findings"]


def test_no_request_made_fails(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    code, _, doc = run_lane(["--host", f"http://127.0.0.1:{port}", "--headless", "--run-time", "2"], tmp_path)
    assert code == 1
    assert any("error rate 100.00%" in r for r in doc["reasons"])


SHARES = """
lanes:
  gray: {fallback: base}
  canary: {}
entry: a
coloring:
  - name: beta
    lane: gray
    match:
      headers: [{name: x-user, prefix: beta}]
      cookies: [{name: uid, regex: "u[0-9]{3}"}]
  - name: sticky
    lane: gray
    match:
      query: [{name: region, exact: eu}]
    percentage: {percent: 30, key: {cookie: sid}, salt: s1}
  - name: canary
    lane: canary
    match:
      headers: [{name: x-canary, present: true}]
    percentage: {percent: 50}
services:
  a:
    instances: {base: ["127.0.0.1:1"], gray: ["127.0.0.1:2"], canary: ["127.0.0.1:3"]}
  b:
    instances: {base: ["127.0.0.1:4"], gray: ["127.0.0.1:5"]}
"""


def test_sticky_and_random_percentages_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "shares.yaml"
    path.write_text(SHARES)
    config = parse_config(SHARES, str(path))
    with fake_data_plane(config, graph={"a": ("b",)}) as plane:
        code, out, doc = run_lane(
            ["--config", str(path), *headless(plane.url, plane.admin_url, seconds=4, users=6)], tmp_path
        )
    assert code == 0, out[-3000:]
    assert doc["checks"]["stickiness"]["ok"] and doc["checks"]["stickiness"]["keys"] == 4
    canary = [s for s in doc["shares"] if s["persona"] == "canary"]
    assert {s["lane"] for s in canary} == {"canary", "base"}
    assert all(s["ok"] for s in canary) and canary[0]["samples"] > 0
    names = {p["name"] for p in doc["personas"] if p["requests"] > 0}
    assert {"beta ~regex cookie uid", "beta ~name cookie uid", "sticky ~no key"} <= names


def test_master_and_two_workers_merge_exactly(tmp_path: Path) -> None:
    port = free_port()
    summary = tmp_path / "master.json"
    with fake_data_plane() as plane:
        master_args = ["loadtest", *headless(plane.url, plane.admin_url, seconds=5, users=4), "--master",
                       "--expect-workers", "2", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                       "--lane-json", str(summary)]
        worker_args = ["loadtest", "--worker", "--master-host", "127.0.0.1", "--master-port", str(port),
                       "--admin", plane.admin_url, "--run-time", "5"]
        with started(master_args, tmp_path / "master.log") as master, \
                started(worker_args, tmp_path / "w1.log") as w1, started(worker_args, tmp_path / "w2.log") as w2:
            code = master.wait(TIMEOUT)
            w1.wait(60)
            w2.wait(60)
        served = plane.requests
    out = (tmp_path / "master.log").read_text(errors="replace")
    assert code == 0, out[-3000:]
    doc = json.loads(summary.read_text())
    workers = doc["workers"]
    assert len(workers) == 2 and all(w["requests"] > 0 for w in workers.values())
    assert doc["totals"]["requests"] == sum(w["requests"] for w in workers.values())
    assert doc["totals"]["requests"] == doc["locust"]["requests"]
    assert doc["totals"]["requests"] <= served
    assert sum(p["requests"] for p in doc["personas"]) == doc["totals"]["requests"]


def test_chaos_stops_and_restarts_an_instance_and_sees_fallback_then_recovery(tmp_path: Path) -> None:
    with fake_data_plane() as plane:
        code, out, doc = run_lane(
            [*headless(plane.url, plane.admin_url, seconds=6), "--chaos", "c@gray", "--chaos-after", "1.5",
             "--chaos-down", "2"], tmp_path,
        )
        left_down = set(plane.down)
    assert code == 0, out[-3000:]
    assert doc["chaos"]["ok"] is True and doc["chaos"]["target"] == "c@gray"
    assert doc["chaos"]["fallbacks_while_down"] > 0 and doc["chaos"]["in_lane_after_restart"] > 0
    assert doc["totals"]["lane_failures"] == 0
    assert doc["checks"]["fallback"]["by_reason"].get("unhealthy", 0) > 0
    assert left_down == set()


def test_chaos_needs_an_admin_url(tmp_path: Path) -> None:
    code, out, _ = run_lane(["--host", "http://127.0.0.1:9", "--headless", "--chaos"], tmp_path)
    assert code == 2 and "--chaos needs the local demo's admin URL" in out


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = resp.read().decode()
    return json.loads(body) if body.lstrip().startswith(("{", "[")) else body


def test_web_ui_has_a_live_lanes_tab_and_page(tmp_path: Path) -> None:
    port = free_port()
    with fake_data_plane() as plane:
        args = ["loadtest", "--host", plane.url, "--admin", plane.admin_url, "--run-time", "6", "--users", "2",
                "--web-host", "127.0.0.1", "--web-port", str(port), "--lane-json", str(tmp_path / "ui.json"),
                "--", "--autostart", "--autoquit", "1"]
        with started(args, tmp_path / "ui.log") as proc:
            base = f"http://127.0.0.1:{port}"
            live: dict[str, Any] = {}
            page = ""
            deadline = time.monotonic() + 60
            # live while the run lasts: wait until a gray request has been seen (the first request may be base)
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    live = _get(base + "/lanes.json")
                    page = _get(base + "/lanes")
                except OSError:
                    live, page = {}, ""
                if live.get("totals", {}).get("requests", 0) > 0 and "a@gray → b@base → c@gray" in page:
                    break
                time.sleep(0.3)
            assert live.get("totals", {}).get("requests", 0) > 0, (tmp_path / "ui.log").read_text()[-3000:]
            index = _get(base + "/")
            stats = _get(base + "/stats/requests")
            code = proc.wait(TIMEOUT)
    assert "Lane matrix" in page and "a@gray → b@base → c@gray" in page
    # while the run goes on: what is known so far, never PASS; the checks and the personas are there
    assert "running — no misroute so far" in page and ">PASS<" not in page, page
    assert "Checks so far:" in page and "purity ok" in page and "<h3>Personas</h3>" in page and "xiaoming" in page
    assert '"extended_tabs": [{"key": "lanes", "title": "Lanes"}]' in index or (
        "extended_tabs" in index and '"title": "Lanes"' in index
    )
    assert 'id="lane-page-link" href="/lanes"' in index  # the Lanes page is linked from locust's UI
    rows = next(t for t in stats["extended_stats"] if t["key"] == "lanes")["data"]
    assert rows[0]["part"] == "Verdict" and rows[0]["result"] == "running — no misroute so far", rows[0]
    assert {r["name"] for r in rows if r["part"] == "Check"} >= {"purity", "leakage", "fallback", "routing"}
    assert all(r["result"] == "ok" for r in rows if r["part"] == "Check")
    assert any(r["part"] == "Lane" and r["name"] == "b @ gray" for r in rows)
    assert any(r["part"] == "Persona" and r["name"] == "xiaoming" for r in rows)
    assert all("Wrong" not in str(v) for r in rows for v in r.values())  # failures/misroutes, as everywhere
    assert code == 0


def test_web_ui_run_started_from_the_form_stops_at_run_time_with_the_verdict(tmp_path: Path) -> None:
    # No --autostart: `lane loadtest` says how --run-time counts, and a run started the way locust's Start
    # form does (it pre-fills Run time with --run-time) stops by itself; then, and only then, PASS.
    import signal
    import urllib.parse

    port = free_port()
    log = tmp_path / "form.log"
    with fake_data_plane() as plane:
        args = ["loadtest", "--host", plane.url, "--admin", plane.admin_url, "--run-time", "3", "--users", "2",
                "--web-host", "127.0.0.1", "--web-port", str(port)]
        with started(args, log) as proc:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            index = ""
            while time.monotonic() < deadline and not index:
                try:
                    index = _get(base + "/")
                except OSError:
                    time.sleep(0.3)
            assert '"run_time": 3' in index, index[-2000:]  # the Start form's Run time field is --run-time
            ready = _get(base + "/lanes")
            form = urllib.parse.urlencode({"user_count": 2, "spawn_rate": 2, "host": plane.url, "run_time": "3"})
            with urllib.request.urlopen(base + "/swarm", data=form.encode(), timeout=5) as resp:
                assert json.loads(resp.read())["success"] is True
            pages = []
            while time.monotonic() < deadline:
                pages.append(_get(base + "/lanes"))
                if ">PASS<" in pages[-1] or ">FAIL<" in pages[-1]:
                    break
                time.sleep(0.3)
            proc.send_signal(signal.SIGINT)  # the user's Ctrl-C ends the process: the terminal verdict
            code = proc.wait(60)
    output = log.read_text(errors="replace")
    assert "--run-time 3s counts from when you press Start" in output
    assert "not started" in ready
    assert any("running — no misroute so far" in p for p in pages), pages[:1]
    assert ">PASS<" in pages[-1] and "Checks:" in pages[-1], output[-3000:]
    assert code == 0, output[-3000:]
    assert [ln for ln in output.splitlines() if ln.strip()][-1] == "RESULT: PASS"


def test_bad_arguments_are_refused_clearly(tmp_path: Path) -> None:
    cases = [
        (["--host", "ftp://x"], "--host must be an http(s) URL"),
        (["--headless"], "--host is required"),
        (["--host", "http://127.0.0.1:9", "--config", str(tmp_path / "missing.yaml")], "cannot read"),
        (["--host", "http://127.0.0.1:9", "--admin", "x", "--chaos", "b@gray"], "--admin must be an http(s) base URL"),
        (["--host", "http://127.0.0.1:9", "--admin", "http://127.0.0.1:9", "--chaos", "b@gray"],
         "--chaos target must be service@lane"),
    ]
    for args, message in cases:
        proc = subprocess.run([*LANE, "loadtest", *args], check=False, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
    proc = subprocess.run([*LANE, "loadtest", "--host", "http://x", "--run-time", "soon"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "expected a time span" in proc.stderr


@pytest.mark.parametrize("text,seconds", [("45", 45), ("45s", 45), ("2m", 120), ("1h2m3s", 3723)])
def test_run_time_grammar_matches_locust(text: str, seconds: int) -> None:
    from loadtest.cli import parse_timespan

    assert parse_timespan(text) == seconds


def test_locust_is_never_imported_by_lane_or_the_cli() -> None:
    code = ("import sys, lane.cli.main, loadtest, loadtest.cli, loadtest.runner; lane.cli.main.build_parser(['loadtest']);"
            "assert 'locust' not in sys.modules and 'gevent' not in sys.modules, 'locust imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env={**os.environ})


def test_ctrl_c_stops_locust_once_cleanly_and_leaves_nothing(tmp_path: Path) -> None:
    # Ctrl-C pressed twice in a terminal (SIGINT to the whole foreground process group) while the web-UI
    # run goes on: locust must see exactly one SIGINT — more break its graceful shutdown (no verdict, no
    # summary) — and no locust process may outlive the command.
    import signal

    import psutil

    port = free_port()
    summary = tmp_path / "ctrl-c.json"
    log = tmp_path / "ctrl-c.log"
    with fake_data_plane() as plane, log.open("wb") as out:
        args = ["loadtest", "--host", plane.url, "--admin", plane.admin_url, "--run-time", "120", "--users", "2",
                "--web-host", "127.0.0.1", "--web-port", str(port), "--lane-json", str(summary), "--", "--autostart"]
        # its own process group, standing in for the terminal's foreground group
        proc = subprocess.Popen([*LANE, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        children: list[psutil.Process] = []
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if _get(f"http://127.0.0.1:{port}/lanes.json").get("totals", {}).get("requests", 0) > 0:
                        break
                except OSError:
                    pass
                time.sleep(0.3)
            children = psutil.Process(proc.pid).children(recursive=True)
            assert children, "locust runs as a child process"
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.3)
            os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait(60)
            _, alive = psutil.wait_procs(children, timeout=10)
        finally:
            for child in children:
                if child.is_running():
                    child.kill()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
    output = log.read_text(errors="replace")
    assert not alive, f"left running: {alive}"
    # locust finished its own shutdown: the verdict was reached, the summary written, the exit code is it
    assert "RESULT: PASS" in output and code == 0, output[-3000:]
    assert json.loads(summary.read_text())["totals"]["requests"] > 0


def _sleeper(seconds: float) -> list[str]:
    return [sys.executable, "-c", f"import time; time.sleep({seconds})"]


def test_watchdog_stops_a_headless_run_far_past_its_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from loadtest import runner

    monkeypatch.setattr(runner, "WATCHDOG_SLACK", 0.5)
    started_at = time.monotonic()
    assert runner.run_locust(runner.RunSpec(host=None, run_time=0), argv=_sleeper(60)) == 1
    assert time.monotonic() - started_at < 30


def test_a_worker_outlives_its_own_run_time_until_its_master_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker's run_time is only the CLI default; the master decides when the run ends.
    from loadtest import runner

    monkeypatch.setattr(runner, "WATCHDOG_SLACK", 0.5)
    spec = runner.RunSpec(host=None, run_time=0, worker=True)
    assert runner.run_locust(spec, argv=_sleeper(2.5)) == 0
