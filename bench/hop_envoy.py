"""The Envoy side of the ``sidecar hop`` comparison: an outbound + inbound Envoy pair per request.

What a mesh does for one call from app a to service b, with Istio sidecars: a's sidecar
(outbound) picks b's instance by the lane header, with the routes ``lane mesh render`` emits,
and b's sidecar (inbound) hands the request to b's app. The outbound Envoy here is exactly
`mesh_config.bootstrap.envoy_bootstrap`'s ``mesh`` listener (the rendered VirtualService routes,
DestinationRule subsets as clusters, the sidecar Lua when the config renders one), its subsets
pointing at the inbound Envoys; each inbound Envoy is one listener forwarding everything to its
instance's stub, like Istio's ``inbound|PORT||`` cluster in front of the app.

Every Envoy runs ``--concurrency 1``: a lane sidecar is one process on one event loop
(``--workers`` must be 1), so the pair is compared thread for thread; Istio's own default for
sidecars is 2, which would buy Envoy throughput at 32 connections with the same CPU per request.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["ENVOY_HOP_CONCURRENCY", "INBOUND_LISTENER", "inbound_bootstrap"]

ENVOY_HOP_CONCURRENCY: Final = 1
INBOUND_LISTENER: Final = "inbound"
_HCM_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER: Final = {"name": "envoy.filters.http.router",
                  "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def inbound_bootstrap(app_port: int) -> dict[str, Any]:
    """An inbound sidecar Envoy: listener ``inbound`` on port 0, every request to 127.0.0.1:*app_port*."""
    cluster = {
        "name": "inbound-app", "type": "STATIC", "connect_timeout": "5s",
        "load_assignment": {"cluster_name": "inbound-app", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": app_port}}}}]}]},
    }
    route = {"match": {"prefix": "/"}, "route": {"cluster": "inbound-app", "timeout": "15s"}}
    hcm = {"@type": _HCM_TYPE, "stat_prefix": INBOUND_LISTENER, "http_filters": [_ROUTER],
           "route_config": {"name": INBOUND_LISTENER,
                            "virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [route]}]}}
    listener = {"name": INBOUND_LISTENER, "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}]}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {"listeners": [listener], "clusters": [cluster]}}
