"""gRPC services in the rendered Istio config, proven in a real Envoy with real grpcio servers and clients.

A ``protocol: grpc`` service's stubs are grpcio servers behind HTTP/2 subset clusters (what istiod
builds for a Service port of protocol grpc), its callers grpcio clients over h2c with the lane in
metadata; the gateway and sidecar Lua run verbatim on those HTTP/2 requests. No istiod and no
Kubernetes here (see `mesh_config.bootstrap`): what is proven is Envoy running the emitted routes,
Lua and fallback clusters on gRPC calls.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import pytest

from lane.core.config import LaneConfig
from lane.core.config_load import parse_config
from mesh_config import grpc_wire
from mesh_config.backends import PROBE_HEADER, run_backends
from mesh_config.bootstrap import MESH_LISTENER, envoy_bootstrap
from mesh_config.chain import chain_paths
from mesh_config.envoy import run_envoy
from mesh_config.failover import format_failover, kill_and_return
from mesh_config.render import render_objects
from mesh_config.vectors import Vector
from mesh_config.verify import format_result, verify

ROOT = Path(__file__).resolve().parents[2]

# a (gRPC, the entry) -> b (HTTP/1.1, no gray) -> c (gRPC): gRPC and HTTP hops in one chain.
GRPC_CHAIN: str = """
lanes:
  gray: {}
  frozen: {strict: true}
entry: a
coloring:
  - name: by-metadata
    lane: gray
    match: {headers: [{name: x-user, exact: xiaoming}]}
  - name: grpc-agent
    lane: gray
    match: {headers: [{name: user-agent, regex: 'tester .*'}]}
  - name: exact-agent
    lane: gray
    match: {headers: [{name: user-agent, exact: xiaoming}]}
  - name: qa
    lane: frozen
    match: {headers: [{name: x-team, exact: qa}]}
services:
  a:
    protocol: grpc
    instances: {base: ["127.0.0.1:1"], gray: ["127.0.0.1:2"]}
  b:
    instances: {base: ["127.0.0.1:3"], frozen: ["127.0.0.1:4"]}
  c:
    protocol: grpc
    instances: {base: ["127.0.0.1:5"], gray: ["127.0.0.1:6"]}
