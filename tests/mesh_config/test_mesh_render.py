"""`lane mesh render`: golden YAML for the demo, fallback chains, lanes from the cluster, bad input.

Regenerate the golden file after an intended change with
``LANE_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/mesh_config/test_mesh_render.py`` and review the diff.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lane.core.config_load import load_config, parse_config
from lane.core.errors import ConfigError
from mesh_config.render import dump_yaml, render_objects
from tests.support.mesh_vectors import CHAIN_CONFIG

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo.yaml"
GOLDEN = ROOT / "tests" / "golden" / "mesh-demo.yaml"



def objects_of(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def routes(vs: dict[str, Any]) -> dict[str, str]:
    """lane (or "default") -> subset, or "503" for a direct response."""
    out = {}
    for http in vs["spec"]["http"]:
        key = http["match"][0]["headers"]["x-mse-tag"]["exact"] if "match" in http else "default"
        out[key] = http["route"][0]["destination"]["subset"] if "route" in http else str(http["directResponse"]["status"])
    return out


def test_demo_render_matches_golden_file() -> None:
    text = dump_yaml(render_objects(load_config(DEMO)))
    if os.environ.get("LANE_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")


def test_demo_gray_goes_to_stable_b_and_gray_c() -> None:
    objects = render_objects(load_config(DEMO))
    vs, dr = objects_of(objects, "VirtualService"), objects_of(objects, "DestinationRule")
    assert routes(vs["b"]) == {"gray": "base", "default": "base"}
    assert routes(vs["c"]) == {"gray": "gray", "default": "base"}
    assert routes(vs["a"]) == {"gray": "gray", "default": "base"}
    assert [s["name"] for s in dr["b"]["spec"]["subsets"]] == ["base"]
    assert dr["c"]["spec"]["subsets"] == [{"name": "base", "labels": {"version": "base"}},
                                          {"name": "gray", "labels": {"version": "gray"}}]
    # the entry is bound to the Gateway and the mesh; the wildcard host gets its own gateway-only VS
    assert vs["a"]["spec"]["gateways"] == ["lane-gateway", "mesh"] and vs["a"]["spec"]["hosts"] == ["a"]
    assert vs["lane-gateway-a"]["spec"] == {**vs["a"]["spec"], "hosts": ["*"], "gateways": ["lane-gateway"]}
    assert all(o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "lane" for o in objects)
    assert all(o["metadata"]["labels"]["lane.dev/config"] == "demo" for o in objects)


def test_every_route_names_a_subset_its_destination_rule_defines() -> None:
    for config in (load_config(DEMO), parse_config(CHAIN_CONFIG, "chain.yaml")):
        objects = render_objects(config)
        subsets = {(o["spec"]["host"], s["name"]) for o in objects if o["kind"] == "DestinationRule"
                   for s in o["spec"].get("subsets", [])}
        for vs in objects_of(objects, "VirtualService").values():
            for http in vs["spec"]["http"]:
                for route in http.get("route", []):
                    assert (route["destination"]["host"], route["destination"]["subset"]) in subsets


def test_fallback_chain_dev_alice_gray_base_over_partial_services() -> None:
    config = parse_config(CHAIN_CONFIG, "chain.yaml")
    vs = objects_of(render_objects(config), "VirtualService")
    assert routes(vs["front"]) == {"gray": "gray", "dev-alice": "dev-alice", "hotfix": "503", "default": "base"}
    assert routes(vs["cart"]) == {"gray": "gray", "dev-alice": "gray", "hotfix": "503", "default": "base"}
    assert routes(vs["pay"]) == {"gray": "base", "dev-alice": "dev-alice", "hotfix": "hotfix", "default": "base"}
    assert routes(vs["ledger"]) == {"gray": "base", "dev-alice": "base", "hotfix": "503", "default": "base"}
    # same answers as the data plane's one definition of "which lane serves a request"
    for name, obj in vs.items():
        for lane, subset in routes(obj).items():
            want = config.lane_for(name, config.default_lane if lane == "default" else lane)
            assert subset == (want or "503")


def test_chain_config_mesh_settings_are_honoured() -> None:
    objects = render_objects(parse_config(CHAIN_CONFIG, "chain.yaml"))
    kinds = [(o["kind"], o["metadata"]["name"], o["metadata"]["namespace"]) for o in objects]
    assert kinds[0] == ("Gateway", "shop-gw", "shop")
    assert ("EnvoyFilter", "shop-gw-lane-coloring", "gateways") in kinds
    assert not any(name == "lane-baggage-to-tag" for _, name, _ in kinds)  # baggage_to_header: false
    vs = objects_of(objects, "VirtualService")
    assert vs["front"]["spec"]["hosts"] == ["front", "shop.example.com"]
    assert "shop-gw-front" not in vs  # no wildcard host, so no separate gateway-only VirtualService
    dr = objects_of(objects, "DestinationRule")
    assert dr["pay"]["spec"]["subsets"][2] == {"name": "hotfix", "labels": {"track": "hotfix"}}


def test_lanes_from_the_cluster_override_the_config() -> None:
    config = load_config(DEMO)
    objects = render_objects(config, lanes={"c": frozenset({"base"}), "a": frozenset({"base", "gray", "ghost"})},
                             namespace="lanes")
    vs, dr = objects_of(objects, "VirtualService"), objects_of(objects, "DestinationRule")
    assert routes(vs["c"])["gray"] == "base"  # no ready gray c: gray traffic stays on stable c
    assert [s["name"] for s in dr["c"]["spec"]["subsets"]] == ["base"]
    assert [s["name"] for s in dr["a"]["spec"]["subsets"]] == ["base", "gray"]  # undeclared lanes ignored
    assert {o["metadata"]["namespace"] for o in objects if o["kind"] != "EnvoyFilter"} == {"lanes"}
    no_stable = objects_of(render_objects(config, lanes={"b": frozenset()}), "VirtualService")
    assert routes(no_stable["b"]) == {"gray": "503", "default": "503"}
    with pytest.raises(ValueError, match="not in the config: zz"):
        render_objects(config, lanes={"zz": frozenset({"base"})})


def test_render_is_deterministic_and_round_trips() -> None:
    config = load_config(DEMO)
    first, second = dump_yaml(render_objects(config)), dump_yaml(render_objects(load_config(DEMO)))
    assert first == second
    assert list(yaml.safe_load_all(first)) == render_objects(config)


def test_unsupported_regex_is_rejected_with_the_rule_path() -> None:
    text = DEMO.read_text().replace("exact: xiaoming", r"regex: '\bxiaoming'")
    config = parse_config(text, "word.yaml")
    with pytest.raises(ConfigError, match=r"coloring\[0\]\.match\.headers\[0\]\.regex: .*\\b"):
        render_objects(config)


def lane(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lane", *args], check=False, capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_writes_one_file_per_object(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = lane("mesh", "render", "--config", str(DEMO), "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files[0] == "00-gateway-lane-gateway.yaml" and "05-virtualservice-b.yaml" in files
    joined = "".join((out / f).read_text() for f in files)
    assert joined == GOLDEN.read_text()


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda t: t.replace("exact: xiaoming", "regex: '(?i)xiaoming'"), r"coloring\[0\]\.match\.headers\[0\]\.regex"),
    (lambda t: t.replace("exact: xiaoming", "regex: 'x{,3}'"), r"coloring\[0\]\.match\.headers\[0\]\.regex"),
    (lambda t: t.replace("lane: gray", "lane: grey"), r"coloring\[0\]\.lane: unknown lane 'grey'"),
    (lambda t: t + "\n  bad: [", r"not valid YAML"),
])
def test_malformed_config_gives_a_clear_error_and_writes_nothing(tmp_path: Path, edit: Any, expected: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(edit(DEMO.read_text()))
    out = tmp_path / "out"
    result = lane("mesh", "render", "--config", str(bad), "--output-dir", str(out))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {bad}: ")
    assert __import__("re").search(expected, result.stderr), result.stderr
    assert not out.exists() and result.stdout == ""


def test_o_is_a_format_as_in_kubectl_and_a_directory_is_refused(tmp_path: Path) -> None:
    as_json = lane("mesh", "render", "--config", str(DEMO), "-o", "json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    listed = __import__("json").loads(as_json.stdout)
    assert listed["kind"] == "List" and listed["items"] == list(yaml.safe_load_all(GOLDEN.read_text()))
    for spelling in ("yaml", "-"):  # `-o -` kept from when -o took a directory or -
        as_yaml = lane("mesh", "render", "--config", str(DEMO), "-o", spelling, cwd=tmp_path)
        assert as_yaml.returncode == 0 and as_yaml.stdout == GOLDEN.read_text(), as_yaml.stderr
    old_style = lane("mesh", "render", "--config", str(DEMO), "-o", "out", cwd=tmp_path)
    assert old_style.returncode == 2 and old_style.stdout == ""
    assert old_style.stderr.startswith("lane mesh render: error: argument -o/--output: expected yaml or json")
    assert "--output-dir out" in old_style.stderr and len(old_style.stderr.splitlines()) == 1
    both = lane("mesh", "render", "--config", str(DEMO), "-o", "json", "--output-dir", "out", cwd=tmp_path)
    assert both.returncode == 2 and "give one of them" in both.stderr
    assert list(tmp_path.iterdir()) == []  # no directory named yaml, json, - or out


def test_cluster_flags_report_a_missing_cluster_clearly(tmp_path: Path) -> None:
    env_home = tmp_path / "home"
    env_home.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "lane", "mesh", "render", "--from-cluster", "--output-dir", str(tmp_path / "o")],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "HOME": str(env_home), "KUBECONFIG": str(tmp_path / "missing"),
             "KUBERNETES_SERVICE_HOST": ""},
    )
    assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
    assert not (tmp_path / "o").exists()


def test_cluster_flags_are_wired_to_the_cluster_module(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """No API server here: the cluster module's two contract functions are replaced by recorders."""
    import argparse

    from mesh_config import cli, cluster

    calls: list[tuple[str, str]] = []

    def lanes_from_cluster(config: Any, namespace: str, *, kube: Any) -> dict[str, frozenset[str]]:
        assert kube.api.configuration.host == "http://127.0.0.1:9"  # the connection options reach it
        calls.append(("lanes", namespace))
        return {"c": frozenset({"base"})}

    def check_endpoints(objects: list[dict[str, Any]], config: Any, namespace: str, *, kube: Any) -> list[str]:
        assert kube.api.configuration.host == "http://127.0.0.1:9"
        calls.append(("check", namespace))
        c_routes = routes(objects_of(objects, "VirtualService")["c"])
        return [] if c_routes["gray"] == "base" else ["c gray has no ready endpoints"]

    monkeypatch.setattr(cluster, "lanes_from_cluster", lanes_from_cluster)
    monkeypatch.setattr(cluster, "check_endpoints", check_endpoints)
    args = argparse.Namespace(mesh_command="render", config=str(DEMO), output="-", namespace="lanes",
                              from_cluster=True, check_endpoints=True, kubeconfig=None, context=None,
                              server="http://127.0.0.1:9", request_timeout=1.0)
    assert cli.run(args) == 0
    assert calls == [("lanes", "lanes"), ("check", "lanes")]
    rendered = list(yaml.safe_load_all(capsys.readouterr().out))
    assert routes(objects_of(rendered, "VirtualService")["c"])["gray"] == "base"  # no ready gray c
    args.from_cluster = False
    assert cli.run(args) == 1  # the config's gray c is not ready: flagged
    assert "endpoint check: c gray has no ready endpoints" in capsys.readouterr().err


