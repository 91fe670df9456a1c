"""`lane mesh sync --watch`: routes follow the pods that are ready, through watch trouble.

No Kubernetes API server can run on the machines these tests run on, so the real `kubernetes`
client (list, `kubernetes.watch.Watch`, server-side apply) talks to `fake_kube.FakeKube`, an
in-process fake that streams watch events with resourceVersions and BOOKMARKs, answers a compacted
resourceVersion with a 410 ERROR event, drops streams on demand and injects 5xx answers. Pods are
changed the way the kubelet would change them; the fake counts the PATCHes that really happened.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lane.cli.main import build_parser
from lane.core.config import LaneConfig
from lane.core.config_load import load_config
from mesh_config.kube import Kube, connect
from mesh_config.sync import Backoff, LaneSync
from tests.support.fake_kube import FakeKube
from tests.support.k8s_rbac import assert_sync_may

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "docker" / "k8s" / "base" / "lane.yaml"
NS = "lane-demo"
ISTIO = "networking.istio.io"
JSON = dict[str, Any]
PODS = {"a-base-1": ("a", "base"), "a-gray-1": ("a", "gray"), "b-base-1": ("b", "base"),
        "c-base-1": ("c", "base"), "c-gray-1": ("c", "gray"), "d-base-1": ("d", "base")}


def put_demo_pods(fake: FakeKube) -> None:
    for name, (app, lane) in PODS.items():
        fake.put_pod(name, {"app": app, "version": lane}, namespace=NS)


def gray_subset(fake: FakeKube, service: str = "c") -> str | None:
    """Where c's VirtualService sends a request tagged gray: the first route it matches."""
    vs = fake.object(ISTIO, "virtualservices", service, NS)
    if vs is None:
        return None
    for http in vs["spec"]["http"]:
        matches = http.get("match") or [{}]
        if any(m.get("headers", {}).get("x-mse-tag", {}).get("exact") in ("gray", None) for m in matches):
            subset: str = http["route"][0]["destination"]["subset"]
            return subset
    return None


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    assert check(), "condition not reached in time"


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube(bookmark_interval=0.2) as kube:
        put_demo_pods(kube)
        yield kube
        assert_sync_may(kube)  # the in-cluster sync's Roles allow every request sync made


@pytest.fixture
def config() -> LaneConfig:
    return load_config(CONFIG)


@pytest.fixture
def running(fake: FakeKube, config: LaneConfig) -> Iterator[LaneSync]:
    sync = LaneSync(config, Kube(connect(server=fake.url), timeout=5), NS, watch_timeout=30,
                    backoff=Backoff(0.1, 0.3), out=io.StringIO())
    thread = threading.Thread(target=sync.run, name="lane-sync", daemon=True)
    thread.start()
    try:
        # the first sync is complete and the watch is open (drop_watches() only reaches open ones)
        wait_for(lambda: sync.applies == 1 and gray_subset(fake) == "gray" and fake.watching() > 0)
        yield sync
    finally:
        sync.stop()
        thread.join(10)
        assert not thread.is_alive(), "sync did not stop"


def test_last_gray_pod_gone_sends_gray_to_stable_and_back(fake: FakeKube, running: LaneSync) -> None:
    assert gray_subset(fake, "a") == "gray"
    fake.delete_pod("c-gray-1", namespace=NS)
    wait_for(lambda: gray_subset(fake) == "base")
    assert gray_subset(fake, "a") == "gray"  # only c lost its gray lane
    fake.put_pod("c-gray-2", {"app": "c", "version": "gray"}, ready=False, namespace=NS)
    time.sleep(0.5)
    assert gray_subset(fake) == "base"  # a pod that is not ready serves nothing
    fake.set_ready("c-gray-2", True, namespace=NS)
    wait_for(lambda: gray_subset(fake) == "gray")


def test_a_gray_pod_turning_unready_counts_as_gone(fake: FakeKube, running: LaneSync) -> None:
    fake.set_ready("c-gray-1", False, namespace=NS)
    wait_for(lambda: gray_subset(fake) == "base")


