"""Istio lanes that hold in a real cluster: several namespaces, a fallback chain, a strict lane, a
percentage rule, and the instant fallback (aggregate clusters) proven in a real Envoy.

No istiod here: `mesh_config.bootstrap` does istiod's translation by hand (subset clusters named
``outbound|PORT|SUBSET|FQDN``, EnvoyFilter patches applied verbatim), so what is proven is that
the emitted patches and routes do what they promise in Envoy, not that istiod accepts them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lane.core.config import LaneConfig
from lane.core.config_load import parse_config
from mesh_config.failover import format_failover, kill_and_return
from mesh_config.render import render_objects
from mesh_config.validate import load_crds, validate_objects
from mesh_config.verify import VerifyError, format_result, verify

ROOT = Path(__file__).resolve().parents[2]
CRDS = Path("/work/shared/schemas/istio-crds.yaml")

# web in `front` and pay/ledger in `billing` (from their hosts), cart in mesh.namespace `shop`.
MULTI_NS: str = """
lanes:
  gray: {}
  dev-x: {fallback: gray}
  frozen: {strict: true}
entry: web
coloring:
  - name: devs
    lane: dev-x
    match: {headers: [{name: x-dev, exact: x}]}
  - name: qa
    lane: frozen
    match: {headers: [{name: x-team, exact: qa}]}
  - name: some-users
    lane: gray
    percentage: {percent: 30, key: {header: x-user}}
mesh:
  namespace: shop
services:
  web:
    host: web.front.svc.cluster.local
    instances: {base: ["127.0.0.1:1"], gray: ["127.0.0.1:2"], dev-x: ["127.0.0.1:3"]}
  cart:
    instances: {base: ["127.0.0.1:4"], gray: ["127.0.0.1:5"]}
  pay:
    host: pay.billing.svc.cluster.local
    port: 8080
    instances: {base: ["127.0.0.1:6"], dev-x: ["127.0.0.1:7"], frozen: ["127.0.0.1:8"]}
  ledger:
    host: ledger.billing.svc.cluster.local
    instances: {base: ["127.0.0.1:9"], gray: ["127.0.0.1:10"]}
