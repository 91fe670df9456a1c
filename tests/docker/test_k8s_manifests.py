"""The kustomize overlays in docker/k8s: they render, validate, and mean what the README says.

Rendering uses the real `kubectl kustomize` (Debian's kubernetes-client; `make test` installs it);
validation uses the Kubernetes 1.32 JSON schemas in strict mode (kubernetes-validate). Beyond the
schemas, the checks a cluster would only reveal at run time: references resolve, the lane config
in the ConfigMap reaches the right lane's sidecars, every `lane` command line parses with the real
CLI, and the sidecars are exactly what `lane inject` produces.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from lane.cli.main import build_parser
from lane.core.config import LaneConfig
from lane.core.config_load import parse_config
from mesh_config.inject import (
    CONFIG_VOLUME,
    INJECTED_ANNOTATION,
    SIDECAR_NAME,
    InjectOptions,
    inject_documents,
)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "docker" / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
KUBE_VERSION = "1.32"
JSON = dict[str, Any]

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None,
                                reason="kubectl not installed (scripts/ensure-test-tools installs it)")


@functools.cache
def rendered(overlay: str) -> tuple[JSON, ...]:
    result = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def of_kind(objects: tuple[JSON, ...], kind: str) -> dict[str, JSON]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workloads(objects: tuple[JSON, ...]) -> dict[str, JSON]:
    """Everything with a pod template (Deployments and Jobs), by "Kind/name"."""
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects if o["kind"] in ("Deployment", "Job")}


def pod_spec(workload: JSON) -> JSON:
    spec: JSON = workload["spec"]["template"]["spec"]
    return spec


def container(workload: JSON, name: str) -> JSON:
    return next(c for c in pod_spec(workload)["containers"] if c["name"] == name)


def env_of(c: JSON) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env") or []}


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def lane_config(objects: tuple[JSON, ...]) -> LaneConfig:
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("lane-config")]
    return parse_config(cm["data"]["lane.yaml"], "ConfigMap lane-config")


def test_there_are_overlays() -> None:
    assert {"demo", "loadtest", "loadtest-ui", "gray-off", "mesh-sync"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    objects = rendered(overlay)
    assert objects
    for obj in objects:
        assert not obj["apiVersion"].startswith("networking.istio.io"), "Istio objects come from lane mesh"
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_validation_is_strict_enough_to_fail() -> None:
    deployment = copy.deepcopy(of_kind(rendered("demo"), "Deployment")["c-gray"])
    pod_spec(deployment)["containers"][1]["envFrom"] = "lane"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay: str) -> None:
    objects = rendered(overlay)
    configmaps = of_kind(objects, "ConfigMap")
    pods = workloads(objects)
    # everything in lane-demo but the Roles lane mesh sync needs where the gateway lives
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] not in ("Namespace", "Role", "RoleBinding")}
    assert namespaces == {"lane-demo"} and "lane-demo" in of_kind(objects, "Namespace")
    accounts = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects if o["kind"] == "ServiceAccount"}
    roles = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects if o["kind"] == "Role"}
    for binding in (o for o in objects if o["kind"] == "RoleBinding"):
        assert (binding["metadata"]["namespace"], binding["roleRef"]["name"]) in roles
        assert {(s["namespace"], s["name"]) for s in binding["subjects"]} <= accounts
    for name, workload in pods.items():
        spec = pod_spec(workload)
        if "selector" in workload["spec"]:  # a Job's is generated
            assert workload["spec"]["selector"]["matchLabels"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        for volume in spec.get("volumes") or []:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, f"{name}: {volume}"
        if "serviceAccountName" in spec:
            assert ("lane-demo", spec["serviceAccountName"]) in accounts, name
        ports = {p["name"] for c in spec["containers"] for p in c.get("ports") or []}
        for c in spec["containers"]:
            assert c["image"].startswith("lane:")
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe in c:
                    assert c[probe]["httpGet"]["port"] in ports, f"{name}/{c['name']} {probe}"
    for kind in ("Service", "PodDisruptionBudget"):
        for name, obj in of_kind(objects, kind).items():
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            chosen = [w for w in pods.values()
                      if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
            assert chosen, f"{kind}/{name} selects no pods"
            if kind == "Service":
                for port in obj["spec"]["ports"]:
                    named = {p["name"] for w in chosen for c in pod_spec(w)["containers"] for p in c.get("ports") or []}
                    assert port["targetPort"] in named, f"Service/{name} targets {port['targetPort']}"


def test_demo_topology_has_lanes_by_label_and_b_without_gray() -> None:
    deployments = of_kind(rendered("demo"), "Deployment")
    labels = {(d["spec"]["template"]["metadata"]["labels"].get("app"), d["spec"]["template"]["metadata"]["labels"].get("version"))
              for d in deployments.values() if "version" in d["spec"]["template"]["metadata"]["labels"]}
    assert labels == {("a", "base"), ("a", "gray"), ("b", "base"), ("c", "base"), ("c", "gray"), ("d", "base")}


def test_every_app_pod_has_the_sidecar_with_its_lane_from_the_pod_label() -> None:
    objects = rendered("demo")
    config = lane_config(objects)
    for deployment in of_kind(objects, "Deployment").values():
        if "version" not in deployment["spec"]["template"]["metadata"]["labels"]:
            continue
        sidecar, app = container(deployment, SIDECAR_NAME), container(deployment, "app")
        env = env_of(sidecar)
        assert env["LANE_LANE"] == {"fieldRef": {"fieldPath": f"metadata.labels['{config.label_key}']"}}
        assert env["LANE_SERVICE"] == {"fieldRef": {"fieldPath": "metadata.labels['app']"}}
        assert env_of(app)["HTTP_PROXY"] == f"http://{arg(sidecar['args'], '--outbound')}"
        assert arg(sidecar["args"], "--app") == arg(app["args"], "--listen") == "127.0.0.1:8080"
        assert {m["mountPath"] for m in sidecar["volumeMounts"]} == {"/etc/lane"}
        assert arg(sidecar["args"], "--config") == "/etc/lane/lane.yaml"


def test_the_config_map_config_routes_each_lane_to_its_own_sidecars() -> None:
    objects = rendered("demo")
    config = lane_config(objects)
    services, deployments = of_kind(objects, "Service"), of_kind(objects, "Deployment")
    assert config.mesh.namespace == "lane-demo"
    for svc in config.services.values():
        assert dict(svc.selector) == {"app": svc.name}
        for lane, endpoints in svc.instances.items():
            for endpoint in endpoints:
                service = services[endpoint.host]
                assert service["spec"]["selector"] == {"app": svc.name, config.label_key: lane}
                (port,) = [p for p in service["spec"]["ports"] if p["port"] == endpoint.port]
                assert port["targetPort"] == "lane-in"
                assert service["spec"]["selector"] == deployments[endpoint.host]["spec"]["selector"]["matchLabels"]


def test_gateway_has_replicas_probes_and_a_disruption_budget() -> None:
    objects = rendered("demo")
    gateway = of_kind(objects, "Deployment")["lane-gateway"]
    pdb = of_kind(objects, "PodDisruptionBudget")["lane-gateway"]
    assert gateway["spec"]["replicas"] > pdb["spec"]["minAvailable"] >= 1
    c = container(gateway, "gateway")
    assert {"readinessProbe", "livenessProbe"} <= c.keys()
    admin = arg(c["args"], "--admin")
    assert admin.endswith(":9901") and c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert of_kind(objects, "Service")["lane-gateway"]["spec"]["ports"][0]["port"] == 80


def test_admin_listeners_serve_probes_and_metrics_while_mutations_stay_loopback_or_token() -> None:
    """The admin port stays on the pod address (kubelet probes, Prometheus, the load test's workers read it);
    `lane.process.admin_access` keeps POST /lane/reload to loopback peers or the token, so no manifest may hand the
    token out in plain text, probes only read, and the public gateway Service carries no admin port."""
    for overlay in OVERLAYS:
        objects = rendered(overlay)
        for workload in workloads(objects).values():
            for c in pod_spec(workload)["containers"]:
                if "--admin" not in (c.get("args") or []):
                    continue
                token = {e["name"]: e for e in c.get("env") or []}.get("LANE_ADMIN_TOKEN")
                assert token is None or "secretKeyRef" in token.get("valueFrom", {}), (overlay, c["name"])
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    if probe in c:
                        assert c[probe]["httpGet"]["path"] == "/healthz"  # a GET: served to any peer
        public = of_kind(objects, "Service").get("lane-gateway")
        if public is not None:
            assert {p["targetPort"] for p in public["spec"]["ports"]} & {"admin", 9901} == set(), overlay


def test_every_container_runs_as_non_root() -> None:
    for overlay in OVERLAYS:
        for workload in workloads(rendered(overlay)).values():
            spec = pod_spec(workload)
            assert spec["securityContext"]["runAsNonRoot"] is True
            for c in spec["containers"]:
                assert c["securityContext"]["allowPrivilegeEscalation"] is False


def _expanded(argv: list[str], container: JSON, workload: JSON) -> list[str]:
    """*argv* as the kubelet runs it: ``$(VAR)`` replaced by the container's env (values, and the
    ``metadata.namespace`` / ``metadata.name`` field references, from the workload)."""
    meta = workload["metadata"]
    fields = {"metadata.namespace": meta.get("namespace", "default"), "metadata.name": f"{meta['name']}-pod"}
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "fieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = fields.get(var["valueFrom"]["fieldRef"]["fieldPath"], "x")
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in argv]


def test_every_lane_command_line_is_accepted_by_the_real_cli() -> None:
    seen = set()
    for overlay in OVERLAYS:
        for workload in workloads(rendered(overlay)).values():
            for c in pod_spec(workload)["containers"]:
                if c.get("command"):
                    continue  # locust, checked in test_k8s_loadtest.py
                argv = _expanded(list(c["args"]), c, workload)
                args = build_parser(argv).parse_args(argv)
                seen.add(args.command)
    assert seen == {"gateway", "sidecar", "demo-app", "loadtest", "mesh"}


def test_gray_off_scales_only_gray_to_zero() -> None:
    deployments = of_kind(rendered("gray-off"), "Deployment")
    for name, deployment in deployments.items():
        lane = deployment["spec"]["template"]["metadata"]["labels"].get("version")
        assert (deployment["spec"]["replicas"] == 0) == (lane == "gray"), name


def _uninjected(docs: list[JSON]) -> list[JSON]:
    """What a user would write before `lane inject`: no sidecar, proxy env, volume or annotation."""
    out = copy.deepcopy(docs)
    for doc in out:
        if doc["kind"] == "Deployment":
            spec = pod_spec(doc)
            spec["containers"] = [c for c in spec["containers"] if c["name"] != SIDECAR_NAME]
            for c in spec["containers"]:
                c["env"] = [e for e in c["env"] if e["name"] not in ("HTTP_PROXY", "NO_PROXY")]
            spec["volumes"] = [v for v in spec["volumes"] if v["name"] != CONFIG_VOLUME]
            if not spec["volumes"]:
                del spec["volumes"]
            del doc["spec"]["template"]["metadata"]["annotations"][INJECTED_ANNOTATION]
            if not doc["spec"]["template"]["metadata"]["annotations"]:
                del doc["spec"]["template"]["metadata"]["annotations"]
        if doc["kind"] == "Service":
            for port in doc["spec"]["ports"]:
                port["targetPort"] = "http"
    return out


def test_base_app_manifests_are_exactly_what_lane_inject_produces() -> None:
    docs = [d for d in yaml.safe_load_all((K8S / "base" / "apps.yaml").read_text()) if d]
    plain = _uninjected(docs)
    assert all(SIDECAR_NAME not in str(d) for d in plain)
    assert inject_documents(plain, InjectOptions(image="lane:0.1.0")) == docs
