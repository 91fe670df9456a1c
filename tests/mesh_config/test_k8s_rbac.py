"""The in-cluster `lane mesh sync` overlay: its RBAC is exactly what the sync sends, no more, no less.

The overlay is rendered with the real `kubectl kustomize`. No API server can run here, so the
sync Deployment's own command line (the kubelet's ``$(VAR)`` expansion done by hand) runs
against `fake_kube.FakeKube`, which records what RBAC would authorize each request as
(`Access`); the Roles bound to the Deployment's ServiceAccount must grant exactly that set.
(The apply and sync tests also check, at teardown, that every request they made is allowed.)
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from mesh_config.model import CONFIG_LABEL, MANAGED_BY_LABEL
from mesh_config.render import render_objects
from tests.docker.test_k8s_manifests import container, lane_config, of_kind, pod_spec, rendered
from tests.mesh_config.test_k8s_sync import NS, gray_subset, put_demo_pods, wait_for
from tests.support.fake_kube import Access, FakeKube
from tests.support.k8s_rbac import granted, permits

JSON = dict[str, Any]
ISTIO = "networking.istio.io"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None,
                                reason="kubectl not installed (scripts/ensure-test-tools installs it)")


def deployment() -> JSON:
    return of_kind(rendered("mesh-sync"), "Deployment")["lane-mesh-sync"]


def account() -> tuple[str, str]:
    d = deployment()
    return d["metadata"]["namespace"], pod_spec(d)["serviceAccountName"]


def rbac() -> list[JSON]:
    return [o for o in rendered("mesh-sync") if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")]


def expand(args: list[str], env: Mapping[str, str]) -> list[str]:
    """The kubelet's ``$(VAR)`` expansion of container args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), a) for a in args]


def test_the_sync_runs_as_its_own_account_with_a_token() -> None:
    d = deployment()
    ns, name = account()
    assert (ns, name) in {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in rbac()
                          if o["kind"] == "ServiceAccount"}
    assert pod_spec(d)["automountServiceAccountToken"] is True  # the in-cluster client needs it
    assert d["spec"]["replicas"] == 1 and d["spec"]["strategy"]["type"] == "Recreate"
    others = [w for n, w in of_kind(rendered("mesh-sync"), "Deployment").items() if n != "lane-mesh-sync"]
    assert all(pod_spec(w)["automountServiceAccountToken"] is False for w in others)  # nobody else gets a token


def test_roles_live_exactly_in_the_namespaces_the_render_touches() -> None:
    config = lane_config(rendered("mesh-sync"))
    ns, _ = account()
    touched = {o["metadata"]["namespace"] for o in render_objects(config, namespace=ns)}
    assert {o["metadata"]["namespace"] for o in rbac() if o["kind"] == "Role"} == touched
    assert all("*" not in str(rule) for o in rbac() if o["kind"] == "Role" for rule in o["rules"])


def test_the_roles_grant_exactly_what_the_sync_deployment_uses(tmp_path: Path) -> None:
    """Run the Deployment's command line through create, update and prune, then compare."""
    objects = rendered("mesh-sync")
    config_file = tmp_path / "lane.yaml"
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("lane-config")]
    config_file.write_text(cm["data"]["lane.yaml"])
    c = container(deployment(), "sync")
    ns, _ = account()
    env = {e["name"]: ns for e in c["env"] if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"}
    args = expand(list(c["args"]), env)
    args[args.index("--config") + 1] = str(config_file)

    with FakeKube(bookmark_interval=0.2) as fake:
        put_demo_pods(fake)
        labels = {MANAGED_BY_LABEL: "lane", CONFIG_LABEL: "lane"}
        stale = [(ns, kind, plural, version) for kind, plural, version in (
            ("Gateway", "gateways", "v1"), ("VirtualService", "virtualservices", "v1"),
            ("DestinationRule", "destinationrules", "v1"), ("EnvoyFilter", "envoyfilters", "v1alpha3"))]
        stale.append(("istio-system", "EnvoyFilter", "envoyfilters", "v1alpha3"))  # e.g. a renamed gateway's
        for where, kind, _, version in stale:
            fake.put_object({"apiVersion": f"{ISTIO}/{version}", "kind": kind,
                             "metadata": {"name": "old", "namespace": where, "labels": labels}, "spec": {}}, manager="lane")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(fake.kubeconfig(ns))
        proc = subprocess.Popen([sys.executable, "-m", "lane", *args], env={**os.environ, "KUBECONFIG": str(kubeconfig)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: gray_subset(fake) == "gray"
                     and all(fake.object(ISTIO, p, "old", w) is None for w, _, p, _ in stale), timeout=60)
            fake.delete_pod("c-gray-1", namespace=NS)  # an update of existing objects
            wait_for(lambda: gray_subset(fake) == "base")
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=20)
        used = fake.access()

    allowed = granted(objects, account())
    assert used == allowed, f"granted but unused: {sorted(allowed - used)}; used but denied: {sorted(used - allowed)}"
    assert Access(ns, "", "pods", "watch") in used and Access("istio-system", ISTIO, "envoyfilters", "create") in used


def test_permits_follows_bindings_and_namespaces() -> None:
    """The evaluator itself: a Role only counts in its namespace and for the accounts bound to it."""
    objects = rbac()
    ns, name = account()
    assert permits(objects, (ns, name), Access(ns, "", "pods", "watch"))
    assert not permits(objects, (ns, name), Access("istio-system", "", "pods", "watch"))
    assert not permits(objects, (ns, name), Access("istio-system", ISTIO, "virtualservices", "patch"))
    assert not permits(objects, (ns, "default"), Access(ns, "", "pods", "watch"))
    assert not permits(objects, (ns, name), Access(ns, "", "secrets", "get"))
