"""Lanes from the cluster: which lanes each service has ready pods for, and routes that lead nowhere.

The cluster reads go through the real `kubernetes` client to `fake_kube.FakeKube`, an in-process
fake of the pod list endpoint (no API server can run on the machines these tests run on).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lane.core.config import LaneConfig
from lane.core.config_load import load_config
from mesh_config.cluster import (
    check_endpoints,
    endpoint_problems,
    lanes_from_cluster,
    lanes_from_pods,
    unchecked_services,
)
from mesh_config.kube import Kube, connect
from mesh_config.render import render_objects
from tests.support.fake_kube import FakeKube

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "docker" / "k8s" / "base" / "lane.yaml"
NS = "lane-demo"
JSON = dict[str, Any]


def pod(name: str, app: str, lane: str | None, *, ready: bool = True, deleting: bool = False) -> JSON:
    labels = {"app": app, **({"version": lane} if lane else {})}
    meta: JSON = {"name": name, "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


@pytest.fixture
def config() -> LaneConfig:
    return load_config(CONFIG)


def test_a_lane_exists_while_a_ready_pod_carries_it(config: LaneConfig) -> None:
    lanes = lanes_from_pods(config, [
        pod("a1", "a", "base"), pod("a2", "a", "gray"),
        pod("c1", "c", "base"), pod("c2", "c", "gray", ready=False), pod("c3", "c", "gray", deleting=True),
    ])
    assert lanes == {"a": {"base", "gray"}, "b": {"base"}, "c": {"base"}, "d": {"base"}}


def test_the_default_lane_is_always_routable(config: LaneConfig) -> None:
    assert lanes_from_pods(config, [pod("c2", "c", "gray")])["c"] == {"base", "gray"}


def test_unknown_lane_labels_and_unlabelled_pods_are_ignored(config: LaneConfig) -> None:
    lanes = lanes_from_pods(config, [pod("c1", "c", "canary"), pod("c2", "c", None), pod("x", "billing", "gray")])
    assert lanes["c"] == {"base"}


def test_services_without_a_selector_keep_their_configured_lanes(config: LaneConfig) -> None:
    text = CONFIG.read_text().replace("    selector: {app: c}\n", "")
    from lane.core.config_load import parse_config

    static = parse_config(text)
    assert lanes_from_pods(static, [])["c"] == {"base", "gray"}


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as kube:
        yield kube


def test_lanes_from_cluster_reads_the_namespace_pods(fake: FakeKube, config: LaneConfig) -> None:
    fake.put_pod("a-gray", {"app": "a", "version": "gray"}, namespace=NS)
    fake.put_pod("c-gray", {"app": "c", "version": "gray"}, namespace=NS)
    fake.put_pod("c-gray-elsewhere", {"app": "c", "version": "gray"}, namespace="other")
    fake.put_pod("c-gray-starting", {"app": "c", "version": "gray"}, ready=False, namespace="other")
    kube = Kube(connect(server=fake.url))
    assert lanes_from_cluster(config, NS, kube=kube) == {"a": {"base", "gray"}, "b": {"base"},
                                                          "c": {"base", "gray"}, "d": {"base"}}
    assert lanes_from_cluster(config, "other", kube=kube)["a"] == {"base"}
    (listed,) = [r for r in fake.requests if r.path.endswith("/pods")][:1]
    assert listed.query["labelSelector"] == config.label_key


def test_routes_to_subsets_without_ready_pods_are_problems(config: LaneConfig) -> None:
    objects = render_objects(config, namespace=NS)  # the static config: c has a gray subset
    pods = [pod(f"{app}-{lane}", app, lane) for app, lane in
            (("a", "base"), ("a", "gray"), ("b", "base"), ("c", "base"), ("d", "base"))]
    problems = endpoint_problems(objects, config, pods)
    assert problems and all("subset 'gray' of c has no ready pod (app=c,version=gray)" in p for p in problems)
    assert any(p.startswith("VirtualService/c ") for p in problems)
    assert endpoint_problems(objects, config, [*pods, pod("c-gray", "c", "gray")]) == []


def test_a_route_to_an_undefined_subset_is_a_problem(config: LaneConfig) -> None:
    objects = [o for o in render_objects(config, namespace=NS) if not (o["kind"] == "DestinationRule"
                                                                         and o["metadata"]["name"] == "c")]
    problems = endpoint_problems(objects, config, [])
    assert any("subset 'base' of c is defined by no DestinationRule" in p for p in problems)


def test_check_endpoints_reads_the_cluster(fake: FakeKube, config: LaneConfig) -> None:
    fake.put_pod("c-base", {"app": "c", "version": "base"}, namespace=NS)
    objects = render_objects(config, lanes=lanes_from_cluster(config, NS, kube=Kube(connect(server=fake.url))),
                             namespace=NS)
    problems = check_endpoints(objects, config, NS, kube=Kube(connect(server=fake.url)))
    assert problems and {p.split(":")[0].split(" ")[0] for p in problems} >= {"VirtualService/a", "VirtualService/b"}
    assert not any("of c " in p for p in problems)  # c's routes follow its ready pods


def test_render_from_cluster_with_the_default_kubeconfig(fake: FakeKube, tmp_path: Path) -> None:
    """`lane mesh render --from-cluster / --check-endpoints` call these functions with $KUBECONFIG."""
    for name, (app, lane) in {"a1": ("a", "base"), "b1": ("b", "base"), "c1": ("c", "base"),
                              "d1": ("d", "base")}.items():
        fake.put_pod(name, {"app": app, "version": lane}, namespace=NS)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(fake.kubeconfig(NS))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    result = subprocess.run([sys.executable, "-m", "lane", "mesh", "render", "--config", str(CONFIG), "--from-cluster"],
                            capture_output=True, text=True, timeout=120, env=env, check=False)
    assert result.returncode == 0, result.stderr
    rules = [o for o in yaml.safe_load_all(result.stdout) if o and o["kind"] == "DestinationRule"]
    assert {s["name"] for r in rules for s in r["spec"]["subsets"]} == {"base"}  # no gray pods anywhere
    result = subprocess.run([sys.executable, "-m", "lane", "mesh", "render", "--config", str(CONFIG),
                             "--check-endpoints"], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert result.returncode == 1
    assert "subset 'gray' of c has no ready pod" in result.stdout + result.stderr


def test_services_without_a_selector_are_a_warning_not_a_failed_check(fake: FakeKube, tmp_path: Path) -> None:
    """A config without selectors (like the demo) is routable; --check-endpoints cannot judge it and says so."""
    from lane.core.config_load import parse_config

    text = CONFIG.read_text()
    for app in "abcd":
        assert f"    selector: {{app: {app}}}\n" in text
    text = text.replace("    selector: {app: c}\n", "")
    static = parse_config(text)
    objects = render_objects(static, namespace=NS)
    ready = [pod(f"{app}-{lane}", app, lane) for app, lane in (("a", "base"), ("a", "gray"), ("b", "base"),
                                                                ("d", "base"))]
    assert endpoint_problems(objects, static, ready) == []
    assert unchecked_services(objects, static) == ["service c: no selector in the config, its endpoints cannot be checked"]
    no_selectors = tmp_path / "lane.yaml"
    no_selectors.write_text(text.replace("    selector: {app: a}\n", "").replace("    selector: {app: b}\n", "")
                            .replace("    selector: {app: d}\n", ""))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(fake.kubeconfig(NS))
    result = subprocess.run([sys.executable, "-m", "lane", "mesh", "render", "--config", str(no_selectors),
                             "--check-endpoints"], capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    assert result.returncode == 0, result.stderr
    assert "endpoint check: warning: service c: no selector" in result.stderr
    assert result.stderr.count("endpoint check: warning:") == 4


@pytest.mark.parametrize("how", ["server", "kubeconfig-context"])
def test_render_takes_the_same_connection_options_as_apply(fake: FakeKube, tmp_path: Path, how: str) -> None:
    """No $KUBECONFIG, no ~/.kube/config: --server, or --kubeconfig with --context, must be what connects."""
    for name, (app, lane) in {"a1": ("a", "base"), "a2": ("a", "gray"), "b1": ("b", "base"), "c1": ("c", "base"),
                              "d1": ("d", "base")}.items():
        fake.put_pod(name, {"app": app, "version": lane}, namespace=NS)
    home = tmp_path / "home"
    home.mkdir()
    if how == "server":
        options = ["--server", fake.url, "--request-timeout", "5"]
    else:
        doc = yaml.safe_load(fake.kubeconfig(NS))
        doc["contexts"].append({"name": "elsewhere", "context": {"cluster": "nowhere", "user": "fake"}})
        doc["clusters"].append({"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}})
        doc["current-context"] = "elsewhere"  # only --context fake reaches the fake
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(doc))
        options = ["--kubeconfig", str(kubeconfig), "--context", "fake"]
    env = {**os.environ, "HOME": str(home), "KUBECONFIG": str(tmp_path / "missing"), "KUBERNETES_SERVICE_HOST": ""}
    before = len(fake.requests)
    result = subprocess.run([sys.executable, "-m", "lane", "mesh", "render", "--config", str(CONFIG), "--from-cluster",
                             "--check-endpoints", *options], capture_output=True, text=True, timeout=120, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    rules = {o["metadata"]["name"]: o for o in yaml.safe_load_all(result.stdout) if o and o["kind"] == "DestinationRule"}
    assert {s["name"] for s in rules["a"]["spec"]["subsets"]} == {"base", "gray"}
    assert {s["name"] for s in rules["c"]["spec"]["subsets"]} == {"base"}  # no ready gray c
    assert len([r for r in fake.requests[before:] if r.path.endswith("/pods")]) == 2  # lanes, then the check


def test_from_cluster_lists_every_namespace_its_services_live_in() -> None:
    """`render --from-cluster` / `check_endpoints` over services in three namespaces: a pod counts
    only for the service of its own namespace, whatever its labels."""
    from lane.core.config_load import parse_config

    config = parse_config("""
