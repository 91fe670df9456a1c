"""`lane loadtest --grpc`: gRPC personas with real grpcio inside locust, against the real `lane demo`.

The demo (gateway, sidecars, apps: real processes, gRPC on the same h2c ports) comes from the
`demo` fixture of test_loadtest_demo.py (one per module, stopped in its `finally`). Every locust
run is a real headless `lane loadtest` bounded by --run-time.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lane.core.config_load import demo_config_text, parse_config
from loadtest.personas import DEMO_GRPC_METHOD, build_personas, grpc_twins
from tests.loadtest.test_loadtest_demo import demo  # noqa: F401  (the module's demo fixture)
from tests.loadtest.test_loadtest_run import run_lane

pytest.importorskip("grpc")

SUFFIX = "grpc-python/1.85.3 grpc-c (linux; chttp2)"
XIAOMING_PATH = "a@gray → b@base → c@gray → d@base → c@gray"


def _grpc_rows(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in doc["personas"] if p["protocol"] == "grpc"}


def test_grpc_twins_expect_the_lane_of_the_user_agent_grpcio_sends() -> None:
    config = parse_config(demo_config_text(), "demo.yaml")
    http = build_personas(config)
    twins = {p.name: p for p in grpc_twins(config, http, DEMO_GRPC_METHOD, SUFFIX)}
    # xiaoming is gray over gRPC only through the xiaoming-grpc rule (grpcio extends the agent).
    assert twins["grpc xiaoming"].lane == "gray" and twins["grpc xiaoming"].user_agent == "xiaoming"
    assert twins["grpc xiaoming ~case header user-agent"].lane == "base"
    assert twins["grpc no-match"].lane == "base"
    assert all(t.grpc_method == DEMO_GRPC_METHOD and not t.query for t in twins.values())
    assert all(k not in ("user-agent", "accept") for t in twins.values() for k, _ in t.metadata)
    without = parse_config(demo_config_text().replace('prefix: "xiaoming grpc-"', 'prefix: "nobody"'), "d.yaml")
    assert {p.name: p for p in grpc_twins(without, build_personas(without), DEMO_GRPC_METHOD, SUFFIX)}[
        "grpc xiaoming"].lane == "base"


@pytest.mark.parametrize(("host", "method", "error"), [
    ("http://127.0.0.1:9", "Call", f"--grpc takes a full method name such as {DEMO_GRPC_METHOD}, got 'Call'"),
    ("https://127.0.0.1:9", DEMO_GRPC_METHOD,
     "--grpc calls in plaintext h2c (no TLS): --host must be an http:// URL, got 'https://127.0.0.1:9'"),
])
def test_bad_grpc_arguments_are_one_line_exit_2(host: str, method: str, error: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "lane", "loadtest", "--host", host, "--grpc", method],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"lane loadtest: error: {error}"]


def test_grpc_personas_against_the_demo_take_their_lanes_and_pass(demo: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    code, out, doc = run_lane(
        ["--config", demo["config"], "--host", demo["gateway"], "--admin", demo["admin"], "--grpc",
         "--headless", "--run-time", "5", "--users", "4"], tmp_path,
    )
    assert code == 0, out[-4000:]
    assert doc["ok"] and doc["totals"]["requests"] == doc["locust"]["requests"]
    rows = _grpc_rows(doc)
    assert rows["grpc xiaoming"]["requests"] > 0
    assert sum(r["requests"] for r in rows.values()) > 20
    for name, row in rows.items():
        lane = "gray" if name in ("grpc xiaoming", "grpc xiaoming-grpc") else "base"
        assert row["failures"] == row["http_failures"] == 0, name
        assert row["lanes"] == ({lane: row["requests"]} if row["requests"] else {}), name
    assert rows["grpc xiaoming"]["path"] == XIAOMING_PATH
    # In the same terminal matrix as the HTTP personas, and counted by locust as gRPC requests.
    matrix_line = next(line for line in out.splitlines() if line.startswith("grpc xiaoming "))
    assert f"gray {rows['grpc xiaoming']['requests']}" in matrix_line and XIAOMING_PATH in matrix_line
    assert re.search(r"^gRPC\s+grpc xiaoming\s+\d+\s+0\(0\.00%\)", out, re.MULTILINE)


def test_a_misrouted_grpc_call_fails_the_verdict(demo: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    # The load test's config lacks the gateway's xiaoming-grpc rule: its gRPC xiaoming expects base,
    # a lane the gateway never gives it. Every HTTP persona is still right.
    data = yaml.safe_load(Path(demo["config"]).read_text(encoding="utf-8"))
    data["coloring"] = [r for r in data["coloring"] if r["name"] != "xiaoming-grpc"]
    wrong = tmp_path / "without-grpc-rule.yaml"
    wrong.write_text(yaml.safe_dump(data), encoding="utf-8")
    code, out, doc = run_lane(
        ["--config", str(wrong), "--host", demo["gateway"], "--grpc", "--headless", "--run-time", "4",
         "--users", "4"], tmp_path,
    )
    assert code != 0 and doc["ok"] is False, out[-4000:]
    rows = _grpc_rows(doc)
    xiaoming = rows["grpc xiaoming"]
    assert xiaoming["expected"] == {"base": 1.0}
    assert xiaoming["requests"] > 0 and xiaoming["failures"] == xiaoming["requests"]
    assert xiaoming["path"] == XIAOMING_PATH  # served gray, end to end, while base was expected
    others = [p for p in doc["personas"] if p["name"] != "grpc xiaoming"]
    assert others and all(p["failures"] == 0 for p in others)
    assert "RESULT: FAIL" in out and "leak: base request served by a@gray" in out


def test_grpc_error_statuses_are_failures_named_after_their_status(demo: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    # A method no demo app serves: each call ends in a trailers-only UNIMPLEMENTED, a failure with its status.
    code, out, doc = run_lane(
        ["--config", demo["config"], "--host", demo["gateway"], "--grpc", "/lane.demo.Demo/Nope", "--headless",
         "--run-time", "3", "--users", "2"], tmp_path,
    )
    assert code != 0 and doc["ok"] is False, out[-4000:]
    rows = _grpc_rows(doc)
    assert rows and all(r["http_failures"] == r["requests"] for r in rows.values())
    assert sum(r["requests"] for r in rows.values()) > 0
    assert "gRPC UNIMPLEMENTED" in out
    assert rows["grpc xiaoming"]["path"] == "a@gray"  # the hop record, read from the trailers-only answer
    assert all(p["http_failures"] == 0 for p in doc["personas"] if p["protocol"] == "http")


def test_grpc_without_grpcio_is_one_line_naming_the_extra() -> None:
    code = ("import sys; sys.modules['grpc'] = None; from lane.cli.main import main; "
            "sys.exit(main(['loadtest', '--host', 'http://127.0.0.1:9', '--grpc']))")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "lane loadtest: error: --grpc needs the Python package 'grpc', which is not installed: pip install 'lane[grpc]'"]
