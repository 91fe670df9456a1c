"""Where a request goes: the pure routing decision of the gateway and every sidecar.

`choose_upstream` is a function of the config, the request's lane and the proxy's current view of
instance health; it returns a `Route` value and does no I/O, so it is tested exhaustively and the
Lua emitter can mirror it. The lane walk itself is `LaneConfig.lane_for` (the one shared
definition); this module only supplies "has a usable instance right now" and says *why* a request
fell back:

* ``no-instance``: the service has no instance of the requested lane at all;
* ``unhealthy``: it has some, but passive health checking ejected them all;
* ``connect-failed``: the ones left refused or timed out the connection during this request.

A strict lane never falls back: `UpstreamUnavailable` (the proxy answers 503 with the reason).

Panic mode (Envoy's panic threshold, at 0%): when every lane of the chain is out and the last one
(usually the default lane) is out only because passive health *ejected* its instances, those are
tried anyway (`Route.panic`). Ejection is a guess from traffic; answering 503 to everyone
because of it would let a few bad answers take a whole service down. Instances that failed during
this very request are not tried again.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from lane.core.config import LaneConfig
from lane.core.endpoint import Endpoint
from lane.core.errors import UpstreamUnavailable
from lane.core.hops import FallbackReason

__all__ = ["Available", "Route", "choose_upstream", "static_available"]

# (service, lane) -> the instances of that lane that are not ejected right now
Available = Callable[[str, str], tuple[Endpoint, ...]]


@dataclass(frozen=True, slots=True)
class Route:
    service: str
    requested: str  # the lane the request is in
    lane: str  # the lane that will serve it
    upstreams: tuple[Endpoint, ...]  # usable instances of `lane`, in config order
    reason: FallbackReason | None = None  # set exactly when lane != requested
    panic: bool = False  # every lane was out: these are ejected instances of the chain's last lane, tried anyway

    @property
    def fell_back(self) -> bool:
        return self.lane != self.requested


def static_available(config: LaneConfig) -> Available:
    """Every configured instance counts as available (no health information)."""
    return lambda service, lane: config.services[service].instances.get(lane, ())


def _reason(configured: tuple[Endpoint, ...], failed: frozenset[Endpoint]) -> FallbackReason:
    if not configured:
        return FallbackReason.NO_INSTANCE
    if any(e in failed for e in configured):
        return FallbackReason.CONNECT_FAILED  # it failed during this request (and maybe got ejected for it)
    return FallbackReason.UNHEALTHY


def choose_upstream(
    config: LaneConfig,
    service: str,
    lane: str,
    available: Available | None = None,
    failed: Collection[Endpoint] = (),
) -> Route:
    """The route of a request in *lane* to *service*.

    *available* is the health view (default: every configured instance); *failed* are instances
    that already failed to connect during this request and must not be tried again.
    Raises `UpstreamUnavailable` when no lane in the chain has a usable instance, or the lane is
    strict and its own instances are unusable.
    """
    if service not in config.services:
        raise UpstreamUnavailable(service, lane, "not a service in the lane config")
    svc = config.services[service]
    requested = lane
    if not svc.instances:
        # Selector-only service: reached at its cluster address; the mesh picks the pod.
        cluster_lane = config.default_lane
        reason = None if cluster_lane == requested else FallbackReason.NO_INSTANCE
        return Route(service, requested, cluster_lane, (Endpoint(svc.host, svc.port),), reason)
    health = available or static_available(config)
    failed_set = frozenset(failed)

    def usable(svc_name: str, candidate: str) -> tuple[Endpoint, ...]:
        return tuple(e for e in health(svc_name, candidate) if e not in failed_set)

    served = config.lane_for(service, lane, has=lambda s, candidate: bool(usable(s, candidate)))
    first = config.chain(requested)[0]  # unknown lanes start at the default lane
    if served is None:
        panic = _panic_route(config, service, requested, first, failed_set)
        if panic is not None:
            return panic
        configured = svc.instances.get(first, ())
        why = _reason(configured, failed_set).value
        strict = config.lanes.get(first)
        if strict is not None and strict.strict:
            raise UpstreamUnavailable(service, requested, f"lane {first} is strict and has no usable instance ({why})")
        raise UpstreamUnavailable(service, requested, f"no usable instance in lanes {' -> '.join(config.chain(first))}")
    reason = None
    if served != requested:
        reason = _reason(svc.instances.get(requested, ()), failed_set) if requested == first \
            else FallbackReason.NO_INSTANCE  # a lane the config does not declare
    return Route(service, requested, served, usable(service, served), reason)


def _panic_route(
    config: LaneConfig, service: str, requested: str, first: str, failed: frozenset[Endpoint]
) -> Route | None:
    """The ejected instances of the last lane of *requested*'s chain the service has, unless they failed just now."""
    chain = config.chain(requested)
    strict = config.lanes.get(first)
    if strict is not None and strict.strict:
        chain = chain[:1]
    instances = config.services[service].instances
    last = next((candidate for candidate in reversed(chain) if instances.get(candidate)), None)
    if last is None:
        return None
    upstreams = tuple(e for e in instances[last] if e not in failed)
    if not upstreams:
        return None
    reason = None
    if last != requested:
        reason = _reason(instances.get(requested, ()), failed) if requested == first else FallbackReason.NO_INSTANCE
    return Route(service, requested, last, upstreams, reason, panic=True)