lanes: {gray: {}}
entry: web
mesh: {namespace: shop}
services:
  web: {host: web.front.svc.cluster.local, selector: {app: web}}
  cart: {selector: {app: cart}}
  pay: {host: pay.billing.svc.cluster.local, selector: {app: pay}}
""", "multi.yaml")
    with FakeKube() as fake:
        for name, app, lane, ns in [("web-gray", "web", "gray", "front"), ("cart-gray", "cart", "gray", "shop"),
                                    ("pay-gray", "pay", "gray", "shop")]:  # pay lives in billing, not shop
            fake.put_pod(name, {"app": app, "version": lane}, namespace=ns)
        kube = Kube(connect(server=fake.url), timeout=5)
        lanes = lanes_from_cluster(config, "shop", kube=kube)
        assert dict(lanes) == {"web": {"base", "gray"}, "cart": {"base", "gray"}, "pay": {"base"}}
        listed = {r.path.split("/")[4] for r in fake.requests if r.path.endswith("/pods")}
        assert listed == {"billing", "front", "shop"}
        everywhere = dict.fromkeys(config.services, frozenset({"base", "gray"}))
        problems = check_endpoints(render_objects(config, lanes=everywhere), config, "shop", kube=kube)
        gray = [p for p in problems if "subset 'gray'" in p]
        assert gray and all("subset 'gray' of pay has no ready pod" in p for p in gray), problems
