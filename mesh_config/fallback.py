"""Instant fallback: a lane whose pods die falls back down its chain within the same request.

Istio has no subset fallback: a route to a subset whose pods are gone answers 503 ``no healthy
upstream`` until something rewrites the VirtualService (`lane mesh sync`, seconds later, and never
without it). Envoy can do better in the proxy itself, and this module emits that:

* per service and non-strict lane whose chain still has somewhere to go (gray -> base), an
  **aggregate cluster** (``envoy.clusters.aggregate``, ``CLUSTER_PROVIDED``) listing the lane's
  subset cluster first and then the subset clusters down its chain, as istiod names them
  (``outbound|PORT|SUBSET|FQDN``, `mesh_config.hosts`), added by an EnvoyFilter ``CLUSTER`` ADD;
* the lane's route pointed at it by an ``HTTP_ROUTE`` MERGE, with the retry priority
  ``envoy.retry_priorities.previous_priorities`` (update_frequency 1): a retry never goes back to a
  member that just failed. The VirtualService route carries the retry budget and conditions
  (`RETRY_ON`, one attempt per member), so they stay visible and schema-checked;
* outlier detection on the members (DestinationRule ``trafficPolicy``), so after the first failures
  a dead pod is ejected and requests go straight to the next member; Istio's ``minHealthPercent``
  0 keeps Envoy's panic routing off, so an ejected-only subset is skipped, not sprayed;
* on the aggregate cluster, the circuit-breaker thresholds istiod gives its own clusters: with
  Envoy's default ``max_retries`` of 3, the 4th concurrent retry away from a dying lane fails.

A strict lane gets none of this (it answers 503 rather than fall back), nor does a lane whose
chain has a single present subset. The routes are found by name: istiod names an Envoy route
``HTTPRoute.name + "." + match.name``, so the VirtualService routes are ``lane-LANE`` with a match
named after the service, giving a name unique per service and lane (`envoy_route_name`).

Where the patches go: every client of a service needs the aggregate cluster, and the clients are
the lane apps (in the namespaces of the config's services) and the ingress gateway. So one
EnvoyFilter (no workload selector: every sidecar there) per service namespace, and one for the
gateway pods beside the coloring filter. ``mesh.instant_fallback: false`` emits none of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from lane.core.config import LaneConfig

from .hosts import fqdn, service_namespace, subset_cluster
from .lanes import Presence, lane_targets
from .model import (
    NETWORKING_V1ALPHA3,
    EnvoyConfigObjectPatch,
    EnvoyFilterSpec,
    HTTPRetry,
    ObjectMeta,
    OutlierDetection,
    Resource,
    TrafficPolicy,
    WorkloadSelector,
)

__all__ = [
    "AGGREGATE_TYPE",
    "CIRCUIT_BREAKERS",
    "OUTLIER_DETECTION",
    "PREVIOUS_PRIORITIES",
    "RETRY_ON",
    "SIDECAR_FILTER_NAME",
    "Fallback",
    "envoy_route_name",
    "fallback_filters",
    "fallbacks",
    "fallbacks_by_service",
    "retry_for",
    "traffic_policy",
]

# `cancelled` (a gRPC status, like `unavailable`; in Istio's own default retryOn too): a gRPC server
# stopping cancels the calls it is serving, so a lane whose gRPC pods die would fail those calls.
RETRY_ON: Final = "connect-failure,refused-stream,unavailable,cancelled,gateway-error,reset"
AGGREGATE_TYPE: Final = "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig"
PREVIOUS_PRIORITIES: Final = "envoy.retry_priorities.previous_priorities"
_PRIORITIES_TYPE: Final = "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig"
SIDECAR_FILTER_NAME: Final = "lane-fallback"
# Two gateway errors (connect failures count) eject a pod for 3 s (longer each time it is ejected
# again); every pod of a subset may be ejected, so a dead lane is skipped, not half-tried.
# istiod gives every cluster it builds these thresholds (Envoy's default max_retries of 3 drops the
# 4th concurrent retry: a dying lane under load would fail requests); an added cluster gets them here.
UNLIMITED: Final = 4294967295
CIRCUIT_BREAKERS: Final = {"thresholds": [{"max_connections": UNLIMITED, "max_pending_requests": UNLIMITED,
                                           "max_requests": UNLIMITED, "max_retries": UNLIMITED}]}
OUTLIER_DETECTION: Final = OutlierDetection(consecutive_gateway_errors=2, interval="1s",
                                            base_ejection_time="3s", max_ejection_percent=100)


@dataclass(frozen=True, slots=True)
class Fallback:
    """Requests of *lane* to *service* try the subsets *members* in order."""

    service: str
    lane: str
    members: tuple[str, ...]  # subset (lane) names, the served one first
    member_clusters: tuple[str, ...]  # istiod's cluster names of the members
    cluster: str  # the aggregate cluster's name

    @property
    def route(self) -> str:
        return envoy_route_name(self.lane, self.service)


def envoy_route_name(lane: str, service: str) -> str:
    """The Envoy route istiod builds from the VirtualService route ``lane-LANE`` (match named SERVICE)."""
    return f"lane-{lane}.{service}"


def fallbacks(config: LaneConfig, service: str, present: Presence, namespace: str) -> tuple[Fallback, ...]:
    """The instant fallbacks of *service*'s lanes (none when ``mesh.instant_fallback`` is off)."""
    if not config.mesh.instant_fallback:
        return ()
    svc = config.service(service)
    have = present.get(service, frozenset())
    out = []
    for target in lane_targets(config, service, present):
        if target.subset is None or config.lanes[target.lane].strict:
            continue
        chain = config.chain(target.lane)
        members = tuple(lane for lane in chain[chain.index(target.subset):] if lane in have)
        if len(members) < 2:
            continue
        host = fqdn(svc.host, service_namespace(svc, namespace))
        out.append(Fallback(service, target.lane, members,
                            tuple(subset_cluster(svc, m, namespace) for m in members),
                            f"lane-fallback|{svc.port}|{target.lane}|{host}"))
    return tuple(out)


