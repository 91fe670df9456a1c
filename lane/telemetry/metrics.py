"""Prometheus metrics of the data plane (served on the admin listener's ``/metrics``).

Label values are bounded: lanes the config does not declare are reported as ``undeclared`` (a
client can invent any DNS label), services not in the config as ``unknown``. The invalid-tag
counter (``lane_invalid_tags_total``) is incremented by `lane.core.tags`, which imports it only when a tag
is invalid, so the propagation library and `lane mesh render` do not import prometheus-client.

The per-request calls (`observe_request`, `in_flight`) keep the labelled children they made:
prometheus-client's ``labels()`` validates, joins and locks on every call, which a proxy would
otherwise pay several times per request. Label values are bounded, so the caches are too (they
hold exactly the children the metrics hold anyway). Their updates go through `lane.telemetry.metric_tally`,
which hands them to prometheus-client in batches (on every read of the registry, else within a second).

Names and labels follow what Prometheus users and Istio dashboards expect: ``response_code`` (not
``status``), ``source_service``/``source_lane`` and ``destination_service``, a request-duration
histogram in seconds, ``lane_build_info``, and no ``_created`` series. The source is who made the
call: ``gateway`` for the gateway, the sidecar's own service and lane for its app's outbound calls,
``unknown`` on a sidecar's inbound side (a request does not say who sent it). The pair of
``source_service@source_lane`` and ``destination_service@served_lane`` on the outbound side is an
edge of the live lane topology `lane.graph.model` draws.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from importlib import metadata
from time import perf_counter
from typing import Final

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

from lane.core.config import LaneConfig
from lane.core.endpoint import Endpoint
from lane.core.tags import on_invalid_lane
from lane.telemetry.metric_tally import (  # first: its flushing collector must precede the metrics below
    Tallied,
    TalliedHistogram,
)

__all__ = [
    "BUILD_INFO",
    "DOWNSTREAM_CONNECTIONS",
    "DURATION",
    "DURATION_BUCKETS",
    "EJECTIONS",
    "FORBIDDEN",
    "GATEWAY_SOURCE",
    "INVALID_TAGS",
    "IN_FLIGHT",
    "LANE_SOURCES",
    "OVERLOAD_SHED",
    "REJECTED_TAGS",
    "RELOADS",
    "REQUESTS",
    "UNKNOWN_SOURCE",
    "Source",
    "count_lane_source",
    "ejection_hook",
    "in_flight",
    "lane_label",
    "observe_request",
]

# No ``*_created`` series: Istio's dashboards do not use them, and they double the samples per child.
disable_created_metrics()  # type: ignore[no-untyped-call]

Source = tuple[str, str]  # (service, lane) of whoever made the call
GATEWAY_SOURCE: Final[Source] = ("gateway", "")
UNKNOWN_SOURCE: Final[Source] = ("unknown", "")

_REQUEST_LABELS: Final = ("proxy", "source_service", "source_lane", "destination_service", "requested_lane",
                          "served_lane")
REQUESTS: Final = Counter(
    "lane_requests",
    "Requests forwarded by a lane proxy, by source, destination service, requested lane, served lane, "
    "fallback reason and response code (503 with no served lane: no lane may serve it; its fallback is 'strict' "
    "when the lane is strict and refused to fall back).",
    [*_REQUEST_LABELS, "fallback", "response_code"],
)
# From sub-millisecond (a proxy hop on loopback) to 30 s (a slow app near its timeout).
DURATION_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                           30.0)
DURATION: Final = Histogram(
    "lane_request_duration_seconds",
    "Seconds from a proxy taking a request to the answer's headers (the upstream's, or the proxy's error "
    "answer), by the same labels as lane_requests_total but the fallback reason.",
    [*_REQUEST_LABELS, "response_code"],
    buckets=DURATION_BUCKETS,
)
BUILD_INFO: Final = Gauge("lane_build_info", "Always 1: the lane version and Python this proxy runs.",
                          ["version", "python"], multiprocess_mode="max")
INVALID_TAGS: Final = Counter(
    "lane_invalid_tags",
    "Lane tag values received from the network that were not DNS labels and were treated as absent.",
    ["source"],
)
on_invalid_lane(lambda source: INVALID_TAGS.labels(source=source).inc())
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
# Counted by `lane.process.overload` through the pending tally (`lane.engine.limits` says what each reason means).
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



def _version() -> str:
    try:
        return metadata.version("lane")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


BUILD_INFO.labels(_version(), platform.python_version()).set(1)

# (proxy, source, service, requested, served, fallback, status) -> its DURATION child, counting REQUESTS
_REQUEST_CHILDREN: dict[tuple[str, Source, str, str, str, str, int], TalliedHistogram] = {}
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
    fallback: str | None, status: int, *, started: float, source: Source = GATEWAY_SOURCE,
) -> None:
    """Count one request to *service* and observe its duration since *started* (`time.perf_counter`)."""
    elapsed = perf_counter() - started
    svc = service if service is not None and service in config.services else "unknown"
    key = (proxy, source, svc, lane_label(config, requested), lane_label(config, served), fallback or "", status)
    children = _REQUEST_CHILDREN.get(key)
    if children is None:
        children = _REQUEST_CHILDREN[key] = _request_children(config, key)
    children.observe(elapsed)  # and counts it in lane_requests_total


def _request_children(config: LaneConfig, key: tuple[str, Source, str, str, str, str, int]) -> TalliedHistogram:
    proxy, (source_service, source_lane), service, requested, served, fallback, status = key
    known = source_service in config.services or source_service == GATEWAY_SOURCE[0]
    labels = (proxy, source_service if known else "unknown", lane_label(config, source_lane or None), service,
              requested, served)
    return TalliedHistogram(DURATION.labels(*labels, str(status)), DURATION_BUCKETS,
                            counted=REQUESTS.labels(*labels, fallback, str(status)))


def count_lane_source(service: str, source: str, via: str = "") -> None:
    """Count one outbound call of *service*'s app by how its lane was found (`lane.sidecar.carriers.LaneSource`)."""
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
