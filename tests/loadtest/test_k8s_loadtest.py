"""The load-test overlays: the master Job's exit code is the lane verdict, and fallbacks are judged.

Two overlays share components/loadtest (workers, the master Service, admin endpoints):
overlays/loadtest runs the master as a headless, bounded Job; overlays/loadtest-ui keeps the web
UI. Manifests are rendered with the real `kubectl kustomize`. No cluster can run here, so the
command lines are proven on 127.0.0.1 instead: the real `lane loadtest` (master) and `locust`
(workers) run with the manifests' arguments, only the cluster addresses swapped for local ones,
against the load-test fixture data plane (tests/loadtest/test_loadtest_dataplane.py) given the very lane
config of the ConfigMap.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

import pytest

from lane.cli.main import build_parser
from loadtest.cli import spec_from_args
from loadtest.runner import WATCHDOG_SLACK, locust_argv
from mesh_config.inject import SIDECAR_NAME
from tests.docker.test_k8s_manifests import (
    REPO,
    arg,
    container,
    lane_config,
    of_kind,
    pod_spec,
    rendered,
    workloads,
)
from tests.loadtest.test_loadtest_dataplane import fake_data_plane
from tests.support.processes import free_port, started_process

JSON = dict[str, Any]
LOADTEST = ("loadtest", "loadtest-ui")
TIMEOUT = 180

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None,
                                reason="kubectl not installed (scripts/ensure-test-tools installs it)")


def job() -> JSON:
    return of_kind(rendered("loadtest"), "Job")["locust-master"]


def job_args() -> list[str]:
    return list(container(job(), "locust")["args"])


def worker(overlay: str = "loadtest") -> JSON:
    return container(of_kind(rendered(overlay), "Deployment")["locust-worker"], "locust")


def parse_lane(argv: Sequence[str]) -> Any:
    return build_parser(argv).parse_args(list(argv))


def replaced(args: Sequence[str], **values: str) -> list[str]:
    """*args* with the value after each ``--flag`` (given as flag_name=) swapped."""
    out = list(args)
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        out[out.index(flag) + 1] = value
    return out


def local_locustfile(args: list[str]) -> list[str]:
    inside = arg(args, "--locustfile").split("/site-packages/", 1)[1]
    assert (REPO / inside).is_file(), f"{inside} is not in the package, so not in the image"
    return replaced(args, locustfile=str(REPO / inside))


def write_config(tmp: Path, overlay: str = "loadtest") -> Path:
    (cm,) = [o for o in rendered(overlay) if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("lane-config")]
    path = tmp / "lane.yaml"
    path.write_text(cm["data"]["lane.yaml"])
    return path


# -- the Job ------------------------------------------------------------------------------------------
def test_the_master_is_a_job_that_never_retries_a_verdict() -> None:
    spec = job()["spec"]
    assert spec["backoffLimit"] == 0
    assert pod_spec(job())["restartPolicy"] == "Never"
    assert "locust-master" not in of_kind(rendered("loadtest"), "Deployment")


def test_the_job_runs_lane_loadtest_headless_bounded_and_waits_for_every_worker() -> None:
    args = parse_lane(job_args())
    assert args.command == "loadtest" and args.headless and args.master
    assert not container(job(), "locust").get("command"), "the image's entrypoint (lane) runs it"
    assert 0 < args.run_time <= 3600
    workers = of_kind(rendered("loadtest"), "Deployment")["locust-worker"]
    assert args.expect_workers == workers["spec"]["replicas"] >= 2
    # workers may start late (image pulls); the master gives up after a bounded wait, within the
    # watchdog's slack, and Kubernetes' own deadline only backs up the watchdog
    extra = [a for a in args.locust_args if a != "--"]
    max_wait = int(extra[extra.index("--expect-workers-max-wait") + 1])
    assert 0 < max_wait < WATCHDOG_SLACK
    assert job()["spec"]["activeDeadlineSeconds"] > args.run_time + WATCHDOG_SLACK


def test_workers_can_reach_the_job() -> None:
    objects = rendered("loadtest")
    args = parse_lane(job_args())
    service = of_kind(objects, "Service")["locust-master"]
    (port,) = service["spec"]["ports"]
    (master_port,) = [p for p in container(job(), "locust")["ports"] if p["name"] == port["targetPort"]]
    assert args.master_bind_host == "0.0.0.0" and args.master_bind_port == master_port["containerPort"]
    w = worker()
    assert arg(w["args"], "--master-host") == "locust-master"
    assert int(arg(w["args"], "--master-port")) == port["port"]
    assert service["spec"]["selector"].items() <= job()["spec"]["template"]["metadata"]["labels"].items()


def test_the_job_targets_the_gateway_service_with_the_configmap_config() -> None:
    objects = rendered("loadtest")
    args = parse_lane(job_args())
    url = urlsplit(args.host)
    gateway = of_kind(objects, "Service")[url.hostname or ""]
    assert (url.port or 80) in {p["port"] for p in gateway["spec"]["ports"]}
    mount = container(job(), "locust")["volumeMounts"][0]["mountPath"]
    assert args.config == f"{mount}/lane.yaml"


# -- the admin endpoints the workers poll ---------------------------------------------------------------
def _admin_port_of(pod_container: JSON) -> int | None:
    """The port of a lane proxy container's admin listener (``--admin HOST:PORT``), else None."""
    args = pod_container.get("args") or []
    if pod_container.get("command") or "--admin" not in args:
        return None
    return int(arg(args, "--admin").rpartition(":")[2])


