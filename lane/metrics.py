"""Prometheus metrics of the data plane (served on the admin listener's ``/metrics``).

Label values are bounded: lanes the config does not declare are reported as ``undeclared`` (a
client can invent any DNS label), services not in the config as ``unknown``. The invalid-tag
counter (``lane_invalid_tags_total``) is incremented by `lane.tags`, which imports it only when a tag
is invalid, so the propagation library and `lane mesh render` do not import prometheus-client.

The per-request calls (`observe_request`, `in_flight`) keep the labelled children they made:
prometheus-client's ``labels()`` validates, joins and locks on every call, which a proxy would
otherwise pay several times per request. Label values are bounded, so the caches are too (they
hold exactly the children the metrics hold anyway). Their updates go through `lane.metric_tally`,
which hands them to prometheus-client in batches (on every read of the registry, else within a second).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import Counter, Gauge

from .config import Endpoint, LaneConfig
from .metric_tally import Tallied  # first: its flushing collector must precede the metrics below

__all__ = [
    "DOWNSTREAM_CONNECTIONS",
    "EJECTIONS",
    "FORBIDDEN",
    "INVALID_TAGS",
    "IN_FLIGHT",
    "LANE_SOURCES",
    "OVERLOAD_SHED",
    "REJECTED_TAGS",
    "RELOADS",
    "REQUESTS",
    "count_lane_source",
    "ejection_hook",
    "in_flight",
    "lane_label",
    "observe_request",
]

REQUESTS: Final = Counter(
    "lane_requests",
    "Requests forwarded by a lane proxy, by service, requested lane, served lane, fallback reason and status.",
    ["proxy", "service", "requested_lane", "served_lane", "fallback", "status"],
)
INVALID_TAGS: Final = Counter(
    "lane_invalid_tags",
    "Lane tag values received from the network that were not DNS labels and were treated as absent.",
    ["source"],
)
REJECTED_TAGS: Final = Counter(
    "lane_rejected_tags",
    "Lane tags sent by untrusted clients and removed by the gateway, by where they were found.",
    ["source"],
)
EJECTIONS: Final = Counter(
    "lane_ejections",
    "Instances ejected by passive health checking.",
    ["service", "lane", "instance"],
)
FORBIDDEN: Final = Counter(
    "lane_forbidden",
    "Outbound requests refused by a sidecar because the host is not a service in the config.",
)
RELOADS: Final = Counter("lane_config_reloads", "Config reloads, by result.", ["result"])
IN_FLIGHT: Final = Gauge("lane_in_flight_requests", "Requests being forwarded right now.", ["proxy"])
# Counted by `lane.overload` through the pending tally (`lane.h1.limits` says what each reason means).
OVERLOAD_SHED: Final = Counter(
    "lane_overload_shed",
    "What a listener shed over its limits: connections closed at the connection cap (connections), waiting "
    "connections closed to make room (evicted), 503s over the request cap (requests) or the memory watermark (memory).",
    ["listener", "reason"],
)
DOWNSTREAM_CONNECTIONS: Final = Gauge("lane_downstream_connections", "Client connections open on a listener.",
                                      ["listener"])
LANE_SOURCES: Final = Counter(
    "lane_outbound_lane_source",
    "Outbound calls of a sidecar's app by how their lane was found: the tag header, the baggage member, "
    "recovered from a trace id (via: which trace header), or lost (left in the default lane: the app "
    "forwarded nothing the sidecar could use, a propagation break).",
    ["service", "source", "via"],
)


# (proxy, service, requested, served, fallback, status) -> the REQUESTS child; proxy -> IN_FLIGHT child
_REQUEST_CHILDREN: dict[tuple[str, str, str, str, str, int], Tallied] = {}
_IN_FLIGHT_CHILDREN: dict[str, Tallied] = {}
_SOURCE_CHILDREN: dict[tuple[str, str, str], Tallied] = {}


def in_flight(proxy: str) -> Tallied:
    """The in-flight gauge of *proxy* (``gateway``, ``inbound``, ``outbound``)."""
    child = _IN_FLIGHT_CHILDREN.get(proxy)
    if child is None:
        child = _IN_FLIGHT_CHILDREN[proxy] = Tallied(IN_FLIGHT.labels(proxy=proxy))
    return child


def lane_label(config: LaneConfig, lane: str | None) -> str:
    if lane is None:
        return ""
    return lane if lane in config.lanes else "undeclared"


def observe_request(
    config: LaneConfig, proxy: str, service: str | None, requested: str | None, served: str | None,
    fallback: str | None, status: int,
) -> None:
    svc = service if service is not None and service in config.services else "unknown"
    key = (proxy, svc, lane_label(config, requested), lane_label(config, served), fallback or "", status)
    child = _REQUEST_CHILDREN.get(key)
    if child is None:
        child = _REQUEST_CHILDREN[key] = Tallied(REQUESTS.labels(proxy, svc, key[2], key[3], key[4], str(status)))
    child.inc()


def count_lane_source(service: str, source: str, via: str = "") -> None:
    """Count one outbound call of *service*'s app by how its lane was found (`lane.carriers.LaneSource`)."""
    key = (service, source, via)
    child = _SOURCE_CHILDREN.get(key)
    if child is None:
        child = _SOURCE_CHILDREN[key] = Tallied(LANE_SOURCES.labels(service, source, via))
    child.inc()


def ejection_hook(config_of: Callable[[], LaneConfig]) -> Callable[[Endpoint], None]:
    """An `on_eject` callback for `PassiveHealth` that counts ejections by service and lane."""

    def hook(endpoint: Endpoint) -> None:
        config = config_of()
        for svc in config.services.values():
            for lane, endpoints in svc.instances.items():
                if endpoint in endpoints:
                    EJECTIONS.labels(service=svc.name, lane=lane, instance=str(endpoint)).inc()
                    return
        EJECTIONS.labels(service="unknown", lane="", instance=str(endpoint)).inc()

    return hook
