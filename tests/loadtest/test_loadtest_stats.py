"""Lane statistics merge exactly across workers; the verdict folds every check into the exit code."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lane.core.config_load import demo_config_text, parse_config
from lane.core.hops import parse_path
from loadtest.expected import verify
from loadtest.health import HealthHistory
from loadtest.personas import Persona, build_personas
from loadtest.report import build_json, render_text
from loadtest.report_html import inject_html, render_html_section
from loadtest.stats import LaneStats
from loadtest.summary import ChaosRun, Thresholds, summarize

CONFIG = parse_config(demo_config_text(), "demo")
GOOD = {
    "gray": ("a@gray;requested=gray, b@base;requested=gray;fallback=no-instance, c@gray;requested=gray, "
             "d@base;requested=gray;fallback=no-instance, c@gray;requested=gray"),
    "base": "a@base;requested=base, b@base;requested=base, c@base;requested=base, d@base;requested=base, c@base;requested=base",
}


def record(stats: LaneStats, persona: Persona, path: str, when: float = 1000.0, http_ok: bool = True) -> None:
    v = verify(CONFIG, parse_path(path), lane=persona.lane, possible=persona.possible_lanes, health=HealthHistory(),
               start=when, end=when, grace=1.0)
    stats.record(persona.name, v, http_ok=http_ok, when=when, sticky_key=persona.sticky_key)


def traffic(stats: LaneStats, n: int, seed: int) -> None:
    rng = random.Random(seed)
    personas = build_personas(CONFIG)
    for i in range(n):
        p = rng.choice(personas)
        assert p.lane is not None
        record(stats, p, GOOD[p.lane], when=1000.0 + i / 10)


def test_merged_worker_reports_equal_one_process_counting_everything() -> None:
    whole, w1, w2 = LaneStats(), LaneStats(), LaneStats()
    traffic(whole, 120, seed=1)
    traffic(whole, 80, seed=2)
    traffic(w1, 120, seed=1)
    traffic(w2, 80, seed=2)
    master = LaneStats()
    master.merge(LaneStats.from_wire(json.loads(json.dumps(w1.to_wire()))), worker="w1")
    master.merge(LaneStats.from_wire(w2.to_wire()), worker="w2")
    assert master.workers == {"w1": 120, "w2": 80}
    assert master.requests == 200 == sum(master.workers.values())
    expected = whole.to_wire()
    got = master.to_wire()
    got.pop("workers")
    expected.pop("workers")
    assert got == expected


def test_merging_in_either_order_gives_the_same_counts() -> None:
    a, b = LaneStats(), LaneStats()
    traffic(a, 50, seed=3)
    traffic(b, 70, seed=4)
    ab, ba = LaneStats(), LaneStats()
    ab.merge(a, "a")
    ab.merge(b, "b")
    ba.merge(b, "b")
    ba.merge(a, "a")
    assert ab.to_wire() == ba.to_wire()


def test_malformed_report_is_refused_with_the_spot_named() -> None:
    with pytest.raises(ValueError, match=r"cells\.a\|gray"):
        LaneStats.from_wire({"cells": {"a|gray": {"requests": -1}}})
    with pytest.raises(ValueError, match="personas"):
        LaneStats.from_wire({"personas": []})
    with pytest.raises(ValueError, match="top level"):
        LaneStats.from_wire("nope")


def test_clean_run_passes_and_reports_every_check() -> None:
    stats = LaneStats()
    traffic(stats, 100, seed=5)
    s = summarize(stats, build_personas(CONFIG), "base")
    assert s.ok and s.exit_code == 0 and s.reasons == ()
    assert set(s.checks) == {"purity", "leakage", "fallback", "routing", "stickiness", "shares"}
    assert all(body["ok"] for body in s.checks.values())
    assert s.checks["fallback"]["by_reason"]["no-instance"] > 0


def test_no_request_fails() -> None:
    s = summarize(LaneStats(), build_personas(CONFIG), "base")
    assert not s.ok and s.reasons == ("no request was made",)


def test_one_misroute_fails_and_is_named() -> None:
    stats = LaneStats()
    traffic(stats, 49, seed=6)
    xiaoming = build_personas(CONFIG)[0]
    record(stats, xiaoming, "a@base;requested=gray, b@base;requested=gray;fallback=no-instance")
    s = summarize(stats, build_personas(CONFIG), "base")
    assert s.exit_code == 1
    assert "misroute a: expected gray, served base (x1)" in s.reasons[0]
    assert not s.checks["routing"]["ok"] and s.checks["routing"]["misroute"] == 1


def test_error_rate_threshold() -> None:
    stats = LaneStats()
    personas = build_personas(CONFIG)
    for i in range(100):
        p = personas[i % len(personas)]
        assert p.lane is not None
        record(stats, p, GOOD[p.lane], http_ok=i >= 2)
    assert summarize(stats, personas, "base", Thresholds(max_error_rate=0.05)).ok
    s = summarize(stats, personas, "base", Thresholds(max_error_rate=0.01))
    assert not s.ok and s.reasons == ("error rate 2.00% exceeds 1.00%",)


def test_stickiness_violation_fails() -> None:
    stats = LaneStats()
    sticky = Persona("k", "sticky", (), "", (("gray", 1.0),), "r", sticky_key="key-1")
    from loadtest.expected import RequestVerdict

    stats.record("k", RequestVerdict("gray", (), ()), http_ok=True, when=1.0, sticky_key="key-1")
    stats.record("k", RequestVerdict("base", (), ()), http_ok=True, when=2.0, sticky_key="key-1")
    s = summarize(stats, [sticky], "base")
    assert "stickiness: key key-1 was colored base, gray" in s.reasons
    assert s.checks["stickiness"]["violations"] == {"key-1": ["base", "gray"]}


def test_share_within_binomial_tolerance_passes_and_far_off_fails() -> None:
    from loadtest.expected import RequestVerdict

    share = Persona("canary", "share", (), "", (("canary", 0.5), ("base", 0.5)), "canary")
    near, far = LaneStats(), LaneStats()
    for i in range(200):
        near.record("canary", RequestVerdict("canary" if i % 20 < 11 else "base", (), ()), http_ok=True, when=1.0)
        far.record("canary", RequestVerdict("canary" if i % 10 < 9 else "base", (), ()), http_ok=True, when=1.0)
    assert summarize(near, [share], "base").ok
    s = summarize(far, [share], "base")
    assert not s.ok and any(r.startswith("share canary -> canary: observed 0.900 of 200") for r in s.reasons)
    few = LaneStats()
    for _ in range(5):
        few.record("canary", RequestVerdict("canary", (), ()), http_ok=True, when=1.0)
    assert summarize(few, [share], "base").ok  # too few samples: reported, not judged


def test_chaos_needs_fallback_while_down_and_traffic_back_after() -> None:
    from lane.core.hops import Hop
    from loadtest.expected import HopVerdict, RequestVerdict

    def hop_at(stats: LaneStats, when: float, served: str) -> None:
        hop = Hop("c", served, "gray", "unhealthy" if served != "gray" else None)
        stats.record("x", RequestVerdict("gray", (HopVerdict(hop, "gray"),), ()), http_ok=True, when=when)

    run = ChaosRun("c", "gray", stopped_at=10.2, started_at=14.6)
    stats = LaneStats()
    for t in (9.0, 11.0, 12.0, 16.0, 17.0):
        hop_at(stats, t, "gray" if t < 10 or t > 15.5 else "base")
    s = summarize(stats, [], "base", chaos=run)
    assert s.chaos is not None and s.chaos.ok and s.chaos.fallbacks_while_down == 2
    assert s.chaos.in_lane_after_restart == 2
    never_back = LaneStats()
    for t in (9.0, 11.0, 16.0):
        hop_at(never_back, t, "gray" if t < 10 else "base")
    s = summarize(never_back, [], "base", chaos=run)
    assert not s.ok and "chaos c@gray: no request returned to c@gray after it restarted" in s.reasons
    s = summarize(LaneStats(), [], "base", chaos=ChaosRun("c", "gray", error="stopping c@gray answered HTTP 404"))
    assert "chaos c@gray: stopping c@gray answered HTTP 404" in s.reasons


def test_reports_show_the_matrix_the_personas_and_the_verdict(tmp_path: Path) -> None:
    stats = LaneStats()
    traffic(stats, 60, seed=7)
    personas = build_personas(CONFIG)
    s = summarize(stats, personas, "base")
    text = render_text(s, stats, personas, CONFIG)
    line = next(ln for ln in text.splitlines() if ln.startswith("xiaoming "))
    assert "a@gray → b@base → c@gray → d@base → c@gray" in line
    assert "RESULT: PASS" in text
    b_row = next(ln for ln in text.splitlines() if ln.split()[:2] == ["b", "gray"])
    assert "base" in b_row and "no-instance" in b_row
    doc = build_json(s, stats, personas, CONFIG, {"requests": 60, "failures": 0})
    json.dumps(doc)
    assert doc["totals"]["requests"] == 60 and doc["ok"] is True
    row = next(p for p in doc["personas"] if p["name"] == "xiaoming")
    assert row["expected_path"] == row["path"] == "a@gray → b@base → c@gray → d@base → c@gray"
    report = tmp_path / "r.html"
    report.write_text('<html><body><div id="root"></div><script>charts</script></body></html>')
    section = render_html_section(s, stats, personas, CONFIG)
    inject_html(report, section)
    inject_html(report, section)  # idempotent: replaced, not doubled
    html = report.read_text()
    assert html.count('id="lane-report"') == 1 and "<svg" in html and html.endswith("</body></html>")
    assert "a@gray → b@base → c@gray" in html
    # the verdict opens the report, above locust's React root (its charts)
    assert html.index("Lane verification:") < html.index('<div id="root">')
    assert "Checks:" in section and "purity ok" in section and "RESULT" not in section


def test_the_verdict_is_never_pass_before_the_run_ends() -> None:
    stats = LaneStats()
    traffic(stats, 60, seed=7)
    personas = build_personas(CONFIG)
    s = summarize(stats, personas, "base")
    assert s.ok
    running = render_html_section(s, stats, personas, CONFIG, phase="running")
    assert "running — no misroute so far" in running and "PASS" not in running
    assert "Checks so far:" in running
    assert ">PASS<" in render_html_section(s, stats, personas, CONFIG, phase="ended")
    assert "not started" in render_html_section(s, LaneStats(), personas, CONFIG, phase="ready")


def test_html_views_escape_names_from_the_config_and_the_network() -> None:
    stats = LaneStats()
    traffic(stats, 10, seed=3)
    stats.findings["<script>alert(1)</script>"] = 1
    stats.lane_failures += 1
    personas = build_personas(CONFIG)
    section = render_html_section(summarize(stats, personas, "base"), stats, personas, CONFIG, phase="running")
    assert "<script>alert" not in section and "&lt;script&gt;alert(1)&lt;/script&gt;" in section
    assert "running — 1 misroute so far: FAIL" in section
