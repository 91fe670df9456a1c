"""`lane graph`: the live lane topology read from the proxies' metrics, checked against the hop records.

The demo runs for real (apps, sidecars and gateway as processes); the edges `lane graph` draws must be
exactly the calls the answers' hop records (``x-lane-path``) and call trees show, with their counts.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PromCounter

from lane.core.hops import PATH_HEADER, Hop, parse_path
from lane.graph.model import build_graph, quantile, read_metrics
from lane.graph.render import render_dot, render_svg
from tests.support.processes import REPO, DemoRun, free_port, lane_demo, started_process

EdgeKey = tuple[str, str, str, str]  # source, target, requested lane, fallback


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    with lane_demo(tmp_path_factory.mktemp("graph"), "--port", "0") as run:
        yield run


def _ask(url: str, agent: str) -> tuple[tuple[Hop, ...], dict[str, Any]]:
    request = urllib.request.Request(url + "/", headers={"User-Agent": agent})
    with urllib.request.urlopen(request, timeout=20) as resp:
        return parse_path(resp.headers[PATH_HEADER]), json.loads(resp.read())


def _edges_of(hops: tuple[Hop, ...], tree: dict[str, Any]) -> list[EdgeKey]:
    """The calls one answer shows: the call tree gives who called whom, the hop records (same depth-first
    order) the lane each call asked for and why it fell back."""
    order = iter(hops)
    edges: list[EdgeKey] = []

    def walk(parent: str, answer: dict[str, Any]) -> None:
        hop = next(order)
        assert hop.label() == f"{answer['service']}@{answer['lane']}"
        edges.append((parent, hop.label(), hop.requested, hop.fallback or ""))
        for call in answer["calls"]:
            walk(hop.label(), call["answer"])

    walk("gateway", tree)
    assert next(order, None) is None
    return edges


def _graph(demo: DemoRun, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lane", "graph", "--admin", demo.admin, *args],
                          check=False, capture_output=True, text=True, timeout=60, cwd=REPO)


def test_the_graph_has_exactly_the_edges_the_hop_records_show(demo: DemoRun) -> None:
    seen: Counter[EdgeKey] = Counter()
    for agent in ("xiaoming", "someone", "xiaoming", "someone", "xiaoming"):
        hops, tree = _ask(demo.gateway, agent)
        seen.update(_edges_of(hops, tree))
    assert seen[("a@gray", "b@base", "gray", "no-instance")] == 3  # what the demo is about
    assert seen[("b@base", "c@gray", "gray", "")] == 3

    done = _graph(demo, "--format", "json", "--window", "0")
    assert done.returncode == 0, done.stderr
    graph = json.loads(done.stdout)
    drawn = {(e["source"], e["target"], e["requested"], e["fallback"]): e["requests"] for e in graph["edges"]}
    assert drawn == {edge: float(count) for edge, count in seen.items()}
    assert all(e["errors"] == 0 and e["p99_seconds"] > 0 for e in graph["edges"])
    nodes = {n["name"]: n for n in graph["nodes"]}
    assert nodes["gateway"]["depth"] == 0 and nodes["a@gray"]["depth"] == 1 and nodes["c@gray"]["depth"] == 3
    # d forwards only x-request-id: its sidecar recalled the lane from it on each of d's calls
    assert nodes["d@base"]["recovered"] == {"x-request-id": 5} and nodes["d@base"]["lost"] == 0
    assert graph["unreachable"] == []

    svg = _graph(demo, "--window", "0")
    assert svg.returncode == 0 and svg.stdout.startswith("<svg")
    for source, target, requested, fallback in seen:
        assert f'data-source="{source}" data-target="{target}" data-fallback="{fallback}"' in svg.stdout
    assert "fallback gray\u2192base: no-instance" in svg.stdout and ">a@gray</text>" in svg.stdout
    dot = _graph(demo, "--format", "dot", "--window", "0")
    assert '"a@gray" -> "b@base"' in dot.stdout and "style=dashed" in dot.stdout


def test_rates_come_from_two_readings_a_window_apart(demo: DemoRun) -> None:
    _ask(demo.gateway, "xiaoming")
    done = _graph(demo, "--format", "json", "--window", "0.5")
    assert done.returncode == 0, done.stderr
    graph = json.loads(done.stdout)
    assert graph["window_seconds"] == 0.5
    assert all(e["rate"] == 0 for e in graph["edges"])  # nothing was sent during the window


def test_the_demo_admin_lists_its_proxies_and_serves_the_picture(demo: DemoRun) -> None:
    with urllib.request.urlopen(demo.admin + "/lane/admins", timeout=10) as resp:
        admins = json.loads(resp.read())["admins"]
    assert len(admins) == 1 + sum(len(lanes) for svc in demo.ready["instances"].values() for lanes in svc.values())
    with urllib.request.urlopen(demo.admin + "/lane/graph?refresh=7&window=0", timeout=20) as resp:
        page = resp.read().decode()
        assert resp.headers["Content-Type"].startswith("text/html")
    assert '<meta http-equiv="refresh" content="7">' in page and "<svg" in page and ">b@base</text>" in page
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(demo.admin + "/lane/graph?refresh=soon", timeout=10)
    assert refused.value.code == 400


def test_an_admin_that_does_not_answer_is_one_line_and_exit_1() -> None:
    done = subprocess.run([sys.executable, "-m", "lane", "graph", "--admin", f"127.0.0.1:{free_port()}",
                           "--window", "0"], check=False, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 1 and done.stderr.startswith("error: no proxy answered: http://127.0.0.1:")
    assert len(done.stderr.splitlines()) == 1 and done.stdout == ""
    bad = subprocess.run([sys.executable, "-m", "lane", "graph", "--admin", "ftp://x", "--format", "svg"],
                         check=False, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def _exposition_of_a_broken_sidecar() -> str:
    """A sidecar a@gray whose app lost the lane on 3 calls, in prometheus-client's own exposition format."""
    registry = CollectorRegistry()
    labels = ["proxy", "source_service", "source_lane", "destination_service", "requested_lane", "served_lane"]
    requests = PromCounter("lane_requests", "r", [*labels, "fallback", "response_code"], registry=registry)
    duration = Histogram("lane_request_duration_seconds", "d", [*labels, "response_code"],
                         buckets=(0.01, 0.1, 1.0), registry=registry)
    sources = PromCounter("lane_outbound_lane_source", "s", ["service", "source", "via"], registry=registry)
    requests.labels("inbound", "unknown", "", "a", "gray", "gray", "", "200").inc(3)
    requests.labels("outbound", "a", "gray", "b", "base", "base", "", "200").inc(2)
    requests.labels("outbound", "a", "gray", "b", "base", "base", "", "502").inc(1)
    for seconds in (0.005, 0.05, 0.5):
        duration.labels("outbound", "a", "gray", "b", "base", "base", "200").observe(seconds)
    sources.labels("a", "lost", "").inc(3)
    return generate_latest(registry).decode()


