"""`lane mesh apply`: server-side apply of the rendered Istio objects, prune, dry run.

No Kubernetes API server can run on the machines these tests run on, so they talk to
`fake_kube.FakeKube`, an in-process fake of exactly the endpoints used (see its docstring for what
it implements faithfully: server-side apply with field ownership, dryRun=All, DELETE, label
selectors). The code under test is the real `kubernetes` client end to end; the fake records every
request so the tests can count the writes that really happened.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lane.core.config import LaneConfig
from lane.core.config_load import load_config, parse_config
from mesh_config.apply import Action, apply_objects, comparable
from mesh_config.kube import Kube, KubeError, connect
from mesh_config.render import render_objects
from tests.support.fake_kube import FakeKube
from tests.support.k8s_rbac import assert_sync_may

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "docker" / "k8s" / "base" / "lane.yaml"
NS = "lane-demo"
ISTIO = "networking.istio.io"
JSON = dict[str, Any]


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as kube:
        yield kube
        assert_sync_may(kube)  # the in-cluster sync's Roles allow every request apply made


@pytest.fixture
def kube(fake: FakeKube) -> Kube:
    return Kube(connect(server=fake.url), timeout=10)


def config(text_change: tuple[str, str] | None = None) -> LaneConfig:
    text = CONFIG.read_text()
    if text_change:
        assert text_change[0] in text
        text = text.replace(*text_change)
    return parse_config(text, str(CONFIG))


def stored(fake: FakeKube) -> dict[tuple[str, str, str], JSON]:
    out = {}
    for plural in ("virtualservices", "destinationrules", "gateways", "envoyfilters"):
        for ns in (NS, "istio-system"):
            for name, obj in fake.objects(ISTIO, plural, ns).items():
                out[(plural, ns, name)] = obj
    return out


def test_apply_creates_every_rendered_object_as_field_manager_lane(fake: FakeKube, kube: Kube) -> None:
    objects = render_objects(config(), namespace=NS)
    result = apply_objects(kube, objects, NS)
    assert [c.action for c in result.changes] == [Action.CREATE] * len(objects)
    assert fake.count("PATCH", dry_run=False) == len(objects)
    live = stored(fake)
    assert len(live) == len(objects)
    for obj in objects:
        (match,) = [o for o in live.values() if o["kind"] == obj["kind"] and o["metadata"]["name"] == obj["metadata"]["name"]
                    and o["metadata"]["namespace"] == obj["metadata"]["namespace"]]
        assert match["spec"] == obj["spec"]
        assert [m["manager"] for m in match["metadata"]["managedFields"]] == ["lane"]
    assert all(r.query.get("fieldManager") == "lane" and r.query.get("force") == "true"
               for r in fake.requests if r.method == "PATCH")
    assert all(r.content_type == "application/apply-patch+yaml" for r in fake.requests if r.method == "PATCH")


def test_applying_the_same_objects_again_writes_nothing(fake: FakeKube, kube: Kube) -> None:
    objects = render_objects(config(), namespace=NS)
    apply_objects(kube, objects, NS)
    before = {k: v["metadata"]["resourceVersion"] for k, v in stored(fake).items()}
    writes = fake.count("PATCH", dry_run=False)
    result = apply_objects(kube, objects, NS)
    assert {c.action for c in result.changes} == {Action.UNCHANGED} and not result.changed
    assert fake.count("PATCH", dry_run=False) == writes
    assert {k: v["metadata"]["resourceVersion"] for k, v in stored(fake).items()} == before


def test_apply_updates_only_what_changed_and_shows_the_diff(fake: FakeKube, kube: Kube) -> None:
    apply_objects(kube, render_objects(config(), namespace=NS), NS)
    writes = fake.count("PATCH", dry_run=False)
    changed = render_objects(config(("exact: xiaoming", "exact: xiaohong")), namespace=NS)
    result = apply_objects(kube, changed, NS)
    updated = [c for c in result.changes if c.action is Action.UPDATE]
    assert updated, result.summary()
    assert fake.count("PATCH", dry_run=False) - writes == len(updated) < len(changed)
    diff = "\n".join(line for c in updated for line in c.diff)
    assert "xiaoming" in diff and "xiaohong" in diff
    for change in updated:
        assert f"~ {change.ref} configured" in result.summary()
    vs = fake.object(ISTIO, "virtualservices", "c", NS)
    assert vs is not None and vs["metadata"]["generation"] == 1  # the sidecar routes match on the tag only


def test_stale_lane_objects_are_pruned_and_nothing_else(fake: FakeKube, kube: Kube) -> None:
    bigger = config(("  d:\n", "  e:\n    selector: {app: e}\n    instances:\n      base: [\"e-base:8080\"]\n  d:\n"))
    apply_objects(kube, render_objects(bigger, namespace=NS), NS)
    assert fake.object(ISTIO, "virtualservices", "e", NS) is not None
    foreign = {"apiVersion": f"{ISTIO}/v1", "kind": "VirtualService",
               "metadata": {"name": "hand-made", "namespace": NS}, "spec": {"hosts": ["x"]}}
    other_config = {"apiVersion": f"{ISTIO}/v1", "kind": "VirtualService",
                    "metadata": {"name": "other-team", "namespace": NS,
                                 "labels": {"app.kubernetes.io/managed-by": "lane", "lane.dev/config": "other"}},
                    "spec": {"hosts": ["y"]}}
    fake.put_object(foreign, manager="kubectl")
    fake.put_object(other_config, manager="lane")
    result = apply_objects(kube, render_objects(config(), namespace=NS), NS)
    pruned = {str(c.ref) for c in result.changes if c.action is Action.PRUNE}
    assert pruned == {"VirtualService/e", "DestinationRule/e"}
    assert fake.object(ISTIO, "virtualservices", "e", NS) is None
    assert fake.object(ISTIO, "destinationrules", "e", NS) is None
    assert fake.object(ISTIO, "virtualservices", "hand-made", NS) is not None
    assert fake.object(ISTIO, "virtualservices", "other-team", NS) is not None
    assert "- VirtualService/e pruned" in result.summary()


def test_dry_run_reports_everything_and_changes_nothing(fake: FakeKube, kube: Kube) -> None:
    stale = {"apiVersion": f"{ISTIO}/v1", "kind": "DestinationRule",
             "metadata": {"name": "old", "namespace": NS,
                          "labels": {"app.kubernetes.io/managed-by": "lane", "lane.dev/config": "lane"}},
             "spec": {"host": "old"}}
    fake.put_object(stale, manager="lane")
    objects = render_objects(config(), namespace=NS)
    result = apply_objects(kube, objects, NS, dry_run=True)
    assert result.count(Action.CREATE) == len(objects) and result.count(Action.PRUNE) == 1
    assert "dry run" in result.summary()
    assert set(stored(fake)) == {("destinationrules", NS, "old")}
    writes = [r for r in fake.requests if r.method in ("PATCH", "DELETE")]
    assert writes and all(r.query.get("dryRun") == "All" for r in writes)


def test_fields_other_managers_own_survive_an_apply(fake: FakeKube, kube: Kube) -> None:
    objects = render_objects(config(), namespace=NS)
    apply_objects(kube, objects, NS)
    vs = fake.object(ISTIO, "virtualservices", "c", NS)
    assert vs is not None
    fake.put_object({"apiVersion": vs["apiVersion"], "kind": "VirtualService",
                     "metadata": {"name": "c", "namespace": NS, "annotations": {"team": "payments"}}},
                    manager="kubectl")
    result = apply_objects(kube, objects, NS)
    assert not result.changed
    after = fake.object(ISTIO, "virtualservices", "c", NS)
    assert after is not None and after["metadata"]["annotations"] == {"team": "payments"}
    assert comparable(after)["spec"] == vs["spec"]


def test_api_failures_raise_a_clear_error(fake: FakeKube, kube: Kube) -> None:
    fake.fail_next(500)
    with pytest.raises(KubeError, match=r"HTTP 500: injected failure"):
        apply_objects(kube, render_objects(config(), namespace=NS), NS)


def lane(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lane", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, check=False)


def test_cli_applies_with_a_kubeconfig_then_reports_unchanged(fake: FakeKube, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(fake.kubeconfig())
    args = ("mesh", "apply", "--config", str(CONFIG), "--kubeconfig", str(kubeconfig))
    first = lane(*args, "--dry-run")
    assert first.returncode == 0, first.stderr
    assert "+ VirtualService/c created" in first.stdout and "dry run" in first.stdout
    assert not stored(fake)
    second = lane(*args)
    assert second.returncode == 0, second.stderr
    assert fake.object(ISTIO, "virtualservices", "c", load_config(CONFIG).mesh.namespace) is not None
    third = lane(*args)
    assert third.returncode == 0 and "= VirtualService/c unchanged" in third.stdout
    assert "0 created, 0 configured" in third.stdout


@pytest.mark.parametrize("command", ["apply", "sync"])
def test_cli_reports_an_unreachable_cluster_and_a_bad_config(command: str, fake: FakeKube, tmp_path: Path) -> None:
    """apply and sync share their start (mesh_config/target.py), so they fail alike."""
    result = lane("mesh", command, "--config", str(CONFIG), "--server", "http://127.0.0.1:9",
                  "--request-timeout", "2")
    assert result.returncode == 1 and "cannot reach the API server" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: ") and "Traceback" not in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("entry: nope\nservices: {a: {selector: {app: a}}}\n")
    result = lane("mesh", command, "--config", str(bad), "--server", fake.url)
    assert result.returncode == 2 and "entry" in result.stderr
    assert not fake.requests  # a bad config never reaches the cluster


def test_cli_namespace_option_overrides_the_config(fake: FakeKube, tmp_path: Path) -> None:
    elsewhere = tmp_path / "lane.yaml"
    elsewhere.write_text(CONFIG.read_text().replace("namespace: lane-demo", "namespace: elsewhere"))
    for command in ("apply", "sync"):
        result = lane("mesh", command, "--config", str(elsewhere), "--server", fake.url, "-n", NS)
        assert result.returncode == 0, result.stderr
    assert fake.object(ISTIO, "virtualservices", "c", NS) is not None
    assert not fake.objects(ISTIO, "virtualservices", "elsewhere")
    assert {r.path.split("/namespaces/")[1].split("/")[0] for r in fake.requests} == {NS, "istio-system"}


@pytest.mark.parametrize("command", ["apply", "sync"])
def test_cli_refuses_a_config_the_renderer_cannot_mirror_before_connecting(command: str, fake: FakeKube,
                                                                          tmp_path: Path) -> None:
    """`lane check` accepts this regex; the gateway Lua cannot hold it: exit 2, no traceback, no request."""
    huge = tmp_path / "huge.yaml"
    text = CONFIG.read_text()
    assert "exact: xiaoming" in text
    huge.write_text(text.replace("exact: xiaoming", f'regex: "{"[a-z]{1000}" * 21}"'))  # 21000 NFA states
    assert lane("check", "--config", str(huge)).returncode == 0
    result = lane("mesh", command, "--config", str(huge), "--server", fake.url)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.splitlines()[-1].startswith("error: ")
    assert "coloring[0].match.headers[0].regex" in result.stderr
    assert not fake.requests


@pytest.mark.parametrize("command", ["apply", "sync"])
def test_cli_refuses_to_run_without_a_config(command: str, fake: FakeKube) -> None:
    """The embedded demo's objects are never applied to a cluster by a forgotten --config."""
    result = lane("mesh", command, "--server", fake.url)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [(f"error: lane mesh {command}: needs --config FILE, the lane config whose "
                                           "objects it applies: it changes a cluster, so the embedded demo config "
                                           "is never its default")]
    assert not fake.requests