def test_applies_only_when_the_rendered_result_changes(fake: FakeKube, running: LaneSync) -> None:
    writes, applies, seen = fake.count("PATCH", dry_run=False), running.applies, len(fake.requests)
    fake.put_pod("c-gray-2", {"app": "c", "version": "gray"}, namespace=NS)  # gray already present
    fake.put_pod("c-base-2", {"app": "c", "version": "base"}, namespace=NS)
    fake.put_pod("other-1", {"app": "billing", "version": "gray"}, namespace=NS)  # not a lane service
    fake.put_pod("c-canary-1", {"app": "c", "version": "canary"}, namespace=NS)  # not a lane of the config
    time.sleep(1.0)  # several events and BOOKMARKs
    assert (fake.count("PATCH", dry_run=False), running.applies) == (writes, applies)
    fake.delete_pod("c-gray-1", namespace=NS)
    time.sleep(0.5)
    assert gray_subset(fake) == "gray" and fake.count("PATCH", dry_run=False) == writes  # c-gray-2 still serves
    fake.delete_pod("c-gray-2", namespace=NS)
    wait_for(lambda: gray_subset(fake) == "base" and running.applies == applies + 1)
    patched = {tuple(r.path.rsplit("/", 2)[1:]) for r in fake.requests[seen:] if r.method == "PATCH" and "dryRun" not in r.query}
    # only c's objects changed, and the sidecars' instant-fallback filter lost c's gray aggregate cluster
    assert patched == {("virtualservices", "c"), ("destinationrules", "c"), ("envoyfilters", "lane-fallback")}


def test_dropped_watch_resumes_from_its_resource_version(fake: FakeKube, running: LaneSync) -> None:
    lists = fake.count("GET", "/pods")
    watches = fake.watch_count()
    last = running.resource_version
    fake.drop_watches()
    wait_for(lambda: fake.watch_count() > watches)
    resumed = [r for r in fake.requests if r.query.get("watch") == "true"][-1]
    assert last is not None and int(resumed.query["resourceVersion"]) >= int(last)
    assert fake.count("GET", "/pods") == lists  # no relist needed
    fake.delete_pod("c-gray-1", namespace=NS)
    wait_for(lambda: gray_subset(fake) == "base")


def test_410_gone_relists_and_converges(fake: FakeKube, running: LaneSync) -> None:
    lists = fake.count("GET", "/pods")
    fake.fail_next(503)  # the first reconnect fails, so the change below happens while nobody watches
    fake.drop_watches()
    fake.delete_pod("c-gray-1", namespace=NS)
    fake.compact()  # ...and the history that held it is gone: resuming answers 410
    wait_for(lambda: gray_subset(fake) == "base")
    assert fake.count("GET", "/pods") > lists


def test_410_error_event_in_an_open_stream_relists(fake: FakeKube, running: LaneSync) -> None:
    lists = fake.count("GET", "/pods")
    fake.drop_watches(gone=True)
    wait_for(lambda: fake.count("GET", "/pods") > lists)
    fake.delete_pod("c-gray-1", namespace=NS)
    wait_for(lambda: gray_subset(fake) == "base")


def test_api_errors_back_off_and_recover(fake: FakeKube, running: LaneSync) -> None:
    fake.fail_next(500, 503, 429, 500)
    fake.drop_watches()
    fake.delete_pod("c-gray-1", namespace=NS)
    wait_for(lambda: gray_subset(fake) == "base", timeout=20)
    assert sum(1 for r in fake.requests if "/pods" in r.path) >= 5


def test_a_failed_apply_is_retried(fake: FakeKube, running: LaneSync) -> None:
    writes = fake.count("PATCH", dry_run=False)
    fake.set_ready("c-gray-1", False, namespace=NS)  # the watch event arrives first...
    fake.fail_next(500)  # ...then the apply's first request fails
    wait_for(lambda: gray_subset(fake) == "base", timeout=20)
    assert fake.count("PATCH", dry_run=False) > writes


