"""The rendered Istio objects as one Envoy bootstrap, for `lane mesh verify`.

One Envoy process on loopback plays both Istio roles the rendered objects configure:

* listener ``gateway`` -- the ingress gateway: the gateway EnvoyFilter's Lua *verbatim*, then
  the router with the routes of every VirtualService bound to the Gateway;
* listener ``mesh`` -- every sidecar's outbound side (the stubs call each other through it): the
  sidecar EnvoyFilter's Lua verbatim (if rendered), then the routes of every VirtualService bound
  to ``mesh``, one virtual host per service host.

What istiod would do with the objects is done here by hand, the way istiod does it: every
DestinationRule subset becomes a cluster named ``outbound|PORT|SUBSET|FQDN`` in front of a stub
backend, with the rule's outlier detection (and Istio's panic threshold 0) and istiod's default
circuit-breaker thresholds; the subset clusters of a ``grpc`` service speak HTTP/2 to its pods, as
istiod's ``setH2Options`` makes them for a Service port whose protocol is ``grpc`` (``appProtocol``
or a ``grpc-`` name; ``http`` ports get HTTP/1.1, which no gRPC server answers). Both listeners
detect HTTP/1.1 or h2c per connection (Envoy's ``codec_type`` AUTO, istiod's choice for sidecars
and gateways alike). VirtualService routes
become Envoy routes one to one, named ``route.name + "." + match.name``, with istiod's defaults for
a route without a timeout (none, and ``grpc-timeout`` honoured without a cap: ``timeout`` and
``max_stream_duration`` 0s) and the route's retries
as Istio converts them (plus its ``previous_hosts`` predicate); then the EnvoyFilter patches are
applied verbatim: Lua ``HTTP_FILTER`` inserts, ``CLUSTER`` ADDs (the instant-fallback aggregate
clusters) and ``HTTP_ROUTE`` MERGEs by route name, merged like protobuf messages. A route naming
a subset no DestinationRule defines fails the translation, as it would fail in Istio (503 "no
healthy upstream"); a route shape the renderer never emits (several matches, non-exact header
matches, weighted destinations) or a patch it never emits is refused rather than approximated.
This is the emulation's limit: istiod itself is not run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from lane.core.config import LaneConfig
from lane.core.errors import LaneError

from .backends import Backend
from .envoy_filter import lua_http_filter, lua_of
from .fallback import CIRCUIT_BREAKERS
from .hosts import fqdn
from .virtual_service import MESH_GATEWAY

__all__ = ["GATEWAY_LISTENER", "MESH_LISTENER", "VerifyError", "envoy_bootstrap", "sidecar_filter_rendered"]

GATEWAY_LISTENER: Final = "gateway"
MESH_LISTENER: Final = "mesh"
_HCM_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER: Final = {"name": "envoy.filters.http.router",
                  "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


class VerifyError(LaneError):
    """The rendered objects cannot be run as they are (e.g. a route to an undefined subset)."""


_LISTENER_OF: Final = {"SIDECAR_OUTBOUND": MESH_LISTENER, "GATEWAY": GATEWAY_LISTENER}
_PREVIOUS_HOSTS: Final = {"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}
# istiod's setH2Options: an explicit HTTP/2 upstream for a Service port of protocol grpc / http2
_HTTP2: Final = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
# istiod's setTimeout for a route whose VirtualService sets no timeout
_NO_TIMEOUT: Final = {"timeout": "0s", "max_stream_duration": {"max_stream_duration": "0s",
                                                              "grpc_timeout_header_max": "0s"}}


def _lua_context(obj: Mapping[str, Any]) -> str | None:
    """The context of a Lua EnvoyFilter (its first patch inserts an HTTP filter), else None."""
    patch = obj["spec"]["configPatches"][0]
    context = patch["match"].get("context")
    return str(context) if patch["applyTo"] == "HTTP_FILTER" else None


def sidecar_filter_rendered(objects: Sequence[Mapping[str, Any]]) -> bool:
    """Whether *objects* include the sidecar outbound (baggage -> tag) EnvoyFilter."""
    return any(o["kind"] == "EnvoyFilter" and _lua_context(o) == "SIDECAR_OUTBOUND" for o in objects)


def _cluster(name: str, port: int, policy: Mapping[str, Any], http2: bool) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    out: dict[str, Any] = {"name": name, "type": "STATIC", "connect_timeout": "2s",
                           "circuit_breakers": CIRCUIT_BREAKERS,  # istiod's defaults
                           "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]}}
    if http2:
        out["typed_extension_protocol_options"] = _HTTP2
    outlier = policy.get("outlierDetection")
    if outlier:  # as istiod's applyOutlierDetection: minHealthPercent (default 0) is the panic threshold
        out["outlier_detection"] = {
            "consecutive_gateway_failure": outlier["consecutiveGatewayErrors"],
            "enforcing_consecutive_gateway_failure": 100,
            "interval": outlier["interval"], "base_ejection_time": outlier["baseEjectionTime"],
            "max_ejection_percent": outlier["maxEjectionPercent"],
        }
        out["common_lb_config"] = {"healthy_panic_threshold": {"value": outlier.get("minHealthPercent", 0)}}
    return out


def _retry_policy(retries: Mapping[str, Any]) -> dict[str, Any]:
    """A VirtualService's retries as Istio's retry.ConvertPolicy turns them into Envoy's."""
    return {"num_retries": retries["attempts"], "retry_on": retries["retryOn"],
            "retry_host_predicate": [_PREVIOUS_HOSTS], "host_selection_retry_max_attempts": 5}


