"""The Grafana dashboard (docker/k8s/overlays/observability): valid, loaded by its overlay, and every
query names only metrics the proxies really export -- checked against the ``/metrics`` of a running
`lane demo` (gateway and sidecars, with traffic), not against a list kept by hand.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import lane_demo

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / "docker" / "k8s" / "overlays" / "observability"
DASHBOARD = OVERLAY / "lane-dashboard.json"

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once strings, label matchers, ranges,
    grouping clauses, function calls, keywords and numbers are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![A-Za-z0-9_:])\d[\w.]*", " ", text)  # numbers and durations (0.99, 5m)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or match.group() in _KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(match.group())
    return names


def _dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return document


def _queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):  # label_values(METRIC, label): its first argument is a metric
            found = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query["query"])
            assert found, query
            exprs.append(found.group(1))
    return exprs


def test_the_metric_name_extraction_finds_names_and_only_names() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, served_lane) (rate(lane_request_duration_seconds_bucket'
            '{proxy="gateway",served_lane=~"$lane"}[$__rate_interval]))) / on (x) group_left(y) other_total offset 5m')
    assert metric_names(expr) == {"lane_request_duration_seconds_bucket", "other_total"}


def test_the_dashboard_is_valid_grafana_json_covering_what_the_issue_asks() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests/s", "error", "latency", "fallback", "ejection", "propagation", "side by side"):
        assert topic in titles, topic
    repeated = [p for p in dashboard["panels"] if p.get("repeat")]
    assert [p["repeat"] for p in repeated] == ["lane"]  # one column per lane: gray next to base
    assert "lane" in {v["name"] for v in dashboard["templating"]["list"]}


def _exported(admins: list[str]) -> set[str]:
    names: set[str] = set()
    for admin in admins:
        with urllib.request.urlopen(admin + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            names.update(s.name for s in family.samples)
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
            else:
                names.add(family.name)
    return names


def test_every_query_names_a_metric_a_running_proxy_exports(tmp_path: Path) -> None:
    queries = _queries(_dashboard())
    wanted = set().union(*(metric_names(q) for q in queries))
    assert {"lane_requests_total", "lane_request_duration_seconds_bucket", "lane_ejections_total",
            "lane_outbound_lane_source_total", "lane_build_info"} <= wanted
    with lane_demo(tmp_path, "--port", "0") as demo:
        for agent in ("xiaoming", "someone"):
            request = urllib.request.Request(demo.gateway + "/", headers={"User-Agent": agent})
            with urllib.request.urlopen(request, timeout=20) as resp:
                assert resp.status == 200
        with urllib.request.urlopen(demo.admin + "/lane/admins", timeout=10) as resp:
            admins = json.loads(resp.read())["admins"]
        exported = _exported(admins)
    assert wanted - exported == set(), f"the dashboard reads metrics no proxy exports: {sorted(wanted - exported)}"
    # and the labels it groups and filters by are the ones the request metrics carry
    for label in ("served_lane", "destination_service", "response_code", "fallback", "requested_lane", "proxy"):
        assert any(label in q for q in queries), label


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (scripts/ensure-test-tools)")
def test_the_overlay_loads_the_dashboard_and_annotates_every_lane_pod_for_prometheus() -> None:
    done = subprocess.run(["kubectl", "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    objects = [o for o in yaml.safe_load_all(done.stdout) if o]
    (board,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "lane-grafana-dashboard"]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["lane-dashboard.json"]) == _dashboard()
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert len(deployments) >= 7  # the gateway and six app instances
    for deployment in deployments:
        template = deployment["spec"]["template"]
        notes = template["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/path"] == "/metrics"
        # the annotated port is the container port that `--admin` listens on (where /metrics is)
        admin_ports = set()
        for c in template["spec"]["containers"]:
            args = c.get("args") or []
            if "--admin" in args:
                admin_ports.add(args[args.index("--admin") + 1].rpartition(":")[2])
        assert admin_ports == {notes["prometheus.io/port"]}, deployment["metadata"]["name"]