@pytest.mark.parametrize(("missing", "argv", "extra"), [
    ("kubernetes", ["mesh", "apply", "--dry-run"], "k8s"),
    ("kubernetes", ["mesh", "sync"], "k8s"),
    ("kubernetes", ["mesh", "render", "--from-cluster"], "k8s"),
    ("kubernetes", ["mesh", "render", "--check-endpoints"], "k8s"),
    ("jsonschema", ["mesh", "validate", "--crds", "examples/demo.yaml"], "validate"),  # a readable file, not CRDs
    ("grpc", ["mesh", "verify"], "mesh"),  # grpcio plays verify's gRPC services
    ("grpc", ["demo-app", "--service", "a", "--lane", "base", "--grpc"], "proxy,grpc"),
    ("grpc", ["demo-grpc"], "proxy,grpc"),
])
def test_a_missing_optional_package_names_the_extra_to_install(missing: str, argv: list[str], extra: str) -> None:
    """The extras are optional (the image has no `mesh` extra): simulate an absent one in a subprocess."""
    code = (f"import sys; sys.modules[{missing!r}] = None; from lane.cli.main import main; "
            f"sys.exit(main({argv!r}))")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "error: " in result.stderr  # `lane mesh apply: error: ...`
    assert f"pip install 'lane[{extra}]'" in result.stderr and repr(missing) in result.stderr