def _reached(objects: tuple[JSON, ...], url: str) -> list[tuple[str, JSON]]:
    """(workload, container) pairs whose admin listener *url* reaches through a Service."""
    parts = urlsplit(url)
    service = of_kind(objects, "Service").get(parts.hostname or "")
    assert service is not None, f"{url}: no Service {parts.hostname}"
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == parts.port]
    out = []
    for name, w in workloads(objects).items():
        if not service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items():
            continue
        for c in pod_spec(w)["containers"]:
            named = {p["name"]: p["containerPort"] for p in c.get("ports") or []}
            if port["targetPort"] in named and named[port["targetPort"]] == _admin_port_of(c):
                out.append((name, c))
    return out


@pytest.mark.parametrize("overlay", LOADTEST)
def test_workers_poll_the_gateway_and_every_sidecar_admin(overlay: str) -> None:
    objects = rendered(overlay)
    config = lane_config(objects)
    admins = arg(worker(overlay)["args"], "--lane-admin").split(",")
    reached = {url: _reached(objects, url) for url in admins}
    for url, found in reached.items():
        assert found, f"{url} reaches no lane admin listener"
    gateways = [u for u, found in reached.items() if any(c["name"] == "gateway" for _, c in found)]
    assert gateways, "the gateway decides the entry service's lane: its admin must be polled"
    # every sidecar makes the routing decisions of its app's calls: each lane instance is polled
    polled = {(c_labels["app"], c_labels[config.label_key])
              for found in reached.values() for name, c in found if c["name"] == SIDECAR_NAME
              for c_labels in [workloads(objects)[name]["spec"]["template"]["metadata"]["labels"]]}
    instances = {(svc.name, lane) for svc in config.services.values() for lane in svc.instances}
    assert polled == instances


def test_admin_ports_are_added_only_to_the_per_lane_services() -> None:
    services = of_kind(rendered("loadtest"), "Service")
    with_admin = {name for name, s in services.items() if any(p["name"] == "lane-admin" for p in s["spec"]["ports"])}
    assert with_admin == {name for name, s in services.items() if "version" in s["metadata"]["labels"]}
    assert all(p["name"] != "admin" for p in services["lane-gateway"]["spec"]["ports"])  # the public one stays clean
    demo = of_kind(rendered("demo"), "Service")
    assert all(p["name"] != "lane-admin" for s in demo.values() for p in s["spec"]["ports"])


# -- the QA variant ----------------------------------------------------------------------------------
def test_the_ui_variant_keeps_the_web_ui_with_a_bounded_default_run_time() -> None:
    objects = rendered("loadtest-ui")
    master = container(of_kind(objects, "Deployment")["locust-master"], "locust")
    args = master["args"]
    assert "--master" in args and "--headless" not in args and "--autostart" not in args
    assert arg(args, "--run-time")
    web = of_kind(objects, "Service")["locust-web"]
    assert web["spec"]["ports"][0]["targetPort"] in {p["name"] for p in master["ports"]}
    assert int(arg(args, "--expect-workers")) == of_kind(objects, "Deployment")["locust-worker"]["spec"]["replicas"]
    assert "Job" not in {o["kind"] for o in objects}


