"""The rendered Istio objects as one Envoy bootstrap, for `lane mesh verify`.

One Envoy process on loopback plays both Istio roles the rendered objects configure:

* listener ``gateway`` -- the ingress gateway: the gateway EnvoyFilter's Lua *verbatim*, then
  the router with the routes of every VirtualService bound to the Gateway;
* listener ``mesh`` -- every sidecar's outbound side (the stubs call each other through it): the
  sidecar EnvoyFilter's Lua verbatim (if rendered), then the routes of every VirtualService bound
  to ``mesh``, one virtual host per service host.

VirtualService routes become Envoy routes one to one (tag header exact match -> cluster
``host|subset``, direct 503 responses as such); every DestinationRule subset becomes a cluster
in front of a stub backend. A route naming a subset no DestinationRule defines fails the
translation, as it would fail in Istio (503 "no healthy upstream"); a route shape the renderer
never emits (several matches, non-exact header matches, weighted destinations) is refused
rather than approximated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from lane.config import LaneConfig
from lane.errors import LaneError

from .backends import Backend
from .envoy_filter import lua_http_filter, lua_of
from .virtual_service import MESH_GATEWAY

__all__ = ["GATEWAY_LISTENER", "MESH_LISTENER", "VerifyError", "envoy_bootstrap", "sidecar_filter_rendered"]

GATEWAY_LISTENER: Final = "gateway"
MESH_LISTENER: Final = "mesh"
_HCM_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER: Final = {"name": "envoy.filters.http.router",
                  "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


class VerifyError(LaneError):
    """The rendered objects cannot be run as they are (e.g. a route to an undefined subset)."""


def _filter_context(obj: Mapping[str, Any]) -> str:
    context = obj["spec"]["configPatches"][0]["match"]["context"]
    assert isinstance(context, str)
    return context


def sidecar_filter_rendered(objects: Sequence[Mapping[str, Any]]) -> bool:
    """Whether *objects* include the sidecar outbound (baggage -> tag) EnvoyFilter."""
    return any(o["kind"] == "EnvoyFilter" and _filter_context(o) == "SIDECAR_OUTBOUND" for o in objects)


def _cluster(name: str, port: int) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    return {"name": name, "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]}}


def _envoy_route(vs: str, http: Mapping[str, Any], clusters: set[str]) -> dict[str, Any]:
    match: dict[str, Any] = {"prefix": "/"}
    matches = http.get("match") or []
    if len(matches) > 1 or any(set(m) - {"headers"} for m in matches):
        raise VerifyError(f"VirtualService/{vs}: only one header match per route is supported by verify")
    for m in matches:
        headers = []
        for name, cond in m["headers"].items():
            if set(cond) != {"exact"}:
                raise VerifyError(f"VirtualService/{vs}: header {name}: only exact matches are supported by verify")
            headers.append({"name": name, "string_match": {"exact": cond["exact"]}})
        match["headers"] = headers
    if "directResponse" in http:
        direct = http["directResponse"]
        body = {"inline_string": direct["body"]["string"]} if "body" in direct else None
        return {"match": match, "direct_response": {"status": direct["status"], **({"body": body} if body else {})}}
    routes = http.get("route") or []
    if len(routes) != 1:
        raise VerifyError(f"VirtualService/{vs}: expected exactly one destination per route")
    dest = routes[0]["destination"]
    cluster = f"{dest['host']}|{dest.get('subset', '')}"
    if cluster not in clusters:
        raise VerifyError(f"VirtualService/{vs}: routes to subset {dest.get('subset')!r} of {dest['host']}, "
                          "which no DestinationRule defines (Istio would answer 503 no healthy upstream)")
    return {"match": match, "route": {"cluster": cluster}}


def _listener(name: str, vhosts: list[dict[str, Any]], lua: str | None) -> dict[str, Any]:
    filters = ([lua_http_filter(f"lane.{name}.lua", lua)] if lua is not None else []) + [_ROUTER]
    hcm = {"@type": _HCM_TYPE, "stat_prefix": name, "http_filters": filters,
           "route_config": {"name": name, "virtual_hosts": vhosts}}
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def envoy_bootstrap(config: LaneConfig, objects: Sequence[Mapping[str, Any]],
                    backends: Mapping[tuple[str, str], Backend]) -> dict[str, Any]:
    """An Envoy bootstrap equivalent to *objects* (see the module docstring)."""
    clusters: dict[str, dict[str, Any]] = {}
    lua: dict[str, str] = {}
    for obj in objects:
        if obj["kind"] == "DestinationRule":
            host = obj["spec"]["host"]
            svc = config.service_by_host(host)
            for subset in obj["spec"].get("subsets", []):
                if svc is None or (svc.name, subset["name"]) not in backends:
                    raise VerifyError(f"DestinationRule/{obj['metadata']['name']}: no backend for {host}|{subset['name']}")
                clusters[f"{host}|{subset['name']}"] = _cluster(f"{host}|{subset['name']}",
                                                                backends[(svc.name, subset["name"])].port)
        elif obj["kind"] == "EnvoyFilter":
            lua[_filter_context(obj)] = lua_of(obj)
    vhosts: dict[str, list[dict[str, Any]]] = {GATEWAY_LISTENER: [], MESH_LISTENER: []}
    for obj in objects:
        if obj["kind"] != "VirtualService":
            continue
        name, spec = obj["metadata"]["name"], obj["spec"]
        routes = [_envoy_route(name, http, set(clusters)) for http in spec.get("http", [])]
        domains = [d for h in spec["hosts"] for d in ([h] if h == "*" else [h, f"{h}:*"])]
        for gateway in spec.get("gateways", []):
            role = MESH_LISTENER if gateway == MESH_GATEWAY else GATEWAY_LISTENER
            vhosts[role].append({"name": f"{role}-{name}", "domains": domains, "routes": routes})
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [_listener(GATEWAY_LISTENER, vhosts[GATEWAY_LISTENER], lua.get("GATEWAY")),
                          _listener(MESH_LISTENER, vhosts[MESH_LISTENER], lua.get("SIDECAR_OUTBOUND"))],
            "clusters": list(clusters.values()),
        },
    }
