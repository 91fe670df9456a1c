"""Where each service lives: its namespace, its fully qualified name, its subset clusters' names.

Istio resolves a short host (no dot: ``c``) in the namespace of the object that names it, and looks
a DestinationRule up only in the client's namespace, the service's namespace and the root
namespace. So every per-service object goes into the *service's* namespace, read from its host:
``checkout.orders.svc.cluster.local`` lives in ``orders``; a short host lives in the render's
namespace (``mesh.namespace`` or ``--namespace``); any other host (a ServiceEntry name such as
``api.example.com``) is kept as written and its objects go to the render's namespace too.

istiod names the Envoy cluster of a subset ``outbound|PORT|SUBSET|FQDN``; the instant-fallback
aggregate clusters (`mesh_config.fallback`) list those names, so they are spelled once, here. The
cluster domain is assumed to be ``cluster.local`` (Istio's default) for short hosts.
"""

from __future__ import annotations

from typing import Final

from lane.core.config import LaneConfig, Service

__all__ = ["CLUSTER_DOMAIN", "fqdn", "gateway_ref", "service_namespace", "subset_cluster"]

CLUSTER_DOMAIN: Final = "cluster.local"


def service_namespace(svc: Service, namespace: str) -> str:
    """The namespace of *svc*: from a ``name.NS.svc.DOMAIN`` host, else the render's *namespace*."""
    parts = svc.host.split(".")
    return parts[1] if len(parts) >= 3 and parts[2] == "svc" else namespace


def fqdn(host: str, namespace: str) -> str:
    """*host* as Istio resolves it from an object in *namespace*: short names get the namespace."""
    return host if "." in host else f"{host}.{namespace}.svc.{CLUSTER_DOMAIN}"


def subset_cluster(svc: Service, subset: str, namespace: str) -> str:
    """istiod's cluster for *subset* of *svc* (objects rendered for *namespace*)."""
    return f"outbound|{svc.port}|{subset}|{fqdn(svc.host, service_namespace(svc, namespace))}"


def gateway_ref(config: LaneConfig, gateway_namespace: str, from_namespace: str) -> str:
    """How a VirtualService in *from_namespace* names the Gateway: ``ns/name`` across namespaces."""
    name = config.mesh.gateway.name
    return name if gateway_namespace == from_namespace else f"{gateway_namespace}/{name}"