def real_writes(fake: FakeKube, since: int) -> list[tuple[str, ...]]:
    """(plural, name) of every PATCH that really wrote (no dry run) after request number *since*."""
    return [tuple(r.path.rsplit("/", 2)[1:]) for r in fake.requests[since:]
            if r.method == "PATCH" and "dryRun" not in r.query]


def test_a_rollout_burst_gives_one_render_and_one_apply(fake: FakeKube, running: LaneSync) -> None:
    renders, applies, seen = running.renders, running.applies, len(fake.requests)
    # a rollout replacing ten pods at once (new ones start unready, then turn ready), and c's gray pod going away
    fake.delete_pod("c-gray-1", namespace=NS)
    for i in range(10):
        fake.put_pod(f"c-base-new-{i}", {"app": "c", "version": "base"}, ready=False, namespace=NS)
    for i in range(10):
        fake.set_ready(f"c-base-new-{i}", True, namespace=NS)
    wait_for(lambda: gray_subset(fake) == "base")
    time.sleep(1.0)  # more than the quiet window: anything still pending would have been applied by now
    assert running.renders == renders + 1 and running.applies == applies + 1
    assert sorted(real_writes(fake, seen)) == [("destinationrules", "c"), ("envoyfilters", "lane-fallback"),
                                               ("virtualservices", "c")]


def test_a_single_change_is_applied_once_the_quiet_window_has_passed(fake: FakeKube, running: LaneSync) -> None:
    assert running.debounce == 0.5
    start = time.monotonic()
    fake.delete_pod("c-gray-1", namespace=NS)
    wait_for(lambda: gray_subset(fake) == "base", timeout=10)
    assert 0.5 <= time.monotonic() - start < 5.0


def test_a_namespace_that_never_goes_quiet_still_converges(fake: FakeKube, config: LaneConfig) -> None:
    sync = LaneSync(config, Kube(connect(server=fake.url), timeout=5), NS, watch_timeout=30, debounce=0.5,
                    max_delay=1.5, backoff=Backoff(0.1, 0.3), out=io.StringIO())
    thread = threading.Thread(target=sync.run, name="lane-sync", daemon=True)
    thread.start()
    try:
        wait_for(lambda: sync.applies == 1 and fake.watching() > 0)
        start = time.monotonic()
        fake.delete_pod("c-gray-1", namespace=NS)
        converged = None
        for i in range(40):  # an event every 0.1 s for 4 s: never 0.5 s of quiet
            fake.set_ready("b-base-1", i % 2 == 1, namespace=NS)
            if converged is None and gray_subset(fake) == "base":
                converged = time.monotonic() - start
            time.sleep(0.1)
        assert converged is not None and 1.5 <= converged < 3.5
    finally:
        sync.stop()
        thread.join(10)
        assert not thread.is_alive(), "sync did not stop"


@pytest.mark.parametrize("value", ["-1", "61", "soon"])
def test_a_bad_debounce_is_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["mesh", "sync", "--debounce", value]
    with pytest.raises(SystemExit) as exc:
        build_parser(argv).parse_args(argv)
    assert exc.value.code == 2 and "--debounce: expected seconds" in capsys.readouterr().err


