"""The Kubernetes Service ports Istio reads each service's protocol from (`mesh_config.ports`).

Istio's rules (istiod's ``ConvertProtocol``: ``appProtocol`` first, else the port name's prefix)
applied to Service objects; the cluster read goes through the real `kubernetes` client to
`fake_kube.FakeKube` (no API server can run here), the command through `lane mesh render
--check-endpoints` as a user runs it.
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
from lane.core.config_load import parse_config
from mesh_config.kube import Kube, connect
from mesh_config.ports import check_ports, istio_protocol, port_findings
from tests.support.fake_kube import FakeKube

JSON = dict[str, Any]
CONFIG = """
entry: web
services:
  web: {selector: {app: web}, instances: {base: ["127.0.0.1:1"]}}
  cart: {protocol: grpc, port: 9090, selector: {app: cart}, instances: {base: ["127.0.0.1:2"]}}
  pay: {protocol: grpc, host: pay.billing.svc.cluster.local, instances: {base: ["127.0.0.1:3"]}}
  maps: {protocol: grpc, host: maps.example.com, instances: {base: ["127.0.0.1:4"]}}
"""


def config() -> LaneConfig:
    return parse_config(CONFIG, "ports.yaml")


def service(name: str, *ports: JSON, namespace: str = "shop") -> JSON:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"app": name}, "ports": list(ports)}}


@pytest.mark.parametrize(("port", "protocol"), [
    ({"name": "grpc"}, "grpc"),
    ({"name": "grpc-api"}, "grpc"),
    ({"name": "GRPC-API"}, "grpc"),
    ({"name": "grpc-web-ui"}, "grpc-web"),
    ({"name": "http2-x"}, "http2"),
    ({"name": "http-api", "appProtocol": "grpc"}, "grpc"),  # appProtocol wins over the name
    ({"name": "grpc", "appProtocol": "http"}, "http"),
    ({"appProtocol": "kubernetes.io/h2c"}, "http2"),
    ({"name": "tcp-db"}, "tcp"),
    ({"name": "grpc", "protocol": "UDP"}, "udp"),
    ({"name": "web"}, None),  # no protocol Istio knows: it sniffs
    ({}, None),
])
def test_istio_reads_app_protocol_then_the_port_name_prefix(port: JSON, protocol: str | None) -> None:
    assert istio_protocol({"port": 80, **port}) == protocol


def test_a_grpc_service_on_an_http_port_is_a_problem_naming_the_fix() -> None:
    problems, warnings = port_findings(config(), [service("web", {"name": "http", "port": 80}),
                                                  service("cart", {"name": "http-api", "port": 9090}),
                                                  service("pay", {"name": "grpc", "port": 80}, namespace="billing")],
                                       "shop")
    assert problems == [("Service shop/cart port 9090 (name 'http-api') is http to Istio, which sends HTTP/1.1 to the "
                        "pods of gRPC service cart: set `appProtocol: grpc` or name the port `grpc` / `grpc-...`")]
    assert warnings == []  # maps is a ServiceEntry host: no Kubernetes Service to check


@pytest.mark.parametrize(("web", "cart", "problem", "warning"), [
    ({"name": "http"}, {"appProtocol": "grpc", "name": "api"}, None, None),
    ({"name": "grpc"}, {"name": "grpc"}, "sends HTTP/2 to the pods of HTTP service web", None),
    ({"name": "tcp"}, {"name": "grpc"}, "is tcp to Istio, so no HTTP route (no lane) applies to web", None),
    ({"name": "web"}, {"name": "grpc"}, None, None),  # sniffed HTTP works, as HTTP/1.1 stays HTTP/1.1
    ({"name": "http"}, {"name": "api"}, None, "shop/cart port 9090 declares no protocol, Istio sniffs it"),
])
def test_each_port_is_held_to_what_its_service_speaks(web: JSON, cart: JSON, problem: str | None,
                                                      warning: str | None) -> None:
    problems, warnings = port_findings(config(), [service("web", {**web, "port": 80}),
                                                  service("cart", {**cart, "port": 9090}),
                                                  service("pay", {"name": "grpc", "port": 80}, namespace="billing")],
                                       "shop")
    assert [p for p in problems if problem and problem in p] == problems and len(problems) == (problem is not None)
    assert [w for w in warnings if warning and warning in w] == warnings and len(warnings) == (warning is not None)


def test_a_missing_port_is_a_problem_and_a_missing_grpc_service_a_warning() -> None:
    problems, warnings = port_findings(config(), [service("cart", {"name": "grpc", "port": 80})], "shop")
    assert problems == [("Service shop/cart has no port 9090 (services.cart.port), the port Istio's routes and "
                        "lane's fallback clusters use")]
    assert warnings == ["service pay: no Kubernetes Service billing/pay, its gRPC port is not checked"]


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as kube:
        yield kube


def test_check_ports_reads_the_services_of_every_namespace(fake: FakeKube) -> None:
    fake.put_object(service("web", {"name": "http", "port": 80}))
    fake.put_object(service("cart", {"name": "http", "port": 9090}))
    fake.put_object(service("pay", {"appProtocol": "grpc", "port": 80}, namespace="billing"))
    problems, warnings = check_ports(config(), "shop", Kube(connect(server=fake.url)))
    assert [p.split(" port ")[0] for p in problems] == ["Service shop/cart"] and warnings == []
    listed = {r.path for r in fake.requests if r.path.endswith("/services")}
    assert listed == {"/api/v1/namespaces/shop/services", "/api/v1/namespaces/billing/services"}


def test_render_check_endpoints_fails_on_a_grpc_service_istio_would_speak_http1_to(fake: FakeKube,
                                                                                 tmp_path: Path) -> None:
    for name, app in (("web-1", "web"), ("cart-1", "cart")):
        fake.put_pod(name, {"app": app, "version": "base"}, namespace="shop")
    fake.put_pod("pay-1", {"app": "pay", "version": "base"}, namespace="billing")
    fake.put_object(service("web", {"name": "http", "port": 80}))
    fake.put_object(service("cart", {"name": "http-api", "port": 9090}))
    fake.put_object(service("pay", {"name": "grpc-pay", "port": 80}, namespace="billing"))
    path = tmp_path / "lane.yaml"
    path.write_text(CONFIG + "mesh: {namespace: shop}\n", encoding="utf-8")
    command = [sys.executable, "-m", "lane", "mesh", "render", "--config", str(path), "--check-endpoints",
               "--server", fake.url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "KUBECONFIG": str(tmp_path / "none")})
    assert result.returncode == 1, result.stderr
    assert ("endpoint check: Service shop/cart port 9090 (name 'http-api') is http to Istio, which sends HTTP/1.1"
            in result.stderr)
    fake.put_object(service("cart", {"name": "http-api", "appProtocol": "grpc", "port": 9090}))
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "KUBECONFIG": str(tmp_path / "none")})
    assert result.returncode == 0, result.stderr
    assert "port" not in result.stderr