"""
XIAOMING = Vector("xiaoming", (("x-user", "xiaoming"),))

pytestmark = pytest.mark.timeout(240)


def grpc_chain() -> LaneConfig:
    return parse_config(GRPC_CHAIN, "grpc.yaml")


async def test_a_lane_from_metadata_travels_grpc_and_http_hops_alike() -> None:
    results = await verify(grpc_chain())
    assert all(r.ok for r in results), "\n".join(format_result(r) for r in results if not r.ok)
    by_name = {r.vector.name: r for r in results}
    gray = by_name["rule0-by-metadata"]
    assert chain_paths(gray.path) == ["a@gray → b@base → c@gray"]
    a, b, c = gray.hops
    assert (a.code, b.code, c.code) == ("OK", None, "OK")  # a and c answered gRPC calls, b an HTTP request
    assert [h.tag for h in gray.hops] == ["gray"] * 3 and [h.baggage_lane for h in gray.hops] == ["gray"] * 3
    assert chain_paths(by_name["client-sets-gray"].path) == ["a@base → b@base → c@base"]  # forged metadata
    # every lane probed straight at every service, over gRPC where it speaks gRPC, tag and baggage alike
    probes = {(p.service, p.lane, p.via): p for r in results for p in r.probes}
    assert {k for k in probes if k[0] == "c"} >= {("c", "gray", "tag"), ("c", "gray", "baggage")}
    assert probes[("c", "gray", "baggage")].got == "gray" and probes[("c", "gray", "baggage")].tag == "gray"


async def test_the_sidecar_lua_restores_the_tag_on_a_grpc_call_that_carries_only_baggage() -> None:
    [result] = await verify(grpc_chain(), vectors=[XIAOMING], forward=["b=baggage"])
    assert result.ok, result.problems
    _, b, c = result.hops
    assert b.forward == "baggage" and c.code == "OK"
    assert (c.served_by, c.tag) == (("c", "gray"), "gray")  # b sent no tag metadata: the Lua set it


async def test_a_strict_lane_envoy_refuses_is_unavailable_with_the_reason_for_a_grpc_caller() -> None:
    config = grpc_chain()
    [refused] = await verify(config, vectors=[Vector("qa", (("x-team", "qa"),))])
    assert refused.ok, refused.problems
    assert refused.tag == "frozen" and chain_paths(refused.path) == ["a@UNAVAILABLE"]
    (entry,) = refused.hops
    assert (entry.status, entry.code) == (503, "UNAVAILABLE")
    assert entry.detail == "no instance of a may serve lane frozen"  # the direct response's body, as grpc-message
    frozen = {p.service: (p.status, p.got) for p in refused.probes if p.via == "tag"}
    assert frozen == {"a": (503, None), "b": (200, "frozen"), "c": (503, None)}


async def test_a_grpc_entry_is_colored_on_what_a_grpc_client_really_sends() -> None:
    """grpcio puts its own user-agent after the one given and sends no query: Python judges that request."""
    vectors = [Vector("agent", (("User-Agent", "tester"),)), Vector("exact-agent", (("User-Agent", "xiaoming"),)),
               Vector("query", (("x-user", "xiaoming"), ("x-note", "café")), query="lane=gray")]
    results = {r.vector.name: r for r in await verify(grpc_chain(), vectors=vectors)}
    assert all(r.ok for r in results.values()), [r.problems for r in results.values()]
    assert results["agent"].tag == "gray"  # "tester grpc-python/..." meets the regex in Lua and Python alike
    assert results["exact-agent"].tag == "base"  # no gRPC client sends a bare "xiaoming"
    assert results["query"].tag == "gray" and results["query"].notes == (
        "query 'lane=gray' not sent (a gRPC path is the method)", "header 'x-note' not sent (value not printable ASCII)")
    assert "| as gRPC: query 'lane=gray' not sent" in format_result(results["query"])


@pytest.mark.parametrize("http2", [True, False], ids=["grpc-port", "http-port"])
async def test_grpc_pods_answer_only_through_http2_clusters(http2: bool) -> None:
    """What the Service port's protocol changes: istiod sends HTTP/1.1 to an `http` port's pods."""
    config = grpc_chain()
    if not http2:  # the same objects, c's subset clusters built as for a port Istio takes for http
        services = dict(config.services)
        services["c"] = dataclasses.replace(config.services["c"], protocol="http")
        config = dataclasses.replace(config, services=MappingProxyType(services))
    objects = render_objects(grpc_chain())
    async with run_backends([("c", "base"), ("c", "gray"), ("a", "base"), ("a", "gray"), ("b", "base"),
                             ("b", "frozen")], "x-mse-tag", grpc={"a", "c"}) as backends:
        async with run_envoy(envoy_bootstrap(config, objects, backends)) as running:
            async with grpc_wire.channel(running.listeners[MESH_LISTENER], "c") as chan:
                answers = [await grpc_wire.call(chan, [("x-mse-tag", lane), (PROBE_HEADER, "1")], timeout=10)
                           for lane in ("gray", "base")]
    if http2:
        assert [(a.code, a.body["lane"]) for a in answers] == [("OK", "gray"), ("OK", "base")]
    else:
        # Envoy speaks HTTP/1.1 to the grpcio server, which answers no HTTP/1.1 request
        assert all(a.code == "UNAVAILABLE" and "protocol error" in a.body for a in answers), answers


async def test_a_dying_grpc_gray_stub_costs_no_call_and_calls_return_to_gray() -> None:
    result = await kill_and_return(grpc_chain(), "c", "gray", requests_per_phase=60)
    assert result.members == ("gray", "base")
    assert result.ok, "\n".join(format_failover(result))
    before, _, gone, back = result.phases
    assert before.served == {"gray": before.sent} and gone.served == {"base": gone.sent}
    assert back.served.get("gray", 0) > 0


def test_cli_verify_and_kill_on_a_grpc_config(tmp_path: Path) -> None:
    config = tmp_path / "grpc.yaml"
    config.write_text(GRPC_CHAIN, encoding="utf-8")
    lane = [sys.executable, "-m", "lane", "mesh", "verify", "--config", str(config)]
    result = subprocess.run(lane, check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   rule0-by-metadata: python gray | gateway tag gray | a@gray → b@base → c@gray" in result.stdout
    assert "ok   rule3-qa: python frozen | gateway tag frozen | a@UNAVAILABLE" in result.stdout
    killed = subprocess.run([*lane, "--kill", "c@gray", "--requests", "30"], check=False, capture_output=True,
                            text=True, cwd=ROOT, timeout=180)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert "0 failed requests; traffic returned to gray" in killed.stdout
