"""Every emitted object against the openAPIV3 schemas of Istio 1.30.3's CRDs, strictly.

The CRD file is read in place from ../shared/schemas (never copied into the repo); without it
these tests skip and say why.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lane.core.config_load import load_config, parse_config
from mesh_config.render import dump_yaml, render_objects
from mesh_config.validate import CrdIndex, SchemaError, load_crds, parse_crds, validate_objects
from tests.support.mesh_vectors import CHAIN_CONFIG, CONFORMANCE_CONFIG

ROOT = Path(__file__).resolve().parents[2]
CRDS = Path(__file__).resolve().parents[3] / "shared/schemas/istio-crds.yaml"
DEMO = ROOT / "examples" / "demo.yaml"

pytestmark = pytest.mark.skipif(not CRDS.exists(), reason=f"Istio CRD file not found at {CRDS}")


@pytest.fixture(scope="module")
def crds() -> CrdIndex:
    return load_crds(CRDS)


def configs() -> list[Any]:
    return [load_config(DEMO), parse_config(CHAIN_CONFIG, "chain.yaml"), parse_config(CONFORMANCE_CONFIG, "c.yaml")]


@pytest.mark.parametrize("config", configs(), ids=["demo", "chain", "conformance"])
def test_every_emitted_object_is_valid(crds: CrdIndex, config: Any) -> None:
    objects = render_objects(config)
    problems, _ = validate_objects(crds, objects)
    assert problems == []
    assert {o["kind"] for o in objects} == {"Gateway", "DestinationRule", "VirtualService", "EnvoyFilter"}


def test_unknown_fields_and_wrong_types_are_errors(crds: CrdIndex) -> None:
    objects = copy.deepcopy(render_objects(load_config(DEMO)))
    objects[1]["spec"]["subsets"][0]["lables"] = {"version": "base"}
    objects[2]["spec"]["http"][0]["route"][0]["destination"]["subset"] = 3
    objects[0]["metadata"]["uid"] = "x"
    problems, _ = validate_objects(crds, objects)
    assert any("DestinationRule/default/a: spec.subsets[0]:" in p and "'lables' was unexpected" in p for p in problems)
    assert any("spec.http[0].route[0].destination.subset: 3 is not of type 'string'" in p for p in problems)
    assert any("Gateway/default/lane-gateway: metadata:" in p and "'uid'" in p for p in problems)
    assert len(problems) == 3


def test_versions_the_cluster_does_not_serve_are_errors(crds: CrdIndex) -> None:
    objects = copy.deepcopy(render_objects(load_config(DEMO)))
    envoy_filter = next(o for o in objects if o["kind"] == "EnvoyFilter")
    envoy_filter["apiVersion"] = "networking.istio.io/v1"
    problems, _ = validate_objects(crds, [envoy_filter])
    assert problems == [("EnvoyFilter/istio-system/lane-gateway-lane-coloring: the cluster does not serve "
                         "EnvoyFilter at networking.istio.io/v1 (served versions: v1alpha3)")]


def test_kubectl_list_output_is_accepted() -> None:
    docs = [d for d in yaml.safe_load_all(CRDS.read_text()) if d]
    only_vs = [d for d in docs if d["spec"]["names"]["kind"] == "VirtualService"]
    index = parse_crds(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": only_vs}), "list.yaml")
    objects = render_objects(load_config(DEMO))
    problems, _ = validate_objects(index, objects)
    assert all("VirtualService" not in p for p in problems)
    assert any(p.startswith("Gateway/default/lane-gateway: the cluster does not serve Gateway") for p in problems)


def test_not_a_crd_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="no CustomResourceDefinition"):
        parse_crds("kind: ConfigMap\n", "cm.yaml")
    with pytest.raises(SchemaError, match="cannot read"):
        load_crds(tmp_path / "absent.yaml")


def run_lane(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lane", *args], check=False, input=stdin, capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_cli_validates_rendered_yaml_from_stdin_and_files(tmp_path: Path) -> None:
    text = dump_yaml(render_objects(load_config(DEMO)))
    ok = run_lane("mesh", "validate", "--crds", str(CRDS), "-", stdin=text)
    assert ok.returncode == 0 and ok.stdout.startswith("14 object(s) valid"), ok.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("subset: gray", "subsett: gray", 1))
    bad = run_lane("mesh", "validate", "--crds", str(CRDS), str(broken))
    assert bad.returncode == 1
    assert "'subsett' was unexpected" in bad.stdout
    missing = run_lane("mesh", "validate", "--crds", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