def test_image_installs_every_extra_its_commands_name() -> None:
    from mesh_config.cli import EXTRAS

    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    installed = dockerfile.split('pip install ".[', 1)[1].split("]", 1)[0].split(",")
    assert set(EXTRAS.values()) <= set(installed)


@pytest.mark.parametrize("target", ["a-file", "a-file/sub"])
def test_cli_output_path_that_cannot_be_a_directory_is_a_clear_error(tmp_path: Path, target: str) -> None:
    (tmp_path / "a-file").write_text("keep me\n")
    result = lane("mesh", "render", "--config", str(DEMO), "--output-dir", str(tmp_path / target))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: cannot write ") and str(tmp_path / "a-file") in result.stderr
    assert (tmp_path / "a-file").read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no staging directory left behind


def test_a_write_failing_halfway_leaves_no_partial_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mesh_config import render

    objects = render_objects(load_config(DEMO))
    real_dump, dumped = render.dump_yaml, []

    def dump_until_the_disk_fills(objs: Any) -> str:
        dumped.append(objs)
        if len(dumped) == 3:
            raise OSError(28, "No space left on device")
        return real_dump(objs)

    monkeypatch.setattr(render, "dump_yaml", dump_until_the_disk_fills)
    with pytest.raises(OSError, match="No space left"):
        render.write_objects(objects, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # neither the output nor the staging directory
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "00-gateway-lane-gateway.yaml").write_text("old\n")
    dumped.clear()
    with pytest.raises(OSError, match="No space left"):
        render.write_objects(objects, existing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
    assert [p.name for p in existing.iterdir()] == ["00-gateway-lane-gateway.yaml"]
    assert (existing / "00-gateway-lane-gateway.yaml").read_text() == "old\n"
    monkeypatch.setattr(render, "dump_yaml", real_dump)
    assert len(render.write_objects(objects, existing)) == len(objects)
    assert (existing / "00-gateway-lane-gateway.yaml").read_text() != "old\n"