def test_a_propagation_break_is_drawn_in_red_with_its_count() -> None:
    graph = build_graph(read_metrics(_exposition_of_a_broken_sidecar()))
    assert [(n.name, n.lost) for n in graph.nodes] == [("a@gray", 3), ("b@base", 0)]
    (edge,) = graph.edges
    assert (edge.source, edge.target, edge.requests, edge.errors) == ("a@gray", "b@base", 3.0, 1.0)
    svg = render_svg(graph)
    assert 'stroke="#d62728" stroke-width="3"' in svg and "lane lost on 3 calls" in svg
    assert "33% errors" in svg
    assert 'color="#d62728", penwidth=3' in render_dot(graph)


def test_p99_is_interpolated_like_prometheus_histogram_quantile() -> None:
    # 100 observations: 50 up to 0.1 s, 49 more up to 1 s, 1 above: the 99th is at the top of (0.1, 1]
    buckets = {0.1: 50.0, 1.0: 99.0, float("inf"): 100.0}
    assert quantile(0.99, buckets) == pytest.approx(1.0)
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.1 + 0.9 * 25 / 49)
    assert quantile(0.999, buckets) == 1.0  # in the +Inf bucket: the highest finite bound
    assert quantile(0.99, {}) is None and quantile(0.99, {float("inf"): 0.0}) is None


def test_names_from_the_config_are_escaped_in_the_svg() -> None:
    text = _exposition_of_a_broken_sidecar().replace('destination_service="b"', 'destination_service="b<x>&"')
    svg = render_svg(build_graph(read_metrics(text)))
    assert "b&lt;x&gt;&amp;@base" in svg and "b<x>" not in svg


