"""`lane inject`: the sidecar is added to workloads the way `istioctl kube-inject` adds Envoy."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mesh_config.inject import CONFIG_VOLUME, SIDECAR_NAME, InjectError, InjectOptions, inject_documents

REPO = Path(__file__).resolve().parents[2]
JSON = dict[str, Any]

ORIGINAL = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: orders-gray
spec:
  replicas: 2
  selector:
    matchLabels: {app: orders, version: gray}
  template:
    metadata:
      labels: {app: orders, version: gray}
    spec:
      containers:
        - name: orders
          image: registry.example/orders:2.0
          ports:
            - {name: web, containerPort: 9090}
          env:
            - {name: LOG_LEVEL, value: debug}
          readinessProbe:
            httpGet: {path: /ready, port: web}
        - name: log-shipper
          image: registry.example/shipper:1.0
      volumes:
        - name: data
          emptyDir: {}
---
apiVersion: v1
kind: Service
metadata:
  name: orders-gray
spec:
  selector: {app: orders, version: gray}
  ports:
    - {name: http, port: 80, targetPort: web}
---
apiVersion: v1
kind: Service
metadata:
  name: unrelated
spec:
  selector: {app: billing}
  ports:
    - {name: http, port: 80, targetPort: 9090}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: orders-settings
data:
  mode: fast
"""


def docs() -> list[JSON]:
    return [d for d in yaml.safe_load_all(ORIGINAL) if d]


def inject(source: list[JSON] | None = None, **opts: Any) -> list[JSON]:
    return inject_documents(source if source is not None else docs(), InjectOptions(image="lane:test", **opts))


def pod(doc: JSON) -> JSON:
    spec: JSON = doc["spec"]["template"]["spec"]
    return spec


def lane(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lane", *args], input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)


def test_output_validates_against_the_kubernetes_schemas() -> None:
    for obj in inject():
        kubernetes_validate.validate(obj, "1.32", strict=True)


def test_original_containers_are_kept_with_only_the_proxy_added() -> None:
    before, after = docs()[0], inject()[0]
    containers = pod(after)["containers"]
    assert [c["name"] for c in containers] == ["orders", "log-shipper", SIDECAR_NAME]
    for original, injected in zip(pod(before)["containers"], containers):
        extra = [e for e in injected["env"] if e not in (original.get("env") or [])]
        assert extra == [{"name": "HTTP_PROXY", "value": "http://127.0.0.1:15001"},
                         {"name": "NO_PROXY", "value": "127.0.0.1,localhost"}]
        assert {k: v for k, v in injected.items() if k != "env"} == {k: v for k, v in original.items() if k != "env"}
    assert pod(after)["volumes"][0] == {"name": "data", "emptyDir": {}}


def test_sidecar_takes_service_and_lane_from_the_pod_labels_and_fronts_the_app_port() -> None:
    sidecar = pod(inject()[0])["containers"][-1]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in sidecar["env"]}
    assert env == {"LANE_SERVICE": "metadata.labels['app']", "LANE_LANE": "metadata.labels['version']"}
    args = sidecar["args"]
    assert args[0] == "sidecar" and args[args.index("--app") + 1] == "127.0.0.1:9090"
    assert sidecar["image"] == "lane:test"
    assert {"name": CONFIG_VOLUME, "mountPath": "/etc/lane", "readOnly": True} in sidecar["volumeMounts"]
    assert {"name": CONFIG_VOLUME, "configMap": {"name": "lane-config"}} in pod(inject()[0])["volumes"]


def test_services_in_front_of_injected_pods_are_repointed_at_the_sidecar() -> None:
    out = {d["metadata"]["name"] + d["kind"]: d for d in inject()}
    assert out["orders-grayService"]["spec"]["ports"][0]["targetPort"] == "lane-in"
    assert out["unrelatedService"]["spec"]["ports"][0]["targetPort"] == 9090  # selects other pods
    assert out["orders-settingsConfigMap"] == docs()[3]


def test_injecting_twice_is_the_same_as_once() -> None:
    once = inject()
    assert inject(copy.deepcopy(once)) == once


