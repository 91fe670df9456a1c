"""The benchmark scripts run and report what they claim: smallest modes, real subprocesses.

No timing is asserted (numbers on a shared machine prove nothing in a test); what is asserted is
that each script does the work it reports -- the render really produced 1,000 VirtualServices and
wrote one file per object, every propagation case carried the lane -- and that the JSON has the
keys and sane values the README and the lead's reports read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def run_json(script: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(BENCH / script), *args, "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def test_render_scale_renders_1000_services_through_the_functions_and_the_cli(tmp_path: Path) -> None:
    report = run_json("render_scale.py", "--repeat", "1", "--workdir", str(tmp_path))
    assert report["services"] == 1000 and report["lanes"] == ["base", "gray", "blue", "green", "canary"]
    # one DestinationRule and one VirtualService per service, plus the entry's gateway-only VS; EnvoyFilters:
    # the gateway coloring, the sidecar baggage -> tag and the sidecar instant fallback (mesh_config.fallback)
    assert report["kinds"] == {"DestinationRule": 1000, "VirtualService": 1001, "Gateway": 1, "EnvoyFilter": 3}
    assert report["objects"] == 2005 and report["files_written"] == 2005
    assert report["yaml_bytes"] > 1_000_000
    timings = report["timings"]
    assert set(timings) == {"parse config", "build objects", "dump YAML", "in-process total",
                            "CLI: lane mesh render -o -", "CLI: lane mesh render --output-dir DIR"}
    for timing in timings.values():
        assert len(timing["runs"]) == len(timing["cpu"]) == 1
        assert 0 < timing["median"] < 120 and 0 < timing["cpu_median"] < 120
    parts = sum(timings[k]["median"] for k in ("parse config", "build objects", "dump YAML"))
    assert abs(timings["in-process total"]["median"] - parts) < 1e-6
    assert not list(tmp_path.iterdir())  # the scratch directory is gone


def test_render_scale_rejects_nonsense_sizes() -> None:
    done = subprocess.run([sys.executable, str(BENCH / "render_scale.py"), "--services", "0"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2 and "--services must be" in done.stderr


def test_propagation_reports_every_case_against_the_otel_pair() -> None:
    report = run_json("propagation.py", "--quick")
    cases = report["cases"]
    assert report["baseline"] == "otel tracecontext+baggage"
    assert list(cases) == ["otel tracecontext+baggage", "lane propagator", "otel + lane composite",
                           "lane.core.wire (sidecar)", "copy headers"]
    assert cases["otel tracecontext+baggage"]["ratio"] == 1.0
    for case in cases.values():
        assert len(case["ns_per_op"]) == report["repeat"] == 3
        assert 10 < case["median_ns"] < 10_000_000  # nanoseconds: not zero, not seconds
        assert case["ratio"] == case["median_ns"] / cases["otel tracecontext+baggage"]["median_ns"]


def test_imports_measures_fresh_interpreters_and_finds_the_aiohttp_chain() -> None:
    report = run_json("imports.py", "lane.dataplane.upgrades", "lane.telemetry.tracing", "lane.no_such_module")
    bare, imports = report["bare"], report["imports"]
    assert 5 < bare["peak_rss_mib"] < 100  # a bare interpreter, not this test's process (see VmHWM)
    proxy = imports["lane.dataplane.upgrades"]
    chain = proxy["chains"]["aiohttp"]  # lane.dataplane.upgrades -> ... -> aiohttp(.something)
    assert "aiohttp" in proxy["heavy"] and chain[0] == "lane.dataplane.upgrades" and chain[-1].split(".")[0] == "aiohttp"
    assert proxy["peak_rss_mib"] > bare["peak_rss_mib"] and proxy["modules"] > 100
    assert "opentelemetry.sdk" not in imports["lane.telemetry.tracing"]["heavy"]  # the tracing import diet
    assert imports["lane.no_such_module"]["error"].startswith("missing:")


def test_soak_runs_a_sidecar_samples_its_rss_and_draws_it(tmp_path: Path) -> None:
    report = run_json("soak.py", "--seconds", "3", "--first-requests", "50", "--concurrency", "4",
                      "--results", str(tmp_path))
    assert report["errors"] == 0 and report["wrong_lane"] == 0 and report["sidecar_alive_at_end"]
    assert report["requests"] >= 50 + report["soak_requests"] and report["soak_requests"] > 0
    samples = report["samples"]
    assert len(samples) >= 3 and samples[-1]["seconds"] >= 3 - 0.01
    assert [s["requests"] for s in samples] == sorted(s["requests"] for s in samples)
    rss = [s["rss_mib"] for s in samples]
    assert 5 < report["idle_rss_mib"] < 500 and report["peak_rss_mib"] == max(rss) and report["end_rss_mib"] == rss[-1]
    assert report["verdict"] in ("no growth", "grows")
    assert json.loads((tmp_path / "soak.json").read_text()) == report
    svg = ElementTree.parse(tmp_path / "soak-rss.svg").getroot()  # well-formed XML
    assert svg.tag.endswith("svg") and any(e.tag.endswith("polyline") for e in svg.iter())


def test_request_logic_drives_the_real_handlers_and_checks_every_answer() -> None:
    """The gateway and the sidecar pair answer 200 from the right lane on every request (the script
    exits on the first wrong answer), and one figure per subject is printed."""
    done = subprocess.run([sys.executable, str(BENCH / "request_logic.py"), "--pairs", "300", "--rounds", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["gateway", "sidecar pair (outbound + inbound)"]
    for line in lines:
        figure = float(line.split(": ")[1].split(" us")[0])
        assert 0 < figure < 100_000 and "2 rounds x 300" in line
    refused = subprocess.run([sys.executable, str(BENCH / "request_logic.py"), "--pairs", "0"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2 and "--pairs and --rounds must be at least 1" in refused.stderr


def test_request_logic_refuses_to_report_a_wrong_answer() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import request_logic
    finally:
        sys.path.remove(str(BENCH))
    from multidict import CIMultiDict

    wrong = request_logic._Exchange(CIMultiDict())
    wrong.respond(503, CIMultiDict({"x-lane-served": "none"}))
    try:
        request_logic._check(wrong, "gray")
    except SystemExit as exit_:
        assert "not 200 from gray" in str(exit_)
    else:
        raise AssertionError("a 503 was taken for an answer")