"""
HOME = {"web": "front", "cart": "shop", "pay": "billing", "ledger": "billing"}

pytestmark = pytest.mark.timeout(240)


def multi_ns(**mesh: Any) -> LaneConfig:
    text = MULTI_NS
    for key, value in mesh.items():
        text = text.replace("mesh:\n", f"mesh:\n  {key}: {str(value).lower()}\n", 1)
    return parse_config(text, "multi.yaml")


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def lane_routes(vs: dict[str, Any]) -> dict[str, str]:
    out = {}
    for http in vs["spec"]["http"]:
        lane = http["match"][0]["headers"]["x-mse-tag"]["exact"] if "match" in http else "default"
        out[lane] = http["route"][0]["destination"]["subset"] if "route" in http else "503"
    return out


def test_every_object_validates_strictly_against_istios_crds() -> None:
    config = multi_ns()
    for lanes in (None, {"web": frozenset({"base", "dev-x"}), "ledger": frozenset({"base"})}):
        objects = render_objects(config, lanes=lanes)
        problems, _ = validate_objects(load_crds(CRDS), objects)
        assert problems == []


def test_each_destination_rule_and_virtual_service_lives_in_its_services_namespace() -> None:
    objects = render_objects(multi_ns())
    assert {o["metadata"]["name"]: o["metadata"]["namespace"] for o in of_kind(objects, "DestinationRule")} == HOME
    placed = {o["metadata"]["name"]: o["metadata"]["namespace"] for o in of_kind(objects, "VirtualService")}
    assert placed == {**HOME, "lane-gateway-web": "front"}
    gateway = of_kind(objects, "Gateway")[0]["metadata"]
    assert (gateway["name"], gateway["namespace"]) == ("lane-gateway", "shop")
    web = next(o for o in of_kind(objects, "VirtualService") if o["metadata"]["name"] == "web")
    assert web["spec"]["gateways"] == ["shop/lane-gateway", "mesh"]  # the Gateway named across namespaces
    filters = {(o["metadata"]["name"], o["metadata"]["namespace"]) for o in of_kind(objects, "EnvoyFilter")}
    for ns in ("front", "shop", "billing"):  # wherever lane apps run
        assert ("lane-baggage-to-tag", ns) in filters and ("lane-fallback", ns) in filters
    assert ("lane-gateway-lane-fallback", "istio-system") in filters


@pytest.mark.parametrize("lanes", [None, {"web": frozenset({"base", "dev-x"}), "cart": frozenset({"base"}),
                                          "pay": frozenset({"base", "dev-x"}), "ledger": frozenset({"base", "gray"})}])
def test_every_service_and_lane_routes_to_the_first_lane_of_its_chain_with_pods(lanes: Any) -> None:
    config = multi_ns()
    objects = render_objects(config, lanes=lanes)
    have = lanes or {name: frozenset(svc.lanes) for name, svc in config.services.items()}
    for vs in of_kind(objects, "VirtualService"):
        service = vs["metadata"]["name"].removeprefix("lane-gateway-")
        for lane, subset in lane_routes(vs).items():
            want = config.lane_for(service, config.default_lane if lane == "default" else lane,
                                   lambda s, c: c in have[s])
            assert subset == (want or "503"), (service, lane)
    # the chain in full: dev-x -> gray -> base
    if lanes is None:
        by_name = {o["metadata"]["name"]: lane_routes(o) for o in of_kind(objects, "VirtualService")}
        assert by_name["cart"]["dev-x"] == "gray" and by_name["ledger"]["dev-x"] == "gray"
        assert by_name["pay"]["gray"] == "base" and by_name["web"]["frozen"] == "503"


def aggregates(objects: list[dict[str, Any]], namespace: str) -> dict[str, list[str]]:
    flt = next(o for o in of_kind(objects, "EnvoyFilter")
               if o["metadata"]["name"] == "lane-fallback" and o["metadata"]["namespace"] == namespace)
    return {p["patch"]["value"]["name"]: p["patch"]["value"]["cluster_type"]["typed_config"]["clusters"]
            for p in flt["spec"]["configPatches"] if p["applyTo"] == "CLUSTER"}


def test_aggregate_clusters_list_istiods_subset_clusters_down_the_chain_and_skip_strict_lanes() -> None:
    objects = render_objects(multi_ns())
    clusters = aggregates(objects, "billing")
    assert clusters == aggregates(objects, "front")  # every client namespace gets every service's
    web = "web.front.svc.cluster.local"
    assert clusters[f"lane-fallback|80|dev-x|{web}"] == [f"outbound|80|dev-x|{web}", f"outbound|80|gray|{web}",
                                                         f"outbound|80|base|{web}"]
    assert clusters["lane-fallback|80|gray|cart.shop.svc.cluster.local"] == [
        "outbound|80|gray|cart.shop.svc.cluster.local", "outbound|80|base|cart.shop.svc.cluster.local"]
    pay = "pay.billing.svc.cluster.local"
    assert clusters[f"lane-fallback|8080|dev-x|{pay}"] == [f"outbound|8080|dev-x|{pay}", f"outbound|8080|base|{pay}"]
    assert not any("|frozen|" in name for name in clusters)  # a strict lane answers 503, never falls back
    # each member is a subset some DestinationRule defines, in the namespace the cluster name says
    defined = {f"outbound|{8080 if o['metadata']['name'] == 'pay' else 80}|{s['name']}|"
               f"{o['metadata']['name']}.{o['metadata']['namespace']}.svc.cluster.local"
               for o in of_kind(objects, "DestinationRule") for s in o["spec"]["subsets"]}
    assert {m for members in clusters.values() for m in members} <= defined
    vs = {o["metadata"]["name"]: o for o in of_kind(objects, "VirtualService")}
    retries = {h["name"]: h.get("retries") for h in vs["web"]["spec"]["http"]}
    assert retries["lane-dev-x"] == {"attempts": 3, "retryOn": "connect-failure,refused-stream,unavailable,"
                                                                "cancelled,gateway-error,reset"}
    assert retries["lane-frozen"] is None and retries["default"] is None


def test_instant_fallback_off_emits_no_envoy_filter_retries_or_outlier_detection() -> None:
    objects = render_objects(multi_ns(instant_fallback=False))
    assert not any("fallback" in o["metadata"]["name"] for o in of_kind(objects, "EnvoyFilter"))
    assert not any("retries" in h for vs in of_kind(objects, "VirtualService") for h in vs["spec"]["http"])
    assert not any("trafficPolicy" in dr["spec"] for dr in of_kind(objects, "DestinationRule"))


async def test_real_envoy_agrees_with_python_on_every_vector_across_namespaces() -> None:
    config = multi_ns()
    results = await verify(config)
    assert all(r.ok for r in results), "\n".join(format_result(r) for r in results if not r.ok)
    assert {r.tag for r in results} == {"base", "gray", "dev-x", "frozen"}
    keyed = [r for r in results if "-key" in r.vector.name]  # sticky keys inside and outside the 30 % share
    assert {r.tag for r in keyed if r.vector.name.endswith("-in")} == {"gray"}
    assert {r.tag for r in keyed if r.vector.name.endswith("-out")} == {"base"}


async def test_a_dying_gray_stub_costs_no_request_and_traffic_returns_to_gray() -> None:
    result = await kill_and_return(multi_ns(), "cart", "gray", requests_per_phase=40)
    assert result.failed == 0, "\n".join(format_failover(result))
    assert result.returned, "\n".join(format_failover(result))
    before, _, gone, back = result.phases
    assert before.served == {"gray": before.sent} and gone.served == {"base": gone.sent}
    assert back.served.get("gray", 0) > 0


async def test_a_dying_dev_lane_falls_to_gray_not_base() -> None:
    result = await kill_and_return(multi_ns(), "web", "dev-x", requests_per_phase=40)
    assert result.members == ("dev-x", "gray", "base")
    assert result.ok, "\n".join(format_failover(result))
    assert result.phases[2].served == {"gray": result.phases[2].sent}


async def test_without_instant_fallback_the_same_death_fails_requests() -> None:
    """What the issue measured: plain subset routing answers 503 while the gray pod is dead."""
    result = await kill_and_return(multi_ns(instant_fallback=False), "cart", "gray", requests_per_phase=20,
                                   return_within=10)
    assert result.members == ()
    gone = result.phases[2]
    assert gone.failed == gone.sent > 0 and not result.ok


def test_cli_kill_reports_zero_failures_and_exit_codes(tmp_path: Path) -> None:
    config = tmp_path / "multi.yaml"
    config.write_text(MULTI_NS)

    def lane(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lane", "mesh", "verify", "--config", str(config), *args],
                              check=False, capture_output=True, text=True, cwd=ROOT, timeout=180)

    ok = lane("--kill", "ledger@gray", "--requests", "30")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[0] == "failover ledger@gray (instant fallback: gray → base):"
    assert ok.stdout.splitlines()[-1] == "0 failed requests; traffic returned to gray"
    for bad, message in (("nobody@gray", "expected SERVICE@LANE"), ("cart@base", "non-default lane"),
                         ("cart@dev-x", "cart has no dev-x instance")):
        result = lane("--kill", bad)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr


async def test_verify_refuses_a_fallback_that_disagrees_with_the_virtual_service() -> None:
    config = multi_ns()
    objects = render_objects(config)
    for obj in of_kind(objects, "VirtualService"):
        for http in obj["spec"]["http"]:
            if obj["metadata"]["name"] == "cart" and http["name"] == "lane-gray":
                http["route"][0]["destination"]["subset"] = "base"
    with pytest.raises(VerifyError, match=r"VirtualService/cart route lane-gray\.cart: an EnvoyFilter sends it to "
                                          r"lane-fallback\|80\|gray\|cart\.shop\.svc\.cluster\.local"):
        await verify(config, objects=objects)