def merged(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """*patch* merged into *base* as protobuf's Merge does: messages recursively, lists appended,
    scalars replaced (what an EnvoyFilter MERGE does)."""
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = [*out[key], *value]
        else:
            out[key] = value
    return out


def _merge_all(vs: str, route: dict[str, Any], values: Sequence[Mapping[str, Any]],
               added: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """*route* with the HTTP_ROUTE MERGE *values*; a merge that moves it to an aggregate cluster
    must keep the VirtualService's destination first, else the two objects disagree."""
    for value in values:
        before = (route.get("route") or {}).get("cluster")
        route = merged(route, value)
        after = (route.get("route") or {}).get("cluster")
        members = ((added.get(str(after)) or {}).get("cluster_type") or {}).get("typed_config", {}).get("clusters")
        if after != before and (not members or members[0] != before):
            raise VerifyError(f"VirtualService/{vs} route {route['name']}: an EnvoyFilter sends it to {after}, "
                              f"whose first member is not the route's destination {before}")
    return route


def _envoy_route(vs: str, http: Mapping[str, Any], clusters: Mapping[str, str]) -> dict[str, Any]:
    match: dict[str, Any] = {"prefix": "/"}
    matches = http.get("match") or []
    if len(matches) > 1 or any(set(m) - {"headers", "name"} for m in matches):
        raise VerifyError(f"VirtualService/{vs}: only one header match per route is supported by verify")
    route_name = str(http.get("name", ""))
    if matches and matches[0].get("name"):
        route_name = f"{route_name}.{matches[0]['name']}"
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
        return {"name": route_name, "match": match,
                "direct_response": {"status": direct["status"], **({"body": body} if body else {})}}
    routes = http.get("route") or []
    if len(routes) != 1:
        raise VerifyError(f"VirtualService/{vs}: expected exactly one destination per route")
    dest = routes[0]["destination"]
    key = f"{dest['host']}|{dest.get('subset', '')}"
    if key not in clusters:
        raise VerifyError(f"VirtualService/{vs}: routes to subset {dest.get('subset')!r} of {dest['host']}, "
                          "which no DestinationRule defines (Istio would answer 503 no healthy upstream)")
    action: dict[str, Any] = {"cluster": clusters[key], **_NO_TIMEOUT}
    if http.get("retries"):
        action["retry_policy"] = _retry_policy(http["retries"])
    return {"name": route_name, "match": match, "route": action}


def _patch(obj: Mapping[str, Any], patch: Mapping[str, Any], added: dict[str, dict[str, Any]],
           merges: dict[tuple[str, str], list[Mapping[str, Any]]]) -> None:
    """Collect one non-Lua EnvoyFilter patch: a CLUSTER ADD or an HTTP_ROUTE MERGE by route name."""
    name, kind = obj["metadata"]["name"], patch["applyTo"]
    operation, match = patch["patch"]["operation"], patch["match"]
    listener = _LISTENER_OF.get(str(match.get("context")))
    if kind == "CLUSTER" and operation == "ADD" and listener is not None:
        value = patch["patch"]["value"]
        added[value["name"]] = dict(value)
        return
    route = ((match.get("routeConfiguration") or {}).get("vhost") or {}).get("route") or {}
    if kind == "HTTP_ROUTE" and operation == "MERGE" and listener is not None and set(route) == {"name"}:
        merges.setdefault((listener, route["name"]), []).append(patch["patch"]["value"])
        return
    raise VerifyError(f"EnvoyFilter/{name}: a {operation} patch of {kind} is not supported by verify")


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
    by_subset: dict[str, str] = {}  # "host|subset" as a VirtualService names it -> Envoy cluster
    lua: dict[str, str] = {}
    added: dict[str, dict[str, Any]] = {}
    merges: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for obj in objects:
        if obj["kind"] == "DestinationRule":
            host, namespace = obj["spec"]["host"], obj["metadata"]["namespace"]
            svc = config.service_by_host(host)
            policy = obj["spec"].get("trafficPolicy") or {}
            for subset in obj["spec"].get("subsets", []):
                if svc is None or (svc.name, subset["name"]) not in backends:
                    raise VerifyError(f"DestinationRule/{obj['metadata']['name']}: no backend for {host}|{subset['name']}")
                name = f"outbound|{svc.port}|{subset['name']}|{fqdn(host, namespace)}"
                clusters[name] = _cluster(name, backends[(svc.name, subset["name"])].port, policy, svc.grpc)
                by_subset[f"{host}|{subset['name']}"] = name
        elif obj["kind"] == "EnvoyFilter":
            context = _lua_context(obj)
            if context is not None:
                lua[context] = lua_of(obj)
            else:
                for patch in obj["spec"]["configPatches"]:
                    _patch(obj, patch, added, merges)
    vhosts: dict[str, list[dict[str, Any]]] = {GATEWAY_LISTENER: [], MESH_LISTENER: []}
    for obj in objects:
        if obj["kind"] != "VirtualService":
            continue
        name, spec = obj["metadata"]["name"], obj["spec"]
        routes = [_envoy_route(name, http, by_subset) for http in spec.get("http", [])]
        domains = [d for h in spec["hosts"] for d in ([h] if h == "*" else [h, f"{h}:*"])]
        for gateway in spec.get("gateways", []):
            role = MESH_LISTENER if gateway == MESH_GATEWAY else GATEWAY_LISTENER
            patched = [_merge_all(name, r, merges.get((role, r["name"]), ()), added) for r in routes]
            vhosts[role].append({"name": f"{role}-{name}", "domains": domains, "routes": patched})
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [_listener(GATEWAY_LISTENER, vhosts[GATEWAY_LISTENER], lua.get("GATEWAY")),
                          _listener(MESH_LISTENER, vhosts[MESH_LISTENER], lua.get("SIDECAR_OUTBOUND"))],
            "clusters": [*clusters.values(), *added.values()],
        },
    }