def test_existing_http_proxy_is_left_alone() -> None:
    source = docs()
    pod(source[0])["containers"][0]["env"].append({"name": "HTTP_PROXY", "value": "http://corp-proxy:3128"})
    env = pod(inject(source)[0])["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == "HTTP_PROXY"] == ["http://corp-proxy:3128"]


def test_options_change_ports_and_config_map() -> None:
    after = inject(app_port=7000, inbound_port=16006, outbound_port=16001, admin_port=16000, config_map="cfg")
    sidecar = pod(after[0])["containers"][-1]
    args = dict(zip(sidecar["args"][1::2], sidecar["args"][2::2]))
    assert args == {"--config": "/etc/lane/lane.yaml", "--app": "127.0.0.1:7000", "--listen": "0.0.0.0:16006",
                    "--outbound": "127.0.0.1:16001", "--admin": "0.0.0.0:16000"}
    assert {p["containerPort"] for p in sidecar["ports"]} == {16006, 16000}
    assert {"name": "HTTP_PROXY", "value": "http://127.0.0.1:16001"} in pod(after[0])["containers"][0]["env"]
    assert {"name": CONFIG_VOLUME, "configMap": {"name": "cfg"}} in pod(after[0])["volumes"]


def test_missing_lane_label_is_a_clear_error() -> None:
    with pytest.raises(InjectError, match=r"Deployment/orders-gray: the pod template has no label 'track'"):
        inject(label_key="track")


def test_unknown_app_port_is_a_clear_error() -> None:
    source = docs()
    del pod(source[0])["containers"][0]["ports"]
    with pytest.raises(InjectError, match="pass --app-port"):
        inject(source)
    assert pod(inject(source, app_port=7000)[0])["containers"][-1]["args"][4] == "127.0.0.1:7000"


def test_a_file_without_workloads_is_refused() -> None:
    with pytest.raises(InjectError, match="no workload to inject"):
        inject(docs()[1:])


def test_cli_reads_a_file_and_prints_all_documents(tmp_path: Path) -> None:
    manifest = tmp_path / "orders.yaml"
    manifest.write_text(ORIGINAL)
    result = lane("inject", "-f", str(manifest), "--image", "lane:test")
    assert result.returncode == 0, result.stderr
    out = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert out == inject()


def test_cli_checks_service_names_and_label_key_against_the_config(tmp_path: Path) -> None:
    config = tmp_path / "lane.yaml"
    config.write_text("label_key: track\nentry: orders\nservices:\n  orders: {selector: {app: orders}}\n")
    manifest = tmp_path / "orders.yaml"
    manifest.write_text(ORIGINAL.replace("version: gray", "track: gray"))
    result = lane("inject", "-f", "-", "--config", str(config), "-o", str(tmp_path / "out.yaml"),
                  stdin=manifest.read_text())
    assert result.returncode == 0, result.stderr
    sidecar = pod(next(yaml.safe_load_all((tmp_path / "out.yaml").read_text())))["containers"][-1]
    assert {"name": "LANE_LANE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['track']"}}} in sidecar["env"]
    config.write_text("label_key: track\nentry: billing\nservices:\n  billing: {selector: {app: billing}}\n")
    result = lane("inject", "-f", str(manifest), "--config", str(config))
    assert result.returncode == 2
    assert "pod label app=orders is not a service of the lane config (billing)" in result.stderr


def test_cli_reports_unreadable_and_invalid_input(tmp_path: Path) -> None:
    result = lane("inject", "-f", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "cannot read" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    result = lane("inject", "-f", str(bad))
    assert result.returncode == 2 and "not valid YAML" in result.stderr


def test_null_env_and_annotations_are_treated_as_empty() -> None:
    """`env:` and `annotations:` with nothing after them are YAML nulls; Kubernetes accepts them."""
    source = docs()
    source[0]["spec"]["template"]["metadata"]["annotations"] = None
    for container in pod(source[0])["containers"]:
        container["env"] = None
    out = pod(inject(source)[0])
    for container in out["containers"][:2]:
        assert [e["name"] for e in container["env"]] == ["HTTP_PROXY", "NO_PROXY"]
    assert inject(source)[0]["spec"]["template"]["metadata"]["annotations"] == {"lane/sidecar-injected": "true"}
    assert inject(inject(source)) == inject(source)


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("spec", "template", "spec", "containers", 0, "env"), "LOG_LEVEL=debug", "env must be a list"),
    (("spec", "template", "metadata"), ["app"], "unexpected shape"),
    (("spec", "template", "spec", "containers", 1), "log-shipper", "containers must be a mapping"),
    (("spec", "template", "spec", "containers", 0, "ports"), "9090", "unexpected shape"),
])
def test_unexpected_shapes_are_a_clear_error_naming_the_object(path: tuple[Any, ...], value: Any,
                                                               expected: str) -> None:
    source = docs()
    parent: Any = source[0]
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    with pytest.raises(InjectError, match=expected) as info:
        inject(source, app_port=9090)
    assert str(info.value).startswith("Deployment/orders-gray: ")


def test_cli_refuses_a_malformed_workload_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(ORIGINAL.replace("          env:\n            - {name: LOG_LEVEL, value: debug}\n",
                                    "          env: LOG_LEVEL\n"))
    result = lane("inject", "-f", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Deployment/orders-gray" in result.stderr and "env must be a list" in result.stderr