def fallbacks_by_service(config: LaneConfig, present: Presence,
                         namespace: str) -> Mapping[str, tuple[Fallback, ...]]:
    """`fallbacks` of every service, worked out once per render (the DestinationRule, the
    VirtualService and the EnvoyFilters all need them)."""
    return {service: fallbacks(config, service, present, namespace) for service in config.services}


def retry_for(fallback: Fallback | None) -> HTTPRetry | None:
    """The VirtualService retries of a route with *fallback*: one attempt per member."""
    return None if fallback is None else HTTPRetry(attempts=len(fallback.members), retry_on=RETRY_ON)


def traffic_policy(has_fallback: bool) -> TrafficPolicy | None:
    """The DestinationRule policy of a service some lane falls back in: outlier detection."""
    return TrafficPolicy(outlier_detection=OUTLIER_DETECTION) if has_fallback else None


def _patches(context: str, fallback: Fallback) -> tuple[EnvoyConfigObjectPatch, ...]:
    cluster = {
        "name": fallback.cluster,
        "lb_policy": "CLUSTER_PROVIDED",
        "circuit_breakers": CIRCUIT_BREAKERS,
        "cluster_type": {"name": "envoy.clusters.aggregate",
                         "typed_config": {"@type": AGGREGATE_TYPE, "clusters": list(fallback.member_clusters)}},
    }
    priority = {"name": PREVIOUS_PRIORITIES, "typed_config": {"@type": _PRIORITIES_TYPE, "update_frequency": 1}}
    route: dict[str, Any] = {"route": {"cluster": fallback.cluster, "retry_policy": {"retry_priority": priority}}}
    return (
        EnvoyConfigObjectPatch(apply_to="CLUSTER", match={"context": context},
                               patch={"operation": "ADD", "value": cluster}),
        EnvoyConfigObjectPatch(apply_to="HTTP_ROUTE",
                               match={"context": context,
                                      "routeConfiguration": {"vhost": {"route": {"name": fallback.route}}}},
                               patch={"operation": "MERGE", "value": route}),
    )


def fallback_filters(config: LaneConfig, present: Presence, namespace: str, labels: Mapping[str, str],
                     by_service: Mapping[str, tuple[Fallback, ...]] | None = None) -> list[Resource]:
    """The sidecar EnvoyFilter of every service namespace and the gateway's, if any lane falls back."""
    falls = by_service if by_service is not None else fallbacks_by_service(config, present, namespace)
    every = [f for service in sorted(config.services) for f in falls[service]]
    if not every:
        return []
    sidecar = tuple(p for f in every for p in _patches("SIDECAR_OUTBOUND", f))
    namespaces = sorted({service_namespace(svc, namespace) for svc in config.services.values()})
    out = [Resource(NETWORKING_V1ALPHA3, "EnvoyFilter", ObjectMeta(SIDECAR_FILTER_NAME, ns, labels),
                    EnvoyFilterSpec(config_patches=sidecar)) for ns in namespaces]
    entry = tuple(p for f in every if f.service == config.entry for p in _patches("GATEWAY", f))
    if entry:
        gw = config.mesh.gateway
        out.append(Resource(NETWORKING_V1ALPHA3, "EnvoyFilter",
                            ObjectMeta(f"{gw.name}-lane-fallback", gw.namespace, labels),
                            EnvoyFilterSpec(config_patches=entry, workload_selector=WorkloadSelector(gw.selector))))
    return out