def lane_process(fake: FakeKube, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(fake.kubeconfig(NS))
    return subprocess.Popen([sys.executable, "-m", "lane", "mesh", "sync", "--config", str(CONFIG), *args],
                            env={**os.environ, "KUBECONFIG": str(kubeconfig)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_cli_sync_once_applies_and_exits(fake: FakeKube, tmp_path: Path) -> None:
    fake.delete_pod("c-gray-1", namespace=NS)
    proc = lane_process(fake, tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "c=base " in out and "a=base,gray" in out
    assert gray_subset(fake) == "base" and gray_subset(fake, "a") == "gray"


def test_cli_sync_watch_follows_pods_and_stops_on_sigterm(fake: FakeKube, tmp_path: Path) -> None:
    proc = lane_process(fake, tmp_path, "--watch")
    try:
        wait_for(lambda: gray_subset(fake) == "gray", timeout=60)
        fake.delete_pod("c-gray-1", namespace=NS)
        wait_for(lambda: gray_subset(fake) == "base")
        fake.put_pod("c-gray-1", {"app": "c", "version": "gray"}, namespace=NS)
        wait_for(lambda: gray_subset(fake) == "gray")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "watching pods labelled version in lane-demo" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=20)


def test_a_config_the_renderer_refuses_ends_the_loop_instead_of_retrying(fake: FakeKube, config: LaneConfig) -> None:
    from lane.core.errors import ConfigError

    renders = []

    def refuse(cfg: LaneConfig, lanes: Any, namespace: str) -> list[JSON]:
        renders.append(lanes)
        raise ConfigError("lane.yaml", "coloring[0].match.headers[0].regex", "too big for the gateway Lua")

    sync = LaneSync(config, Kube(connect(server=fake.url), timeout=5), NS, render=refuse,
                    backoff=Backoff(0.01, 0.02), out=io.StringIO())
    raised: list[BaseException] = []

    def target() -> None:
        try:
            sync.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            raised.append(exc)

    thread = threading.Thread(target=target, name="lane-sync", daemon=True)
    thread.start()
    try:
        thread.join(10)
        assert not thread.is_alive(), "sync kept retrying a config no retry can fix"
    finally:
        sync.stop()
        thread.join(10)
    assert len(renders) == 1 and isinstance(raised[0], ConfigError)
    assert not fake.objects(ISTIO, "virtualservices", NS)


MULTI_NS_CONFIG = """
lanes: {gray: {}}
entry: web
mesh: {namespace: shop}
services:
  web: {host: web.front.svc.cluster.local, selector: {app: web}}
  cart: {selector: {app: cart}}
  pay: {host: pay.billing.svc.cluster.local, selector: {app: pay}}
"""


def test_sync_watches_every_namespace_its_services_live_in() -> None:
    """Services in `front`, `shop` and `billing`: each namespace is listed and watched, a pod counts
    only in its own service's namespace, and each VirtualService is applied into its service's
    namespace. (The shipped RBAC is for the shipped single-namespace config, so it is not
    checked here: a config spanning namespaces needs the same Role in each of them.)"""
    from lane.core.config_load import parse_config

    config = parse_config(MULTI_NS_CONFIG, "multi.yaml")
    with FakeKube(bookmark_interval=0.2) as fake:
        for name, app, lane, ns in [("web-base", "web", "base", "front"), ("web-gray", "web", "gray", "front"),
                                    ("cart-base", "cart", "base", "shop"), ("pay-base", "pay", "base", "billing"),
                                    ("stray-pay-gray", "pay", "gray", "shop")]:  # pay's label, wrong namespace
            fake.put_pod(name, {"app": app, "version": lane}, namespace=ns)
        sync = LaneSync(config, Kube(connect(server=fake.url), timeout=5), "shop", watch_timeout=30,
                        backoff=Backoff(0.1, 0.3), out=io.StringIO())
        assert sync.watched == ("billing", "front", "shop")
        thread = threading.Thread(target=sync.run, name="lane-sync", daemon=True)
        thread.start()

        def gray_of(service: str, ns: str) -> str | None:
            vs = fake.object(ISTIO, "virtualservices", service, ns)
            return None if vs is None else str(vs["spec"]["http"][0]["route"][0]["destination"]["subset"])

        try:
            wait_for(lambda: sync.applies == 1 and fake.watching() >= 3)
            assert (gray_of("web", "front"), gray_of("pay", "billing")) == ("gray", "base")
            assert fake.object(ISTIO, "destinationrules", "web", "front") is not None
            watched = {r.path.split("/")[4] for r in fake.requests if r.query.get("watch") == "true"}
            assert watched == {"billing", "front", "shop"}
            fake.delete_pod("web-gray", namespace="front")
            wait_for(lambda: gray_of("web", "front") == "base")
            fake.put_pod("pay-gray", {"app": "pay", "version": "gray"}, namespace="billing")
            wait_for(lambda: gray_of("pay", "billing") == "gray")
        finally:
            sync.stop()
            thread.join(10)
        assert not thread.is_alive(), "sync did not stop"