# -- the command lines, for real ---------------------------------------------------------------------
def _locust(args: Sequence[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    locust = Path(sys.executable).parent / "locust"
    return subprocess.run([str(locust), *args, "--list"], capture_output=True, text=True, timeout=120, cwd=REPO,
                          check=False)


def test_the_job_command_line_builds_a_locust_command_that_loads(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    spec = spec_from_args(parse_lane(replaced(job_args(), config=str(config))))
    argv = locust_argv(spec)
    assert "--headless" in argv and "--expect-workers-max-wait" in argv
    result = subprocess.run([*argv, "--list"], capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LaneUser" in result.stdout


@pytest.mark.parametrize("overlay", LOADTEST)
def test_locust_accepts_the_worker_and_ui_master_command_lines(overlay: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, overlay)
    candidates = [worker(overlay)]
    if overlay == "loadtest-ui":
        candidates.append(container(of_kind(rendered(overlay), "Deployment")["locust-master"], "locust"))
    for c in candidates:
        assert c["command"] == ["locust"]
        assert arg(c["args"], "--lane-config") == f"{c['volumeMounts'][0]['mountPath']}/lane.yaml"
        result = _locust(replaced(local_locustfile(list(c["args"])), lane_config=str(config)), tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "LaneUser" in result.stdout


def _started(argv: Sequence[str], log: Path) -> AbstractContextManager[subprocess.Popen[bytes]]:
    return started_process(list(argv), log, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _distributed_run(tmp: Path, *, poll_admins: bool) -> tuple[int, str, JSON]:
    """The Job and two workers with the manifests' arguments against a data plane whose c@gray is down.

    Only what names the cluster is swapped: addresses (all 127.0.0.1), the config path, the run
    length and user count (kept short), plus --lane-json to read the verdict's details.
    """
    config = write_config(tmp)
    port = free_port()
    summary = tmp / "summary.json"
    with fake_data_plane(lane_config(rendered("loadtest"))) as plane:
        urlopen(Request(plane.admin_url + "/demo/instances/c/gray/stop", method="POST"), timeout=5).close()
        master = replaced(job_args(), config=str(config), host=plane.url, master_bind_host="127.0.0.1",
                          master_bind_port=str(port), run_time="6s", users="6")
        master = [*master[:master.index("--")], "--lane-json", str(summary), *master[master.index("--"):]]
        w = replaced(local_locustfile(list(worker()["args"])), lane_config=str(config),
                     master_host="127.0.0.1", master_port=str(port), lane_admin=plane.admin_url)
        if not poll_admins:
            at = w.index("--lane-admin")
            del w[at:at + 2]
        locust = str(Path(sys.executable).parent / "locust")
        with ExitStack() as stack:
            job_proc = stack.enter_context(_started([sys.executable, "-m", "lane", *master], tmp / "master.log"))
            for i in (1, 2):
                stack.enter_context(_started([locust, *w], tmp / f"worker{i}.log"))
            code = job_proc.wait(TIMEOUT)
    out = (tmp / "master.log").read_text(errors="replace")
    return code, out, json.loads(summary.read_text()) if summary.exists() else {}


def test_the_job_passes_when_fallbacks_follow_unhealthy_instances(tmp_path: Path) -> None:
    code, out, doc = _distributed_run(tmp_path, poll_admins=True)
    assert code == 0, out[-3000:]
    assert len(doc["workers"]) == 2
    fallback = doc["checks"]["fallback"]
    assert fallback["health_justified"] > 0 and fallback["unjustified"] == 0, fallback


def test_without_the_admin_endpoints_the_same_fallbacks_fail_the_job(tmp_path: Path) -> None:
    """What the overlay did before it passed --lane-admin: correct fallbacks counted as misroutes."""
    code, out, doc = _distributed_run(tmp_path, poll_admins=False)
    assert code != 0, out[-3000:]
    assert doc["checks"]["fallback"]["unjustified"] > 0
    assert "RESULT: FAIL" in out
