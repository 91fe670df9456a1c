"""`lane rollout --mesh`: the share set in an Istio mesh through its coloring EnvoyFilter, judged from Istio's metrics.

What is real: ``python -m lane rollout --mesh`` as a user runs it, the `kubernetes` client it applies
with (the code of ``lane mesh apply``), and a real Prometheus server (Debian's ``prometheus``,
installed by scripts/ensure-test-tools; the tests that need it skip without it) whose query API the
rollout reads. What is not, because it cannot run here: the Kubernetes API server is
`tests.support.fake_kube.FakeKube` (no API server, kind or container runtime on these machines), and
Istio's proxies are `tests.support.istio_metrics`, which serves Istio's metric names and labels for
simulated traffic (upstream Envoy has no Istio stats extension). The share in force is read back from
the fake API server by comparing the stored EnvoyFilter with the config rendered at each share.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
import yaml

from lane.core.config_load import parse_config
from mesh_config.apply import apply_objects
from mesh_config.kube import Kube, connect
from mesh_config.render import render_objects
from rollout.analysis import Thresholds, Verdict, judge
from rollout.istio_source import istio_snapshot
from rollout.mesh_target import canonical_revision, coloring_filter, revision_problems, share_in_filter
from rollout.metrics_window import Snapshot
from rollout.share_edit import find_share_rule, write_share
from tests.support.fake_kube import FakeKube
from tests.support.istio_metrics import GATEWAY, IstioMetrics, istio_metrics
from tests.support.processes import REPO, free_port, started_process

EXAMPLE = (REPO / "examples" / "rollout.yaml").read_text(encoding="utf-8")
ISTIO = "networking.istio.io"
FILTER = ("lane-gateway-lane-coloring", "istio-system")
STEPS = (1, 5, 25, 50, 100)
needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None,
                                      reason="no prometheus server installed (scripts/ensure-test-tools)")


def config_text(namespace: str, percent: int = 0, text: str = EXAMPLE) -> str:
    assert "      percent: 0 " in text
    return text.replace("      percent: 0 ", f"      percent: {percent} ", 1) + f"\nmesh:\n  namespace: {namespace}\n"


def share_in_file(path: Path) -> int:
    (rule,) = [r for r in yaml.safe_load(path.read_text(encoding="utf-8"))["coloring"] if r["lane"] == "gray"]
    return int(rule["percentage"]["percent"])


class Cluster:
    """The fake API server with the config applied at 0 % (as `lane mesh apply` leaves it) and lane pods."""

    def __init__(self, fake: FakeKube, tmp_path: Path, namespace: str, text: str = EXAMPLE) -> None:
        self.fake = fake
        self.namespace = namespace
        self.text = text
        self.path = tmp_path / "lane.yaml"
        self.path.write_text(config_text(namespace, 0, text), encoding="utf-8")
        # the coloring EnvoyFilter's spec at each share a rollout may set, rendered independently of rollout/
        self.specs = {p: coloring_filter(render_objects(parse_config(config_text(namespace, p, text), "x"),
                                                        namespace=namespace))["spec"] for p in (0, *STEPS)}

    def apply(self, percent: int = 0) -> None:
        config = parse_config(config_text(self.namespace, percent, self.text), str(self.path))
        apply_objects(Kube(connect(server=self.fake.url), timeout=10), render_objects(config, namespace=self.namespace),
                      self.namespace)

    def pods(self, extra: dict[str, str] | None = None) -> None:
        for service, lanes in {"a": ("base", "gray"), "b": ("base",), "c": ("base", "gray"), "d": ("base",)}.items():
            for lane in lanes:
                self.fake.put_pod(f"{service}-{lane}-0", {"app": service, "version": lane, **(extra or {})},
                                  namespace=self.namespace)

    def share(self) -> int | None:
        """The share the stored EnvoyFilter colors with (None: not there, or not one of the expected renders)."""
        live = self.fake.object(ISTIO, "envoyfilters", *FILTER)
        return next((p for p, spec in self.specs.items() if live is not None and live["spec"] == spec), None)

    def writes(self, plural: str) -> int:
        return self.fake.count("PATCH", f"/{plural}/", dry_run=False)


@contextmanager
def shares_seen(cluster: Cluster) -> Iterator[list[int | None]]:
    """Every share the cluster held, in order, polled every 50 ms while the block runs."""
    seen: list[int | None] = []
    stop = threading.Event()

    def poll() -> None:
        while True:
            share = cluster.share()
            if not seen or seen[-1] != share:
                seen.append(share)
            if stop.wait(0.05):
                return

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield seen
    finally:
        stop.set()
        poller.join(5)


def rollout_argv(cluster: Cluster, prometheus: str, tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "lane", "rollout", "--mesh", "--config", str(cluster.path), "--lane", "gray",
        "--server", cluster.fake.url, "--prometheus", prometheus, "--steps", ",".join(map(str, STEPS)),
        "--interval", "2s", "--min-requests", "10", "--max-waits", "10", "--record", str(tmp_path / "rollout.json"),
        *extra,
    ]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=150, cwd=REPO)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def mesh_metrics() -> Iterator[IstioMetrics]:
    with istio_metrics() as metrics:
        yield metrics


@pytest.fixture(scope="module")
def prometheus(mesh_metrics: IstioMetrics, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the Istio stand-in every second, as a mesh's Prometheus scrapes the proxies."""
    if shutil.which("prometheus") is None:
        pytest.skip("no prometheus server installed (scripts/ensure-test-tools)")
    home = tmp_path_factory.mktemp("prometheus")
    (home / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "istio-proxies", "metrics_path": "/stats/prometheus",
                            "static_configs": [{"targets": [mesh_metrics.target]}]}],
    }))
    port = free_port()
    with started_process(["prometheus", f"--config.file={home / 'prometheus.yml'}",
                          f"--storage.tsdb.path={home / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                         home / "prometheus.log") as proc:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while not _ready(url + "/-/ready"):
            assert proc.poll() is None, (home / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus never became ready"
            time.sleep(0.3)
        yield url


# -- pure parts --------------------------------------------------------------------------------------------


def test_the_revision_istio_names_a_pod_by_follows_its_label_order() -> None:
    assert canonical_revision({"version": "gray"}) == "gray"
    assert canonical_revision({"version": "gray", "app.kubernetes.io/version": "1.4.2"}) == "1.4.2"
    assert canonical_revision({"app.kubernetes.io/version": "1.4.2",
                               "service.istio.io/canonical-revision": "gray"}) == "gray"
    assert canonical_revision({"app": "a"}) == "latest"


def test_a_lane_pod_istio_would_count_under_another_revision_is_named() -> None:
    config = parse_config(config_text("shop"), "lane.yaml")
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    pods = [
        {"metadata": {"name": "a-gray-0", "namespace": "shop", "labels": {"version": "gray"}}, **ready},
        {"metadata": {"name": "c-gray-0", "namespace": "shop",
                      "labels": {"version": "gray", "app.kubernetes.io/version": "2.0"}}, **ready},
        {"metadata": {"name": "c-gray-1", "namespace": "shop",  # not ready: carries no traffic
                      "labels": {"version": "gray", "app.kubernetes.io/version": "2.0"}}},
    ]
    assert revision_problems(config, pods, ("gray", "base")) == [
        "pod shop/c-gray-0 (version=gray) is revision '2.0' in Istio's metrics"]


def test_the_share_in_force_is_read_from_the_rendered_script() -> None:
    config = parse_config(config_text("shop", 37), "lane.yaml")
    rule = find_share_rule(config, "gray")
    live = coloring_filter(render_objects(config, namespace="shop"))
    at_zero = parse_config(config_text("shop", 0), "lane.yaml")
    assert share_in_filter(live, at_zero, find_share_rule(at_zero, "gray")) == 37  # not the file's 0
    other = parse_config(config_text("shop", 0, EXAMPLE.replace("header: x-user-id", "header: x-uid")), "lane.yaml")
    assert share_in_filter(live, other, find_share_rule(other, "gray")) is None  # another config: no share fits
    assert rule.percent == 37


# -- Istio's metrics through a real Prometheus -------------------------------------------------------------


@needs_prometheus
def test_istio_series_are_read_once_per_request_per_service_and_revision(
    mesh_metrics: IstioMetrics, prometheus: str
) -> None:
    ns = "static"
    mesh_metrics.hop(ns, GATEWAY, "a", "gray", 200, 4.0, 40)
    mesh_metrics.hop(ns, GATEWAY, "a", "gray", 503, 300.0, 10)
    mesh_metrics.hop(ns, GATEWAY, "a", "base", 200, 4.0, 100)
    mesh_metrics.hop(ns, ("a-gray", ns, "gray"), "c", "gray", 200, 30.0, 50)
    mesh_metrics.hop(ns, GATEWAY, "zz", "gray", 500, 4.0, 70)  # a service the config does not name
    mesh_metrics.hop("elsewhere", GATEWAY, "a", "gray", 500, 4.0, 999)  # a's namesake in another namespace
    config = parse_config(config_text(ns), "lane.yaml")

    async def read() -> Snapshot:
        async with aiohttp.ClientSession() as session:
            return await istio_snapshot(session, prometheus, config, ns)

    deadline = time.monotonic() + 30
    while (snap := asyncio.run(read())).total(proxy="inbound", service="c").requests < 50:
        assert time.monotonic() < deadline, "prometheus never scraped the series"
        time.sleep(0.5)
    gray_a = snap.total(proxy="inbound", service="a", served="gray")
    assert (gray_a.requests, gray_a.errors) == (50, 10)  # the destination's report only, not the gateway's too
    assert snap.total(proxy="gateway", requested="gray").requests == 50  # the entry is a's own figure
    assert snap.total(proxy="inbound", service="a", served="base").requests == 100
    assert snap.total(proxy="inbound", service="zz").requests == 0
    assert gray_a.quantile(0.99) == pytest.approx(0.4875)  # 300 ms in Istio's (250, 500] ms bucket, in seconds
    verdict = judge(snap.since(Snapshot({}, True)), "gray", "base", Thresholds(min_requests=10))
    assert verdict.verdict is Verdict.FAIL and "entry@gray error rate 20.0%" in verdict.reason
    assert [c.where for c in verdict.checks] == ["entry", "a", "c"]


# -- the command -------------------------------------------------------------------------------------------


@needs_prometheus
def test_a_healthy_lane_is_applied_step_by_step_to_100_percent(
    mesh_metrics: IstioMetrics, prometheus: str, tmp_path: Path
) -> None:
    mesh_metrics.add_mesh("healthy")
    with FakeKube() as fake:
        cluster = Cluster(fake, tmp_path, "healthy")
        cluster.apply()
        cluster.pods()
        before = {plural: cluster.writes(plural) for plural in ("envoyfilters", "virtualservices", "destinationrules")}
        with shares_seen(cluster) as seen:
            done = run(rollout_argv(cluster, prometheus, tmp_path))
        assert done.returncode == 0, done.stdout + done.stderr
        assert seen == [0, *STEPS]  # each step's EnvoyFilter in the cluster, in order, none skipped
        assert cluster.writes("envoyfilters") - before["envoyfilters"] == len(STEPS)  # one write per step
        assert cluster.writes("virtualservices") == before["virtualservices"]  # nothing else re-applied
        assert cluster.writes("destinationrules") == before["destinationrules"]
        assert fake.count("DELETE") == 0  # nothing pruned
        assert share_in_file(cluster.path) == 100
    assert "promoted: gray promoted to 100%" in done.stdout
    record = json.loads((tmp_path / "rollout.json").read_text())
    assert record["outcome"] == "promoted" and record["mesh"] == {"namespace": "healthy"}
    assert {p["share"] for p in record["points"] if p["verdict"] == "pass"} == set(STEPS)
    assert all(p["checks"][0]["requests"] >= 10 for p in record["points"] if p["verdict"] == "pass")
    assert {c["where"] for p in record["points"] for c in p["checks"]} == {"entry", "a", "c"}


@needs_prometheus
def test_a_failing_lane_is_rolled_back_to_0_percent_in_the_cluster(
    mesh_metrics: IstioMetrics, prometheus: str, tmp_path: Path
) -> None:
    """c's gray pods fail every fifth request (and so do their callers up the chain)."""
    mesh_metrics.add_mesh("faulty", faults={"c": 0.2})
    with FakeKube() as fake:
        cluster = Cluster(fake, tmp_path, "faulty")
        cluster.apply()
        cluster.pods()
        with shares_seen(cluster) as seen:
            done = run(rollout_argv(cluster, prometheus, tmp_path))
        assert done.returncode == 1, done.stdout + done.stderr
        assert seen == [0, 1, 0]
        assert cluster.share() == 0 and share_in_file(cluster.path) == 0
    assert "rolled back gray to 0%" in done.stderr
    rate = re.search(r"c@gray error rate ([0-9.]+)%", done.stderr)  # a window holds about, not exactly, 1 in 5
    assert rate is not None and 15 <= float(rate.group(1)) <= 25, done.stderr
    record = json.loads((tmp_path / "rollout.json").read_text())
    assert record["outcome"] == "rolled back" and {p["share"] for p in record["points"]} == {1}


@needs_prometheus
def test_an_interrupted_run_resumes_from_the_share_in_the_cluster(
    mesh_metrics: IstioMetrics, prometheus: str, tmp_path: Path
) -> None:
    mesh_metrics.add_mesh("resumed")
    with FakeKube() as fake:
        cluster = Cluster(fake, tmp_path, "resumed")
        cluster.apply()
        cluster.pods()
        first = subprocess.Popen([*rollout_argv(cluster, prometheus, tmp_path), "--interval", "3s"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            deadline = time.monotonic() + 90
            while cluster.share() != 25:
                assert first.poll() is None, first.communicate()
                assert time.monotonic() < deadline, "the first run never reached 25 %"
                time.sleep(0.1)
            first.send_signal(signal.SIGINT)
            out, err = first.communicate(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(10)
        assert first.returncode == 130, out + err
        assert "stopped at 25%" in out and "Traceback" not in err
        assert cluster.share() == 25 and share_in_file(cluster.path) == 25
        write_share(cluster.path, "gray", None, 50)  # as a crash between writing the file and applying leaves it
        with shares_seen(cluster) as seen:
            done = run(rollout_argv(cluster, prometheus, tmp_path))
        assert done.returncode == 0, done.stdout + done.stderr
        assert seen == [25, 50, 100]  # from the cluster's 25, not the file's 50, and never straight to 100
        assert share_in_file(cluster.path) == 100
    assert ("25% in force in the cluster (EnvoyFilter istio-system/lane-gateway-lane-coloring): continuing from there"
            in done.stdout)
    record = json.loads((tmp_path / "rollout.json").read_text())
    resumed = next(e["t"] for e in record["events"] if e["event"] == "resume")
    after = [p["share"] for p in record["points"] if p["t"] >= resumed and p["verdict"] == "pass"]
    assert after == [25, 50, 100]  # 25 judged again first


# -- bad input: one line, exit 2, nothing changed -----------------------------------------------------------


def _one_line_refusal(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr


@pytest.mark.parametrize(("case", "expected"), [
    ("no-prometheus", "--mesh needs --prometheus URL"),
    ("admin", "--admin and --demo are for lane's own gateways"),
    ("unknown-lane", "--lane blue: not a lane"),
    ("entry-without-lane", "entry service a, which has no gray instances"),
    ("not-applied", "EnvoyFilter istio-system/lane-gateway-lane-coloring is not in the cluster: apply the config"),
    ("other-config", "in the cluster is not"),
    ("revision", "is revision '3.1' in Istio's metrics"),
])
def test_bad_input_is_one_line_and_exit_2_with_nothing_changed(tmp_path: Path, case: str, expected: str) -> None:
    text = EXAMPLE
    if case == "entry-without-lane":
        text = EXAMPLE.replace('      gray: ["127.0.0.1:18102"]\n', "", 1)
    with FakeKube() as fake:
        cluster = Cluster(fake, tmp_path, "shop", text)
        if case != "not-applied":
            cluster.apply()
        if case == "other-config":  # the cluster runs a config with another sticky key
            (tmp_path / "other").mkdir()
            Cluster(fake, tmp_path / "other", "shop", EXAMPLE.replace("header: x-user-id", "header: x-uid")).apply()
        cluster.pods({"app.kubernetes.io/version": "3.1"} if case == "revision" else None)
        argv = rollout_argv(cluster, "http://127.0.0.1:9", tmp_path)  # nothing listens: never asked
        if case == "no-prometheus":
            argv = [a for a in argv if a not in ("--prometheus", "http://127.0.0.1:9")]
        elif case == "admin":
            argv += ["--admin", "127.0.0.1:9"]
        elif case == "unknown-lane":
            argv[argv.index("gray")] = "blue"
        stored = cluster.path.read_text()
        writes = fake.count("PATCH", dry_run=False)
        done = run(argv)
        assert fake.count("PATCH", dry_run=False) == writes and fake.count("DELETE") == 0
    _one_line_refusal(done, expected)
    assert cluster.path.read_text() == stored


def test_an_api_server_that_does_not_answer_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "lane.yaml"
    path.write_text(config_text("shop"), encoding="utf-8")
    done = run([sys.executable, "-m", "lane", "rollout", "--mesh", "--config", str(path), "--lane", "gray",
                "--server", f"http://127.0.0.1:{free_port()}", "--prometheus", "http://127.0.0.1:9"])
    _one_line_refusal(done, "cannot reach the API server")
    assert path.read_text() == config_text("shop")


def test_cluster_options_without_mesh_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "lane.yaml"
    path.write_text(EXAMPLE, encoding="utf-8")
    done = run([sys.executable, "-m", "lane", "rollout", "--config", str(path), "--lane", "gray",
                "--admin", "127.0.0.1:9", "--namespace", "shop", "--server", "http://127.0.0.1:9"])
    _one_line_refusal(done, "--namespace, --server: only with --mesh")
