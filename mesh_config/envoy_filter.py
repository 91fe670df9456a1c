"""EnvoyFilters that run lane's Lua: coloring on the ingress gateway, baggage -> tag on sidecars.

Both insert an ``envoy.filters.http.lua`` filter just before the router of the HTTP connection
manager, so it sees (and may change) the request headers before the route is chosen. The script
is given as ``default_source_code.inline_string`` (Envoy deprecated ``inline_code``); the patch
value is an Envoy Struct that Istio passes through, so the current field name is what counts.

The gateway filter goes to ``mesh.gateway.namespace`` (default ``istio-system``, Istio's root
namespace): an EnvoyFilter with a workloadSelector only reaches pods of its own namespace, or of
every namespace from the root. The sidecar filter applies to every sidecar of the namespace it is
rendered into; `mesh_config.render` puts one into each namespace where a service of the config lives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from lane.core.config import LaneConfig

from .lua import gateway_lua, sidecar_lua
from .model import (
    NETWORKING_V1ALPHA3,
    EnvoyConfigObjectPatch,
    EnvoyFilterSpec,
    ObjectMeta,
    Resource,
    WorkloadSelector,
)

__all__ = [
    "GATEWAY_FILTER_NAME",
    "LUA_FILTER_TYPE",
    "SIDECAR_FILTER_NAME",
    "gateway_filter",
    "lua_http_filter",
    "lua_of",
    "sidecar_filter",
]

LUA_FILTER_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
GATEWAY_FILTER_NAME: Final = "lane.gateway.coloring"
SIDECAR_FILTER_NAME: Final = "lane.sidecar.baggage-to-tag"
_HCM: Final = "envoy.filters.network.http_connection_manager"
_ROUTER: Final = "envoy.filters.http.router"


def lua_http_filter(name: str, source: str) -> dict[str, Any]:
    """The Envoy HttpFilter config running *source*; shared with `lane mesh verify`'s bootstrap."""
    return {
        "name": name,
        "typed_config": {"@type": LUA_FILTER_TYPE, "default_source_code": {"inline_string": source}},
    }


def _before_router(context: str, name: str, source: str) -> EnvoyConfigObjectPatch:
    return EnvoyConfigObjectPatch(
        apply_to="HTTP_FILTER",
        match={
            "context": context,
            "listener": {"filterChain": {"filter": {"name": _HCM, "subFilter": {"name": _ROUTER}}}},
        },
        patch={"operation": "INSERT_BEFORE", "value": lua_http_filter(name, source)},
    )


def gateway_filter(config: LaneConfig, labels: Mapping[str, str]) -> Resource:
    """The coloring filter on the ingress gateway pods the Gateway selects."""
    gw = config.mesh.gateway
    return Resource(
        api_version=NETWORKING_V1ALPHA3,
        kind="EnvoyFilter",
        metadata=ObjectMeta(name=f"{gw.name}-lane-coloring", namespace=gw.namespace, labels=labels),
        spec=EnvoyFilterSpec(
            workload_selector=WorkloadSelector(labels=gw.selector),
            config_patches=(_before_router("GATEWAY", GATEWAY_FILTER_NAME, gateway_lua(config)),),
        ),
    )


def sidecar_filter(config: LaneConfig, namespace: str, labels: Mapping[str, str]) -> Resource:
    """The outbound baggage -> tag header filter for every sidecar in *namespace*."""
    return Resource(
        api_version=NETWORKING_V1ALPHA3,
        kind="EnvoyFilter",
        metadata=ObjectMeta(name="lane-baggage-to-tag", namespace=namespace, labels=labels),
        spec=EnvoyFilterSpec(
            config_patches=(_before_router("SIDECAR_OUTBOUND", SIDECAR_FILTER_NAME, sidecar_lua(config)),),
        ),
    )


def lua_of(obj: Mapping[str, Any]) -> str:
    """The Lua source inside an emitted EnvoyFilter (dict form), so verify runs it verbatim."""
    if obj.get("kind") != "EnvoyFilter":
        raise ValueError(f"not an EnvoyFilter: {obj.get('kind')!r}")
    value = obj["spec"]["configPatches"][0]["patch"]["value"]
    source = value["typed_config"]["default_source_code"]["inline_string"]
    assert isinstance(source, str)
    return source