def test_the_readme_picture_is_rendered_by_its_script_from_a_real_run(tmp_path: Path) -> None:
    output = tmp_path / "lane-graph.svg"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "render-graph"), "--output", str(output),
                           "--window", "1"], check=False, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    svg = output.read_text(encoding="utf-8")
    assert 'data-source="a@gray" data-target="b@base" data-fallback="no-instance"' in svg
    assert 'data-source="gateway" data-target="a@gray"' in svg and "recovered from x-request-id" in svg


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (scripts/ensure-test-tools)")
def test_a_real_prometheus_scraping_the_demo_gives_the_same_graph(demo: DemoRun, tmp_path: Path) -> None:
    with urllib.request.urlopen(demo.admin + "/lane/admins", timeout=10) as resp:
        admins = json.loads(resp.read())["admins"]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "lane", "static_configs": [
            {"targets": [a.removeprefix("http://") for a in admins]}]}],
    }), encoding="utf-8")
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    with started_process(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                          f"--web.listen-address=127.0.0.1:{port}"], tmp_path / "prometheus.log"):
        for agent in ("xiaoming", "someone", "xiaoming"):
            _ask(demo.gateway, agent)
        wanted = json.loads(_graph(demo, "--format", "json", "--window", "0").stdout)["edges"]
        edges = None
        for _ in range(60):  # bounded: until Prometheus has scraped every proxy after the traffic
            done = subprocess.run([sys.executable, "-m", "lane", "graph", "--prometheus", server, "--format", "json",
                                   "--window", "0"], check=False, capture_output=True, text=True, timeout=60, cwd=REPO)
            if done.returncode == 0:
                edges = json.loads(done.stdout)["edges"]
                if [(e["source"], e["target"], e["fallback"], e["requests"]) for e in edges] == \
                        [(e["source"], e["target"], e["fallback"], e["requests"]) for e in wanted]:
                    break
            time.sleep(0.5)
    assert edges is not None
    assert [(e["source"], e["target"], e["requested"], e["fallback"], e["requests"]) for e in edges] == \
        [(e["source"], e["target"], e["requested"], e["fallback"], e["requests"]) for e in wanted]
    assert any(e["source"] == "a@gray" and e["fallback"] == "no-instance" for e in edges)


def test_watch_redraws_the_file_until_interrupted(demo: DemoRun, tmp_path: Path) -> None:
    output = tmp_path / "live.json"
    argv = [sys.executable, "-m", "lane", "graph", "--admin", demo.admin, "--format", "json", "--window", "0",
            "--watch", "0.2", "-o", str(output)]
    with started_process(argv, tmp_path / "watch.log", cwd=REPO) as watcher:
        drawn = []
        for _ in range(100):  # bounded: 100 x 0.1 s
            if output.exists():
                drawn.append(json.loads(output.read_text(encoding="utf-8"))["edges"])
                _ask(demo.gateway, "xiaoming")  # the next drawing must count it
                if len(drawn) >= 2 and drawn[-1] != drawn[0]:
                    break
            time.sleep(0.1)
        assert len(drawn) >= 2 and drawn[-1] != drawn[0]
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=20) == 130
    assert "Traceback" not in (tmp_path / "watch.log").read_text(errors="replace")


def test_a_strict_lane_refusal_is_an_edge_to_service_at_none() -> None:
    registry = CollectorRegistry()
    labels = ["proxy", "source_service", "source_lane", "destination_service", "requested_lane", "served_lane"]
    requests = PromCounter("lane_requests", "r", [*labels, "fallback", "response_code"], registry=registry)
    requests.labels("gateway", "gateway", "", "a", "locked", "", "strict", "503").inc(2)  # as recorded_dispatch does
    graph = build_graph(read_metrics(generate_latest(registry).decode()))
    (edge,) = graph.edges
    assert (edge.source, edge.target, edge.fallback, edge.error_rate) == ("gateway", "a@none", "strict", 1.0)
    assert [n.name for n in graph.nodes if n.refusal] == ["a@none"]
    svg = render_svg(graph)
    assert "refused: lane locked is strict" in svg and "no lane may serve" in svg
