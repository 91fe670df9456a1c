"""Names and hosts `kubectl apply` (the API server, Istio's webhook, ``istioctl analyze``) would
refuse are refused when the config is read: ``lane check`` and ``lane mesh render`` exit 2 with one
line naming the config path, before any object is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lane.core.config_load import parse_config
from lane.core.dns_names import gateway_host_problem, label_problem, service_host_problem, subdomain_problem
from lane.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

BASE = """
lanes: {gray: {}}
entry: a
services:
  a: {instances: {base: ["127.0.0.1:1"], gray: ["127.0.0.1:2"]}}
  b: {HOST_B instances: {base: ["127.0.0.1:3"]}}
mesh:
  namespace: NS
  gateway: {name: GW, namespace: GWNS, hosts: HOSTS}
"""


def config_text(ns: str = "shop", gw: str = "lane-gateway", gwns: str = "istio-system", hosts: str = '["*"]',
                host_b: str = "") -> str:
    return (BASE.replace("HOST_B ", f"host: {host_b}, " if host_b else "").replace("GWNS", gwns)
            .replace("NS", ns).replace("GW", gw).replace("HOSTS", hosts))


BAD = [
    ({"gw": "Lane_GW"}, "mesh.gateway.name: expected a DNS-1123 subdomain"),
    ({"ns": "Shop_NS"}, "mesh.namespace: expected a DNS-1123 label"),
    ({"gwns": "istio.system"}, "mesh.gateway.namespace: expected a DNS-1123 label"),
    ({"hosts": '["shop.example.com:80"]'}, "mesh.gateway.hosts[0]: a host carries no port"),
    ({"hosts": '["shop.example.com", "ns/x.example.com"]'}, "mesh.gateway.hosts[1]: expected a host without a namespace/"),
    ({"hosts": '["shop*.example.com"]'}, "mesh.gateway.hosts[0]: a wildcard must be a whole first label"),
    ({"host_b": "my_svc.default.svc.cluster.local"}, "services.b.host: invalid host 'my_svc.default.svc.cluster.local'"),
    ({"host_b": "b.default.svc.cluster.local:8080"}, "services.b.host: a host carries no port"),
    ({"host_b": "'*.example.com'"}, "services.b.host: a service host cannot be a wildcard"),
    ({"hosts": '["b"]'}, "mesh.gateway.hosts[0]: 'b' is the host of service 'b'"),
    ({"host_b": "pay.billing.svc.cluster.local", "hosts": '["pay.billing.svc.cluster.local"]'},
     "(istoctl analyze IST0109)".replace("istoctl", "istioctl")),
]


@pytest.mark.parametrize(("edit", "message"), BAD)
def test_invalid_names_and_hosts_are_refused_with_the_config_path(edit: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(config_text(**edit), "bad.yaml")
    assert str(exc.value).startswith("bad.yaml: ") and message in str(exc.value), str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("edit", [
    {"hosts": '["*"]'}, {"hosts": '["*.example.com", "shop.example.com."]'}, {"hosts": '["a"]'},  # the entry's own
    {"host_b": "b.billing.svc.cluster.local"}, {"host_b": "api.Example.com"}, {"gw": "shop.gw-1"},
])
def test_valid_names_and_hosts_are_accepted(edit: dict[str, str]) -> None:
    parse_config(config_text(**edit), "good.yaml")


@pytest.mark.parametrize("command", [["check"], ["mesh", "render"]])
def test_check_and_render_exit_2_with_one_line(tmp_path: Path, command: list[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_text(hosts='["shop.example.com:80"]'))
    result = subprocess.run([sys.executable, "-m", "lane", *command, "--config", str(bad)], check=False,
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [(f"error: {bad}: mesh.gateway.hosts[0]: a host carries no port, "
                                           "got 'shop.example.com:80'")]


def test_the_rules_one_by_one() -> None:
    assert label_problem("shop") is None and label_problem("a" * 64) is not None and label_problem("-a") is not None
    assert subdomain_problem("lane.gw") is None and subdomain_problem("lane..gw") is not None
    assert subdomain_problem("Lane") is not None
    assert gateway_host_problem("*") is None and gateway_host_problem("*.a.b") is None
    assert gateway_host_problem("a.*.b") is not None and gateway_host_problem("x" * 64 + ".com") is not None
    assert service_host_problem("c") is None and service_host_problem("c.ns.svc.cluster.local") is None
    assert service_host_problem("c_d") is not None and service_host_problem("c:80") is not None
