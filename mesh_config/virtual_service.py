"""VirtualService per service: route each lane's tag to the subset that serves it.

For every lane L of the config (except the default lane): requests whose tag header is exactly
L go to subset L if the service has it, else to the first lane down L's fallback chain that it
has (`LaneConfig.lane_for`); a strict lane without an instance answers 503 directly, as the data
plane does. The last route -- everything else, including untagged and unknown-lane requests --
goes to the default (stable) subset. Istio answers "no healthy upstream" for a subset without
endpoints and has no subset fallback, so the fallback is resolved here and only subsets that
exist are ever named; a lane whose pods die between two renders falls back inside Envoy
(`mesh_config.fallback`). Each VirtualService lives in its service's namespace.

The entry service's VirtualService is also bound to the Gateway. Istio refuses the wildcard host
``*`` on a VirtualService bound to ``mesh``, so when the Gateway accepts every host the entry gets
a second, gateway-only VirtualService for ``*`` with the same routes.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from lane.core.config import LaneConfig

from .fallback import Fallback, fallbacks, retry_for
from .hosts import gateway_ref, service_namespace
from .lanes import LaneTarget, Presence, default_target, lane_targets
from .model import (
    NETWORKING_V1,
    Destination,
    HTTPBody,
    HTTPDirectResponse,
    HTTPMatchRequest,
    HTTPRoute,
    HTTPRouteDestination,
    ObjectMeta,
    Resource,
    StringMatch,
    VirtualServiceSpec,
)

__all__ = ["MESH_GATEWAY", "http_routes", "virtual_services"]

MESH_GATEWAY: Final = "mesh"


def _action(config: LaneConfig, service: str, target: LaneTarget) -> HTTPRoute:
    host = config.service(service).host
    if target.subset is None:
        body = HTTPBody(f"no instance of {service} may serve lane {target.lane}\n")
        return HTTPRoute(direct_response=HTTPDirectResponse(status=503, body=body))
    return HTTPRoute(route=(HTTPRouteDestination(Destination(host=host, subset=target.subset)),))


def http_routes(config: LaneConfig, service: str, present: Presence, namespace: str | None = None,
                falls: tuple[Fallback, ...] | None = None) -> tuple[HTTPRoute, ...]:
    """The ordered HTTP routes of *service*: one per non-default lane, then the default route.

    A lane route's match is named after the service, so istiod's Envoy route name
    (`fallback.envoy_route_name`) is unique per service and lane; a lane with an instant fallback
    carries its retries (`mesh_config.fallback`).
    """
    routes = []
    if falls is None:
        falls = fallbacks(config, service, present, namespace or config.mesh.namespace)
    by_lane = {f.lane: f for f in falls}
    for target in lane_targets(config, service, present):
        action = _action(config, service, target)
        match = HTTPMatchRequest(name=service,
                                 headers=MappingProxyType({config.tag.header: StringMatch(exact=target.lane)}))
        routes.append(HTTPRoute(name=f"lane-{target.lane}", match=(match,), route=action.route,
                                retries=retry_for(by_lane.get(target.lane)), direct_response=action.direct_response))
    fallback = _action(config, service, default_target(config, service, present))
    routes.append(HTTPRoute(name="default", route=fallback.route, direct_response=fallback.direct_response))
    return tuple(routes)


def virtual_services(
    config: LaneConfig, service: str, present: Presence, namespace: str, labels: Mapping[str, str],
    falls: tuple[Fallback, ...] | None = None,
) -> list[Resource]:
    """The VirtualService(s) of *service* (two for the entry behind a wildcard Gateway), in the
    service's namespace (`mesh_config.hosts`); the Gateway, in *namespace*, is named across."""
    svc = config.service(service)
    routes = http_routes(config, service, present, namespace, falls)
    gw = config.mesh.gateway
    home = service_namespace(svc, namespace)
    if service != config.entry:
        spec = VirtualServiceSpec(hosts=(svc.host,), gateways=(MESH_GATEWAY,), http=routes)
        return [Resource(NETWORKING_V1, "VirtualService", ObjectMeta(service, home, labels), spec)]
    gateway = gateway_ref(config, namespace, home)
    named = tuple(h for h in gw.hosts if h != "*" and h != svc.host)
    out = [Resource(NETWORKING_V1, "VirtualService", ObjectMeta(service, home, labels),
                    VirtualServiceSpec(hosts=(svc.host, *named), gateways=(gateway, MESH_GATEWAY), http=routes))]
    if "*" in gw.hosts:
        out.append(Resource(NETWORKING_V1, "VirtualService", ObjectMeta(f"{gw.name}-{service}", home, labels),
                            VirtualServiceSpec(hosts=("*",), gateways=(gateway,), http=routes)))
    return out
