"""Whether the cluster's Kubernetes Services tell Istio what each lane service speaks.

Istio takes a port's protocol from the Kubernetes Service, never from anything `lane mesh render`
emits: ``appProtocol`` when set, else the port name up to its first ``-`` (``grpc-api`` is grpc),
else it sniffs each connection (istiod's ``ConvertProtocol``; ``kubernetes.io/h2c`` is http2).
What it does with that decides whether lanes work at all:

- a ``protocol: grpc`` service on a port Istio takes for ``http`` gets HTTP/1.1 from every sidecar
  to its pods (istiod's ``setUpstreamProtocol``; HTTP/2 only for grpc, grpc-web and http2): every
  gRPC call fails. Its port must be ``appProtocol: grpc`` or named ``grpc`` / ``grpc-*``;
- an ``http`` service on a grpc / http2 port gets HTTP/2, which an HTTP/1.1 app does not speak;
- a port Istio takes for an opaque protocol (tcp, tls, https, mongo, mysql, redis, udp, ...) gets no
  HTTP routes: the VirtualServices never apply, every lane is lost;
- a port with no protocol is sniffed: it works (each hop keeps the client's HTTP version) but gets
  no routing guarantees from Istio, so for a gRPC service it is a warning.

`port_findings` judges Services already read; `check_ports` reads them (``--check-endpoints``).
The config's ``port`` must be a port of the Service: it is the PORT of istiod's subset cluster
names that the instant-fallback clusters list (`mesh_config.hosts.subset_cluster`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from lane.core.config import LaneConfig, Service

from .hosts import service_namespace
from .kube import Kube, KubeError

__all__ = ["check_ports", "istio_protocol", "port_findings"]

JSON = dict[str, Any]
_KNOWN: Final = frozenset({"http", "http2", "https", "http_proxy", "grpc", "grpc-web", "tcp", "tls", "udp",
                           "mongo", "mysql", "redis"})
_HTTP2: Final = frozenset({"grpc", "grpc-web", "http2"})
_HTTP: Final = frozenset({"http", "http_proxy"})


def istio_protocol(port: Mapping[str, Any]) -> str | None:
    """The protocol Istio reads from a Service *port*, lower-cased; None when it sniffs instead."""
    if str(port.get("protocol", "TCP")).upper() == "UDP":
        return "udp"
    name = str(port.get("appProtocol") or port.get("name") or "").lower()
    if name == "kubernetes.io/h2c":
        return "http2"
    if name.startswith("grpc-web"):
        return "grpc-web"
    prefix = name.partition("-")[0]
    return prefix if prefix in _KNOWN else None


def _judge(svc: Service, where: str, port: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(problem, warning) of the Service *port* a config service is reached on."""
    istio = istio_protocol(port)
    want = "grpc" if svc.grpc else "http"
    fix = f"set `appProtocol: {want}` or name the port `{want}` / `{want}-...`"
    declared = f"appProtocol {port['appProtocol']!r}" if port.get("appProtocol") else f"name {port.get('name', '')!r}"
    said = f"{where} port {port.get('port')} ({declared}) is {istio} to Istio"
    if istio is None:
        return None, f"{where} port {port.get('port')} declares no protocol, Istio sniffs it: {fix}" if svc.grpc else None
    if svc.grpc and istio in _HTTP:
        return f"{said}, which sends HTTP/1.1 to the pods of gRPC service {svc.name}: {fix}", None
    if not svc.grpc and istio in _HTTP2:
        return f"{said}, which sends HTTP/2 to the pods of HTTP service {svc.name}: {fix}", None
    if istio not in _HTTP | _HTTP2:
        return f"{said}, so no HTTP route (no lane) applies to {svc.name}: {fix}", None
    return None, None


def port_findings(config: LaneConfig, services: Iterable[JSON], namespace: str) -> tuple[list[str], list[str]]:
    """(problems, warnings) about the ports of the Kubernetes *services* (of every namespace the
    config's services live in) that the config's services are reached on."""
    found: dict[tuple[str, str], JSON] = {}
    for item in services:
        meta = item.get("metadata") or {}
        found[(str(meta.get("namespace") or namespace), str(meta.get("name")))] = item
    problems, warnings = [], []
    for svc in config.services.values():
        ns, name = service_namespace(svc, namespace), svc.host.split(".", 1)[0]
        kubernetes = "." not in svc.host or svc.host.split(".")[2:3] == ["svc"]  # else a ServiceEntry host
        service = found.get((ns, name)) if kubernetes else None
        if service is None:
            if svc.grpc and kubernetes:
                warnings.append(f"service {svc.name}: no Kubernetes Service {ns}/{name}, its gRPC port is not checked")
            continue
        where = f"Service {ns}/{name}"
        ports = [p for p in (service.get("spec") or {}).get("ports") or [] if isinstance(p, Mapping)]
        port = next((p for p in ports if p.get("port") == svc.port), None)
        if port is None:
            problems.append(f"{where} has no port {svc.port} (services.{svc.name}.port), the port Istio's "
                            "routes and lane's fallback clusters use")
            continue
        problem, warning = _judge(svc, where, port)
        problems += [problem] if problem else []
        warnings += [warning] if warning else []
    return problems, warnings


def check_ports(config: LaneConfig, namespace: str, kube: Kube) -> tuple[list[str], list[str]]:
    """`port_findings` over the Services of every namespace the config's services live in; a
    namespace whose Services cannot be listed is a warning, not a failed check."""
    services: list[JSON] = []
    warnings: list[str] = []
    for ns in sorted({service_namespace(svc, namespace) for svc in config.services.values()}):
        try:
            services += [{**s, "metadata": {"namespace": ns, **(s.get("metadata") or {})}}
                         for s in kube.list_objects("", "v1", "Service", ns)]
        except KubeError as exc:
            warnings.append(f"cannot list Services in {ns}, their protocols are not checked: {exc}")
    problems, found = port_findings(config, services, namespace)
    return problems, warnings + found
